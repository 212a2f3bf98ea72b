"""One call's pipeline: SIP audio in, V-Blaze stream, events out.

A `CallPipeline` is created when the SIP thread reports a call answered. The worker feeds it audio
frames and DTMF as they arrive and tells it when the call ended; `run()` owns everything the call
started (its engine stream above all) in one TaskGroup and returns only when the final transcript
arrived or the bound ran out, after emitting `call.ended`.

The call's timeline, the one definition every other module and doc points to: second 0 is the start
of the first audio frame received; every frame the conference bridge delivers counts, with frames that
carried no audio counted as silence, so the timeline advances with the wall clock and utterance times
from the engine land on it directly. Event times (`start`, `end`, `at`, gaps) are seconds on it; the
engine session (`bridge/vblaze/protocol.py`, `buffer.py`) counts the same positions in bytes.

`call.ended`'s transcript is the whole call's: the final documents of every connection of the engine
stream merged onto the call's timeline by `vblaze.transcript.merge` (the engine's own documents go in
`engine_finals`, each with its offset). If the pipeline itself fails, the audio no utterance confirmed
becomes a `pipeline_error` gap, and the transcript keeps what was heard.

A SIPREC call (`CallStarted.siprec`) has one or two audio streams, each with a role (`StreamRole`). How
they go to the engine is the call's audio mode, `CallPipeline.delivery` (named after the config key
`siprec.delivery`; nothing to do with webhook delivery, `bridge/webhook/`):
- one stream: a mixed recording, sent like a plain call; utterances carry role "mixed";
- two streams, `siprec.delivery = stereo`: one engine stream with two channels, channel 0 the caller
  and 1 the agent (`StreamRole.channel`). The SIP thread delivers each stream's frames on the same
  conference clock; `StereoPairer` pairs them frame by frame and interleaves them, padding a side
  with silence once it lags more than one frame. Utterances come back with `metadata.channel`;
- two streams, `siprec.delivery = streams`: one engine stream per audio stream (``requestid``
  ``<call-id>;stream=<n>``); an utterance's channel is its stream's role channel.
SIPREC utterances carry `role`, `participant` and `stream`. New rs-metadata mid-call (re-INVITE or
UPDATE) may remap the streams: utterances from then on carry the new roles, stereo channels follow
the roles, and `call.ended` reports the latest mapping as `streams`.

Pause (PCI, `bridge/pause.py` decides): `pause(by, reason)` and `resume(by)` (from the control API
through the worker, from DTMF sequences, from `pause.auto_resume_seconds`) take effect on the loop at
once, before they return: from then on every frame of every audio stream of the call goes to its engine
stream as silence of the same length, flagged `paused` so its buffer keeps nothing of it and records
the span as a `paused` gap. Each change is announced as `call.paused` / `call.resumed` in the call's
order. The settings come from this pipeline's own `config.pause`, never the worker's.
Redaction and recording are read from the pipeline's own `config` (`redaction`, `recording`): the
engine streams get the redaction tags; with `recording.enabled` each engine stream's scrubbed audio goes
to its own `recording.CallRecording` (one WAV file per call, or per audio stream with
`siprec.delivery = streams`), written as it arrives (small appends, on the loop) and finished in a
thread after the finals (bounded by `RECORDING_CLOSE_SECONDS`); `call.ended` then says what was written.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from array import array
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from bridge import event_data
from bridge.config import Config
from bridge.event_data import EngineFinalData, EventData, GapData, RecordingData, RecordingFileData
from bridge.events import BridgeEvent, EventKind, EventSink
from bridge.ledger import CallLedger, LedgerEntry
from bridge.logs import call_logger
from bridge.metrics import CallMetrics, EngineMetrics, RecordingMetrics
from bridge.pause import DtmfSequencer, PauseAction, PauseState
from bridge.recording import CallRecording, RecordingError, RecordingFile, RecordingResult, file_name
from bridge.vblaze import transcript as merged_transcript
from bridge.vblaze.buffer import GapCause
from bridge.vblaze.client import EngineStream, StreamResult
from bridge.vblaze.protocol import Utterance
from sip.events import CallStarted
from sip.siprec import StreamRole

logger = logging.getLogger(__name__)

METRICS_BATCH_MS = 1000  # audio counted per metrics update (10 frames of audio.port_frame_ms 100)

Delivery = Literal["mono", "stereo", "streams"]  # a call's audio mode (see the module docstring)
Outcome = tuple[Any, list[GapData], list[EngineFinalData]]  # transcript, gaps, engine finals
MAX_LAG_FRAMES = 1  # a stereo side further behind than this is padded with silence
RECORDING_CLOSE_SECONDS = 30.0  # bound on finishing a call's recording files (fsync, rename, sha256)


class StereoPairer:
    """Two streams' frames in, interleaved 16-bit stereo frames out (no I/O).

    `push(stream, pcm, arrival)` queues one frame of stream 0 or 1 and returns the stereo frames now
    complete, each with the arrival time of its older half. A frame waits for its partner while the
    other stream is at most `MAX_LAG_FRAMES` behind; beyond that it goes out with silence on the other
    channel. `channels[stream]` is the output channel of each stream (0 or 1, different).
    """

    def __init__(self, channels: Sequence[int] = (0, 1)) -> None:
        self._queues: tuple[deque[tuple[bytes, float]], deque[tuple[bytes, float]]] = (deque(), deque())
        self.channels: tuple[int, int] = (0, 1)
        self.set_channels(channels)
        self.padded = 0  # frames sent with a silent side

    def set_channels(self, channels: Sequence[int]) -> None:
        first, second = (int(c) for c in channels[:2])
        self.channels = (first, second) if {first, second} == {0, 1} else (0, 1)

    def push(self, stream: int, pcm: bytes, arrival: float) -> list[tuple[bytes, float]]:
        self._queues[stream].append((pcm, arrival))
        out = []
        first, second = self._queues
        while first and second:
            out.append(self._pair(first.popleft(), second.popleft()))
        for mine, other in ((first, second), (second, first)):
            while len(mine) > MAX_LAG_FRAMES and not other:
                out.append(self._alone(mine is first, mine.popleft()))
        return out

    def flush(self) -> list[tuple[bytes, float]]:
        """What is still queued, the missing side silent (at the end of the call)."""
        first, second = self._queues
        out = []
        while first and second:
            out.append(self._pair(first.popleft(), second.popleft()))
        for is_first, queue in ((True, first), (False, second)):
            while queue:
                out.append(self._alone(is_first, queue.popleft()))
        return out

    def _alone(self, is_first: bool, frame: tuple[bytes, float]) -> tuple[bytes, float]:
        self.padded += 1
        silent = (b"", frame[1])
        return self._pair(frame, silent) if is_first else self._pair(silent, frame)

    def _pair(self, a: tuple[bytes, float], b: tuple[bytes, float]) -> tuple[bytes, float]:
        """Interleave two 16-bit little-endian frames (the shorter padded with silence). The stdlib's
        array does it in C; importing numpy for this would cost every worker ~10 MB."""
        n = max(len(a[0]), len(b[0])) // 2
        left, right = _samples(a[0], n), _samples(b[0], n)
        out = array("h", bytes(4 * n))
        out[self.channels[0] :: 2] = left
        out[self.channels[1] :: 2] = right
        if sys.byteorder == "big":
            out.byteswap()
        return out.tobytes(), min(a[1], b[1])


def _samples(pcm: bytes, n: int) -> array[int]:
    """`n` native int16 samples from little-endian PCM, padded with silence."""
    samples = array("h", pcm[: 2 * n].ljust(2 * n, b"\0"))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def delivery_of(started: CallStarted, configured: str) -> Delivery:
    """The call's audio mode, how its audio goes to the engine: mono (plain call, one SIPREC stream),
    else stereo or streams as `siprec.delivery` (`configured`) says."""
    if started.siprec is None or len(started.siprec.roles) < 2:
        return "mono"
    return "streams" if configured == "streams" else "stereo"


def mapping_change(old: Sequence[StreamRole], new: Sequence[StreamRole]) -> str | None:
    """How `new` differs from `old`: "roles" (a stream changed role or channel), "participants" (same
    roles, other senders named), or None."""
    if [(r.index, r.role, r.channel) for r in old] != [(r.index, r.role, r.channel) for r in new]:
        return "roles"

    def named(roles: Sequence[StreamRole]) -> list[tuple[tuple[str | None, str | None], ...]]:
        return [tuple((p.aor, p.name) for p in r.participants) for r in roles]

    return "participants" if named(old) != named(new) else None


class CallPipeline:
    """Everything one call runs, and the numbering of its events."""

    def __init__(
        self,
        started: CallStarted,
        config: Config,
        sink: EventSink,
        worker: int,
        call_metrics: CallMetrics,
        engine_metrics: EngineMetrics,
        ledger: CallLedger,
        recording_metrics: RecordingMetrics | None = None,
    ) -> None:
        self.info = started
        self.call_id = started.call_id or f"key-{started.key}"
        self._cfg = config
        self._sink = sink
        self._worker = worker
        self._seq = 0
        self._utterances = 0
        self._ended = asyncio.Event()
        self._end_reason = "unknown"
        self._answered_wall = time.time()
        self._answered_mono = time.monotonic()
        self._first_frame_mono: float | None = None
        self._frame_bytes = config.audio.sample_rate * 2 * config.audio.port_frame_ms // 1000
        self._batch_frames = max(1, METRICS_BATCH_MS // config.audio.port_frame_ms)
        self._silence = bytes(self._frame_bytes)
        self._audio_seconds = 0.0
        self._metrics = call_metrics
        self._unreported_frames = 0
        self._unreported_seconds = 0.0
        self._ledger = ledger
        self._entry = LedgerEntry(self.call_id, 0, self._answered_wall, route=started.route)
        self._engine_metrics = engine_metrics
        self.log = call_logger(logger, self.call_id)
        self.roles: tuple[StreamRole, ...] = started.siprec.roles if started.siprec else ()
        self.delivery = delivery_of(started, config.siprec.delivery)
        self._remaps = 0
        self._result: Outcome = (None, [], [])  # call.ended's transcript, gaps and engine finals
        self._pairer = StereoPairer([r.channel for r in self.roles]) if self.delivery == "stereo" else None
        self._recording_metrics = recording_metrics if recording_metrics is not None else RecordingMetrics()
        self._recording: RecordingData | None = None  # call.ended's, once the files are finished
        self._closing = False  # a thread is finishing the recording files
        engines = len(self.roles) if self.delivery == "streams" else 1
        self.recordings = [self._new_recording(i, engines) for i in range(engines)] if self._recorded else []
        self._stream_seconds = [0.0] * max(len(self.roles), 1)
        self._stream_first: list[float | None] = [None] * max(len(self.roles), 1)
        if self.delivery == "streams":
            self.streams = [self._engine_stream(index) for index in range(len(self.roles))]
        else:
            self.streams = [self._engine_stream(None)]
        self.stream = self.streams[0]
        self._init_pause(config)

    @property
    def _recorded(self) -> bool:
        return self._cfg.recording.enabled and self._cfg.redaction.audio

    def _new_recording(self, index: int, engines: int) -> CallRecording:
        channels = 2 if self.delivery == "stereo" else 1
        name = file_name(self.call_id, index if engines > 1 else None)
        cfg = self._cfg.recording
        rate = self._cfg.audio.sample_rate
        return CallRecording(RecordingFile(cfg.directory, name, rate, channels, cfg.format))

    def _engine_stream(self, index: int | None) -> EngineStream:
        """The call's engine stream, or (index given) the one of audio stream `index`."""

        def on_utterance(utt: Utterance) -> None:
            self._on_utterance(utt, index)

        recording = self.recordings[index or 0] if self.recordings else None

        def on_scrubbed_audio(position: int, data: bytes) -> None:
            if recording is None:
                return  # redaction.audio without recording.enabled: the scrubbed audio is not kept
            try:
                recording.audio(position, data)
            except RecordingError:
                self.log.exception("recording failed; the call goes on without it")

        return EngineStream(
            self._cfg.engine,
            self._cfg.audio,
            self.call_id,
            on_utterance=on_utterance,
            observer=self._engine_metrics,
            logger=self.log,
            channels=2 if self.delivery == "stereo" else 1,
            request_id=None if index is None else f"{self.call_id};stream={index}",
            redaction=self._cfg.redaction,
            on_scrubbed_audio=on_scrubbed_audio,
        )

    # --- fed by the worker, on the loop -------------------------------------------------------------

    def audio(self, stream: int, pcm: bytes | None, arrival: float) -> None:
        """One port frame of audio stream `stream` (pcm None: the conference bridge had no audio for it)."""
        if self._ended.is_set() or stream >= len(self._stream_seconds):
            return
        frame_seconds = self._cfg.audio.port_frame_ms / 1000
        if self._first_frame_mono is None:
            self._first_frame_mono = arrival - frame_seconds
            # The ledger keeps wall time: a lost call's gap runs from its last utterance to its death.
            self._entry.audio_started_at = time.time() - (time.monotonic() - self._first_frame_mono)
        data = pcm if pcm else self._silence
        paused = self._pause.silences(arrival - frame_seconds)
        if paused:  # fail closed: the bytes of a paused frame go no further than here
            data = self._silence if len(data) == len(self._silence) else bytes(len(data))
        seconds = len(data) / (2 * self._cfg.audio.sample_rate)
        self._unreported_frames += 1
        self._unreported_seconds += seconds
        if self._unreported_frames >= self._batch_frames:
            self._report_audio()
        if self.delivery == "mono":
            self._audio_seconds += seconds
            self.stream.push_audio(data, arrival, paused)
        elif self._pairer is not None:
            for frame, at in self._pairer.push(stream, data, arrival):
                self._audio_seconds += len(frame) / (4 * self._cfg.audio.sample_rate)
                self.stream.push_audio(frame, at, paused or self._pause.silences(at - frame_seconds))
        else:
            if self._stream_first[stream] is None:
                # Line this stream up on the call's timeline if it started later than the first.
                self._stream_first[stream] = arrival
                late = round((arrival - frame_seconds - self._first_frame_mono) / frame_seconds)
                for _ in range(max(late, 0)):
                    self._stream_seconds[stream] += frame_seconds
                    self.streams[stream].push_audio(self._silence, arrival, paused)
            self._stream_seconds[stream] += seconds
            self._audio_seconds = max(self._stream_seconds)
            self.streams[stream].push_audio(data, arrival, paused)

    def streams_changed(self, roles: tuple[StreamRole, ...], how: str) -> None:
        """New rs-metadata mid-call: utterances from now on carry these roles."""
        if len(roles) != len(self.roles):
            self.log.warning("%s maps %d streams, the call has %d: ignored", how, len(roles), len(self.roles))
            return
        change = mapping_change(self.roles, roles)
        self.roles = roles
        if change is None:
            self.log.info("%s with rs-metadata: streams unchanged", how)
            return
        if change == "participants":
            names = "; ".join(
                f"stream {r.index}: {', '.join(p.describe() for p in r.participants) or 'none'}"
                for r in roles
            )
            self.log.info("%s with rs-metadata: roles unchanged, participants now %s", how, names)
            return
        self._remaps += 1
        if self._pairer is not None:
            self._pairer.set_channels([r.channel for r in roles])
        for role in roles:
            self.log.info(
                "%s remapped stream %d (label %r) -> %s on channel %d: %s",
                how,
                role.index,
                role.label,
                role.role,
                role.channel,
                role.reason,
            )

    def dtmf(self, digit: str) -> None:
        """An RFC 4733 digit: a `dtmf` event, unless it belongs to a pause or resume sequence."""
        if self._ended.is_set():
            return
        released, action = self._sequencer.feed(digit, self._timeline_now(), time.monotonic())
        self._release_digits(released)
        if action is PauseAction.PAUSE:
            self.pause("dtmf")
        elif action is PauseAction.RESUME:
            self.resume("dtmf")
        self._arm_digit_timer()

    def ended(self, reason: str) -> None:
        if not self._ended.is_set():
            self._end_reason = reason
            self._ended.set()

    # --- the call's life -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Emit call.started, stream until the call ended and its finals are in, emit call.ended."""
        started = event_data.call_started(self.info, self._answered_wall, self._worker, self.delivery)
        self._emit("call.started", started)
        self.log.info("call started from %s", self.info.from_uri)
        try:
            await self._run_pipeline()
            self._recording = await self._finish_recordings()  # what came back is good, whatever failed
        finally:
            self._end()

    async def _run_pipeline(self) -> None:
        """`_transcribe`, and if it fails on an error of ours: log it, gap what was not transcribed."""
        try:
            await self._transcribe()
        except* Exception as group_error:
            for error in group_error.exceptions:
                self.log.error("call pipeline failed", exc_info=error)
            self._abandon()
            self._result = self._outcome([stream.result() for stream in self.streams])

    async def _transcribe(self) -> None:
        """The call's engine streams in one TaskGroup, until the call ended and their finals are in (or
        their bound ran out); sets `_result`."""
        async with asyncio.TaskGroup() as group:
            runners = [
                group.create_task(stream.run(), name=f"engine-{self.call_id}-{index}")
                for index, stream in enumerate(self.streams)
            ]
            try:
                await self._ended.wait()
                if self._pairer is not None:
                    for frame, at in self._pairer.flush():
                        self._audio_seconds += len(frame) / (4 * self._cfg.audio.sample_rate)
                        self.stream.push_audio(frame, at)
                results = await asyncio.gather(*(stream.finish() for stream in self.streams))
                self._result = self._outcome(results)
            except Exception:
                self._abandon()  # before the TaskGroup cancels the streams: the cause is ours
                raise
            for runner in runners:
                if not runner.done():
                    runner.cancel()

    def _end(self) -> None:
        """Emit call.ended with what `_result` holds, whatever ended the call."""
        if self.recordings and self._recording is None:
            self._recording = self._cancel_recordings()
        transcript, gaps, finals = self._result
        duration = time.monotonic() - self._answered_mono
        ended = event_data.call_ended(
            self._end_reason,
            duration,
            self._audio_seconds,
            self._utterances,
            transcript,
            gaps,
            finals,
            streams=self.roles if self.info.siprec is not None else None,
            remaps=self._remaps,
            recording=self._recording,
        )
        if self._pairer is not None and self._pairer.padded:
            self.log.info("stereo: %d frames went out with one side silent", self._pairer.padded)
        self._end_pause()
        self._report_audio()
        self._emit("call.ended", ended)
        self.log.info(
            "call ended (%s) after %.1f s, %d utterances, %d gaps",
            self._end_reason,
            duration,
            self._utterances,
            len(gaps),
        )

    # --- pause (PCI): bridge/pause.py decides, this carries it out ---------------------------------------

    def _init_pause(self, config: Config) -> None:
        settings = config.pause  # the call's own config (a route may give it its own pause section)
        self._pause = PauseState(settings.auto_resume_seconds)
        self.reason_max_length = settings.reason_max_length
        self._sequencer = DtmfSequencer(
            {settings.dtmf_pause: PauseAction.PAUSE, settings.dtmf_resume: PauseAction.RESUME},
            settings.dtmf_hold_seconds,
        )
        self._auto_timer: asyncio.TimerHandle | None = None
        self._digit_timer: asyncio.TimerHandle | None = None

    @property
    def ending(self) -> bool:
        """The call has ended (its finals may still be on their way): nothing can be paused any more."""
        return self._ended.is_set()

    def pause(self, by: str, reason: str | None = None) -> bool:
        """Pause the call now (see the module docstring); False if it was paused already or ended."""
        if self._ended.is_set():
            return False
        change = self._pause.pause(self._timeline_now(), time.monotonic(), by, reason)
        if change is None:
            return False
        self._emit("call.paused", event_data.paused(change.at, change.by, change.reason))
        self.log.info("paused by %s at %.2f s: the engine hears silence until resumed", by, change.at)
        due = self._pause.auto_resume_at
        if due is not None:
            delay = max(0.0, due - time.monotonic())
            self._auto_timer = asyncio.get_running_loop().call_later(delay, self.resume, "auto")
        return True

    def resume(self, by: str) -> bool:
        """Resume the call's audio; False if it was not paused or ended."""
        since = self._pause.since_at
        if self._ended.is_set():
            return False
        change = self._pause.resume(self._timeline_now(), time.monotonic(), by)
        if change is None:
            return False
        if self._auto_timer is not None:
            self._auto_timer.cancel()
            self._auto_timer = None
        duration = change.at - (since if since is not None else change.at)
        self._emit("call.resumed", event_data.resumed(change.at, change.by, duration))
        self.log.info("resumed by %s at %.2f s after %.1f s", by, change.at, duration)
        return True

    def _release_digits(self, digits: Sequence[tuple[str, float]]) -> None:
        for digit, at in digits:
            self._emit("dtmf", event_data.dtmf(digit, at))

    def _arm_digit_timer(self) -> None:
        if self._digit_timer is not None:
            self._digit_timer.cancel()
            self._digit_timer = None
        if self._sequencer.deadline is not None:
            delay = max(0.0, self._sequencer.deadline - time.monotonic())
            self._digit_timer = asyncio.get_running_loop().call_later(delay, self._digits_expired)

    def _digits_expired(self) -> None:
        self._digit_timer = None
        self._release_digits(self._sequencer.expire(time.monotonic()))
        self._arm_digit_timer()

    def _end_pause(self) -> None:
        """Before call.ended: held digits go out as dtmf events, the timers stop."""
        self._release_digits(self._sequencer.flush())
        for timer in (self._auto_timer, self._digit_timer):
            if timer is not None:
                timer.cancel()
        self._auto_timer = self._digit_timer = None

    def snapshot(self) -> dict[str, Any]:
        """What the control API tells of the call (`bridge/control/api.py`, GET /v1/calls)."""
        return {
            "call_id": self.call_id,
            "from": self.info.from_uri,
            "to": self.info.to_uri,
            "route": self.info.route,
            "worker": self._worker,
            "started_at": datetime.fromtimestamp(self._answered_wall, UTC).isoformat(),
            "paused": self._pause.paused,
            "paused_by": self._pause.by,
            "utterances": self._utterances,
            "engine": [stream.state for stream in self.streams],
            "ending": self._ended.is_set(),
        }

    # --- helpers ------------------------------------------------------------------------------------------

    def _report_audio(self) -> None:
        """Frames counted in batches: a metric update per frame per call costs more than it tells."""
        if self._unreported_frames:
            self._metrics.audio_in(self._unreported_frames, self._unreported_seconds)
            self._unreported_frames = 0
            self._unreported_seconds = 0.0

    def _timeline_now(self) -> float:
        if self._first_frame_mono is None:
            return 0.0
        return time.monotonic() - self._first_frame_mono

    async def _finish_recordings(self) -> RecordingData | None:
        """Finish the recording files in a thread, bounded; `call.ended`'s recording (None: off)."""
        if not self.recordings:
            return None
        self._closing = True  # the files belong to the thread now: a cancellation leaves them to it
        try:
            async with asyncio.timeout(RECORDING_CLOSE_SECONDS):
                results = [stream.result() for stream in self.streams]
                ended = await asyncio.to_thread(self._close_recordings, results)
        except TimeoutError:
            self.log.error("recording files not finished within %.0f s", RECORDING_CLOSE_SECONDS)
            ended = [(RecordingResult.WRITE_FAILED, None)]
        files = [file for _, file in ended if file is not None]
        failure = next((result.reason for result, _ in ended if result is not RecordingResult.WRITTEN), None)
        return event_data.recording(files, failure, self.delivery == "streams")

    def _cancel_recordings(self) -> RecordingData:
        """The call was torn down before its recordings were finished: remove the partial files (unless
        the thread finishing them has them: it counts them itself)."""
        for recording in self.recordings if not self._closing else ():
            recording.cancel()
            self._recording_metrics.recorded(RecordingResult.CANCELLED, 0)
        self.log.warning("call cancelled: its recording is not kept")
        return event_data.recording([], RecordingResult.CANCELLED.reason, self.delivery == "streams")

    def _close_recordings(
        self, results: Sequence[StreamResult]
    ) -> list[tuple[RecordingResult, RecordingFileData | None]]:
        """Blocking: end each recording at its stream's audio length; log and count each."""
        out: list[tuple[RecordingResult, RecordingFileData | None]] = []
        for index, (recording, result) in enumerate(zip(self.recordings, results, strict=True)):
            bps = recording.bytes_per_second
            status, written = recording.finish(round(result.audio_seconds * bps), result.scrub_audio_refused)
            self._recording_metrics.recorded(status, written.size if written else 0)
            if written is None:
                refused = status is RecordingResult.ENGINE_REFUSED  # the session logged it already
                level = logging.INFO if refused else logging.WARNING
                self.log.log(level, "no recording (%s): %s", status.reason, recording.error or "nothing kept")
                out.append((status, None))
                continue
            gaps = [(a / bps, (b - a) / bps) for a, b in recording.track.gaps]
            file = event_data.recording_file(
                str(written.path),
                written.data_bytes / bps,
                written.size,
                written.sha256,
                recording.file.channels,
                gaps,
            )
            if self.delivery == "streams":
                file["stream"] = index
            self.log.info("recording written: %s (%.1f s, %d gaps)", written.path, file["seconds"], len(gaps))
            out.append((status, file))
        return out

    def _abandon(self) -> None:
        """The pipeline failed: what no utterance confirmed and no gap covers yet is a `pipeline_error` gap
        (counted in the gap metrics like every other gap)."""
        for stream in self.streams:
            stream.abandon(GapCause.PIPELINE_ERROR)

    def _outcome(self, results: Sequence[StreamResult]) -> Outcome:
        """`call.ended`'s transcript, gaps and engine finals. The transcript is the call's complete one,
        every engine stream's final document merged onto the call's timeline (`vblaze.transcript`); with
        one engine stream per audio stream, {"streams": [{stream, role, channel, transcript}]}, and gaps
        and finals tagged with their audio stream."""
        if self.delivery != "streams":
            result = results[0]
            merged = merged_transcript.merge(result.streams, result.audio_seconds, result.gaps)
            finals = [event_data.engine_final(f) for f in merged_transcript.engine_finals(result.streams)]
            return merged, [event_data.gap(gap) for gap in result.gaps], finals
        transcripts: event_data.StreamTranscriptsData = {"streams": []}
        gaps: list[GapData] = []
        finals = []
        for index, result in enumerate(results):
            role = self.roles[index]
            merged = merged_transcript.merge(result.streams, result.audio_seconds, result.gaps)
            transcripts["streams"].append(event_data.stream_transcript(index, role, merged))
            gaps += [event_data.gap(gap, index) for gap in result.gaps]
            finals += [
                event_data.engine_final(f, index) for f in merged_transcript.engine_finals(result.streams)
            ]
        return transcripts, gaps, finals

    def _role_of(self, utt: Utterance, stream: int | None) -> StreamRole | None:
        if not self.roles:
            return None
        if stream is not None:
            return self.roles[stream] if stream < len(self.roles) else None
        if self.delivery == "mono":
            return self.roles[0]
        return next((r for r in self.roles if r.channel == utt.channel), None)

    def _on_utterance(self, utt: Utterance, stream: int | None = None) -> None:
        self._utterances += 1
        self._entry.utterances = self._utterances
        self._entry.last_end = max(self._entry.last_end, utt.end)
        latency = None
        if self._first_frame_mono is not None:
            latency = utt.received_at - (self._first_frame_mono + utt.end)
        siprec = self.info.siprec is not None
        role = self._role_of(utt, stream) if siprec else None
        data = event_data.utterance(utt, latency, siprec, role, stream)
        self._emit("utterance", data)

    def _emit(self, kind: EventKind, data: EventData) -> None:
        event = BridgeEvent(
            kind=kind, call_id=self.call_id, seq=self._seq, time=time.time(), data=event_data.as_data(data)
        )
        self._seq += 1
        self._sink.submit(event)
        if kind == "call.ended":
            self._ledger.forget(self.call_id)
        else:
            self._entry.next_seq = self._seq
            self._ledger.update(self._entry)

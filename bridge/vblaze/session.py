"""One call's engine session, without I/O: the rules for connecting, backing off, replaying and finishing.

Words: a *stream* is one WebSocket connection to V-Blaze (one `protocol.Session`); a call's audio goes
over one stream at a time, and over a new one when a stream is lost. `CallSession` is the machine above
the streams, one per call (per audio stream of a SIPREC call in ``streams`` delivery). It owns the call's
`AudioBuffer` and the current `protocol.Session`. The driver (`bridge.vblaze.client.EngineStream`) feeds
it events and carries out the actions it returns, in order; `CallSession` never touches a socket, the
clock or the event loop. Every time is an argument (``now``, in `time.monotonic()` seconds) and the
jitter of the backoff comes from the `random.Random` it is given, so every rule below is tested with
bytes and a fake clock (tests/bridge/vblaze/test_session.py).

Events (methods) and the actions they return:

- `start()` → `Connect`. `connected(now)`: the new stream is up; reports `Connected` (or `Reconnected`
  after a loss). `connect_failed(cause, error, now)` reports `ConnectFailed`, then either
  `SleepUntil(at)` (retry: exponential backoff from ``reconnect_initial_seconds`` to
  ``reconnect_max_seconds``, each delay drawn between half and all of its ceiling) or, for a 4xx
  (``rejected``), `GiveUp`: the rest of the call becomes a gap ``engine_rejected``. `timer_fired(now)`
  ends a backoff → `Connect`.
- `audio(pcm, arrival, paused)` buffers audio (`GapRecorded` if the buffer overflows, or for the
  ``paused`` span of a call paused for PCI, whose audio is stored as silence). `next_send()` gives the
  next `Send` of the current stream (audio chunks; after `hang_up`, the rest flushed and the end frames),
  or None until more audio or the hang-up comes; after each write the driver calls `frame_written`.
- `receive(message, now)`: an utterance becomes `Deliver` (unless a replayed stream repeats one already
  delivered: a duplicate, dropped); after the driver handed it on, it calls `delivered` or
  `delivery_failed`. A message that does not parse is counted and skipped. `receiving` turns False once
  the stream's final transcript came.
- `stream_ended(received, sent, now)`: both directions of the stream stopped; ``received`` / ``sent`` are
  the `LostCause` the reader / writer saw, if any. After the final (and the end of audio) → `Close`
  (``abort=False``: let the engine close). Else the stream was lost → `Close(abort=True)`,
  `ConnectionLost`, the replay gaps, `SleepUntil`; the next stream replays from the end of the last
  utterance delivered.
- `hang_up(now)` → `ArmDeadline(now + final_timeout_seconds)`: the call ended; everything left is bounded
  by that deadline. `deadline_passed(now)` gives up: the result says ``final_timeout`` (a stream up) or
  ``engine_unavailable``, and audio no utterance confirmed becomes a gap unless the engine had already
  sent its separator. `cancelled()`, `failed()` and `abandon(cause)` end the call's engine side early.
- `result()` is the outcome so far (a `StreamResult`).

Scrubbed audio (``scrub_audio``: the call asks for ``scrubaudio``): each binary message of a stream is
its scrubbed audio (`protocol.ScrubbedAudio`); `receive` returns one `RecordAudio(position, data)` per
piece of it, ``position`` a byte offset on the call's timeline (a replayed stream repeats audio the call
already had: `bridge.recording` skips it). An engine that answers the upgrade with 400 naming
``scrubaudio`` (a V-Blaze without that support, `refuses_scrub_audio`) is asked again at once without it
(`ScrubAudioRefused`, then `Connect`; logged once per call); ``scrub_audio_refused`` says so in the result.

States (`State`): ``CONNECTING`` → ``STREAMING`` → (hang-up) ``FINISHING`` → ``DONE``; a failed attempt
or a lost stream goes to ``BACKING_OFF``, whose timer goes back to ``CONNECTING``; a 4xx at the upgrade
goes to ``REJECTED``. A hang-up while connecting or backing off keeps the state (`hung_up` says it); the
next stream then starts in ``FINISHING``. ``DONE`` and ``REJECTED`` are final. An event the state does
not allow raises `InvalidState`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import deque
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from bridge.config import AudioConfig, EngineConfig
from bridge.errors import EngineError, EngineProtocolError, EngineRejected
from bridge.vblaze.buffer import AudioBuffer, Chunk, GapCause
from bridge.vblaze.protocol import (
    SAMPLE_WIDTH,
    Final,
    Gap,
    InvalidState,
    ScrubbedAudio,
    Separator,
    Session,
    Utterance,
)
from bridge.vblaze.protocol import State as StreamState
from bridge.vblaze.transcript import DUPLICATE_TOLERANCE_SECONDS, Segment, StreamRecord

logger = logging.getLogger(__name__)


class ConnectCause(StrEnum):
    """Why a connection attempt failed (a metrics label value)."""

    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"  # 5xx or 429 at the upgrade
    REJECTED = "rejected"  # other 4xx: not retried
    ERROR = "error"  # reset, bad handshake, DNS...


class LostCause(StrEnum):
    """Why an established stream ended early (a metrics label value)."""

    CLOSED = "closed"  # closed or reset before the final transcript
    SEND_TIMEOUT = "send_timeout"  # a write did not complete in send_timeout_seconds
    ENDED_EARLY = "ended_early"  # the engine sent its final before the audio ended


class State(IntEnum):
    """Where a call's engine session is (see the module docstring)."""

    CONNECTING = 1  # an attempt to open a stream is under way
    STREAMING = 2  # a stream is up and the call goes on
    BACKING_OFF = 3  # waiting before the next attempt
    FINISHING = 4  # a stream is up and the call hung up: the rest of the audio, the end, the final
    DONE = 5  # the final arrived after the end of the audio, or the session gave up
    REJECTED = 6  # the engine refused the call (4xx at the upgrade); nothing more goes to it


# -- actions: what the driver does, in the order given ----------------------------------------------


@dataclass(frozen=True)
class Connect:
    """Open a new stream now; then call `connected` or `connect_failed`."""


@dataclass(frozen=True)
class SleepUntil:
    """Wait until ``at`` (monotonic seconds), then call `timer_fired`."""

    at: float


@dataclass(frozen=True)
class ArmDeadline:
    """Everything must be over by ``at``; once it passes, call `deadline_passed`."""

    at: float


@dataclass(frozen=True)
class GiveUp:
    """Nothing more goes to the engine (``reason``): open no stream; wait for the hang-up."""

    reason: GapCause


@dataclass(frozen=True)
class Send:
    """Write ``frame`` on the current stream, then call `frame_written`. ``chunk`` is the audio it
    carries (None for the frames that end the audio; ``last`` marks the very last one)."""

    frame: bytes
    chunk: Chunk | None
    last: bool = False


@dataclass(frozen=True)
class Deliver:
    """Hand ``utterance`` to the call, then call `delivered` or `delivery_failed`. ``latency`` is
    arrival of the audio at its end → utterance received (None if that arrival is forgotten)."""

    utterance: Utterance
    latency: float | None


@dataclass(frozen=True)
class RecordAudio:
    """Hand scrubbed audio to the call's recording: ``data`` lies at byte ``position`` of the call."""

    position: int
    data: bytes


@dataclass(frozen=True)
class ScrubAudioRefused:
    """Report: the engine refused scrubaudio; the next attempt goes without it."""


@dataclass(frozen=True)
class Close:
    """End the current stream: ``abort`` at once (lost), or wait for the engine to close (after the final)."""

    abort: bool


@dataclass(frozen=True)
class Connected:
    """Report: a stream was established (the first of the call, or after failed attempts only)."""


@dataclass(frozen=True)
class Reconnected:
    """Report: a stream was established after an earlier one was lost."""


@dataclass(frozen=True)
class ConnectFailed:
    """Report: a connection attempt failed."""

    cause: ConnectCause


@dataclass(frozen=True)
class ConnectionLost:
    """Report: an established stream ended early."""

    cause: LostCause


@dataclass(frozen=True)
class FrameSent:
    """Report: a chunk of fresh audio written: its frame size and arrival → write done."""

    nbytes: int
    latency: float


@dataclass(frozen=True)
class UtteranceDelivered:
    """Report: an utterance was delivered (see `Deliver.latency`)."""

    latency: float


@dataclass(frozen=True)
class GapRecorded:
    """Report: audio that will never be transcribed."""

    gap: Gap


Report = (
    Connected | Reconnected | ConnectFailed | ConnectionLost | FrameSent | UtteranceDelivered | GapRecorded
)
Step = Connect | SleepUntil | GiveUp  # what the driver waits on before it feeds the session again
Action = Step | Close | ArmDeadline | Deliver | RecordAudio | ScrubAudioRefused | Report


@dataclass
class StreamStats:
    """Counters of one call's engine session (all its streams)."""

    connects: int = 0  # streams established
    failures: int = 0  # connection attempts that failed
    losses: int = 0  # established streams that ended early
    reconnects: int = 0  # streams established after a loss
    utterances: int = 0  # utterances delivered (handed to on_utterance, which took them)
    delivery_failures: int = 0  # utterances received whose on_utterance raised (logged, not delivered)
    duplicates: int = 0  # utterances of a replayed stream dropped as already delivered
    protocol_errors: int = 0  # messages that could not be parsed (skipped)
    frames_sent: int = 0
    bytes_sent: int = 0  # audio bytes, replays included
    bytes_replayed: int = 0


@dataclass(frozen=True)
class StreamResult:
    """What a call's engine session produced.

    ``final`` is the engine's complete transcript (JSON object, or text), None if it never came; its
    times are those of the stream that sent it, which starts at ``final_offset`` seconds on the call's
    timeline (0 unless the stream was re-established). ``reason`` is None when the final arrived, else
    ``final_timeout``, ``engine_unavailable``, ``engine_rejected``, ``cancelled`` or ``error``.
    ``utterances`` are all utterances delivered, on the call's timeline. ``streams`` has one record per
    stream (each with its own final document, if any, and its offset): what `transcript.merge` turns
    into the call's complete transcript.
    """

    final: dict[str, Any] | str | None
    reason: str | None
    final_offset: float
    utterances: tuple[Utterance, ...]
    gaps: tuple[Gap, ...]
    stats: StreamStats
    audio_seconds: float
    streams: tuple[StreamRecord, ...] = ()
    scrub_audio_refused: bool = False  # the engine refused scrubaudio: no scrubbed audio came


@dataclass
class _Record:
    """What one stream did, while it is open (frozen into a `StreamRecord` for results)."""

    index: int
    segments: list[list[int]] = dataclasses.field(default_factory=list)  # [stream byte, call byte, length]
    stream_bytes: int = 0
    confirmed: int | None = None  # call byte up to which this stream's audio is confirmed
    final: dict[str, Any] | str | None = None
    live: list[Utterance] = dataclasses.field(default_factory=list)
    ended: str | None = "open"

    def sent(self, position: int, length: int) -> None:
        last = self.segments[-1] if self.segments else None
        if last is not None and last[1] + last[2] == position:
            last[2] += length
        else:
            self.segments.append([self.stream_bytes, position, length])
        self.stream_bytes += length

    def frozen(self, bytes_per_second: int, acked: int, reason: str | None) -> StreamRecord:
        """The record as it stands; a stream still open ends with the session's `reason` (or "open")."""
        confirmed = self.confirmed if self.confirmed is not None else acked
        covered = tuple(
            (call / bytes_per_second, min(call + length, confirmed) / bytes_per_second)
            for _, call, length in self.segments
            if call < confirmed
        )
        return StreamRecord(
            index=self.index,
            bytes_per_second=bytes_per_second,
            segments=tuple(Segment(*segment) for segment in self.segments),
            covered=covered,
            final=self.final,
            live=tuple(self.live),
            ended=(reason or "open") if self.ended == "open" else self.ended,
        )


def backoff_ceiling(engine: EngineConfig, attempt: int) -> float:
    """The longest wait before retry number ``attempt`` (0-based): doubling from the initial, capped."""
    doubled: float = engine.reconnect_initial_seconds * 2 ** min(attempt, 32)
    return min(engine.reconnect_max_seconds, doubled)


def refuses_scrub_audio(error: EngineError) -> bool:
    """A 400 at the upgrade that names scrubaudio: the engine does not support scrubbed audio."""
    return isinstance(error, EngineRejected) and error.status == 400 and "scrubaudio" in error.body.lower()


def lost_cause(received: LostCause | None, sent: LostCause | None, end_sent: bool) -> LostCause | None:
    """Why a stream ended early, from what the reader and the writer saw (None: it did not)."""
    lost = received
    if sent is not None and (lost is None or sent is LostCause.SEND_TIMEOUT):
        lost = sent  # the writer saw it first, or knows better why
    if lost is None and not end_sent:
        lost = LostCause.ENDED_EARLY
    return lost


class CallSession:
    """One call's engine session. See the module docstring for the contract."""

    def __init__(
        self,
        engine: EngineConfig,
        audio: AudioConfig,
        *,
        rng: random.Random,
        channels: int = 1,
        log: logging.LoggerAdapter[Any] | None = None,
        scrub_audio: bool = False,
    ) -> None:
        self._engine = engine
        self.scrub_audio = scrub_audio  # the next stream asks for scrubbed audio
        self.scrub_audio_refused = False
        self._audio = audio
        self._rng = rng
        self.channels = channels
        self.log = log if log is not None else logging.LoggerAdapter(logger, {})
        bps = audio.sample_rate * SAMPLE_WIDTH * channels
        self.buffer = AudioBuffer(
            bytes_per_second=bps,
            chunk_bytes=bps * audio.chunk_ms // 1000,
            limit_bytes=int(engine.buffer_seconds * bps),
            replay_bytes=int(engine.replay_seconds * bps),
            sample_width=SAMPLE_WIDTH * channels,
        )
        self.state = State.CONNECTING
        self.hung_up = False  # hang_up() was called
        self.stats = StreamStats()
        self.utterances: list[Utterance] = []
        self.stream: Session | None = None  # the current (or last) stream's protocol session
        self._end_frames: deque[bytes] = deque()
        self._records: list[_Record] = []
        self._streams = 0
        self._lost_before = False
        self._attempt = 0  # failed attempts since the engine last answered: the backoff's exponent
        self._connected_at = 0.0
        self._delivered_end = float("-inf")
        self._final: Final | None = None
        self._final_offset = 0.0
        self._complete = False  # the final arrived after the end of the audio
        self._reason: str | None = None
        self._overflow_logged = False
        self._binary_warned = 0  # the stream (count) whose refused binary message was last logged

    # -- what the driver asks ----------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """The final transcript arrived after the end of the audio."""
        return self._complete

    @property
    def receiving(self) -> bool:
        """The current stream may still send messages (its final has not come)."""
        return self.stream is not None and self.stream.state is not StreamState.DONE

    @property
    def audio_ended(self) -> bool:
        """Every frame that ends the audio of the current stream was handed out."""
        return self.stream is not None and self.stream.end_sent and not self._end_frames

    @property
    def gaps(self) -> list[Gap]:
        return self.buffer.gaps

    def result(self) -> StreamResult:
        """The outcome so far."""
        bps = self.buffer.bytes_per_second
        return StreamResult(
            final=self._final.raw if self._final is not None else None,
            reason=self._reason,
            final_offset=self._final_offset,
            utterances=tuple(self.utterances),
            gaps=tuple(self.buffer.gaps),
            stats=dataclasses.replace(self.stats),
            audio_seconds=self.buffer.seconds(self.buffer.pushed),
            streams=tuple(r.frozen(bps, self.buffer.acked, self._reason) for r in self._records),
            scrub_audio_refused=self.scrub_audio_refused,
        )

    # -- connecting --------------------------------------------------------------------------------
    def start(self) -> list[Action]:
        self._expect(State.CONNECTING)
        return [Connect()]

    def connect_failed(self, cause: ConnectCause, error: EngineError, now: float) -> list[Action]:
        """An attempt failed: back off and retry, or (4xx) give up on the engine for this call."""
        self._expect(State.CONNECTING)
        self.stats.failures += 1
        actions: list[Action] = [ConnectFailed(cause)]
        if cause is ConnectCause.REJECTED and self.scrub_audio and refuses_scrub_audio(error):
            self.scrub_audio = False
            self.scrub_audio_refused = True
            self.log.warning("%s; going on without scrubbed audio (no recording for this call)", error)
            return [*actions, ScrubAudioRefused(), Connect()]
        if cause is ConnectCause.REJECTED:
            self.state = State.REJECTED
            self._reason = GapCause.ENGINE_REJECTED
            self.log.error("%s; not retrying, the rest of the call goes untranscribed", error)
            actions += self._gaps(self.buffer.abandon(GapCause.ENGINE_REJECTED))
            return [*actions, GiveUp(GapCause.ENGINE_REJECTED)]
        attempt = self._attempt + 1
        # Attempts 1, 2, 4, 8... at WARNING: a long outage does not flood the log.
        self.log.log(
            logging.WARNING if attempt & (attempt - 1) == 0 else logging.DEBUG,
            "engine unreachable (%s, attempt %d): %s; %.1f s of audio waiting",
            cause,
            attempt,
            error,
            self.buffer.seconds(self.buffer.pending_bytes),
        )
        return [*actions, self._back_off(now)]

    def timer_fired(self, now: float) -> list[Action]:
        """The backoff is over: try again."""
        self._expect(State.BACKING_OFF)
        self.state = State.CONNECTING
        return [Connect()]

    def _back_off(self, now: float) -> SleepUntil:
        """Exponential, capped, with jitter (half to all of the ceiling)."""
        ceiling = backoff_ceiling(self._engine, self._attempt)
        self._attempt += 1
        self.state = State.BACKING_OFF
        return SleepUntil(now + self._rng.uniform(ceiling / 2, ceiling))

    def connected(self, now: float) -> list[Action]:
        """A new stream is up: it starts with the audio waiting (a replay after a loss)."""
        self._expect(State.CONNECTING)
        self.state = State.FINISHING if self.hung_up else State.STREAMING
        self.stats.connects += 1
        self._streams += 1
        self._overflow_logged = False
        self._connected_at = now
        self.stream = Session(self._audio, self._engine.datahdr, self.channels, self.scrub_audio)
        self._end_frames.clear()
        self._records.append(_Record(len(self._records)))
        waiting = self.buffer.seconds(self.buffer.pending_bytes)
        if self._lost_before:
            self.stats.reconnects += 1
            self.log.info("engine stream re-established; sending %.1f s of audio first", waiting)
            return [Reconnected()]
        self.log.info("engine stream established (%.1f s of audio waiting)", waiting)
        return [Connected()]

    # -- audio ------------------------------------------------------------------------------------
    def audio(self, pcm: bytes, arrival: float, paused: bool = False) -> list[Action]:
        """A frame of the call's audio; ``arrival`` is when it reached the bridge. ``paused``: the call
        is paused (`bridge.pause`), only silence of the frame's length is kept (`AudioBuffer.push`)."""
        if self.hung_up:
            raise InvalidState("audio pushed after finish()")
        return self._gaps(self.buffer.push(pcm, arrival, paused))

    def next_send(self) -> Send | None:
        """The next frame to write on the current stream, or None (wait for audio or the hang-up)."""
        stream = self.stream
        if stream is None or self.state not in (State.STREAMING, State.FINISHING):
            return None
        if self._end_frames:
            frame = self._end_frames.popleft()
            return Send(frame, None, last=not self._end_frames)
        if stream.state is not StreamState.OPEN:
            return None  # the end went out, or the engine sent its final early (the stream is over)
        chunk = self.buffer.next_chunk(flush=self.hung_up)
        if chunk is None:
            if self.hung_up and self.buffer.pending_bytes == 0:
                self._end_frames.extend(stream.send_end())
                return self.next_send()
            return None
        frame = stream.send_audio(chunk.data, chunk.position)
        self._records[-1].sent(chunk.position, len(chunk.data))
        return Send(frame, chunk)

    def frame_written(self, send: Send, now: float) -> list[Action]:
        """``send`` went out at ``now``."""
        chunk = send.chunk
        if chunk is None:
            if send.last:
                self.log.debug("end of audio sent")
            return []
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(chunk.data)
        if chunk.arrival is None:
            self.stats.bytes_replayed += len(chunk.data)
            return []
        return [FrameSent(len(send.frame), now - chunk.arrival)]

    def hang_up(self, now: float) -> list[Action]:
        """The call ended: flush, end the audio, collect the final, all by the deadline returned."""
        self.hung_up = True
        if self.state is State.STREAMING:
            self.state = State.FINISHING
        return [*self._gaps(self.buffer.close_pause()), ArmDeadline(now + self._engine.final_timeout_seconds)]

    # -- what the engine says ---------------------------------------------------------------------
    def receive(self, message: str | bytes, now: float) -> list[Action]:
        """One message of the current stream, received at ``now``."""
        stream = self.stream
        if stream is None or not self.receiving:
            raise InvalidState("no stream is receiving")
        try:
            if isinstance(message, str):
                event = stream.receive_text(message, now)
            else:
                return self._scrubbed(stream, stream.receive_binary(message))
        except EngineProtocolError as exc:
            self.stats.protocol_errors += 1
            # Binary messages come several a second: one warning per stream, the rest at DEBUG.
            repeated = isinstance(message, bytes) and self._binary_warned == self._streams
            if isinstance(message, bytes):
                self._binary_warned = self._streams
            level = logging.DEBUG if repeated else logging.WARNING
            self.log.log(level, "skipping a message from the engine: %s", exc)
            return []
        self._attempt = 0  # the engine answers: the next failure starts the backoff afresh
        record = self._records[-1]
        if isinstance(event, Utterance):
            return self._utterance(event, stream)
        if isinstance(event, Separator):
            if stream.sent_until is not None and stream.end_sent:
                self.buffer.ack(stream.sent_until)
                record.confirmed = stream.sent_until
            return []
        assert isinstance(event, Final)
        record.final = event.raw
        if stream.end_sent:
            self._final = event
            self._final_offset = stream.call_start or 0.0
            self._complete = True
            self._reason = None
            self.state = State.DONE
            record.ended = None
            record.confirmed = stream.sent_until or 0
            self.log.debug("final transcript received")
        return []

    def _scrubbed(self, stream: Session, piece: ScrubbedAudio | None) -> list[Action]:
        """Scrubbed audio of the stream, placed on the call's timeline."""
        if piece is None:
            return []
        return [
            RecordAudio(call, piece.data[offset : offset + length])
            for call, offset, length in stream.call_segments(piece.position, len(piece.data))
        ]

    def _utterance(self, utt: Utterance, stream: Session) -> list[Action]:
        if self._streams > 1 and utt.end <= self._delivered_end + DUPLICATE_TOLERANCE_SECONDS:
            self.stats.duplicates += 1
            self.log.debug("dropping replayed utterance %.2f-%.2f s", utt.start, utt.end)
            return []
        self._delivered_end = max(self._delivered_end, utt.end)
        # It confirms no more than the stream carried (before any audio of its own: nothing new).
        carried = stream.sent_until if stream.sent_until is not None else self.buffer.acked
        position = min(self.buffer.position(utt.end), carried)
        arrival = self.buffer.arrival_of(position)
        # The engine transcribed this audio whatever becomes of the utterance here: it is not replayed
        # and it belongs to the call's transcript.
        self.buffer.ack(position)
        self._records[-1].live.append(utt)
        return [Deliver(utt, None if arrival is None else utt.received_at - arrival)]

    def delivered(self, deliver: Deliver) -> list[Action]:
        """The call took the utterance."""
        self.stats.utterances += 1
        self.utterances.append(deliver.utterance)
        return [] if deliver.latency is None else [UtteranceDelivered(deliver.latency)]

    def delivery_failed(self, deliver: Deliver) -> int:
        """The call failed to take the utterance (the driver logs it): the failures so far."""
        self.stats.delivery_failures += 1
        return self.stats.delivery_failures

    # -- the end of a stream ----------------------------------------------------------------------
    def stream_ended(self, received: LostCause | None, sent: LostCause | None, now: float) -> list[Action]:
        """The current stream stopped both ways: done (final after the end of audio) or lost."""
        stream = self.stream
        if stream is None or self.state not in (State.STREAMING, State.FINISHING, State.DONE):
            raise InvalidState(f"no stream to end in state {self.state.name}")
        cause = lost_cause(received, sent, stream.end_sent)
        if cause is None:
            return [Close(abort=False)]
        return [Close(abort=True), *self._lost(cause, now)]

    def _lost(self, cause: LostCause, now: float) -> list[Action]:
        self.stats.losses += 1
        self._lost_before = True
        if now - self._connected_at >= self._engine.reconnect_max_seconds:
            self._attempt = 0
        actions: list[Action] = [ConnectionLost(cause)]
        record = self._records[-1]
        if record.ended == "open":
            record.ended = cause
            record.confirmed = self.buffer.acked
        gaps = self.buffer.rewind()
        actions += self._gaps(gaps)
        self.log.warning(
            "engine stream lost (%s) %.1f s into the call; replaying from %.1f s%s",
            cause,
            self.buffer.seconds(self.buffer.pushed),
            self.buffer.seconds(self.buffer.acked),
            f", {sum(g.duration for g in gaps):.1f} s could not be replayed" if gaps else "",
        )
        self._end_frames.clear()
        if self._complete:
            self.state = State.DONE
            return actions
        return [*actions, self._back_off(now)]

    # -- endings ----------------------------------------------------------------------------------
    def deadline_passed(self, now: float) -> list[Action]:
        """The hang-up's deadline passed: say why there is no final, turn unconfirmed audio into a gap."""
        if self._complete:
            return []
        if self.state is not State.REJECTED:
            self.state = State.DONE
        stream = self.stream
        connected = stream is not None and self._streams > 0 and not self._lost_streak()
        cause = GapCause.FINAL_TIMEOUT if connected else GapCause.ENGINE_UNAVAILABLE
        if self._reason is None:
            self._reason = cause
        if stream is not None and stream.separator_seen and stream.end_sent:
            self.log.warning("no final transcript within %.1f s", self._engine.final_timeout_seconds)
            return []
        actions = self._gaps(self.buffer.abandon(cause))
        self.log.warning(
            "no final transcript within %.1f s (%s); %.1f s of audio unconfirmed",
            self._engine.final_timeout_seconds,
            cause,
            sum(a.gap.duration for a in actions if isinstance(a, GapRecorded)),
        )
        return actions

    def cancelled(self) -> list[Action]:
        """The driver was cancelled (the call torn down): the rest is a gap ``cancelled``."""
        if self._complete or self._reason is not None:
            return []
        self.state = State.DONE
        self._reason = GapCause.CANCELLED
        return self._gaps(self.buffer.abandon(GapCause.CANCELLED))

    def failed(self) -> list[Action]:
        """The driver failed on an error of ours (it logs it): the rest is a gap ``error``."""
        if self._complete:
            return []
        self.state = State.DONE
        self._reason = GapCause.ERROR
        return self._gaps(self.buffer.abandon(GapCause.ERROR))

    def abandon(self, cause: GapCause) -> list[Action]:
        """The call's pipeline failed: what no utterance confirmed and no gap covers becomes a gap."""
        if self._complete:
            return []
        if self._reason is None:
            self._reason = GapCause.ERROR
        return self._gaps(self.buffer.abandon(cause))

    def _lost_streak(self) -> bool:
        """True while the latest stream is gone and no new one is up."""
        return self._lost_before and self.stats.connects <= self.stats.losses

    def _gaps(self, gaps: list[Gap]) -> list[Action]:
        """Report new gaps (and log them, the buffer's overflow once per stream)."""
        for gap in gaps:
            if gap.cause == GapCause.BUFFER_OVERFLOW:
                if not self._overflow_logged:
                    self._overflow_logged = True
                    self.log.warning("audio buffer full: dropping the oldest audio from %.1f s", gap.start)
            elif gap.cause == GapCause.PAUSED:
                self.log.info(
                    "paused %.1f s from %.1f s: silence went to the engine", gap.duration, gap.start
                )
            elif gap.cause != self.buffer.abandoned:
                self.log.warning("gap of %.1f s at %.1f s (%s)", gap.duration, gap.start, gap.cause)
        return [GapRecorded(gap) for gap in gaps]

    def _expect(self, *states: State) -> None:
        if self.state not in states:
            raise InvalidState(f"not allowed in state {self.state.name}")

"""The asyncio driver of one call's V-Blaze engine session: sockets, tasks and waits, no rules.

Words: a *stream* is one WebSocket connection to V-Blaze; a call's audio goes over one stream at a time.
The rules (when to connect, back off, replay, drop a duplicate, give up, what the result says) are in
`bridge.vblaze.session.CallSession`, without I/O; the protocol of one stream is `bridge.vblaze.protocol`;
the call's audio is `bridge.vblaze.buffer`. `EngineStream` here only drives them over ``websockets``, in
the manner of websockets' own asyncio connection: it feeds the session what happens (connected, failed,
a message, the socket ended, a timer, audio, the hang-up), writes what it says, reports what it says to
the `EngineObserver`, and arms the deadline only when told. One instance per call:

- `run()` is the long-running task. It connects (``requestid`` = the call id, or ``request_id`` when
  given: a SIPREC call in ``streams`` delivery sends ``<call-id>;stream=<n>``), sends the buffered audio
  then live audio in chunks of ``audio.chunk_ms``, and hands each utterance to ``on_utterance`` on the
  loop as soon as it arrives. It returns once `finish()` is complete; cancelling it aborts the socket.
- `push_audio(pcm, arrival)` never blocks: 16-bit little-endian PCM at ``audio.sample_rate`` (mono, or
  interleaved stereo when ``channels=2``; see `protocol`) goes into the buffer; ``arrival`` is the
  `time.monotonic()` at which the frame reached the bridge. Pushing after `finish()` raises `InvalidState`.
- Redaction (``redaction``, a `RedactionConfig`): its tags go with every stream; with ``redaction.audio``
  each piece of scrubbed audio goes to ``on_scrubbed_audio(position, data)`` (call-timeline bytes), on
  the loop, as it arrives. An engine refusing scrubaudio is asked again without it (the session decides).
- `finish()` (at hangup) flushes the audio, sends the empty frame, collects the remaining utterances, the
  separator and the final transcript, lets the engine close the socket, and returns a `StreamResult`.
  Everything it does, reconnects included, is bounded by ``engine.final_timeout_seconds``.

Failures (decided by the session; see its docstring):

- Connect refused, timed out, 5xx/429 at the upgrade: logged (attempts 1, 2, 4, 8... at WARNING, the
  others at DEBUG), counted, retried with exponential backoff
  and jitter (``reconnect_initial_seconds`` → ``reconnect_max_seconds``) for as long as the call lasts,
  the audio waiting in the buffer (``buffer_seconds``; beyond it the oldest goes, as a ``buffer_overflow``
  gap). Once connected the backlog is sent as fast as the socket takes it, then live audio follows.
- Socket lost mid-call (closed or reset before the final, a write stuck for ``send_timeout_seconds``):
  reconnect as the same call and replay from the end of the last utterance received (kept for
  ``replay_seconds``; what is older becomes a ``replay_exceeded`` gap). The new stream's times are mapped
  onto the call's timeline; an utterance of a new stream ending no later than the last one delivered is a
  duplicate and dropped.
- Any other 4xx at the upgrade (`EngineRejected`): not retried; the rest of the call is a gap
  ``engine_rejected``.
- `finish()` running out of time: the result says ``final_timeout`` (connected) or
  ``engine_unavailable`` (not connected); audio not covered by a delivered utterance becomes a gap with
  that cause unless the engine had already sent its separator.

Waits: connect, every write and the close are bounded by config. The read while the call lasts has no
bound of its own: the call bounds it, a dead engine shows up as a stuck write, and after `finish()` the
final timeout bounds it. Pings are off (a V-Blaze that stops reading under load must not be taken for a
dead one); compression is off (audio does not compress).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bridge.config import AudioConfig, EngineConfig, RedactionConfig
from bridge.errors import EngineClosed, EngineError, EngineRejected, EngineUnavailable
from bridge.vblaze.buffer import GapCause
from bridge.vblaze.protocol import Gap, InvalidState, Utterance, request_headers
from bridge.vblaze.session import (
    Action,
    ArmDeadline,
    CallSession,
    Close,
    Connect,
    ConnectCause,
    Connected,
    ConnectFailed,
    ConnectionLost,
    Deliver,
    FrameSent,
    GapRecorded,
    GiveUp,
    LostCause,
    Reconnected,
    RecordAudio,
    Report,
    ScrubAudioRefused,
    SleepUntil,
    Step,
    StreamResult,
    StreamStats,
    UtteranceDelivered,
)

__all__ = [
    "EngineObserver",
    "EngineStream",
    "StreamResult",
    "StreamStats",
    "classify_connect_error",
]

logger = logging.getLogger(__name__)
_logger = logger  # EngineStream's `logger` argument shadows the name

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a long call's final transcript with word timings is large
USER_AGENT = "vblaze-bridge"
FINISH_GRACE_SECONDS = 1.0  # finish() waits this much beyond final_timeout for run() to wrap up


class EngineObserver(Protocol):
    """What the engine session reports for metrics. Called on the loop; must not block nor raise."""

    def connected(self) -> None:
        """A stream was established (the first of the call, or after failed attempts only)."""

    def reconnected(self) -> None:
        """A stream was established after an earlier one was lost."""

    def connect_failed(self, cause: ConnectCause) -> None:
        """A connection attempt failed: refused, timeout, unavailable, rejected or error."""

    def connection_lost(self, cause: LostCause) -> None:
        """An established stream ended early: closed, send_timeout or ended_early."""

    def frame_sent(self, nbytes: int, latency_seconds: float) -> None:
        """A chunk written: its frame size, and the latency from the arrival of its oldest audio not sent
        before to the write's completion (replayed chunks are not reported)."""

    def utterance(self, latency_seconds: float) -> None:
        """An utterance delivered: arrival of the audio at its end → utterance received."""

    def gap(self, seconds: float, cause: str) -> None:
        """Audio that will never be transcribed, and why (a `GapCause`)."""


class _NullObserver:
    def connected(self) -> None:
        pass

    def reconnected(self) -> None:
        pass

    def connect_failed(self, cause: str) -> None:
        pass

    def connection_lost(self, cause: str) -> None:
        pass

    def frame_sent(self, nbytes: int, latency_seconds: float) -> None:
        pass

    def utterance(self, latency_seconds: float) -> None:
        pass

    def gap(self, seconds: float, cause: str) -> None:
        pass


def classify_connect_error(exc: BaseException) -> tuple[EngineError, ConnectCause]:
    """The bridge error and metrics cause for a failed connection attempt."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
        if 400 <= status < 500 and status not in (408, 429):
            return EngineRejected(status, body), ConnectCause.REJECTED
        return (
            EngineUnavailable(f"HTTP {status} at the upgrade: {body.strip()[:200]}"),
            ConnectCause.UNAVAILABLE,
        )
    if isinstance(exc, ConnectionRefusedError):
        return EngineUnavailable(f"connection refused: {exc}"), ConnectCause.REFUSED
    if isinstance(exc, TimeoutError):
        return EngineUnavailable("connection timed out"), ConnectCause.TIMEOUT
    return EngineUnavailable(f"{type(exc).__name__}: {exc}"), ConnectCause.ERROR


_OBSERVER_METHODS: dict[type[Report], str] = {
    Connected: "connected",
    Reconnected: "reconnected",
    ConnectFailed: "connect_failed",
    ConnectionLost: "connection_lost",
    FrameSent: "frame_sent",
    UtteranceDelivered: "utterance",
    GapRecorded: "gap",
}


def _lost_cause(exc: EngineClosed) -> LostCause:
    return LostCause(exc.args[0]) if exc.args else LostCause.CLOSED


class EngineStream:
    """The asyncio driver of one call's `CallSession`: its streams (WebSocket connections) to V-Blaze,
    one after the other. The public name predates the split: an `EngineStream` is the call's whole
    engine side, not one stream. See the module docstring for the contract."""

    def __init__(
        self,
        engine: EngineConfig,
        audio: AudioConfig,
        call_id: str,
        on_utterance: Callable[[Utterance], None],
        observer: EngineObserver | None = None,
        logger: logging.LoggerAdapter[Any] | None = None,
        *,
        rng: random.Random | None = None,
        channels: int = 1,
        request_id: str | None = None,
        redaction: RedactionConfig | None = None,
        on_scrubbed_audio: Callable[[int, bytes], None] | None = None,
    ) -> None:
        self._engine = engine
        self._audio = audio
        self._redaction = redaction
        self._request_id = request_id or call_id
        self._on_scrubbed_audio = on_scrubbed_audio
        self.call_id = call_id
        self._on_utterance = on_utterance
        self._observer: EngineObserver = observer if observer is not None else _NullObserver()
        extra = dict(logger.extra) if logger is not None and logger.extra else {"call_id": call_id}
        self.log = logging.LoggerAdapter(_logger, extra)
        self.channels = channels
        self._headers = request_headers(engine, audio, self._request_id, channels, redaction)
        scrub = redaction is not None and redaction.audio
        self._call = CallSession(
            engine, audio, rng=rng or random.Random(), channels=channels, log=self.log, scrub_audio=scrub
        )
        self._wake = asyncio.Event()  # audio pushed, or finish() called
        self._finish_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._finish_at: float | None = None  # loop time by which finish() must be complete
        self._deadline: asyncio.Timeout | None = None

    # -- what the call pipeline uses -----------------------------------------------------------------
    @property
    def stats(self) -> StreamStats:
        return self._call.stats

    @property
    def utterances(self) -> list[Utterance]:
        return self._call.utterances

    @property
    def gaps(self) -> list[Gap]:
        return self._call.gaps

    @property
    def state(self) -> str:
        """The engine session's state, lower case (`bridge.vblaze.session.State`)."""
        return self._call.state.name.lower()

    def push_audio(self, pcm: bytes, arrival: float, paused: bool = False) -> None:
        """Queue a frame of the call's audio (never blocks); `paused`: silence goes out in its place."""
        self._effects(self._call.audio(pcm, arrival, paused))
        self._wake.set()

    async def finish(self) -> StreamResult:
        """End the call's audio and collect what the engine still owes, bounded by final_timeout."""
        if not self._finish_requested.is_set():
            self._effects(self._call.hang_up(time.monotonic()))
            self._finish_requested.set()
            self._wake.set()
        try:
            async with asyncio.timeout(self._engine.final_timeout_seconds + FINISH_GRACE_SECONDS):
                await self._done.wait()
        except TimeoutError:
            self.log.error("engine stream did not wrap up in time (is run() running?)")
            self._effects(self._call.deadline_passed(time.monotonic()))
        return self.result()

    def result(self) -> StreamResult:
        """The outcome so far (what `finish` returns)."""
        return self._call.result()

    def abandon(self, cause: GapCause) -> list[Gap]:
        """Nothing more of this call will be transcribed (the call pipeline failed): the audio no
        utterance confirmed and no gap covers yet becomes a gap with `cause`, reported like any other."""
        actions = self._call.abandon(cause)
        self._effects(actions)
        return [action.gap for action in actions if isinstance(action, GapRecorded)]

    async def run(self) -> None:
        """Connect, stream and reconnect until `finish` is complete (see the module docstring)."""
        if self._running:
            raise InvalidState("run() is already running")
        self._running = True
        try:
            async with asyncio.timeout(self._finish_at) as deadline:
                self._deadline = deadline
                await self._main()
        except TimeoutError:
            if self._deadline is None or not self._deadline.expired():
                raise
            self._effects(self._call.deadline_passed(time.monotonic()))
        except asyncio.CancelledError:
            self._effects(self._call.cancelled())
            raise
        except Exception:
            self.log.exception("engine stream failed")
            self._effects(self._call.failed())
            raise
        finally:
            self._deadline = None
            self._done.set()

    # -- carrying out what the session says ------------------------------------------------------------
    async def _main(self) -> None:
        step = self._effects(self._call.start())
        while step is not None:
            if isinstance(step, GiveUp):
                await self._finish_requested.wait()
                return
            if isinstance(step, SleepUntil):
                await asyncio.sleep(max(0.0, step.at - time.monotonic()))
                step = self._effects(self._call.timer_fired(time.monotonic()))
            else:
                step = await self._open()

    async def _open(self) -> Step | None:
        """Open a stream and serve it; the session's next step."""
        try:
            ws = await self._connect()
        except (OSError, TimeoutError, WebSocketException) as exc:
            error, cause = classify_connect_error(exc)
            return self._effects(self._call.connect_failed(cause, error, time.monotonic()))
        self._effects(self._call.connected(time.monotonic()))
        return await self._serve(ws)

    def _effects(self, actions: Sequence[Action]) -> Step | None:
        """Carry out what needs no waiting (reports, deliveries, the deadline) and return the step that
        does, if any. A `Close` is the business of `_serve`, the only one holding the socket."""
        step: Step | None = None
        for action in actions:
            if isinstance(action, Deliver):
                self._deliver(action)
            elif isinstance(action, RecordAudio):
                self._record(action)
            elif isinstance(action, ScrubAudioRefused):
                self._headers = request_headers(
                    self._engine, self._audio, self._request_id, self.channels, self._redaction, False
                )
            elif isinstance(action, ArmDeadline):
                self._arm(action.at)
            elif isinstance(action, Connect | SleepUntil | GiveUp):
                step = action
            elif not isinstance(action, Close):
                self._report(action)
        return step

    def _arm(self, at: float) -> None:
        """`finish` must be complete by `at` (monotonic): the deadline of `run`, in loop time."""
        loop = asyncio.get_running_loop()
        self._finish_at = loop.time() + max(0.0, at - time.monotonic())
        if self._deadline is not None:
            self._deadline.reschedule(self._finish_at)

    async def _connect(self) -> ClientConnection:
        async with asyncio.timeout(self._engine.connect_timeout_seconds):
            return await connect(
                self._engine.url,
                additional_headers=self._headers,
                user_agent_header=USER_AGENT,
                compression=None,
                proxy=None,
                open_timeout=self._engine.connect_timeout_seconds,
                ping_interval=None,
                close_timeout=self._engine.send_timeout_seconds,
                max_size=MAX_MESSAGE_BYTES,
            )

    # -- one stream ----------------------------------------------------------------------------------
    async def _serve(self, ws: ClientConnection) -> Step | None:
        """Run one stream until the final (or its loss); the session's next step."""
        sender = asyncio.create_task(self._send_loop(ws), name=f"vblaze-send-{self.call_id}")
        sender.add_done_callback(lambda task: _abort_if_failed(task, ws))
        received: LostCause | None = None
        try:
            await self._receive_loop(ws)
        except EngineClosed as exc:
            received = _lost_cause(exc)
        except BaseException:
            ws.transport.abort()
            raise
        finally:
            if not sender.done():
                sender.cancel()
            await asyncio.wait([sender])
        error = None if sender.cancelled() else sender.exception()
        if error is not None and not isinstance(error, EngineClosed):
            raise error
        sent = _lost_cause(error) if isinstance(error, EngineClosed) else None
        actions = self._call.stream_ended(received, sent, time.monotonic())
        for close in (action for action in actions if isinstance(action, Close)):
            await self._close(ws, close)
        return self._effects(actions)

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            send = self._call.next_send()
            if send is None:
                if self._call.audio_ended:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._send(ws, send.frame)
            self._effects(self._call.frame_written(send, time.monotonic()))

    async def _send(self, ws: ClientConnection, frame: bytes) -> None:
        try:
            async with asyncio.timeout(self._engine.send_timeout_seconds):
                await ws.send(frame)
        except TimeoutError:
            raise EngineClosed(LostCause.SEND_TIMEOUT) from None
        except ConnectionClosed as exc:
            raise EngineClosed(LostCause.CLOSED) from exc

    async def _receive_loop(self, ws: ClientConnection) -> None:
        """Feed messages to the session until its final (returns) or the end of the socket (EngineClosed)."""
        while self._call.receiving:
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                self.log.debug("engine socket closed: %s", exc)
                raise EngineClosed(LostCause.CLOSED) from exc
            self._effects(self._call.receive(message, time.monotonic()))

    def _deliver(self, deliver: Deliver) -> None:
        utt = deliver.utterance
        try:
            self._on_utterance(utt)
        except Exception:
            failures = self._call.delivery_failed(deliver)
            self.log.exception(
                "on_utterance callback failed; utterance %.2f-%.2f s not delivered (%d so far)",
                utt.start,
                utt.end,
                failures,
            )
            return
        self._effects(self._call.delivered(deliver))

    def _record(self, record: RecordAudio) -> None:
        if self._on_scrubbed_audio is None:
            return
        try:
            self._on_scrubbed_audio(record.position, record.data)
        except Exception:
            self.log.exception("on_scrubbed_audio callback failed at byte %d", record.position)

    async def _close(self, ws: ClientConnection, close: Close) -> None:
        """After the final the engine closes; close ourselves only if it has not within send_timeout."""
        if close.abort:
            ws.transport.abort()
            return
        try:
            async with asyncio.timeout(self._engine.send_timeout_seconds):
                await ws.wait_closed()
                return
        except TimeoutError:
            self.log.info("engine kept the socket open after the final transcript; closing it")
        try:
            async with asyncio.timeout(self._engine.send_timeout_seconds):
                await ws.close()
        except TimeoutError:
            ws.transport.abort()

    # -- reports -------------------------------------------------------------------------------------
    def _report(self, report: Report) -> None:
        """One typed observer call; an observer that raises is logged, never allowed to stop the call."""
        observer = self._observer
        try:
            if isinstance(report, Connected):
                observer.connected()
            elif isinstance(report, Reconnected):
                observer.reconnected()
            elif isinstance(report, ConnectFailed):
                observer.connect_failed(report.cause)
            elif isinstance(report, ConnectionLost):
                observer.connection_lost(report.cause)
            elif isinstance(report, FrameSent):
                observer.frame_sent(report.nbytes, report.latency)
            elif isinstance(report, UtteranceDelivered):
                observer.utterance(report.latency)
            else:
                observer.gap(report.gap.duration, report.gap.cause)
        except Exception:
            self.log.exception("engine observer %s() failed", _OBSERVER_METHODS[type(report)])


def _abort_if_failed(task: asyncio.Task[None], ws: ClientConnection) -> None:
    """A sender that failed takes the socket down with it, so the reader sees the end at once."""
    if not task.cancelled() and task.exception() is not None:
        ws.transport.abort()

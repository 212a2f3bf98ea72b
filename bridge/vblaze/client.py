"""One call's V-Blaze stream over asyncio: connect, send audio, receive utterances, reconnect, finish.

`EngineStream` drives `protocol.Session` (the protocol, no I/O) and `buffer.AudioBuffer` (the call's audio,
no I/O) over ``websockets``. One instance per call:

- `run()` is the long-running task. It connects (``requestid`` = the call id, or ``request_id`` when
  given: a SIPREC call in ``streams`` delivery sends ``<call-id>;stream=<n>``), sends the buffered audio
  then live audio in chunks of ``audio.chunk_ms``, and hands each utterance to ``on_utterance`` on the
  loop as soon as it arrives. It returns once `finish()` is complete; cancelling it aborts the socket.
- `push_audio(pcm, arrival)` never blocks: 16-bit little-endian PCM at ``audio.sample_rate`` (mono, or
  interleaved stereo when ``channels=2``; see `protocol`) goes into the buffer; ``arrival`` is the
  `time.monotonic()` at which the frame reached the bridge. Pushing after `finish()` raises `InvalidState`.
- `finish()` (at hangup) flushes the audio, sends the empty frame, collects the remaining utterances, the
  separator and the final transcript, lets the engine close the socket, and returns a `StreamResult`.
  Everything it does, reconnects included, is bounded by ``engine.final_timeout_seconds``.

Failures:

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
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bridge.config import AudioConfig, EngineConfig
from bridge.errors import EngineClosed, EngineError, EngineProtocolError, EngineRejected, EngineUnavailable
from bridge.vblaze.buffer import AudioBuffer
from bridge.vblaze.protocol import (
    SAMPLE_WIDTH,
    Final,
    Gap,
    InvalidState,
    Separator,
    Session,
    Utterance,
    request_headers,
)
from bridge.vblaze.transcript import Segment, StreamRecord

logger = logging.getLogger(__name__)
_logger = logger  # EngineStream's `logger` argument shadows the name

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a long call's final transcript with word timings is large
USER_AGENT = "vblaze-bridge"
DUPLICATE_TOLERANCE_SECONDS = 0.001
FINISH_GRACE_SECONDS = 1.0  # finish() waits this much beyond final_timeout for run() to wrap up

# Why a connection attempt failed (label values for metrics).
CONNECT_REFUSED = "refused"
CONNECT_TIMEOUT = "timeout"
CONNECT_UNAVAILABLE = "unavailable"  # 5xx or 429 at the upgrade
CONNECT_REJECTED = "rejected"  # other 4xx
CONNECT_ERROR = "error"  # reset, bad handshake, DNS...

# Why an established stream ended early.
LOST_CLOSED = "closed"  # closed or reset before the final transcript
LOST_SEND_TIMEOUT = "send_timeout"  # a write did not complete in send_timeout_seconds
LOST_ENDED_EARLY = "ended_early"  # the engine sent its final before the audio ended

# Gap causes and result reasons besides the buffer's own (buffer_overflow, replay_exceeded).
ENGINE_REJECTED = "engine_rejected"
ENGINE_UNAVAILABLE = "engine_unavailable"
FINAL_TIMEOUT = "final_timeout"
CANCELLED = "cancelled"
ERROR = "error"  # a bug in the bridge ended the stream


class EngineObserver(Protocol):
    """What the stream reports for metrics. Called on the loop; must not block nor raise."""

    def connected(self) -> None:
        """A stream was established (the first of the call, or after failed attempts only)."""

    def reconnected(self) -> None:
        """A stream was established after an earlier one was lost."""

    def connect_failed(self, cause: str) -> None:
        """A connection attempt failed: refused, timeout, unavailable, rejected or error."""

    def connection_lost(self, cause: str) -> None:
        """An established stream ended early: closed, send_timeout or ended_early."""

    def frame_sent(self, nbytes: int, latency_seconds: float) -> None:
        """A chunk written: its frame size, and the latency from the arrival of its oldest audio not sent
        before to the write's completion (replayed chunks are not reported)."""

    def utterance(self, latency_seconds: float) -> None:
        """An utterance delivered: arrival of the audio at its end → utterance received."""

    def gap(self, seconds: float, cause: str) -> None:
        """Audio that will never be transcribed, and why."""


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


@dataclass
class StreamStats:
    """Counters of one call's engine stream."""

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
    """What a call's stream produced.

    ``final`` is the engine's complete transcript (JSON object, or text), None if it never came; its
    times are those of the stream that sent it, which starts at ``final_offset`` seconds on the call's
    timeline (0 unless the stream was re-established). ``reason`` is None when the final arrived, else
    ``final_timeout``, ``engine_unavailable``, ``engine_rejected``, ``cancelled`` or ``error``.
    ``utterances`` are all utterances delivered, on the call's timeline. ``streams`` has one record per
    connection (each with its own final document, if any, and its offset): what
    `transcript.merge` turns into the call's complete transcript.
    """

    final: dict[str, Any] | str | None
    reason: str | None
    final_offset: float
    utterances: tuple[Utterance, ...]
    gaps: tuple[Gap, ...]
    stats: StreamStats
    audio_seconds: float
    streams: tuple[StreamRecord, ...] = ()


@dataclass
class _Record:
    """What one connection did, while it is open (frozen into a `StreamRecord` for results)."""

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
        """The record as it stands; a stream still open ends with the stream's `reason` (or "open")."""
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


def classify_connect_error(exc: BaseException) -> tuple[EngineError, str]:
    """The bridge error and metrics cause for a failed connection attempt."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
        if 400 <= status < 500 and status not in (408, 429):
            return EngineRejected(status, body), CONNECT_REJECTED
        return EngineUnavailable(f"HTTP {status} at the upgrade: {body.strip()[:200]}"), CONNECT_UNAVAILABLE
    if isinstance(exc, ConnectionRefusedError):
        return EngineUnavailable(f"connection refused: {exc}"), CONNECT_REFUSED
    if isinstance(exc, TimeoutError):
        return EngineUnavailable("connection timed out"), CONNECT_TIMEOUT
    return EngineUnavailable(f"{type(exc).__name__}: {exc}"), CONNECT_ERROR


class EngineStream:
    """One call's stream to V-Blaze. See the module docstring for the contract."""

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
    ) -> None:
        self._engine = engine
        self._audio = audio
        self.call_id = call_id
        self._on_utterance = on_utterance
        self._observer: EngineObserver = observer if observer is not None else _NullObserver()
        extra = dict(logger.extra) if logger is not None and logger.extra else {"call_id": call_id}
        self.log = logging.LoggerAdapter(_logger, extra)
        self._rng = rng or random.Random()
        self.channels = channels
        self._headers = request_headers(engine, audio, request_id or call_id, channels)
        bps = audio.sample_rate * SAMPLE_WIDTH * channels
        self._buffer = AudioBuffer(
            bytes_per_second=bps,
            chunk_bytes=bps * audio.chunk_ms // 1000,
            limit_bytes=int(engine.buffer_seconds * bps),
            replay_bytes=int(engine.replay_seconds * bps),
            sample_width=SAMPLE_WIDTH * channels,
        )
        self.stats = StreamStats()
        self.utterances: list[Utterance] = []
        self._wake = asyncio.Event()  # audio pushed, or finish() called
        self._finish_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._finish_at: float | None = None  # loop time by which finish() must be complete
        self._deadline: asyncio.Timeout | None = None
        self._session: Session | None = None
        self._streams = 0
        self._lost_before = False
        self._attempt = 0
        self._delivered_end = float("-inf")
        self._final: Final | None = None
        self._final_offset = 0.0
        self._complete = False  # the final arrived after the end of the audio
        self._reason: str | None = None
        self._overflow_logged = False
        self._connected_at = 0.0
        self._records: list[_Record] = []

    # -- what the call pipeline uses -----------------------------------------------------------------
    @property
    def gaps(self) -> list[Gap]:
        return self._buffer.gaps

    def push_audio(self, pcm: bytes, arrival: float) -> None:
        """Queue a frame of the call's audio (never blocks)."""
        if self._finish_requested.is_set():
            raise InvalidState("audio pushed after finish()")
        self._report_gaps(self._buffer.push(pcm, arrival))
        self._wake.set()

    async def finish(self) -> StreamResult:
        """End the call's audio and collect what the engine still owes, bounded by final_timeout."""
        if not self._finish_requested.is_set():
            loop = asyncio.get_running_loop()
            self._finish_at = loop.time() + self._engine.final_timeout_seconds
            if self._deadline is not None:
                self._deadline.reschedule(self._finish_at)
            self._finish_requested.set()
            self._wake.set()
        try:
            async with asyncio.timeout(self._engine.final_timeout_seconds + FINISH_GRACE_SECONDS):
                await self._done.wait()
        except TimeoutError:
            self.log.error("engine stream did not wrap up in time (is run() running?)")
            self._give_up()
        return self.result()

    def result(self) -> StreamResult:
        """The stream's outcome so far (what `finish` returns)."""
        bps = self._buffer.bytes_per_second
        return StreamResult(
            final=self._final.raw if self._final is not None else None,
            reason=self._reason,
            final_offset=self._final_offset,
            utterances=tuple(self.utterances),
            gaps=tuple(self._buffer.gaps),
            stats=dataclasses.replace(self.stats),
            audio_seconds=self._buffer.seconds(self._buffer.pushed),
            streams=tuple(r.frozen(bps, self._buffer.acked, self._reason) for r in self._records),
        )

    def abandon(self, cause: str) -> list[Gap]:
        """Nothing more of this call will be transcribed (the call pipeline failed): the audio no
        utterance confirmed and no gap covers yet becomes a gap with `cause`, reported like any other."""
        if self._complete:
            return []
        if self._reason is None:
            self._reason = ERROR
        return self._report_gaps(self._buffer.abandon(cause))

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
            self._give_up()
        except asyncio.CancelledError:
            if not self._complete and self._reason is None:
                self._reason = CANCELLED
                self._report_gaps(self._buffer.abandon(CANCELLED))
            raise
        except Exception:
            self.log.exception("engine stream failed")
            if not self._complete:
                self._reason = ERROR
                self._report_gaps(self._buffer.abandon(ERROR))
            raise
        finally:
            self._deadline = None
            self._done.set()

    # -- the connection loop -------------------------------------------------------------------------
    async def _main(self) -> None:
        while not self._complete:
            try:
                ws = await self._connect()
            except EngineRejected as exc:
                self._reason = ENGINE_REJECTED
                self.log.error("%s; not retrying, the rest of the call goes untranscribed", exc)
                self._report_gaps(self._buffer.abandon(ENGINE_REJECTED))
                await self._finish_requested.wait()
                return
            if ws is None:
                await self._backoff()
                continue
            self._connected()
            try:
                await self._serve(ws)
            except EngineClosed as exc:
                self._lost(exc)
                await self._backoff()

    async def _connect(self) -> ClientConnection | None:
        """A new stream, or None after a retryable failure (logged and counted)."""
        try:
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
        except (OSError, TimeoutError, WebSocketException) as exc:
            error, cause = classify_connect_error(exc)
            self.stats.failures += 1
            self._notify("connect_failed", cause)
            if isinstance(error, EngineRejected):
                raise error from exc
            attempt = self._attempt + 1
            # Attempts 1, 2, 4, 8... at WARNING: a long outage does not flood the log.
            self.log.log(
                logging.WARNING if attempt & (attempt - 1) == 0 else logging.DEBUG,
                "engine unreachable (%s, attempt %d): %s; %.1f s of audio waiting",
                cause,
                attempt,
                error,
                self._buffer.seconds(self._buffer.pending_bytes),
            )
            return None

    def _connected(self) -> None:
        self.stats.connects += 1
        self._streams += 1
        self._overflow_logged = False
        self._connected_at = time.monotonic()
        waiting = self._buffer.seconds(self._buffer.pending_bytes)
        if self._lost_before:
            self.stats.reconnects += 1
            self._notify("reconnected")
            self.log.info("engine stream re-established; sending %.1f s of audio first", waiting)
        else:
            self._notify("connected")
            self.log.info("engine stream established (%.1f s of audio waiting)", waiting)

    async def _backoff(self) -> None:
        """Sleep before the next attempt: exponential, capped, with jitter (half to full delay)."""
        ceiling = min(
            self._engine.reconnect_max_seconds,
            self._engine.reconnect_initial_seconds * 2 ** min(self._attempt, 32),
        )
        self._attempt += 1
        await asyncio.sleep(self._rng.uniform(ceiling / 2, ceiling))

    def _lost(self, exc: EngineClosed) -> None:
        cause = str(exc.args[0]) if exc.args else LOST_CLOSED
        self.stats.losses += 1
        self._lost_before = True
        if time.monotonic() - self._connected_at >= self._engine.reconnect_max_seconds:
            self._attempt = 0
        self._notify("connection_lost", cause)
        if self._records and self._records[-1].ended == "open":
            self._records[-1].ended = cause
            self._records[-1].confirmed = self._buffer.acked
        gaps = self._report_gaps(self._buffer.rewind())
        self.log.warning(
            "engine stream lost (%s) %.1f s into the call; replaying from %.1f s%s",
            cause,
            self._buffer.seconds(self._buffer.pushed),
            self._buffer.seconds(self._buffer.acked),
            f", {sum(g.duration for g in gaps):.1f} s could not be replayed" if gaps else "",
        )

    # -- one stream ----------------------------------------------------------------------------------
    async def _serve(self, ws: ClientConnection) -> None:
        """Run one stream until the final after the end of audio (returns) or its loss (EngineClosed)."""
        session = Session(self._audio, self._engine.datahdr, self.channels)
        self._session = session
        record = _Record(len(self._records))
        self._records.append(record)
        sender = asyncio.create_task(self._send_loop(ws, session), name=f"vblaze-send-{self.call_id}")
        sender.add_done_callback(lambda task: _abort_if_failed(task, ws))
        lost: EngineClosed | None = None
        try:
            await self._receive_loop(ws, session)
        except EngineClosed as exc:
            lost = exc
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
        if isinstance(error, EngineClosed) and (lost is None or error.args == (LOST_SEND_TIMEOUT,)):
            lost = error  # the writer saw it first, or knows better why
        if lost is None and not session.end_sent:
            lost = EngineClosed(LOST_ENDED_EARLY)
        if lost is not None:
            ws.transport.abort()
            raise lost
        await self._await_close(ws)

    async def _send_loop(self, ws: ClientConnection, session: Session) -> None:
        while True:
            finishing = self._finish_requested.is_set()
            chunk = self._buffer.next_chunk(flush=finishing)
            if chunk is None:
                if finishing and self._buffer.pending_bytes == 0:
                    for frame in session.send_end():
                        await self._send(ws, frame)
                    self.log.debug("end of audio sent")
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            frame = session.send_audio(chunk.data, chunk.position)
            self._records[-1].sent(chunk.position, len(chunk.data))
            await self._send(ws, frame)
            self.stats.frames_sent += 1
            self.stats.bytes_sent += len(chunk.data)
            if chunk.arrival is None:
                self.stats.bytes_replayed += len(chunk.data)
            else:
                self._notify("frame_sent", len(frame), time.monotonic() - chunk.arrival)

    async def _send(self, ws: ClientConnection, frame: bytes) -> None:
        try:
            async with asyncio.timeout(self._engine.send_timeout_seconds):
                await ws.send(frame)
        except TimeoutError:
            raise EngineClosed(LOST_SEND_TIMEOUT) from None
        except ConnectionClosed as exc:
            raise EngineClosed(LOST_CLOSED) from exc

    async def _receive_loop(self, ws: ClientConnection, session: Session) -> None:
        """Deliver events until the final (returns) or the end of the socket (EngineClosed)."""
        while True:
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                self.log.debug("engine socket closed: %s", exc)
                raise EngineClosed(LOST_CLOSED) from exc
            received_at = time.monotonic()
            try:
                if isinstance(message, str):
                    event = session.receive_text(message, received_at)
                else:
                    session.receive_binary(message)
                    continue
            except EngineProtocolError as exc:
                self.stats.protocol_errors += 1
                self.log.warning("skipping a message from the engine: %s", exc)
                continue
            self._attempt = 0  # the engine answers: the next failure starts the backoff afresh
            record = self._records[-1]
            if isinstance(event, Utterance):
                self._deliver(event, session)
            elif isinstance(event, Separator):
                if session.sent_until is not None and session.end_sent:
                    self._buffer.ack(session.sent_until)
                    record.confirmed = session.sent_until
            else:
                assert isinstance(event, Final)
                record.final = event.raw
                if session.end_sent:
                    self._final = event
                    self._final_offset = session.call_start or 0.0
                    self._complete = True
                    self._reason = None
                    record.ended = None
                    record.confirmed = session.sent_until or 0
                    self.log.debug("final transcript received")
                return

    def _deliver(self, utt: Utterance, session: Session) -> None:
        if self._streams > 1 and utt.end <= self._delivered_end + DUPLICATE_TOLERANCE_SECONDS:
            self.stats.duplicates += 1
            self.log.debug("dropping replayed utterance %.2f-%.2f s", utt.start, utt.end)
            return
        self._delivered_end = max(self._delivered_end, utt.end)
        position = self._buffer.position(utt.end)
        if session.sent_until is not None:
            position = min(position, session.sent_until)
        arrival = self._buffer.arrival_of(position)
        # The engine transcribed this audio whatever becomes of the utterance here: it is not replayed
        # and it belongs to the call's transcript.
        self._buffer.ack(position)
        self._records[-1].live.append(utt)
        try:
            self._on_utterance(utt)
        except Exception:
            self.stats.delivery_failures += 1
            self.log.exception(
                "on_utterance callback failed; utterance %.2f-%.2f s not delivered (%d so far)",
                utt.start,
                utt.end,
                self.stats.delivery_failures,
            )
            return
        self.stats.utterances += 1
        self.utterances.append(utt)
        if arrival is not None:
            self._notify("utterance", utt.received_at - arrival)

    async def _await_close(self, ws: ClientConnection) -> None:
        """After the final the engine closes; close ourselves only if it has not within send_timeout."""
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

    # -- endings and reports -------------------------------------------------------------------------
    def _give_up(self) -> None:
        """finish() ran out of time: say why, and turn unconfirmed audio into a gap."""
        if self._complete:
            return
        session = self._session
        connected = session is not None and self._streams > 0 and not self._lost_streak()
        cause = FINAL_TIMEOUT if connected else ENGINE_UNAVAILABLE
        if self._reason is None:
            self._reason = cause
        if session is not None and session.separator_seen and session.end_sent:
            self.log.warning("no final transcript within %.1f s", self._engine.final_timeout_seconds)
            return
        gaps = self._report_gaps(self._buffer.abandon(cause))
        self.log.warning(
            "no final transcript within %.1f s (%s); %.1f s of audio unconfirmed",
            self._engine.final_timeout_seconds,
            cause,
            sum(g.duration for g in gaps),
        )

    def _lost_streak(self) -> bool:
        """True while the latest stream is gone and no new one is up."""
        return self._lost_before and self.stats.connects <= self.stats.losses

    def _report_gaps(self, gaps: list[Gap]) -> list[Gap]:
        for gap in gaps:
            self._notify("gap", gap.duration, gap.cause)
            if gap.cause == "buffer_overflow":
                if not self._overflow_logged:
                    self._overflow_logged = True
                    self.log.warning("audio buffer full: dropping the oldest audio from %.1f s", gap.start)
            elif gap.cause != self._buffer.abandoned:
                self.log.warning("gap of %.1f s at %.1f s (%s)", gap.duration, gap.start, gap.cause)
        return gaps

    def _notify(self, method: str, *args: Any) -> None:
        try:
            getattr(self._observer, method)(*args)
        except Exception:
            self.log.exception("engine observer %s() failed", method)


def _abort_if_failed(task: asyncio.Task[None], ws: ClientConnection) -> None:
    """A sender that failed takes the socket down with it, so the reader sees the end at once."""
    if not task.cancelled() and task.exception() is not None:
        ws.transport.abort()

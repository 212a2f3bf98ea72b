"""A call's audio on its way to the engine, without I/O: what is still to send, what may be replayed, gaps.

Positions are byte offsets on the call's timeline (0 = the first byte pushed), always whole samples.

Contract:

- `push(pcm, arrival)` appends audio. Audio not yet sent on the current stream (*pending*) is bounded by
  ``limit_bytes``; beyond it the oldest pending audio is dropped and recorded as a gap ``buffer_overflow``.
- `next_chunk(flush)` hands out up to ``chunk_bytes`` of contiguous pending audio and moves it to the
  *replay* store. It returns None while less than a chunk is pending, unless ``flush`` is set (end of call)
  or the pending audio is interrupted by a dropped stretch (then the piece before the hole goes alone).
- `ack(position)`: the engine delivered an utterance ending there; audio before it is never replayed.
  The replay store keeps at most ``replay_bytes`` after the acknowledged position; what it lets go that
  was never acknowledged is remembered as *unreplayable*.
- `rewind()` is called when the stream is lost: unreplayable stretches become gaps ``replay_exceeded``,
  and the replay store goes back in front of the pending audio, to be sent again on the next stream.
- `abandon(cause)`: nothing more will reach the engine (rejected, gave up): everything not acknowledged,
  and everything pushed later, becomes a gap with that cause.
- `gaps` never overlap; adjacent gaps with the same cause are merged.
- `push(pcm, arrival, paused=True)` (the call is paused for PCI, `bridge/pause.py`): the bytes are
  replaced by silence of the same length before they are stored, and the span is a gap ``paused``. So
  the paused audio is never sent, never kept for replay, and a replay of that span replays silence. A
  paused span is returned (reported) once, whole, when it closes: at the first push not paused, at
  `close_pause()` (the call hung up while paused) or at `abandon`.

`GapCause` names every cause a gap of a call can have, whoever records it: this buffer, the call's
engine session (`bridge.vblaze.session`), the call pipeline and the worker. It is the one list the
metrics labels (`bridge.metrics.GAP_CAUSES`) are built from.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from bridge.vblaze.protocol import Gap


class GapCause(StrEnum):
    """Why audio of a call was never transcribed (a gap's ``cause``, a metrics label value)."""

    BUFFER_OVERFLOW = "buffer_overflow"  # the engine was away longer than engine.buffer_seconds
    REPLAY_EXCEEDED = "replay_exceeded"  # audio older than engine.replay_seconds when the stream came back
    ENGINE_REJECTED = "engine_rejected"  # the engine refused the stream (4xx at the upgrade)
    ENGINE_UNAVAILABLE = "engine_unavailable"  # gave up: the engine never came back before the call ended
    FINAL_TIMEOUT = "final_timeout"  # no final transcript within engine.final_timeout_seconds
    CANCELLED = "cancelled"  # the call was torn down (drain timeout, forced stop)
    ERROR = "error"  # the engine session failed on an error of ours (logged with its traceback)
    PIPELINE_ERROR = "pipeline_error"  # the call's pipeline failed on an error of ours (bridge/call.py)
    WORKER_LOST = "worker_lost"  # the worker process died with the call up (bridge/worker.py, ledger)
    PAUSED = "paused"  # the call was paused (PCI): silence went to the engine instead (bridge/pause.py)


@dataclass(frozen=True)
class Chunk:
    """Audio to write: its call position, the bytes, and the monotonic arrival time of its oldest part
    never sent before (None when all of it was sent before, i.e. a replay)."""

    position: int
    data: bytes
    arrival: float | None

    @property
    def end(self) -> int:
        return self.position + len(self.data)


@dataclass
class _Segment:
    position: int
    data: bytes
    arrival: float
    fresh: bool  # never sent on any stream


class AudioBuffer:
    """See the module docstring."""

    def __init__(
        self,
        bytes_per_second: int,
        chunk_bytes: int,
        limit_bytes: int,
        replay_bytes: int,
        sample_width: int = 2,
    ) -> None:
        self.bytes_per_second = bytes_per_second
        self.chunk_bytes = max(chunk_bytes - chunk_bytes % sample_width, sample_width)
        self.limit_bytes = max(limit_bytes - limit_bytes % sample_width, self.chunk_bytes)
        self.replay_bytes = max(replay_bytes - replay_bytes % sample_width, 0)
        self.sample_width = sample_width
        self.pushed = 0  # end of the call's audio so far
        self.acked = 0  # audio before this is transcribed (end of the last delivered utterance)
        self.abandoned: GapCause | None = None  # cause, once nothing more reaches the engine
        self._spans: list[tuple[int, int, str]] = []  # gaps as [start, end) byte spans
        self._pending: deque[_Segment] = deque()
        self._pending_bytes = 0
        self._replay: deque[_Segment] = deque()
        self._replay_bytes = 0
        self._unreplayable: list[tuple[int, int]] = []  # sent, never acknowledged, no longer kept
        self._arrivals: deque[tuple[int, float]] = deque()  # (end position, arrival) of recent pushes
        self._paused_from: int | None = None  # start of the paused span still open

    # -- timeline helpers ---------------------------------------------------------------------------
    def seconds(self, position: int) -> float:
        return position / self.bytes_per_second

    def position(self, seconds: float) -> int:
        pos = int(seconds * self.bytes_per_second)
        return max(pos - pos % self.sample_width, 0)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def arrival_of(self, position: int) -> float | None:
        """Monotonic arrival time of the push that held the byte just before ``position``."""
        for end, arrival in self._arrivals:
            if end >= position:
                return arrival
        return None

    # -- audio in ------------------------------------------------------------------------------------
    def push(self, pcm: bytes, arrival: float, paused: bool = False) -> list[Gap]:
        """Append audio; return the gaps this recorded (overflow, pause, or everything once abandoned).
        `paused`: only silence of the same length is stored (see the module docstring)."""
        if len(pcm) % self.sample_width:
            raise ValueError(f"audio of {len(pcm)} bytes is not whole {self.sample_width}-byte samples")
        if not pcm:
            return []
        position = self.pushed
        self.pushed += len(pcm)
        if self.abandoned is not None:
            return self._add_gap(position, self.pushed, self.abandoned)
        new = []
        if paused:
            self._add_gap(position, self.pushed, GapCause.PAUSED)
            self._paused_from = position if self._paused_from is None else self._paused_from
        else:
            new = self._close_pause(position)
        data = bytes(len(pcm)) if paused else bytes(pcm)
        self._pending.append(_Segment(position, data, arrival, True))
        self._pending_bytes += len(pcm)
        self._arrivals.append((self.pushed, arrival))
        return new + self._enforce_limit()

    def _enforce_limit(self) -> list[Gap]:
        new: list[Gap] = []
        excess = self._pending_bytes - self.limit_bytes
        while excess > 0:
            seg = self._pending[0]
            cut = min(excess, len(seg.data))
            new += self._add_gap(seg.position, seg.position + cut, GapCause.BUFFER_OVERFLOW)
            if cut == len(seg.data):
                self._pending.popleft()
            else:
                seg.data = seg.data[cut:]
                seg.position += cut
            self._pending_bytes -= cut
            excess -= cut
        return new

    # -- audio out -----------------------------------------------------------------------------------
    def next_chunk(self, flush: bool = False) -> Chunk | None:
        """Up to one chunk of contiguous pending audio, moved to the replay store (see module doc)."""
        if not self._pending:
            return None
        start = self._pending[0].position
        run = 0
        for seg in self._pending:
            if seg.position != start + run:
                break
            run += len(seg.data)
            if run >= self.chunk_bytes:
                break
        hole = run < self._pending_bytes
        if run < self.chunk_bytes and not flush and not hole:
            return None
        want = min(run, self.chunk_bytes)
        parts: list[bytes] = []
        arrival: float | None = None
        taken = 0
        while taken < want:
            seg = self._pending[0]
            take = min(want - taken, len(seg.data))
            piece = seg.data[:take]
            parts.append(piece)
            if seg.fresh and arrival is None:
                arrival = seg.arrival
            self._keep_for_replay(_Segment(seg.position, piece, seg.arrival, False))
            if take == len(seg.data):
                self._pending.popleft()
            else:
                seg.data = seg.data[take:]
                seg.position += take
            taken += take
        self._pending_bytes -= want
        return Chunk(start, b"".join(parts), arrival)

    def _keep_for_replay(self, seg: _Segment) -> None:
        if seg.position + len(seg.data) <= self.acked:
            return
        if seg.position < self.acked:
            cut = self.acked - seg.position
            seg = _Segment(self.acked, seg.data[cut:], seg.arrival, False)
        self._replay.append(seg)
        self._replay_bytes += len(seg.data)
        excess = self._replay_bytes - self.replay_bytes
        while excess > 0:
            head = self._replay[0]
            cut = min(excess, len(head.data))
            self._unreplayable_add(head.position, head.position + cut)
            if cut == len(head.data):
                self._replay.popleft()
            else:
                head.data = head.data[cut:]
                head.position += cut
            self._replay_bytes -= cut
            excess -= cut

    def _unreplayable_add(self, start: int, end: int) -> None:
        if self._unreplayable and self._unreplayable[-1][1] == start:
            self._unreplayable[-1] = (self._unreplayable[-1][0], end)
        else:
            self._unreplayable.append((start, end))

    # -- what the engine told us ---------------------------------------------------------------------
    def ack(self, position: int) -> None:
        """Audio before ``position`` is transcribed: never replay it, never count it as a gap."""
        if position <= self.acked:
            return
        self.acked = position
        while self._replay and self._replay[0].position + len(self._replay[0].data) <= position:
            self._replay_bytes -= len(self._replay.popleft().data)
        if self._replay and self._replay[0].position < position:
            head = self._replay[0]
            cut = position - head.position
            head.data = head.data[cut:]
            head.position = position
            self._replay_bytes -= cut
        self._unreplayable = [(max(s, position), e) for s, e in self._unreplayable if e > position]
        while self._arrivals and self._arrivals[0][0] < position:
            self._arrivals.popleft()

    def rewind(self) -> list[Gap]:
        """The stream was lost: record what cannot be replayed, queue the rest to be sent again."""
        new: list[Gap] = []
        for start, end in self._unreplayable:
            new += self._add_gap(start, end, GapCause.REPLAY_EXCEEDED)
        self._unreplayable.clear()
        self._pending.extendleft(reversed(self._replay))
        self._pending_bytes += self._replay_bytes
        self._replay.clear()
        self._replay_bytes = 0
        return new + self._enforce_limit()

    def close_pause(self) -> list[Gap]:
        """The paused span still open, if any, as one gap (the call ended while paused)."""
        return self._close_pause(self.pushed)

    def _close_pause(self, end: int) -> list[Gap]:
        start, self._paused_from = self._paused_from, None
        return [] if start is None or end <= start else [self._gap(start, end, GapCause.PAUSED)]

    def abandon(self, cause: GapCause) -> list[Gap]:
        """Nothing more will be transcribed: all audio after the acknowledged position becomes a gap."""
        new = self.close_pause() + self._add_gap(self.acked, self.pushed, cause)
        self.abandoned = cause
        self._pending.clear()
        self._replay.clear()
        self._pending_bytes = self._replay_bytes = 0
        self._unreplayable.clear()
        return new

    # -- gaps ----------------------------------------------------------------------------------------
    @property
    def gaps(self) -> list[Gap]:
        """All gaps so far, in call order, in seconds."""
        return [self._gap(s, e, cause) for s, e, cause in self._spans]

    def _gap(self, start: int, end: int, cause: str) -> Gap:
        return Gap(self.seconds(start), self.seconds(end - start), cause)

    def _add_gap(self, start: int, end: int, cause: str) -> list[Gap]:
        """Record [start, end) minus what earlier gaps already cover; return the new pieces."""
        pieces = [(start, end)]
        for g_start, g_end, _ in self._spans:
            pieces = [
                part
                for s, e in pieces
                for part in ((s, min(e, g_start)), (max(s, g_end), e))
                if part[1] > part[0]
            ]
        for s, e in pieces:
            for i, (o_start, o_end, o_cause) in enumerate(self._spans):
                if o_cause == cause and o_end == s:
                    self._spans[i] = (o_start, e, cause)
                    break
            else:
                self._spans.append((s, e, cause))
        self._spans.sort()
        return [self._gap(s, e, cause) for s, e in pieces]

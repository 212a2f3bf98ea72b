"""The supervisor's pure rules, without I/O: when a worker is hung, how long to wait before starting it
again, how long a slot may stay in each state (the watchdog), and why a worker was restarted.

`bridge/app.py` drives them with real processes and clocks; `RestartReason` is the closed set of
``vblaze_bridge_worker_restarts_total`` reasons (`bridge.metrics.RESTART_REASONS` is built from it).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

READY_TIMEOUT_SECONDS = 30.0  # a worker not ready by then is killed and started again
RESTART_MAX_DELAY_SECONDS = 5.0
QUICK_FAILURE_SECONDS = 5.0  # a worker that served less than this counts as failing again
STOP_GRACE_SECONDS = 10.0
FORCE_GRACE_SECONDS = 3.0  # after a second signal, how long workers get to hang up and flush
PING_INTERVAL_SECONDS = 0.5
ENGINE_PROBE_SECONDS = 2.0  # how often the supervisor asks the engine's /maxstreamscheck
PING_TIMEOUT_SECONDS = 2.0  # a ping not answered within this is missed
HUNG_AFTER_MISSES = 2  # missed pings in a row that make a worker hung
SERVING_SILENCE_SECONDS = 10.0  # a serving slot silent this long means its supervision is stuck


def restart_delay(failures: int) -> float:
    """Seconds to wait before starting a slot's worker again after `failures` quick failures in a row.

    The first failure is retried at once; then 0.5, 1, 2, 4 s, capped at RESTART_MAX_DELAY_SECONDS.
    """
    if failures <= 1:
        return 0.0
    return min(RESTART_MAX_DELAY_SECONDS, 0.25 * 2.0 ** (failures - 1))


def failures_after(previous: int, served_seconds: float | None) -> int:
    """Quick failures in a row once a worker is gone; `served_seconds` None if it never became ready."""
    if served_seconds is not None and served_seconds >= QUICK_FAILURE_SECONDS:
        return 1
    return previous + 1


@dataclass
class PingMonitor:
    """The pings in flight to one worker and the rule that calls it hung. No I/O: times are passed in.

    A pong answers its ping and every earlier one. The worker is hung when `misses` pings, all sent
    after its last answer, have waited longer than `timeout`.
    """

    timeout: float = PING_TIMEOUT_SECONDS
    misses: int = HUNG_AFTER_MISSES
    _next: int = 0
    _pending: dict[int, float] = field(default_factory=dict)

    def sent(self, now: float) -> int:
        """Record a ping sent at `now`; return its number."""
        seq = self._next
        self._next += 1
        self._pending[seq] = now
        return seq

    def answered(self, seq: int) -> bool:
        """Record the pong for `seq`; False if no such ping is in flight (late, repeated or bogus)."""
        if seq not in self._pending:
            return False
        for number in [n for n in self._pending if n <= seq]:
            del self._pending[number]
        return True

    def missed(self, now: float) -> int:
        return sum(1 for sent_at in self._pending.values() if now - sent_at >= self.timeout)

    def hung(self, now: float) -> bool:
        return self.missed(now) >= self.misses


class SlotState(enum.Enum):
    STARTING = "starting"  # spawned, not ready yet
    SERVING = "serving"  # ready and answering pings
    DRAINING = "draining"  # the worker drains (it said so, or we are stopping): no pings
    KILLING = "killing"  # SIGKILL sent (hung or not ready in time); waiting to reap it
    BACKOFF = "backoff"  # gone; waiting restart_delay() before the next start
    STOPPED = "stopped"  # the supervisor is stopping, or the slot's task has ended


def state_bound(state: SlotState, drain_bound: float) -> float | None:
    """How long a slot may stay in `state` (for SERVING: without a pong) before the supervisor's own
    checks fail; None for no bound. `drain_bound` is the longest drain the config allows."""
    bounds = {
        SlotState.STARTING: READY_TIMEOUT_SECONDS + STOP_GRACE_SECONDS,
        SlotState.SERVING: SERVING_SILENCE_SECONDS,
        SlotState.DRAINING: drain_bound + STOP_GRACE_SECONDS,
        SlotState.KILLING: STOP_GRACE_SECONDS,
        SlotState.BACKOFF: RESTART_MAX_DELAY_SECONDS + STOP_GRACE_SECONDS,
    }
    return bounds.get(state)


@dataclass(frozen=True)
class SlotView:
    state: SlotState
    since: float  # monotonic time of the last state change (for SERVING, of the last pong)
    supervised: bool  # the slot's task is still running


def checks_pass(slots: Iterable[SlotView], now: float, drain_bound: float) -> bool:
    """The watchdog rule: every slot is supervised and none has overstayed its state's bound."""
    for slot in slots:
        if slot.state is SlotState.STOPPED:
            continue
        if not slot.supervised:
            return False
        bound = state_bound(slot.state, drain_bound)
        if bound is not None and now - slot.since > bound:
            return False
    return True


def restart_reason(returncode: int) -> RestartReason:
    """Why a worker that exited with `returncode` (negative: killed by that signal) is restarted."""
    return RestartReason.SIGNAL if returncode < 0 else RestartReason.EXIT


class RestartReason(enum.StrEnum):
    """Why a worker slot started its worker again (the ``reason`` label of worker restarts)."""

    EXIT = "exit"  # it exited
    SIGNAL = "signal"  # it was killed by a signal
    HUNG = "hung"  # it stopped answering the supervisor's pings and was killed
    START_FAILED = "start_failed"  # a start that never became ready (spawn error, exit, not ready in time)
    OTHER = "other"  # supervising it failed on an error of ours (logged)

    @property
    def text(self) -> str:
        """How a log line says it: "worker 3 <text>"."""
        return _REASON_TEXT[self]


_REASON_TEXT = {
    RestartReason.EXIT: "exited",
    RestartReason.SIGNAL: "was killed by a signal",
    RestartReason.HUNG: "hung and was killed",
    RestartReason.START_FAILED: "failed to start",
    RestartReason.OTHER: "failed",
}

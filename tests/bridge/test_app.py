"""The supervisor's pure rules (bridge/supervision.py): when a worker is hung, how long to wait before a
restart, the watchdog."""

from __future__ import annotations

import pytest

from bridge.supervision import (
    HUNG_AFTER_MISSES,
    PING_INTERVAL_SECONDS,
    PING_TIMEOUT_SECONDS,
    READY_TIMEOUT_SECONDS,
    RESTART_MAX_DELAY_SECONDS,
    SERVING_SILENCE_SECONDS,
    PingMonitor,
    SlotState,
    SlotView,
    checks_pass,
    failures_after,
    restart_delay,
    restart_reason,
)


def test_a_worker_that_answers_is_never_hung() -> None:
    monitor = PingMonitor(timeout=2.0, misses=2)
    now = 0.0
    for _ in range(100):
        seq = monitor.sent(now)
        now += 1.9  # every answer comes just inside the bound
        assert monitor.answered(seq)
        assert not monitor.hung(now)


def test_hung_after_misses_in_a_row() -> None:
    monitor = PingMonitor(timeout=2.0, misses=2)
    monitor.sent(0.0)
    monitor.sent(0.5)
    assert not monitor.hung(1.99)
    assert monitor.missed(2.0) == 1 and not monitor.hung(2.0)  # one miss is not enough
    assert monitor.hung(2.5)


def test_one_late_answer_clears_every_earlier_ping() -> None:
    monitor = PingMonitor(timeout=2.0, misses=3)
    for t in (0.0, 0.5, 1.0, 1.5):
        last = monitor.sent(t)
    assert monitor.missed(3.4) == 3 and monitor.hung(3.4)
    assert monitor.answered(last)  # the loop was slow, not stuck: all four are answered
    assert monitor.missed(10.0) == 0 and not monitor.hung(10.0)


def test_unknown_or_repeated_pongs_are_refused() -> None:
    monitor = PingMonitor()
    seq = monitor.sent(0.0)
    assert not monitor.answered(seq + 1)  # never sent
    assert monitor.answered(seq)
    assert not monitor.answered(seq)  # already answered


def test_defaults_detect_a_stopped_worker_well_within_5_s() -> None:
    """Pings every PING_INTERVAL_SECONDS to a worker that stopped right after its last answer."""
    monitor = PingMonitor()
    now = 0.0
    while not monitor.hung(now):
        monitor.sent(now)
        now += PING_INTERVAL_SECONDS
    assert now == PING_TIMEOUT_SECONDS + (HUNG_AFTER_MISSES - 1) * PING_INTERVAL_SECONDS
    assert now <= 3.0  # leaves 2 s of the 5 s budget for the kill and the new worker's start


def test_restart_delay_grows_and_is_capped() -> None:
    delays = [restart_delay(n) for n in range(0, 10)]
    assert delays[:3] == [0.0, 0.0, 0.5]  # the first failure is retried at once
    assert delays == sorted(delays)
    assert max(delays) == RESTART_MAX_DELAY_SECONDS


def test_failures_count_only_quick_ones() -> None:
    assert failures_after(0, None) == 1  # never ready
    assert failures_after(3, None) == 4
    assert failures_after(3, 1.0) == 4  # died soon after it was ready
    assert failures_after(7, 3600.0) == 1  # served an hour: this failure is the first of a new series
    assert restart_delay(failures_after(7, 3600.0)) == 0.0


def test_restart_reason() -> None:
    assert restart_reason(-9) == "signal"
    assert restart_reason(1) == "exit"
    assert restart_reason(0) == "exit"


def view(state: SlotState, since: float, supervised: bool = True) -> SlotView:
    return SlotView(state, since, supervised)


@pytest.mark.parametrize(
    ("slots", "ok"),
    [
        ([view(SlotState.SERVING, 99.0), view(SlotState.SERVING, 99.5)], True),
        # A worker being replaced keeps the watchdog fed: the supervisor is doing its job.
        ([view(SlotState.SERVING, 99.0), view(SlotState.BACKOFF, 98.0)], True),
        ([view(SlotState.SERVING, 99.0), view(SlotState.STARTING, 100.0 - READY_TIMEOUT_SECONDS)], True),
        ([view(SlotState.SERVING, 99.0), view(SlotState.KILLING, 99.0)], True),
        # A serving slot nobody has heard from, beyond what hung detection allows: supervision is stuck.
        ([view(SlotState.SERVING, 100.0 - SERVING_SILENCE_SECONDS - 0.1)], False),
        ([view(SlotState.KILLING, 50.0)], False),  # a SIGKILLed worker never reaped
        ([view(SlotState.STARTING, 100.0 - READY_TIMEOUT_SECONDS - 60)], False),
        ([view(SlotState.SERVING, 99.0), view(SlotState.BACKOFF, 99.0, supervised=False)], False),
        ([view(SlotState.DRAINING, 100.0 - 70.0)], True),  # within the drain bound (60 s + grace)
        ([view(SlotState.DRAINING, 100.0 - 71.0)], False),
        ([view(SlotState.STOPPED, 0.0, supervised=False)], True),  # stopping: shutdown has its own bound
        ([], True),
    ],
)
def test_watchdog_rule(slots: list[SlotView], ok: bool) -> None:
    assert checks_pass(slots, now=100.0, drain_bound=60.0) is ok

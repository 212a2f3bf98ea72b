"""pjmedia's conference clock runs only while a call holds a frame port (sip/endpoint.py, `_clock`).

An idle worker has no `clock` thread to wake 50 times a second; a call starts it before its first
frame is needed and its end stops it again, and the next call gets its audio as the first did.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tests.e2e.conftest import SippResult, Standin, run_sipp, speech
from tests.fixtures.harness import wait_until

COUNT = "one two three four five six seven eight nine ten"


def clock_threads(pid: int) -> int:
    """Threads of `pid` named as pjmedia names its clock's."""
    tasks = Path(f"/proc/{pid}/task")
    count = 0
    for task in tasks.iterdir():
        try:
            count += (task / "comm").read_text().strip() == "clock"
        except FileNotFoundError:  # the thread ended while we looked
            pass
    return count


def test_the_clock_runs_only_while_a_call_holds_a_port(
    standin_vad: Standin, make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    bridge = make_bridge(standin_vad.url)
    pid = bridge.worker_pid()
    assert clock_threads(pid) == 0  # ready and idle: no clock
    audio = speech(COUNT, speech_dir, "count")
    for round_ in (1, 2):
        results: list[SippResult] = []

        def call(into: list[SippResult] = results) -> None:
            into.append(run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=4000))

        caller = threading.Thread(target=call)
        caller.start()
        try:
            wait_until(lambda: clock_threads(pid) == 1, 15, f"a clock thread during call {round_}")
            assert caller.is_alive()  # seen while the call was up, not after it
        finally:
            caller.join(timeout=60)
        (result,) = results
        assert result.returncode == 0, result.stdout
        calls = bridge.wait_ended(round_)
        wait_until(lambda: clock_threads(pid) == 0, 5, f"the clock stopped after call {round_}")
        assert bridge.worker_pid() == pid  # the same worker took both calls, never restarted
        ended = [events[-1]["data"] for events in calls.values()]
        assert len(ended) == round_
        for data in ended:  # each call's audio arrived whole, the second's after the clock restarted
            assert data["reason"] == "remote_bye" and data["gaps"] == [], data
            assert data["utterances"] >= 1 and data["transcript"] is not None, data

"""The supervisor's start path with stand-in worker processes (real processes, no pjsua): a worker
that cannot be spawned, exits before it is ready, never says ready, or says ready and then hangs.
Each failure is counted and leaves no fd open in the supervisor."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from bridge import app, metrics, supervision
from bridge.app import SlotState, Supervisor, WorkerSlot
from bridge.config import Config

EXITS = [sys.executable, "-c", "import sys; sys.exit(3)"]
SILENT = [sys.executable, "-c", "import time; time.sleep(60)"]
MISSING = ["/nonexistent/vblaze-bridge-worker"]
EXEC = Config.model_validate({"sip": {"spawn": "exec"}})  # these fakes are commands, not forks
READY_THEN_HANG = "import os, sys, time; os.write(int(sys.argv[1]), b'ready\\n'); time.sleep(60)"


class FakeWorkers(Supervisor):
    def __init__(self, command: list[str], pass_fd: bool = False) -> None:
        super().__init__(EXEC, Path("/nonexistent/config.yaml"))
        self.command = command
        self.pass_fd = pass_fd

    def worker_command(self, index: int, control_fd: int) -> list[str]:
        return [*self.command, str(control_fd)] if self.pass_fd else self.command


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def restarts(reason: str) -> int:
    return metrics.SUPERVISOR.snapshot()[0][reason]


@pytest.fixture(autouse=True)
def quick_ready_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "READY_TIMEOUT_SECONDS", 0.5)


@pytest.mark.parametrize("command", [EXITS, SILENT, MISSING], ids=["exits", "silent", "missing"])
async def test_a_failed_start_leaves_no_fd_and_no_process(command: list[str]) -> None:
    supervisor = FakeWorkers(command)
    slot = WorkerSlot(0)
    assert await supervisor._start(slot) is False  # the first spawn sets up the loop's child watching
    await supervisor._reap(slot)
    before = fds()
    for _ in range(5):
        assert await supervisor._start(slot) is False
        process = slot.process
        await supervisor._reap(slot)
        assert process is None or process.returncode is not None  # gone, and reaped
        if command is SILENT:
            assert process is not None and process.returncode == -9  # killed: not ready in time
    assert fds() <= before


async def test_failed_starts_are_counted_and_retried_with_backoff() -> None:
    supervisor = FakeWorkers(EXITS)
    slot = WorkerSlot(0)
    assert await supervisor._start(slot) is False  # as above
    await supervisor._reap(slot)
    before, counted = fds(), restarts("start_failed")
    first = asyncio.Event()
    task = asyncio.create_task(supervisor._run_slot(slot, first))
    await asyncio.wait_for(first.wait(), 5)
    await asyncio.sleep(2.5)  # attempts at about 0, 0 (+0.5), 1.5 (+1), then a 2 s wait
    supervisor._stopping = True
    supervisor._stop.set()
    await asyncio.wait_for(task, 5)
    tries = restarts("start_failed") - counted
    assert 3 <= tries <= 4, tries
    assert slot.failures == tries and slot.state is SlotState.STOPPED
    assert fds() <= before


async def test_a_worker_that_says_ready_but_never_answers_a_ping_is_killed_as_hung() -> None:
    supervisor = FakeWorkers([sys.executable, "-c", READY_THEN_HANG], pass_fd=True)
    slot = WorkerSlot(0)
    before = fds()
    assert await supervisor._start(slot) is True
    assert slot.serving
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(supervisor._supervise(slot), 10) == "hung"
    took = asyncio.get_running_loop().time() - started
    assert supervision.PING_TIMEOUT_SECONDS <= took < supervision.PING_TIMEOUT_SECONDS + 1.5
    process = slot.process
    await supervisor._reap(slot)
    assert process is not None and process.returncode == -9
    assert fds() <= before

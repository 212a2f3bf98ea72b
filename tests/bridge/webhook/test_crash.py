"""Durability across processes: SIGKILL with events spooled, restart, and several workers on one spool."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.webhook.delivery import WebhookSink

from .children import read_line, reap
from .conftest import spool_rows
from .factory import call_events
from .receiver import Answer, Receiver, Request, free_port

CHILD = Path(__file__).with_name("sink_child.py")
Make = Callable[..., Any]


@pytest.fixture
async def children() -> AsyncIterator[Callable[..., Any]]:
    started: list[asyncio.subprocess.Process] = []

    async def spawn(*args: object) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CHILD),
            *map(str, args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        started.append(proc)
        return proc

    yield spawn
    await reap(started)


async def sigkill(proc: asyncio.subprocess.Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        assert await proc.wait() == -signal.SIGKILL


async def test_sigkill_with_receiver_down_then_restart_delivers_in_order(
    children: Make, receivers: Make, settings: Make, spool_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    child = await children(spool_path, url, "call-", 3, 4, "hold")
    assert await read_line(child) == "PERSISTED"
    await sigkill(child)
    expected = {f"call-{i}": list(range(len(call_events("x", utterances=4)))) for i in range(3)}
    assert len(spool_rows(spool_path)) == sum(map(len, expected.values()))

    receiver: Receiver = await receivers(port=port)  # the receiver comes back
    sink = WebhookSink(settings(url))  # a new worker on the same spool
    await sink.start()
    try:
        await receiver.wait_for(lambda: receiver.by_call() == expected, seconds=15)
        await receiver.wait_for(lambda: sink.pending == 0)
    finally:
        await sink.aclose(2)
    assert len(receiver.processed) == sum(map(len, expected.values()))  # nothing was sent twice
    assert all(r.signature_ok for r in receiver.requests)
    assert spool_rows(spool_path) == []


async def test_sigkill_mid_delivery_to_a_flaky_receiver(
    children: Make, receivers: Make, settings: Make, spool_path: Path
) -> None:
    """Killed while delivering: after restart each call is complete and in order once deduplicated."""

    def answer(r: Request) -> Answer:
        if r.n % 2 == 0:
            return Answer(200, hang=2, processed=True)  # processed, answer lost: a duplicate will follow
        return Answer(200)

    receiver: Receiver = await receivers(answer=answer)
    child = await children(spool_path, receiver.url, "k", 4, 6, "hold")
    assert await read_line(child) == "PERSISTED"
    await receiver.wait_for(lambda: len(receiver.processed) >= 8, seconds=15)
    await sigkill(child)
    before = len(receiver.processed)
    n_events = len(call_events("x", utterances=6))
    assert before < 4 * n_events

    sink = WebhookSink(settings(receiver.url, timeout_seconds=0.5))
    await sink.start()
    try:
        expected = {f"k{i}": list(range(n_events)) for i in range(4)}
        await receiver.wait_for(lambda: receiver.deduplicated() == expected, seconds=30)
        await receiver.wait_for(lambda: sink.pending == 0, seconds=10)
    finally:
        await sink.aclose(2)
    assert spool_rows(spool_path) == []


async def test_workers_share_one_spool(children: Make, receivers: Make, spool_path: Path) -> None:
    """Three worker processes deliver their own calls through one spool file, to a receiver failing
    every other request; each call arrives complete and in order, and the spool ends empty."""
    receiver: Receiver = await receivers(answer=lambda r: Answer(500 if r.n % 2 == 0 else 200))
    procs = [await children(spool_path, receiver.url, f"w{w}-", 3, 5, "deliver") for w in range(3)]
    for proc in procs:
        assert await read_line(proc, 60) == "DONE"
    n_events = len(call_events("x", utterances=5))
    expected = {f"w{w}-{i}": list(range(n_events)) for w in range(3) for i in range(3)}
    assert receiver.deduplicated() == expected
    assert receiver.by_call() == expected  # 500s are not processed: no duplicates at all
    assert spool_rows(spool_path) == []

"""The JSON-lines sink writes from a thread of its own: a reader that stops reading never blocks the loop."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from bridge.events import BridgeEvent
from bridge.sinks import JsonLinesSink


def event(seq: int, size: int = 1000) -> BridgeEvent:
    return BridgeEvent("utterance", "call-1", seq, time.time(), {"text": "x" * size})


async def test_a_stalled_reader_does_not_block_the_loop(tmp_path: Path) -> None:
    """A FIFO whose reader has stopped: 300 KB of events, 4 times the pipe's buffer, are submitted
    without the loop stalling; once the reader reads again every line arrives, whole and in order."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        sink = JsonLinesSink(str(fifo))
        await sink.start()
        loop = asyncio.get_running_loop()
        worst = 0.0
        for seq in range(300):
            before = loop.time()
            sink.submit(event(seq))
            await asyncio.sleep(0)
            worst = max(worst, loop.time() - before)
        assert sink.pending > 0  # the writer thread is stuck on the full pipe...
        # ... and the loop is not: a write on the loop would block for ever on the full pipe. The bound
        # is generous (a loaded machine delays a turn of the loop by tens of ms), not a speed check.
        assert worst < 1.0
        ran: list[int] = []
        sink.ordered_after(lambda: ran.append(sink.pending))
        data = b""
        deadline = time.monotonic() + 10
        while data.count(b"\n") < 300 and time.monotonic() < deadline:
            try:
                chunk = os.read(reader, 1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            data += chunk
        assert [json.loads(line)["seq"] for line in data.splitlines()] == list(range(300))
        await sink.aclose(5)
        assert ran == [0]  # ran on the writer thread after every line before it was written
    finally:
        os.close(reader)


async def test_bounded_backlog_is_refused_loudly(tmp_path: Path) -> None:
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        sink = JsonLinesSink(str(fifo), max_pending=20)
        for seq in range(200):
            sink.submit(event(seq, size=4000))
        assert sink.dropped > 0
        assert sink.pending <= 20
        started = time.monotonic()
        await sink.aclose(0.2)  # the reader never reads: bounded
        assert time.monotonic() - started < 1.0
    finally:
        os.close(reader)


async def test_lines_go_to_a_file_in_order(tmp_path: Path) -> None:
    path = tmp_path / "out" / "events.jsonl"
    sink = JsonLinesSink(str(path))
    for seq in range(50):
        sink.submit(event(seq, size=10))
    await sink.aclose(5)
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == list(range(50))

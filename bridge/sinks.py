"""The JSON-lines sink: each event as one line on stdout or appended to a file.

`submit` encodes the event on the loop and hands the line to a writer thread of the sink's own, which
writes lines one at a time, in submit order, each with a single `os.write` (looping only on a short
write), so lines from several worker processes appending to the same file (O_APPEND) or pipe do not
interleave in practice (a pipe guarantees it up to PIPE_BUF). A reader that stops reading (a full pipe,
a slow disk) blocks that thread, never the event loop.

Bounded: at most `MAX_PENDING` lines wait for the thread; beyond that an event is refused, logged as an
error and counted in `dropped`. A write that fails is logged with its traceback and counted in
`failed`. `aclose(timeout)` waits, within the bound, for the lines already submitted. As before, lines
are not fsynced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from bridge.events import BridgeEvent

logger = logging.getLogger(__name__)

MAX_PENDING = 10_000  # lines waiting for the writer thread


class JsonLinesSink:
    """Writes every event, in order, from a thread of its own; never blocks the loop."""

    def __init__(self, path: str, *, max_pending: int = MAX_PENDING) -> None:
        if path == "-":
            self._fd = sys.stdout.fileno()
            self._own = False
        else:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self._own = True
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jsonl-writer")
        self._closed = False
        self.dropped = 0  # refused: too many lines waiting
        self.failed = 0  # the write failed

    async def start(self) -> None:
        """Nothing to open: the file is opened in the constructor."""

    def submit(self, event: BridgeEvent) -> None:
        line = json.dumps(asdict(event), ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode()
        with self._lock:
            refused = self._closed or self._pending >= self._max_pending
            if not refused:
                self._pending += 1
        if refused:
            self.dropped += 1
            logger.error(
                "jsonl sink %s: event %d (%s) of call %s dropped (%d lines waiting for the writer)",
                "closed" if self._closed else "backed up",
                event.seq,
                event.kind,
                event.call_id,
                self._pending,
                extra={"call_id": event.call_id},
            )
            return
        self._executor.submit(self._write, data)

    def ordered_after(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the writer thread once every line submitted so far is written."""
        if self._closed:
            fn()
            return
        self._executor.submit(self._guarded, fn)

    @property
    def pending(self) -> int:
        """Lines submitted and not yet written."""
        return self._pending

    def _write(self, data: bytes) -> None:
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            self.failed += 1
            logger.exception("jsonl sink: write failed, the event is lost")
        finally:
            with self._lock:
                self._pending -= 1

    @staticmethod
    def _guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            logger.exception("jsonl sink: a function run after the writes failed")

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 (the EventSink contract)
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await loop.run_in_executor(self._executor, lambda: None)
        except TimeoutError:
            logger.error("jsonl sink: %d line(s) still unwritten after %.1f s", self._pending, timeout)
            self._executor.shutdown(wait=False)
            return
        self._executor.shutdown(wait=False)
        if self._own:
            os.close(self._fd)

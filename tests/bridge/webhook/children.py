"""Child processes of the crash tests: their report lines, and reaping them however the test ended."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

LINE_SECONDS = 30.0  # a child's next report; generous, for a loaded 2-core machine


async def read_line(proc: asyncio.subprocess.Process, seconds: float = LINE_SECONDS) -> str:
    """The child's next line on stdout, stripped."""
    assert proc.stdout is not None
    async with asyncio.timeout(seconds):
        return (await proc.stdout.readline()).decode().strip()


async def reap(procs: Iterable[asyncio.subprocess.Process]) -> None:
    """Kill the children still running and wait for every one."""
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        async with asyncio.timeout(10):
            await proc.wait()

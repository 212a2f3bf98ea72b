"""Child processes of the crash tests: the settings the children's sinks run with (imported by plain
name in sink_child.py and worker_child.py), their report lines, and reaping them however a test ended."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from bridge.webhook.delivery import WebhookSettings

LINE_SECONDS = 30.0  # a child's next report; generous, for a loaded 2-core machine
SECRET = b"test-secret"  # receiver.SECRET, without importing aiohttp.web into every child


def child_settings(spool: str, url: str) -> WebhookSettings:
    """Short timeouts and backoffs, and claims every 0.2 s, so a test's outage and recovery are quick."""
    return WebhookSettings(
        urls=(url,),
        secret=SECRET,
        spool_path=Path(spool),
        timeout_seconds=0.5,
        backoff_initial_seconds=0.02,
        backoff_max_seconds=0.2,
        claim_interval_seconds=0.2,
    )


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

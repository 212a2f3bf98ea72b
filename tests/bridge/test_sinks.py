"""The JSON-lines sink writes from a thread of its own: a reader that stops reading never blocks the loop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import parse_config
from bridge.errors import ConfigError
from bridge.events import BridgeEvent
from bridge.route_sinks import RouteSinks
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


WEBHOOK = {"sink": {"kind": "webhook"}, "webhook": {"urls": ["http://127.0.0.1:9/hook"]}}
SALES = {"name": "sales", "match": {"to": "1001"}, "webhook": {"urls": ["http://a/"], "secret_env": "SALES"}}


@pytest.mark.parametrize(
    ("raw", "environ", "error"),
    [
        (WEBHOOK, {"VBLAZE_BRIDGE_WEBHOOK_SECRET": "s"}, None),
        (WEBHOOK, {}, "webhook.secret_env: environment variable VBLAZE_BRIDGE_WEBHOOK_SECRET is not set"),
        (
            {**WEBHOOK, "routes": [SALES]},
            {"VBLAZE_BRIDGE_WEBHOOK_SECRET": "s"},
            "routes.sales: webhook.secret_env",
        ),
        ({**WEBHOOK, "routes": [SALES]}, {"VBLAZE_BRIDGE_WEBHOOK_SECRET": "s", "SALES": "t"}, None),
        (
            {"routes": [{**SALES, "sink": {"kind": "webhook"}}]},
            {},
            "routes.sales: webhook.secret_env: environment variable SALES",
        ),
        ({"routes": [SALES]}, {}, None),  # its webhook section is not used: the route's sink is jsonl
        ({}, {}, None),  # the jsonl sink needs no secret
    ],
)
def test_unset_webhook_credentials_are_found_before_any_worker_starts(
    raw: dict[str, Any], environ: dict[str, str], error: str | None
) -> None:
    config = parse_config(raw)
    if error is None:
        RouteSinks.check_credentials(config, environ)
    else:
        with pytest.raises(ConfigError, match=re.escape(error)):
            RouteSinks.check_credentials(config, environ)


def test_run_refuses_to_start_without_the_webhook_secret(tmp_path: Path) -> None:
    """Exit 2 at once, naming the variable, and no worker started (they would each fail on it)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**WEBHOOK, "metrics": {"port": 0}, "control": {"port": 0}}))
    env = {k: v for k, v in os.environ.items() if k != "VBLAZE_BRIDGE_WEBHOOK_SECRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    run = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "webhook.secret_env: environment variable VBLAZE_BRIDGE_WEBHOOK_SECRET" in run.stderr
    assert "worker 0 started" not in run.stderr

"""What each part of a worker's life costs in memory once forked: its private dirty pages, step by step.

A parent prepares as the zygote does (bridge/zygote.py: PREFORK_MODULES and WARM_MODULES imported, the
collector off, `gc.freeze()` before the fork) and forks a child, which takes the steps below one after
the other, in a worker's order, and reads its own Private_Dirty (/proc/self/smaps_rollup) after each:
what it has written since the fork, the memory it does not share with its parent. Python writes the
reference count of every object it touches, so a step costs the pages of what it allocates *and* of
every shared object it reads. `--rounds` children take the same steps; each step's increase is printed
as the median (and range) over the rounds.

    forked     the fork alone, then 0.5 s
    config     the config taken as a worker takes it: the zygote's parsed copy, the file reread to check
               that it still holds the same bytes (bridge/zygote.py: WarmConfig)
    loop       a uvloop event loop running
    sink       the webhook sink started: its spool opened, its thread, its HTTP client
    events     20 events of 4 calls delivered to a real HTTP receiver (a process of its own), the sink closed
    engine     4 WebSockets to the stand-in (the bridge's upgrade headers), 100 chunks of 100 ms each
    pjsua2     the SIP endpoint started (sip.endpoint.SipEndpoint, the bridge's settings)

The receiver and the stand-in run as processes of their own, so that nothing in the parent writes
to the pages it shares with the child while the child measures.

    .venv/bin/python bench/fork_memory.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import pool_config, smaps_rollup  # noqa: E402
from bridge.config import load_config  # noqa: E402
from bridge.demo import start_standin, stop_process  # noqa: E402
from bridge.zygote import PREFORK_MODULES, WARM_MODULES, WarmConfig  # noqa: E402

STEPS = ("forked", "config", "loop", "sink", "events", "engine", "pjsua2")
CALLS = 4
CHUNK = b"\x00\x01" * 800  # 100 ms of 8 kHz 16-bit audio
# The benchmark's own HTTP receiver (bench/load.py), in a process of its own; it prints its port once up.
RECEIVER = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from bench.load import HookReceiver
receiver = HookReceiver()
receiver.start()
print(receiver.port, flush=True)
time.sleep(24 * 3600)
"""


def private_dirty_kib() -> int:
    return smaps_rollup("self")["Private_Dirty"] // 1024


def child(config_path: Path, warm: WarmConfig, out: int) -> None:
    """Take the steps, write each one's Private_Dirty (KiB) and the modules imported after the fork to
    `out` as JSON, and exit."""
    marks: list[int] = []
    before = set(sys.modules)
    try:
        time.sleep(0.5)
        marks.append(private_dirty_kib())
        import uvloop

        config = warm.current(str(config_path))
        if config is None:
            raise RuntimeError("the config file changed after the parent parsed it")
        marks.append(private_dirty_kib())
        uvloop.run(_steps(config, marks))
    finally:
        imported = sorted(set(sys.modules) - before)
        os.write(out, json.dumps({"marks": marks, "imported": imported}).encode())
        os._exit(0)  # the SIP endpoint is not stopped (see sip.endpoint: os._exit after pjsua2)


async def _steps(config: Any, marks: list[int]) -> None:
    from websockets.asyncio.client import connect

    from bridge.events import BridgeEvent
    from bridge.sip_adapter import sip_settings, worker_readiness
    from bridge.vblaze.protocol import request_headers
    from bridge.webhook.delivery import WebhookSettings, WebhookSink
    from sip.endpoint import SipEndpoint
    from sip.settings import NullObserver

    await asyncio.sleep(0.1)
    marks.append(private_dirty_kib())
    settings = WebhookSettings.from_config(config.webhook, {config.webhook.secret_env: "bench"})
    sink = WebhookSink(settings)
    await sink.start()
    marks.append(private_dirty_kib())
    for n in range(20):
        sink.submit(
            BridgeEvent("utterance", f"call-{n % CALLS}", n // CALLS, time.time(), {"text": "a" * 200})
        )
    await sink.aclose(30.0)  # delivers them all within the bound (what is left would stay spooled)
    if sink.pending:
        raise RuntimeError(f"{sink.pending} events not delivered")
    marks.append(private_dirty_kib())
    headers = request_headers(config.engine, config.audio, f"fork-memory-{os.getpid()}")
    async with asyncio.timeout(60):
        streams = [await connect(config.engine.url, additional_headers=headers) for _ in range(CALLS)]
        for _ in range(100):
            for ws in streams:
                await ws.send(CHUNK)
        for ws in streams:
            await ws.send(b"")
            async for _reply in ws:
                pass
    marks.append(private_dirty_kib())
    endpoint = SipEndpoint(
        sip_settings(config),
        config.sip.first_port,
        config.sip.rtp_first_port,
        lambda event: None,
        lambda *audio: None,
        worker_readiness,
        NullObserver(),
    )
    await asyncio.get_running_loop().run_in_executor(None, endpoint.start)
    await asyncio.sleep(0.5)
    marks.append(private_dirty_kib())


def one_round(config_path: Path, warm: WarmConfig) -> tuple[list[int], list[str]]:
    read_end, write_end = os.pipe()
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        child(config_path, warm, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    marks: list[int] = result["marks"]
    if len(marks) != len(STEPS):
        raise RuntimeError(f"the child stopped after {len(marks)} of {len(STEPS)} steps (see its traceback)")
    return marks, result["imported"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="children, each taking every step")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="vblaze-fork-memory-"))
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    standin, url = start_standin(["--recognizer", "vad-only"])
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline() or "0")  # "" if it failed to start (its traceback is above)
        if not port:
            raise RuntimeError("the HTTP receiver did not start")
        config_path, _ = pool_config(
            workdir, "fork-memory", CALLS, url, 0, 100, webhook=f"http://127.0.0.1:{port}/hook"
        )
        gc.disable()  # as the zygote: no collection while it prepares and forks
        for name in (*PREFORK_MODULES, *WARM_MODULES):
            importlib.import_module(name)
        warm = WarmConfig(config_path.read_bytes(), load_config(config_path))  # as the supervisor's
        results = [one_round(config_path, warm) for _ in range(args.rounds)]
    finally:
        receiver.terminate()
        receiver.wait(10)
        stop_process(standin, 15)
    rounds = [marks for marks, _ in results]
    print(f"private dirty of a child forked from a zygote-like parent, KiB ({args.rounds} rounds)\n")
    print(f"{'step':10} {'after it':>9} {'the step':>9}  range")
    for i, step in enumerate(STEPS):
        after = [r[i] for r in rounds]
        delta = [r[i] - (r[i - 1] if i else 0) for r in rounds]
        print(
            f"{step:10} {statistics.median(after):9.0f} {statistics.median(delta):9.0f}"
            f"  {min(delta)}-{max(delta)}"
        )
    imported = results[0][1]
    print(f"\nmodules the child imported after the fork ({len(imported)}): {', '.join(imported) or 'none'}")
    subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

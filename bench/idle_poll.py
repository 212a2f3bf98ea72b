"""Idle cost of one pjsua2 endpoint: who polls it, and whether the conference clock runs.

Modes, each a bare endpoint (one UDP transport, as a worker has) with no call, in a child of its own:

- `python` (`python:MS` with --poll-ms): ``threadCnt = 0``, a Python thread calls
  ``libHandleEvents(POLL_MS)`` in a loop, the null audio device (the conference clock) running: the
  bridge's SIP thread until 2026-12-02;
- `pjsua`: ``threadCnt = 1``, pjsua's own C thread polls and no Python runs while nothing happens,
  the clock running; `pjsua:noclock` the same without the clock;
- `endpoint`: the bridge's own `SipEndpoint` as a worker runs it today: its SIP thread waits up to
  IDLE_POLL_MS and is woken by its commands, and the clock runs only while a call holds a frame port,
  so an idle one has none.

Each is measured by its CPU (utime + stime from /proc) while idle, in alternating rounds.

    .venv/bin/python bench/idle_poll.py --seconds 10 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLK_TCK = os.sysconf("SC_CLK_TCK")


def sip_endpoint(port: int) -> None:
    """In a child: the bridge's SipEndpoint, idle until killed."""
    from bridge.config import parse_config
    from bridge.sip_adapter import sip_settings, worker_readiness
    from sip.endpoint import SipEndpoint

    config = parse_config(
        {"sip": {"first_port": port, "workers": 1}, "engine": {"url": "ws://127.0.0.1:9/transcribe"}},
        "idle_poll",
    )
    SipEndpoint(
        sip_settings(config), port, port + 2, lambda e: None, lambda *a: None, worker_readiness
    ).start()
    while True:
        time.sleep(3600)


def endpoint(mode: str, port: int) -> None:
    """In a child: start an endpoint polled `mode`-wise and idle until killed."""
    if mode == "endpoint":
        sip_endpoint(port)
    import pjsua2 as pj

    from sip.endpoint import POLL_MS

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 1 if mode.startswith("pjsua") else 0
    cfg.uaConfig.mainThreadOnly = False
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    cfg.medConfig.channelCount = 1
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = port
    tcfg.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    if mode == "pjsua:noclock":
        ep.audDevManager().setNoDev()
    else:
        ep.audDevManager().setNullDev()
    if mode.startswith("pjsua"):
        while True:
            time.sleep(3600)
    poll_ms = int(mode.partition(":")[2] or POLL_MS)
    while True:
        ep.libHandleEvents(poll_ms)


def ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def measure(mode: str, port: int, seconds: float) -> float:
    """Percent of a core the idle endpoint used over `seconds` (after 2 s to settle)."""
    pid = os.fork()
    if pid == 0:
        try:
            endpoint(mode, port)
        finally:
            os._exit(1)
    try:
        time.sleep(2.0)
        t0, w0 = ticks(pid), time.monotonic()
        time.sleep(seconds)
        return 100.0 * (ticks(pid) - t0) / CLK_TCK / (time.monotonic() - w0)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=25360)
    parser.add_argument(
        "--poll-ms", type=int, action="append", default=[], help="also Python polling this often"
    )
    args = parser.parse_args()
    import pjsua2  # noqa: F401  (imported once, before the forks)

    from sip.endpoint import POLL_MS

    modes = ["python", *(f"python:{ms}" for ms in args.poll_ms), "pjsua", "pjsua:noclock", "endpoint"]
    seen: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        for mode in modes if round_ % 2 == 0 else modes[::-1]:
            seen[mode].append(measure(mode, args.port, args.seconds))
            print(f"round {round_ + 1} {mode:13}: {seen[mode][-1]:.2f} % of a core", flush=True)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"idle endpoint, {args.rounds} rounds x {args.seconds:g} s, load average {' '.join(load)}:")
    for mode, values in seen.items():
        if mode == "endpoint":
            label = "SipEndpoint (woken; clock on demand)"
        elif mode.startswith("pjsua"):
            label = "threadCnt 1, pjsua's thread" + (", no clock" if mode.endswith("noclock") else "")
        else:
            label = f"threadCnt 0, Python polls every {mode.partition(':')[2] or POLL_MS} ms"
        print(
            f"  {label:38} median {statistics.median(values):.2f} % of a core "
            f"({min(values):.2f}-{max(values):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

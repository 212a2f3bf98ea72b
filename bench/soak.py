"""Soak benchmark: many concurrent calls with churn for a long time; does memory or fd use creep?

Starts the stand-in engine (vad-only), the bridge (JSON-lines sink, metrics on) and one sipp caller per
worker, each keeping `calls_per_worker` calls up with new calls replacing ended ones, for `--minutes`.
Every `--sample-seconds` it prints the bridge's processes' RSS, PSS and open file descriptors (supervisor
plus workers) and the calls active; at the end the least-squares slope of each per hour, and how the calls
ended. Everything stops by itself.

    .venv/bin/python bench/soak.py --minutes 30 --calls 52
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.demo import (  # noqa: E402
    free_port_block,
    sipp_scenario,
    speech_file,
    start_standin,
    stop_process,
    wait_for_sip,
)

CALLS_PER_WORKER = 4


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def memory(pid: int) -> tuple[int, int, int]:
    """RSS and PSS in kB, and the number of open fds, of one process (zeros if it is gone)."""
    try:
        rss = pss = 0
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0, 0, 0
    return rss, pss, fds


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mx) * (v - my) for t, v in points) / var * 3600


def scrape_active(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return math.nan
    found = re.search(r"^vblaze_bridge_calls_active (\S+)$", text, re.M)
    return float(found.group(1)) if found else math.nan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--calls", type=int, default=52, help="concurrent calls (a multiple of 4)")
    parser.add_argument("--call-seconds", type=int, default=20, help="length of each call (churn)")
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument(
        "--warmup-seconds", type=float, default=60.0, help="samples before this are not in the slope"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the finally below stops what it started
    workers = max(1, math.ceil(args.calls / CALLS_PER_WORKER))
    work = Path(tempfile.mkdtemp(prefix="vblaze-soak-"))
    procs: list[subprocess.Popen[bytes]] = []
    standin, url = start_standin(["--recognizer", "vad-only", "--max-streams", str(args.calls + 16)])
    try:
        sip_port = free_port_block(workers, 16000, 26000)
        metrics_port = free_port_block(1, 26000, 27000)
        config = {
            "sip": {
                "first_port": sip_port,
                "workers": workers,
                "rtp_first_port": free_port_block(40 * workers, 30000, 60000),
            },
            "engine": {"url": url},
            "sink": {"kind": "jsonl", "jsonl_path": str(work / "events.jsonl")},
            "metrics": {"port": metrics_port},
            "logging": {"level": "WARNING", "format": "json"},
            "state": {"directory": str(work / "state")},
        }
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        log = (work / "bridge.log").open("wb")
        bridge = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(work / "config.yaml")],
            stderr=log,
            cwd=ROOT,
        )
        procs.append(bridge)
        for index in range(workers):
            wait_for_sip(sip_port + index, timeout=60)
        audio = speech_file(
            "one two three four five six seven eight nine ten | the quick brown fox jumps over the lazy dog",
            work,
        )
        scenario = sipp_scenario(audio, work, args.call_seconds * 1000)
        # New calls offered every second; sipp's -l keeps each worker at CALLS_PER_WORKER, so an ended
        # call is replaced at once. -m bounds the run: the calls that fit in --minutes.
        # A call takes its length plus up to a second before sipp offers the next one.
        total = max(1, int(args.minutes * 60 / (args.call_seconds + 1) * CALLS_PER_WORKER))
        duration = args.minutes * 60
        media = free_port_block(2 * workers * 8, 40000, 60000)
        for index in range(workers):
            procs.append(
                subprocess.Popen(
                    ["sipp", "-sf", str(scenario), "-l", str(CALLS_PER_WORKER),
                     "-r", "1", "-rp", "1000", "-m", str(total),
                     "-i", "127.0.0.1", "-p", str(free_port_block(1, 27000 + index * 20, 29000)),
                     "-mp", str(media + index * 16), "-s", "soak", "-nostdin",
                     "-trace_stat", "-stf", str(work / f"sipp-{index}.csv"), f"127.0.0.1:{sip_port + index}"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=work,
                )
            )  # fmt: skip
        print(f"soak: {args.calls} concurrent calls of {args.call_seconds} s on {workers} workers for "
              f"{args.minutes:.0f} min; files in {work}", flush=True)  # fmt: skip
        print(f"{'t (s)':>7} {'active':>6} {'RSS MB':>8} {'PSS MB':>8} {'fds':>5} {'procs':>5}", flush=True)
        start = time.monotonic()
        series: dict[str, list[tuple[float, float]]] = {"rss": [], "pss": [], "fds": []}
        while time.monotonic() - start < duration:
            time.sleep(min(args.sample_seconds, max(0.0, duration - (time.monotonic() - start))))
            elapsed = time.monotonic() - start
            pids = [bridge.pid, *children(bridge.pid)]
            totals = [sum(values) for values in zip(*(memory(pid) for pid in pids), strict=True)]
            rss, pss, fds = totals[0] / 1024, totals[1] / 1024, totals[2]
            active = scrape_active(metrics_port)
            print(f"{elapsed:7.0f} {active:6.0f} {rss:8.1f} {pss:8.1f} {fds:5d} {len(pids):5d}", flush=True)
            if elapsed >= args.warmup_seconds:
                series["rss"].append((elapsed, rss))
                series["pss"].append((elapsed, pss))
                series["fds"].append((elapsed, fds))
        for proc in procs[1:]:
            try:
                proc.wait(timeout=2 * args.call_seconds + 60)
            except subprocess.TimeoutExpired:
                print(f"sipp (pid {proc.pid}) still running after the soak; stopped", flush=True)
                stop_process(proc, 10)
        time.sleep(2)
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(timeout=120)
        ended: Counter[str] = Counter()
        gaps = 0
        with (work / "events.jsonl").open() as handle:
            for line in handle:
                event = json.loads(line)
                if event["kind"] == "call.ended":
                    ended[event["data"]["reason"]] += 1
                    gaps += len(event["data"]["gaps"])
        sipp_ok = sipp_failed = 0
        for index in range(workers):
            rows = (work / f"sipp-{index}.csv").read_text().splitlines()
            last = dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))
            sipp_ok += int(last.get("SuccessfulCall(C)", 0))
            sipp_failed += int(last.get("FailedCall(C)", 0))
        print(f"\nslope per hour after {args.warmup_seconds:.0f} s of warm-up (least squares):")
        for name, unit in (("rss", "MB"), ("pss", "MB"), ("fds", "fds")):
            values = [v for _, v in series[name]]
            if values:
                span = (
                    f"from {values[0]:.1f} to {values[-1]:.1f}, min {min(values):.1f}, max {max(values):.1f}"
                )
                print(f"  {name.upper():4} {slope_per_hour(series[name]):+8.2f} {unit}/h ({span})")
        print(f"calls by sipp: {sipp_ok} ok, {sipp_failed} failed; call.ended by reason: {dict(ended)}")
        print(f"gaps reported: {gaps}")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        stop_process(standin, 15)


if __name__ == "__main__":
    sys.exit(main())

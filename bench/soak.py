"""Soak benchmark: many concurrent calls with churn for a long time; does memory or fd use creep?

Starts the stand-in engine (vad-only), the bridge (JSON-lines sink, metrics on) and one sipp caller per
worker, each keeping `calls_per_worker` calls up with new calls replacing ended ones, for `--minutes`.
Every `--sample-seconds` it prints the bridge's processes' RSS, PSS and open file descriptors (supervisor
plus workers) and the calls active; at the end the least-squares slope of each per hour, and how the calls
ended. Everything stops by itself.

    .venv/bin/python bench/soak.py --minutes 30 --calls 52

With `--hostile RATE`, RATE malformed datagrams and torture INVITEs a second (tests/fixtures/torture.py's
invalid messages and INVITEs that must be refused) arrive at the workers meanwhile, from other loopback
addresses, mostly over UDP and every tenth over TCP; at the end it checks that no call was lost, no
worker restarted and every call's events are complete and in order:

    .venv/bin/python bench/soak.py --minutes 10 --calls 40 --hostile 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.demo import sipp_scenario, speech_file, start_standin, stop_process, wait_for_sip  # noqa: E402
from sip.limits import rtp_ports  # noqa: E402
from tests.fixtures import rawsip  # noqa: E402
from tests.fixtures.harness import free_port_block  # noqa: E402
from tests.fixtures.torture import INVALID  # noqa: E402

CALLS_PER_WORKER = 4
HOSTILE_SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]


def hostile_messages(port: int) -> list[bytes]:
    """What the hostile sender cycles through: the torture suite's invalid messages and INVITEs that must
    be refused (no SDP, no codec in common, a Content-Length beyond the datagram)."""
    sdp = rawsip.SDP.format(port=4000, pts="18").replace("0 PCMU", "18 G729")
    return [
        *INVALID.values(),
        rawsip.invite(port, body="", content_type=None),
        rawsip.invite(port, body=sdp),
        rawsip.invite(port, content_length=900),
    ]


def send_hostile(ports: list[int], rate: float, stop: threading.Event, sent: list[int]) -> None:
    """Send `rate` hostile messages a second, round robin over ports, sources and messages, until `stop`."""
    catalogue = {port: hostile_messages(port) for port in ports}
    udp = {}
    for source in HOSTILE_SOURCES:
        udp[source] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp[source].bind((source, 0))
    n = 0
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            port = ports[n % len(ports)]
            messages = catalogue[port]
            message = messages[(n // len(ports)) % len(messages)]
            source = HOSTILE_SOURCES[n % len(HOSTILE_SOURCES)]
            branch = f"z9hG4bK{uuid.uuid4().hex[:16]}"
            try:
                if n % 10 == 9:
                    with socket.create_connection(
                        (("127.0.0.1", port)), timeout=1, source_address=(source, 0)
                    ) as tcp:
                        tcp.sendall(rawsip.fill(message, "tcp", source, tcp.getsockname()[1], branch))
                else:
                    sock = udp[source]
                    data = rawsip.fill(message, "udp", source, sock.getsockname()[1], branch)
                    sock.sendto(data[:65507], ("127.0.0.1", port))
            except OSError:
                pass
            n += 1
            sent[0] = n
            next_at += 1.0 / rate
            stop.wait(max(0.0, next_at - time.monotonic()))
    finally:
        for sock in udp.values():
            sock.close()


def restarts(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(v) for v in re.findall(r"^vblaze_bridge_worker_restarts_total\{[^}]*\} (\S+)$", text, re.M)
    )


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
    parser.add_argument(
        "--hostile", type=float, default=0.0, help="malformed datagrams and torture INVITEs a second"
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
                "rtp_first_port": free_port_block(rtp_ports(workers), 30000, 60000),
            },
            "engine": {"url": url},
            "sink": {"kind": "jsonl", "jsonl_path": str(work / "events.jsonl")},
            "metrics": {"port": metrics_port},
            "control": {"port": 0},
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
        stop_hostile = threading.Event()
        sent = [0]
        hostile = threading.Thread(
            target=send_hostile,
            args=([sip_port + i for i in range(workers)], args.hostile, stop_hostile, sent),
            daemon=True,
        )
        if args.hostile > 0:
            hostile.start()
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
        stop_hostile.set()
        hostile_seconds = time.monotonic() - start
        for proc in procs[1:]:
            try:
                proc.wait(timeout=2 * args.call_seconds + 60)
            except subprocess.TimeoutExpired:
                print(f"sipp (pid {proc.pid}) still running after the soak; stopped", flush=True)
                stop_process(proc, 10)
        time.sleep(2)
        restarted = restarts(metrics_port)
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(timeout=120)
        ended: Counter[str] = Counter()
        gaps = 0
        by_call: dict[str, list[dict[str, object]]] = {}
        with (work / "events.jsonl").open() as handle:
            for line in handle:
                event = json.loads(line)
                by_call.setdefault(event["call_id"], []).append(event)
                if event["kind"] == "call.ended":
                    ended[event["data"]["reason"]] += 1
                    gaps += len(event["data"]["gaps"])
        broken = [
            call_id
            for call_id, events in by_call.items()
            if [e["seq"] for e in events] != list(range(len(events)))
            or events[0]["kind"] != "call.started"
            or events[-1]["kind"] != "call.ended"
        ]
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
        print(
            f"worker restarts: {restarted:.0f}; calls with events incomplete or out of order: {len(broken)}"
        )
        if args.hostile > 0:
            print(f"hostile messages sent: {sent[0]} ({sent[0] / hostile_seconds:.1f}/s)")
        return 0 if not broken and not restarted and not sipp_failed else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        stop_process(standin, 15)


if __name__ == "__main__":
    sys.exit(main())

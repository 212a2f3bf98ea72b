"""Load benchmark: K concurrent SIP calls through Kamailio into the bridge, against a bare pjsua2 floor.

Pairs of phases on the same machine, interleaved (bridge, floor, bridge, floor, ...: `--pairs`, 3 by
default), so that a drift of the machine's load lands in both sides of a pair rather than in the
ratio; each pair's ratios are printed, then their median and range:

1. **bridge**: the stand-in engine (`--recognizer vad-only`), the bridge (`vblaze-bridge run`, K/4
   workers, forked from its zygote unless `--bridge-spawn exec`) and Kamailio in front of it
   (`bridge/assets/kamailio.cfg`, list from `bridge.dispatcher`). sipp places K calls through Kamailio
   at `--rate` calls/s; each plays real speech (espeak-ng, G.711 µ-law, looped) as RTP for
   `--seconds`, then hangs up.
2. **floor**: the same number of bare pjsua2 workers (`bench/floor_worker.py`: the bridge's own
   `sip.endpoint.SipEndpoint`, audio counted and thrown away), forked from one parent as the bridge's
   are (`--floor-spawn exec`: one interpreter each), behind their own Kamailio, same calls.
3. with `--floor-stream`, each round has a third phase, **the streaming floor**: the floor's workers
   also write each call's frames to the engine over a WebSocket of the call's own
   (`floor_worker.py --stream`), the least any bridge must do on top of the bare floor. Its ratios
   (bridge/streaming floor, streaming floor/floor) say how much of the bridge's cost above the floor
   is sending audio at all, and how much is the bridge's own work.

Figures per phase: calls ok / failed (sipp), audio frames per second per stream; frames lost
(expected from each call's duration at `audio.port_frame_ms`, minus those received) and where the
audio went: RTP packets expected (call durations at 20 ms), received and
lost in transit as pjmedia's stream statistics count them (received + sequence gaps: what sipp sent),
frames dropped by the bridge (its counter) or the floor;
CPU of every process of the pool (utime + stime deltas from /proc over the steady phase, in cores), its
idle CPU per worker before the calls, PSS per call (smaps_rollup, summed over the pool, at the end of
the steady phase), the latency percentiles of the bridge's own histograms (scraped from its /metrics), and the
machine's load average and CPU idle / steal (/proc/stat deltas) over the steady phase. After each
bridge phase one worker is SIGKILLed and the time until its replacement answers SIP is printed.
sipp, Kamailio and the stand-in run on the same cores and are not counted.

Both pools' memory is marked mergeable for the host's KSM (`sip.memory_merge`, bridge/memory_merge.py)
unless `--ksm off`; `--ksm on` also turns the host's KSM on for the run (root), scanning `--ksm-pages`
pages every 20 ms, and puts its settings back afterwards. Each phase notes the pages merged and the
CPU of the `ksmd` kernel thread, which is not counted in the pool's.

    .venv/bin/python bench/load.py                      # 200 calls x 30 s, 3 pairs
    .venv/bin/python bench/load.py --calls 40 --seconds 20 --pairs 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from aiohttp import web  # noqa: E402

from bridge.config import parse_config  # noqa: E402
from bridge.demo import (  # noqa: E402
    free_port,
    sipp_scenario,
    speech_file,
    start_standin,
    stop_process,
    wait_for_sip,
)
from bridge.dispatcher import dispatcher_list, kamailio_args  # noqa: E402
from bridge.memory_merge import ksm_running  # noqa: E402
from sip.limits import rtp_ports  # noqa: E402
from tests.fixtures.harness import host_ksm_on, ksm_stat, restore_host_ksm  # noqa: E402

KAMAILIO_CFG = ROOT / "bridge" / "assets" / "kamailio.cfg"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SPEECH = (
    "Thank you for calling the support line, my name is Alex, how can I help you today? "
    "I am calling about my order number four two seven, which was supposed to arrive last week. "
    "The tracking page says it was delivered, but nothing came to my door, and my neighbours saw nothing. "
    "Could you please check with the courier and send a replacement, or refund the full amount to my card? "
)


# --- Kamailio in front of a pool (also used by tests/e2e/test_kamailio.py) ---------------------------


@dataclass
class Kamailio:
    """A Kamailio child process running bridge/assets/kamailio.cfg on 127.0.0.1:`port` (UDP)."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path
    ctl_socket: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def destinations(self) -> dict[str, str]:
        """URI -> flags from `kamcmd dispatcher.list` (A active, I inactive, P probing, D disabled)."""
        out = subprocess.run(
            ["kamcmd", "-s", f"unix:{self.ctl_socket}", "dispatcher.list"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
        flags: dict[str, str] = {}
        uri = None
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("URI:"):
                uri = line.split(":", 1)[1].strip()
            elif line.startswith("FLAGS:") and uri is not None:
                flags[uri] = line.split(":", 1)[1].strip()
                uri = None
        return flags

    def wait_destinations(self, want: int, active: bool = True, timeout: float = 30.0) -> dict[str, str]:
        """Wait until `want` destinations are active (or, with active=False, inactive)."""
        deadline = time.monotonic() + timeout
        flags: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            flags = self.destinations()
            count = sum(1 for f in flags.values() if f.startswith("A") == active)
            if len(flags) and count >= want:
                return flags
            time.sleep(0.2)
        raise RuntimeError(
            f"kamailio: fewer than {want} destinations {'' if active else 'in'}active: {flags}"
        )

    def stop(self) -> None:
        stop_process(self.proc, 10)


def start_kamailio(
    list_text: str,
    workdir: Path,
    port: int | None = None,
    ping_interval: int = 1,
    defines: Sequence[str] = (),
) -> Kamailio:
    """Write the dispatcher list, start Kamailio in the foreground and wait until it answers SIP.

    `defines` are more `-A` defines for the cfg (e.g. WITH_SECURE and its paths, docs/security.md)."""
    workdir.mkdir(parents=True, exist_ok=True)
    list_path = workdir / "dispatcher.list"
    list_path.write_text(list_text)
    port = port or free_port(socket.SOCK_DGRAM)
    ctl = workdir / "kamailio_ctl"
    argv = kamailio_args(
        str(KAMAILIO_CFG),
        str(list_path),
        f"udp:127.0.0.1:{port}",
        runtime_dir=str(workdir),
        ctl_socket=str(ctl),
        ping_interval=ping_interval,
        extra_defines=defines,
    )
    log_path = workdir / "kamailio.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=workdir, start_new_session=True)
    kam = Kamailio(proc, port, workdir, log_path, ctl)
    try:
        wait_for_sip(port, timeout=15)
    except RuntimeError:
        kam.stop()
        raise RuntimeError(f"kamailio did not start:\n{kam.log()[-3000:]}") from None
    return kam


# --- sipp through the proxy --------------------------------------------------------------------------


def proxied_scenario(text: str) -> str:
    """A sipp caller scenario that follows Record-Route: ACK and BYE go to the answering worker's
    Contact ([next_url]) with the proxy's Route set ([routes]), through the proxy."""
    text = text.replace('<recv response="200" rtd="true"/>', '<recv response="200" rtd="true" rrs="true"/>')
    for method in ("ACK", "BYE"):
        text = text.replace(
            f"{method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0", f"{method} [next_url] SIP/2.0"
        )
    text = text.replace(
        "      Call-ID: [call_id]\n      CSeq: 1 ACK",
        "      [routes]\n      Call-ID: [call_id]\n      CSeq: 1 ACK",
    )
    text = re.sub(r"(      Call-ID: \[call_id\]\n)(      CSeq: \d+ BYE)", r"      [routes]\n\1\2", text)
    if text.count("[routes]") != 2 or text.count("[next_url]") != 2:
        raise ValueError("the sipp scenario template changed; proxied_scenario cannot rewrite it")
    return text


def proxied_scenario_file(audio: Path, directory: Path, hold_ms: int, loop: bool = False) -> Path:
    """`bridge.demo.sipp_scenario` for `audio`, rewritten for a proxy; `loop` repeats the audio."""
    plain = sipp_scenario(audio, directory, hold_ms)
    text = proxied_scenario(plain.read_text())
    if loop:
        text = text.replace(f'rtp_stream="{audio},1,', f'rtp_stream="{audio},-1,')
    path = plain.with_name(plain.stem + ("_proxied_loop.xml" if loop else "_proxied.xml"))
    path.write_text(text)
    return path


def sipp_command(
    scenario: Path,
    target_port: int,
    stats: Path,
    *,
    calls: int,
    concurrent: int,
    rate: float,
    local_port: int,
    media_port: int,
    local_ip: str = "127.0.0.1",
    target_host: str = "127.0.0.1",
) -> list[str]:
    """sipp placing `calls` calls from `local_ip` to `target_host`:`target_port`."""
    return [
        "sipp", "-sf", str(scenario), "-m", str(calls), "-l", str(concurrent), "-r", str(rate),
        "-i", local_ip, "-p", str(local_port), "-mp", str(media_port), "-s", "svc", "-nostdin",
        "-trace_stat", "-stf", str(stats), "-fd", "1", "-timeout_error", "-max_socket", "4096",
        f"{target_host}:{target_port}",
    ]  # fmt: skip


def sipp_stats(path: Path) -> dict[str, str]:
    """The last line of sipp's -trace_stat CSV, by column."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        return {}
    return dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))


# --- process figures from /proc -----------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text()
            out.extend(int(p) for p in text.split())
    except OSError:
        pass
    return out


def cpu_ticks(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total


def smaps_rollup(pid: int | str) -> dict[str, int]:
    """The memory figures of /proc/PID/smaps_rollup (`pid` may be "self"), in bytes, by name (Pss,
    Private_Dirty, ...); empty if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    return {name: int(kib) * 1024 for name, kib in re.findall(r"^(\w+):\s+(\d+) kB", text, re.MULTILINE)}


def pss_bytes(pids: Iterable[int]) -> int:
    return sum(smaps_rollup(pid).get("Pss", 0) for pid in pids)


def cpu_times() -> list[int]:
    """The machine's CPU times (/proc/stat, first line): user nice system idle iowait irq softirq steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def idle_steal(before: list[int], after: list[int]) -> tuple[float, float]:
    """Percent of the machine's CPU time idle (with iowait) and stolen between two `cpu_times`."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    spent = sum(delta) or 1
    return 100.0 * (delta[3] + delta[4]) / spent, 100.0 * delta[7] / spent


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def pss_breakdown(pids: list[int]) -> str:
    """PSS of the pool's parts at the end of the steady phase: its first process, a zygote (if any)
    and the median worker, with the worker's private dirty memory (what it does not share)."""
    mb = 1024 * 1024
    parts: dict[str, list[tuple[int, int]]] = {"top": [], "zygote": [], "worker": []}
    for number, pid in enumerate(pids):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        memory = smaps_rollup(pid)
        if not memory:
            continue
        kind = "top" if number == 0 else "zygote" if b"vblaze-bridge zygote" in title else "worker"
        parts[kind].append((memory["Pss"], memory["Private_Dirty"]))
    workers = sorted(parts["worker"])
    middle = workers[len(workers) // 2] if workers else (0, 0)
    zygote = f", zygote {parts['zygote'][0][0] / mb:.1f}" if parts["zygote"] else ""
    return (
        f"PSS MB: first process {sum(p for p, _ in parts['top']) / mb:.1f}{zygote}, median worker "
        f"{middle[0] / mb:.1f} (private dirty {middle[1] / mb:.1f}) of {len(workers)}"
    )


def ksmd_pid() -> int | None:
    """The host's KSM kernel thread, whose CPU is the cost of merging the pool's pages."""
    for stat in Path("/proc").glob("[0-9]*/comm"):
        try:
            if stat.read_text().strip() == "ksmd":
                return int(stat.parent.name)
        except OSError:
            continue
    return None


def ksm_note(pids: list[int], ksmd_cores: float, pss_samples: list[int]) -> str:
    """KSM over the steady phase: the host's setting, the pool's merged pages, ksmd's CPU, and the PSS
    range (PSS is taken at the phase's end: while KSM merges, it falls over the phase)."""
    merging = 0
    for pid in pids:
        try:
            merging += int(ksm_stat(pid)["ksm_merging_pages"])
        except OSError:
            continue  # the process is gone, or the kernel has no per-process KSM
    mb = 1024 * 1024
    low, high = (min(pss_samples) / mb, max(pss_samples) / mb) if pss_samples else (0.0, 0.0)
    run = ksm_running()
    host = "no KSM" if run is None else "KSM on" if run else "KSM off"
    return (
        f"{host}: {merging * 4096 / mb:.0f} MB of the pool's pages merged, ksmd {ksmd_cores:.3f} cores; "
        f"pool PSS {low:.0f}-{high:.0f} MB over the phase"
    )


def sip_answers(port: int, timeout: float = 0.05) -> bool:
    """One SIP OPTIONS to 127.0.0.1:port (UDP); True if anything answers within `timeout`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        local = sock.getsockname()[1]
        sock.sendto(
            (
                f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-restart{time.monotonic_ns()}\r\n"
                f"From: <sip:probe@127.0.0.1:{local}>;tag=r\r\nTo: <sip:probe@127.0.0.1:{port}>\r\n"
                f"Call-ID: restart-{time.monotonic_ns()}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        try:
            sock.recv(4096)
            return True
        except OSError:
            return False


def time_restart(config_path: Path, port: int, limit: float = 30.0) -> float | None:
    """SIGKILL the bridge's worker 0; seconds until a new worker 0 answers SIP (None: not in `limit`)."""
    pattern = f"bridge worker --config {config_path} --index 0 "
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    if len(found.stdout.split()) != 1:
        return None
    victim = int(found.stdout)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    while time.monotonic() - t0 < limit:
        if Path(f"/proc/{victim}").exists() and "Z" not in _state(victim):
            time.sleep(0.005)
            continue
        if sip_answers(port):
            return time.monotonic() - t0
    return None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


# --- Prometheus text -------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by metric name from a Prometheus text exposition."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return parse_prometheus(text)


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        out.setdefault(match.group(1), []).append((labels, float(match.group(3))))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def histogram_quantiles(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, qs: Sequence[float]
) -> tuple[list[float | None], int]:
    """Quantiles of a histogram (summed over label sets) by linear interpolation within buckets."""
    buckets: dict[float, float] = {}
    for labels, in_bucket in samples.get(f"{name}_bucket", []):
        le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
        buckets[le] = buckets.get(le, 0.0) + in_bucket
    edges = sorted(buckets)
    count = buckets.get(math.inf, 0.0)
    if not edges or count <= 0:
        return [None for _ in qs], 0
    result: list[float | None] = []
    for q in qs:
        rank = q * count
        lower, below = 0.0, 0.0
        value: float | None = None
        for edge in edges:
            cum = buckets[edge]
            if cum >= rank:
                if math.isinf(edge):
                    value = lower  # beyond the last finite bucket: report its edge (a lower bound)
                else:
                    inside = cum - below
                    value = lower + (edge - lower) * ((rank - below) / inside if inside else 1.0)
                break
            lower, below = (edge if not math.isinf(edge) else lower), cum
        result.append(value)
    return result, int(count)


# --- the two phases ---------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    calls_ok: int = 0
    calls_failed: int = 0
    frames: float = 0.0
    expected_frames: float = 0.0
    dropped: float = 0.0
    call_seconds: float = 0.0
    cpu_cores: float = 0.0
    cpu_window: float = 0.0
    pss: int = 0
    processes: int = 0
    latency: dict[str, tuple[list[float | None], int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    workers: int = 0
    idle_cpu_per_worker: float = 0.0  # % of a core, the pool idle before the calls, over its workers
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and end of steady
    cpu_idle: float = 0.0  # % of the machine's CPU time idle (with iowait) over the steady phase
    cpu_steal: float = 0.0  # % of it stolen by the hypervisor
    rtp_expected: float = 0.0  # RTP packets the calls' durations hold at 20 ms each
    rtp_received: float = 0.0  # pjmedia's stream statistics: packets received ...
    rtp_lost: float = 0.0  # ... lost in transit (sequence gaps) ...
    rtp_discarded: float = 0.0  # ... and arrived but thrown away by pjmedia
    ksmd_cores: float = 0.0  # the host's KSM thread over the steady phase (not in cpu_cores)
    restart_seconds: float | None = None  # SIGKILL of worker 0 until its replacement answers SIP
    streamed: float | None = None  # the streaming floor: frames written to the engine's sockets
    stream_failures: int = 0  # ... and its streams that failed


def pool_config(
    workdir: Path,
    name: str,
    calls: int,
    engine_url: str,
    metrics_port: int,
    frame_ms: int,
    spawn: str = "fork",
    webhook: str | None = None,
    memory_merge: bool = True,
    chunk_ms: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    from tests.fixtures.harness import free_port_block

    workers = math.ceil(calls / 4)
    sip_port = free_port_block(workers, low=15000, high=26000)
    rtp_port = free_port_block(rtp_ports(workers), low=26000, high=50000)
    config: dict[str, Any] = {
        "sip": {
            "first_port": sip_port,
            "workers": workers,
            "rtp_first_port": rtp_port,
            "transports": ["udp"],
            "codecs": ["PCMU", "PCMA"],
            "spawn": spawn,
            "memory_merge": memory_merge,  # the floor's workers follow it too (floor_worker.py)
        },
        "audio": {"port_frame_ms": frame_ms, "chunk_ms": chunk_ms or frame_ms},
        "engine": {"url": engine_url, "final_timeout_seconds": 30},
        "sink": {"kind": "jsonl", "jsonl_path": str(workdir / f"{name}-events.jsonl")},
        "metrics": {"port": metrics_port},
        "control": {"port": 0},
        "logging": {"level": "WARNING"},
        "drain": {"timeout_seconds": 5},
    }
    if webhook is not None:  # events to a real HTTP receiver (HookReceiver), which writes them to jsonl_path
        config["sink"] = {"kind": "webhook"}
        config["webhook"] = {"urls": [webhook], "spool_path": str(workdir / f"{name}-spool.sqlite3")}
    parse_config(config, name)  # fail here, before starting anything, if the layout is wrong
    path = workdir / f"{name}-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def start_pool(
    kind: str,
    config_path: Path,
    config: dict[str, Any],
    workdir: Path,
    fork: bool = False,
    stream: bool = False,
) -> list[subprocess.Popen[bytes]]:
    """The bridge (one supervisor), or the floor (one bare process per worker, or with `fork` one
    parent that forks them all; `stream`: the streaming floor), waited until every worker answers SIP."""
    floor_args = ["--stream"] if stream else []
    log = (workdir / f"{kind}.log").open("ab")
    workers = config["sip"]["workers"]
    procs: list[subprocess.Popen[bytes]] = []
    if kind == "bridge":
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--config", str(config_path)],
                stdout=log,
                stderr=log,
                cwd=ROOT,
                start_new_session=True,
            )
        )
    elif fork:
        floor = [sys.executable, str(ROOT / "bench" / "floor_worker.py"), "--config", str(config_path)]
        floor += ["--fork", "--out", str(workdir / "floor-{index}.json"), *floor_args]
        procs.append(subprocess.Popen(floor, stdout=log, stderr=log, cwd=ROOT, start_new_session=True))
    else:
        for index in range(workers):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "floor_worker.py"),
                        "--config",
                        str(config_path),
                        "--index",
                        str(index),
                        "--out",
                        str(workdir / f"floor-{index}.json"),
                        *floor_args,
                    ],
                    stdout=log,
                    stderr=log,
                    cwd=ROOT,
                    start_new_session=True,
                )
            )
    first = config["sip"]["first_port"]
    for index in range(workers):
        wait_for_sip(first + index, timeout=180)
    return procs


def pool_pids(procs: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    """Every process started and its children (the bridge's workers, the forked floor's)."""
    out: list[int] = []
    for proc in procs:
        out += [proc.pid, *children_of(proc.pid)]
    return out


def stop_pool(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 90.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def run_phase(
    kind: str,
    args: argparse.Namespace,
    workdir: Path,
    audio: Path,
    engine_url: str,
    webhook: HookReceiver | None = None,
) -> Phase:
    phase = Phase(kind)
    metrics_port = free_port() if kind == "bridge" else 0
    url = webhook.url if webhook is not None and kind == "bridge" else None
    config_path, config = pool_config(
        workdir,
        kind,
        args.calls,
        engine_url,
        metrics_port,
        args.frame_ms,
        args.bridge_spawn,
        url,
        memory_merge=args.ksm != "off",
    )
    if webhook is not None:
        webhook.target = Path(config["sink"].get("jsonl_path", workdir / f"{kind}-events.jsonl"))
    phase.workers = config["sip"]["workers"]
    events_path(config, workdir, kind).unlink(missing_ok=True)  # an earlier pair's
    print(f"[{kind}] starting {phase.workers} workers...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    fork = kind != "bridge" and args.floor_spawn == "fork"
    if fork or (kind == "bridge" and args.bridge_spawn == "fork"):
        phase.notes.append("workers forked from one parent that had imported pjsua2 and the bridge")
    stream = kind == "stream"
    if stream:
        phase.notes.append("the streaming floor: each call's frames to the engine over its own WebSocket")
    procs = start_pool(kind, config_path, config, workdir, fork=fork, stream=stream)
    print(f"[{kind}] pool up in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    kam: Kamailio | None = None
    sipp: subprocess.Popen[bytes] | None = None
    try:
        kam = start_kamailio(dispatcher_list(parse_config(config, kind)), workdir / f"kamailio-{kind}")
        kam.wait_destinations(phase.workers)
        pids = pool_pids(procs)
        phase.processes = len(pids)
        i0, w0 = cpu_ticks(pids), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_cores = (cpu_ticks(pids) - i0) / CLK_TCK / (time.monotonic() - w0)
        phase.idle_cpu_per_worker = 100 * idle_cores / phase.workers
        scenario = proxied_scenario_file(audio, workdir, args.seconds * 1000, loop=True)
        if args.sendonly:  # the answer becomes recvonly: the pool sends no RTP back
            scenario.write_text(scenario.read_text().replace("a=sendrecv", "a=sendonly"))
        stats = workdir / f"{kind}-sipp.csv"
        stats.unlink(missing_ok=True)
        cmd = sipp_command(
            scenario, kam.port, stats, calls=args.calls, concurrent=args.calls, rate=args.rate,
            local_port=free_port(socket.SOCK_DGRAM), media_port=free_port_block_media(args.calls),
        )  # fmt: skip
        with (workdir / f"{kind}-sipp.log").open("ab") as sipp_log:
            sipp = subprocess.Popen(
                cmd, stdout=sipp_log, stderr=sipp_log, cwd=workdir, start_new_session=True
            )
        steady(phase, args, pids)
        sipp.wait(timeout=args.seconds + args.calls / args.rate + 120)
        st = sipp_stats(stats)
        phase.calls_ok = int(st.get("SuccessfulCall(C)", 0))
        phase.calls_failed = int(st.get("FailedCall(C)", 0))
        if kind == "bridge":
            bridge_figures(phase, args, config, metrics_port)
            phase.restart_seconds = time_restart(config_path, config["sip"]["first_port"])
    finally:
        if sipp is not None and sipp.poll() is None:
            os.killpg(sipp.pid, signal.SIGKILL)
            sipp.wait(timeout=10)
        if kam is not None:
            kam.stop()
        stop_pool(procs)
    if kind != "bridge":
        floor_figures(phase, workdir, phase.workers, args.frame_ms)
    return phase


def steady(phase: Phase, args: argparse.Namespace, pids: list[int]) -> None:
    """CPU, PSS and the machine's load over the steady phase: from every call up (ramp + 2 s) to 2 s
    before the first call hangs up."""
    ramp = args.calls / args.rate
    start_at = time.monotonic() + ramp + 2.0
    end_at = time.monotonic() + args.seconds - 2.0
    if end_at - start_at < 3:
        phase.notes.append("calls too short for a steady phase: CPU is over the whole run")
        start_at, end_at = time.monotonic() + 1.0, time.monotonic() + args.seconds + ramp
    time.sleep(max(0.0, start_at - time.monotonic()))
    ksmd = ksmd_pid()
    k0 = cpu_ticks([ksmd]) if ksmd else 0
    c0, top0, w0, m0, l0 = cpu_ticks(pids), cpu_ticks(pids[:1]), time.monotonic(), cpu_times(), load_average()
    pss_samples = []
    while time.monotonic() < end_at:
        pss_samples.append(pss_bytes(pids))
        time.sleep(min(2.0, max(0.05, end_at - time.monotonic())))
    phase.notes.append(pss_breakdown(pids))
    c1, w1 = cpu_ticks(pids), time.monotonic()
    phase.ksmd_cores = (cpu_ticks([ksmd]) - k0) / CLK_TCK / (w1 - w0) if ksmd else 0.0
    phase.notes.append(ksm_note(pids, phase.ksmd_cores, pss_samples))
    phase.cpu_idle, phase.cpu_steal = idle_steal(m0, cpu_times())
    phase.load = (l0, load_average())
    phase.cpu_cores = (c1 - c0) / CLK_TCK / (w1 - w0)
    if phase.name == "bridge":
        top = (cpu_ticks(pids[:1]) - top0) / CLK_TCK / (w1 - w0)
        phase.notes.append(f"the supervisor alone: {top:.3f} cores of {phase.cpu_cores:.3f}")
    phase.cpu_window = w1 - w0
    phase.pss = pss_samples[-1] if pss_samples else 0  # the end of the steady phase (ksm_note)


def bridge_figures(phase: Phase, args: argparse.Namespace, config: dict[str, Any], port: int) -> None:
    frame_s = args.frame_ms / 1000
    ended = wait_ended(events_path(config, args.workdir, "bridge"), phase.calls_ok, timeout=60)
    phase.call_seconds = sum(ended)
    phase.expected_frames = sum(int(d / frame_s) for d in ended)
    phase.rtp_expected = sum(d / 0.02 for d in ended)
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    phase.frames = total(samples, "vblaze_bridge_audio_frames_total")
    phase.dropped = total(samples, "vblaze_bridge_audio_frames_dropped_total")
    phase.rtp_received = total(samples, "vblaze_bridge_rtp_packets_total")
    phase.rtp_lost = total(samples, "vblaze_bridge_rtp_packets_lost_total")
    phase.rtp_discarded = total(samples, "vblaze_bridge_rtp_packets_discarded_total")
    for hop in (
        "audio_to_socket_seconds",
        "speech_end_to_utterance_seconds",
        "utterance_to_webhook_ack_seconds",
    ):
        phase.latency[hop] = histogram_quantiles(samples, f"vblaze_bridge_{hop}", (0.5, 0.9, 0.99))


def floor_figures(phase: Phase, workdir: Path, workers: int, frame_ms: int) -> None:
    for index in range(workers):
        path = workdir / f"floor-{index}.json"
        if path.exists():
            data = json.loads(path.read_text())
            phase.frames += data["frames"]
            phase.expected_frames += data["expected_frames"]
            phase.call_seconds += data["call_seconds"]
            phase.rtp_received += data["rtp_packets"]
            phase.rtp_lost += data["rtp_lost"]
            phase.rtp_discarded += data["rtp_discarded"]
            phase.dropped += data["frames_dropped"]
            if "streamed" in data:
                phase.streamed = (phase.streamed or 0) + data["streamed"]
                phase.stream_failures += data["stream_failures"]
            path.unlink()  # the next pair's floor writes its own
    phase.rtp_expected = phase.call_seconds / 0.02


def free_port_block_media(calls: int) -> int:
    from tests.fixtures.harness import free_port_block

    return free_port_block(2 * calls + 4, low=50000, high=64000)


def events_path(config: dict[str, Any], workdir: Path, kind: str) -> Path:
    """Where a phase's events land: the jsonl sink's file, or the one HookReceiver writes."""
    return Path(config["sink"].get("jsonl_path", workdir / f"{kind}-events.jsonl"))


class HookReceiver:
    """A real HTTP webhook receiver on its own event loop in a thread: answers 200 to every POST and
    appends its body (the event's envelope, one JSON line) to `target`."""

    def __init__(self) -> None:
        self.target: Path | None = None
        self.received = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received += 1
        if self.target is not None:
            with self.target.open("ab") as out:
                out.write(body.replace(b"\n", b" ") + b"\n")
        return web.Response(text="ok")

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def wait_ended(path: Path, count: int, timeout: float) -> list[float]:
    """Durations of the calls whose call.ended is in the JSON-lines file, once `count` are (bounded)."""
    deadline = time.monotonic() + timeout
    durations: list[float] = []
    while time.monotonic() < deadline:
        durations = []
        if path.exists():
            for line in path.read_text().splitlines():
                if '"call.ended"' in line:
                    event = json.loads(line)
                    durations.append(float(event["data"]["duration"]))
        if len(durations) >= count:
            break
        time.sleep(0.5)
    return durations


# --- the table -----------------------------------------------------------------------------------------


def _ms(values: list[float | None]) -> str:
    return "/".join("-" if v is None else f"{v * 1000:.2f}" for v in values)


def _s(values: list[float | None]) -> str:
    return "/".join("-" if v is None else f"{v:.2f}" for v in values)


def _uncounted(p: Phase) -> str:
    """RTP of the calls' durations that pjmedia's stream statistics never counted: not sent by sipp, or
    in the last second of a call (the endpoint reads the statistics once a second, while a call is up)."""
    missing = p.rtp_expected - p.rtp_received - p.rtp_lost
    per_call = missing / p.calls_ok if p.calls_ok else 0.0
    return f"{missing:.0f} ({per_call * 0.02:.2f} s a call)"


def _streamed(p: Phase) -> str:
    if p.name == "bridge":  # the chunks it timed onto its sockets; a stream's failures are its gaps
        return f"{p.latency.get('audio_to_socket_seconds', ([], 0))[1]:.0f} / -"
    return "-" if p.streamed is None else f"{p.streamed:.0f} / {p.stream_failures}"


def _restart(p: Phase) -> str:
    return "-" if p.restart_seconds is None else f"{p.restart_seconds:.3f}"


def table(args: argparse.Namespace, bridge: Phase | None, floor: Phase | None) -> str:
    """One table: a column per phase that ran, and bridge/floor ratios where both did."""
    mb = 1024 * 1024

    def lost(p: Phase) -> str:
        missing = max(0.0, p.expected_frames - p.frames)
        return f"{missing:.0f} of {p.expected_frames:.0f}"

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if bridge is not None and floor is not None and b else ""

    def latency(p: Phase, hop: str, ms: bool) -> str:
        qs, _ = p.latency.get(hop, ([None] * 3, 0))
        return _ms(qs) if ms else _s(qs)

    figures: list[tuple[str, Callable[[Phase], str], bool]] = [  # label, figure of a phase, with a ratio
        ("calls ok / failed", lambda p: f"{p.calls_ok} / {p.calls_failed}", False),
        (
            "frames/s per stream",
            lambda p: f"{p.frames / p.call_seconds:.2f}" if p.call_seconds else "-",
            False,
        ),
        ("frames lost", lost, False),
        (" of which dropped by the pool", lambda p: f"{p.dropped:.0f}", False),
        ("RTP expected from durations (20 ms)", lambda p: f"{p.rtp_expected:.0f}", False),
        (" sent by sipp (received + gaps)", lambda p: f"{p.rtp_received + p.rtp_lost:.0f}", False),
        (" lost in transit (pjmedia gaps)", lambda p: f"{p.rtp_lost:.0f}", False),
        (" arrived, discarded by pjmedia", lambda p: f"{p.rtp_discarded:.0f}", False),
        (" never counted (see docs)", lambda p: _uncounted(p), False),
        ("frames streamed / streams failed", _streamed, False),
        ("processes", lambda p: str(p.processes), False),
        ("idle CPU per worker, % of a core", lambda p: f"{p.idle_cpu_per_worker:.2f}", False),
        ("CPU, cores (steady)", lambda p: f"{p.cpu_cores:.3f}", True),
        ("CPU per call, % of a core", lambda p: f"{100 * p.cpu_cores / args.calls:.2f}", False),
        ("PSS per call, MB", lambda p: f"{p.pss / args.calls / mb:.2f}", True),
        ("frame->socket p50/p90/p99 ms", lambda p: latency(p, "audio_to_socket_seconds", True), False),
        (
            "speech end->utterance p50/p90/p99 s",
            lambda p: latency(p, "speech_end_to_utterance_seconds", False),
            False,
        ),
        (
            "utterance->webhook ack p50/p90/p99 ms",
            lambda p: latency(p, "utterance_to_webhook_ack_seconds", True),
            False,
        ),
        ("worker restart->SIP answer, s", lambda p: _restart(p), False),
        ("load average (steady start/end)", lambda p: f"{p.load[0]:.2f}/{p.load[1]:.2f}", False),
        ("machine CPU idle / steal, %", lambda p: f"{p.cpu_idle:.1f} / {p.cpu_steal:.1f}", False),
    ]
    raw: dict[str, Callable[[Phase], float]] = {
        "CPU, cores (steady)": lambda p: p.cpu_cores,
        "PSS per call, MB": lambda p: float(p.pss),
    }
    rows = [("", "bridge", "floor", "bridge/floor")]
    for label, fig, with_ratio in figures:
        cells = [
            fig(p) if p is not None and (p.name == "bridge" or "->" not in label) else "-"
            for p in (bridge, floor)
        ]
        r = ""
        if with_ratio and bridge is not None and floor is not None:
            r = ratio(raw[label](bridge), raw[label](floor))
        rows.append((label, cells[0], cells[1], r))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    head = (
        f"{args.calls} calls x {args.seconds} s, {args.rate:g} calls/s, {args.frame_ms} ms frames, "
        f"{'sendonly offers, ' if args.sendonly else ''}{os.cpu_count()} cores, "
        f"bridge {args.bridge_spawn}, floor {args.floor_spawn}"
        + (" streaming" if floor is not None and floor.name == "stream" else "")
    )
    lines = [head, ""]
    for row in rows:
        lines.append(
            "  ".join(
                row[0].ljust(widths[0]) if i == 0 else row[i].rjust(max(widths[i], 12)) for i in range(4)
            )
        )
    for p in (bridge, floor):
        if p is not None:
            lines.extend(f"note ({p.name}): {note}" for note in p.notes)
    return "\n".join(lines)


def summary(
    pairs: list[tuple[Phase, Phase]], calls: int, floor: str = "floor", bridge: str = "bridge"
) -> str:
    """Each pair's `bridge`/`floor` ratios with the machine's load, then their median and range (the
    two names: which phases of each round are compared, the bridge and the floor by default)."""
    mb = 1024 * 1024
    lines = ["", f"interleaved pairs ({len(pairs)}): {bridge} (b) against {floor} (f):", ""]
    lines.append(
        "pair  PSS/call MB b     f     ratio   CPU cores b     f     ratio   "
        "load b/f     idle% b/f    steal% b/f"
    )
    pss_r, cpu_r = [], []
    for number, (b, f) in enumerate(pairs, 1):
        pr = b.pss / f.pss if f.pss else math.nan
        cr = b.cpu_cores / f.cpu_cores if f.cpu_cores else math.nan
        pss_r.append(pr)
        cpu_r.append(cr)
        lines.append(
            f"{number:4}  {b.pss / calls / mb:17.2f} {f.pss / calls / mb:5.2f} {pr:5.2f}x"
            f"  {b.cpu_cores:16.3f} {f.cpu_cores:5.3f} {cr:5.2f}x"
            f"   {b.load[1]:4.2f}/{f.load[1]:4.2f}  {b.cpu_idle:5.1f}/{f.cpu_idle:5.1f}"
            f"  {b.cpu_steal:4.1f}/{f.cpu_steal:4.1f}"
        )

    def spread(values: list[float]) -> str:
        return f"median {statistics.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f}x)"

    bridge_pss = [b.pss / calls / mb for b, _ in pairs]
    lines += [
        "",
        f"PSS {bridge}/{floor}: {spread(pss_r)}; {bridge} PSS per call median "
        f"{statistics.median(bridge_pss):.2f} MB ({min(bridge_pss):.2f}-{max(bridge_pss):.2f})",
        f"CPU {bridge}/{floor}: {spread(cpu_r)}",
    ]
    return "\n".join(lines)


def restarts(bridges: list[Phase]) -> str:
    """The bridge phases' worker restart times, median and range ("" if none was timed)."""
    timed = [b.restart_seconds for b in bridges if b.restart_seconds is not None]
    if not timed:
        return ""
    return (
        f"worker restart (SIGKILL -> replacement answers SIP): median {statistics.median(timed):.3f} s"
        f" ({min(timed):.3f}-{max(timed):.3f})"
    )


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    for tool in ("sipp", "kamailio", "kamcmd", "espeak-ng", "sox"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode:
            print(f"bench: {tool} is not installed (make setup)", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="vblaze-bench-"))
    print(f"work directory: {workdir}", file=sys.stderr)
    audio = speech_file(SPEECH, workdir)
    args.workdir = workdir
    standin, url = start_standin(["--recognizer", "vad-only", "--max-streams", str(args.calls + 16)])
    hook = None
    if args.sink == "webhook":
        os.environ.setdefault("VBLAZE_BRIDGE_WEBHOOK_SECRET", "bench-secret")
        hook = HookReceiver()
        hook.start()
    pairs: list[tuple[Phase, Phase]] = []
    streams: list[Phase] = []
    saved_ksm: dict[str, str] = {}
    if args.ksm == "on":
        saved_ksm = host_ksm_on(args.ksm_pages, 20)
        print(
            f"bench: the host's KSM on, {args.ksm_pages} pages every 20 ms (was {saved_ksm})",
            file=sys.stderr,
        )
    try:
        for number in range(args.pairs):
            print(f"--- pair {number + 1} of {args.pairs}", file=sys.stderr, flush=True)
            bridge = run_phase("bridge", args, workdir, audio, url, hook)
            floor = run_phase("floor", args, workdir, audio, url)
            pairs.append((bridge, floor))
            print(f"pair {number + 1}: {table(args, bridge, floor)}\n", flush=True)
            if args.floor_stream:
                streams.append(run_phase("stream", args, workdir, audio, url))
                print(f"pair {number + 1}, the streaming floor: {table(args, bridge, streams[-1])}\n")
    finally:
        restore_host_ksm(saved_ksm)
        if hook is not None:
            hook.stop()
        stop_process(standin, 15)
    if pairs:
        print(summary(pairs, args.calls), restarts([b for b, _ in pairs]), sep="\n", flush=True)
    if streams:
        print(
            summary([(b, s) for (b, _), s in zip(pairs, streams, strict=True)], args.calls, "streaming floor")
        )
        print(
            summary(
                [(s, f) for (_, f), s in zip(pairs, streams, strict=True)],
                args.calls,
                "floor",
                "streaming floor",
            )
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "pairs": [
                        {"bridge": b.__dict__, "floor": f.__dict__}
                        | ({"stream": streams[i].__dict__} if i < len(streams) else {})
                        for i, (b, f) in enumerate(pairs)
                    ],
                },
                indent=2,
                default=str,
            )
        )
    if not args.keep:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return 0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200, help="concurrent calls K (workers = K/4)")
    parser.add_argument("--seconds", type=int, default=30, help="length of each call")
    parser.add_argument("--rate", type=float, default=20.0, help="new calls per second while ramping up")
    parser.add_argument("--frame-ms", type=int, default=100, help="audio.port_frame_ms (and chunk_ms)")
    parser.add_argument("--pairs", type=int, default=3, help="bridge, floor pairs, interleaved")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle CPU measured this long")
    parser.add_argument(
        "--sendonly", action="store_true", help="callers offer a=sendonly, so workers answer recvonly"
    )
    parser.add_argument("--bridge-spawn", choices=("fork", "exec"), default="fork", help="sip.spawn")
    parser.add_argument(
        "--floor-spawn", choices=("fork", "exec"), default="fork", help="the floor's workers, likewise"
    )
    parser.add_argument(
        "--floor-stream", action="store_true",
        help="a third phase a round: the streaming floor (bench/floor_worker.py --stream)",
    )  # fmt: skip
    parser.add_argument(
        "--sink", choices=("webhook", "jsonl"), default="webhook",
        help="the bridge's events: to a real HTTP receiver here (utterance->webhook ack timed), or a file",
    )  # fmt: skip
    parser.add_argument(
        "--ksm", choices=("host", "on", "off"), default="host",
        help="host: the pool's memory marked mergeable (sip.memory_merge), the host's KSM as it is; on: "
        "the host's KSM also turned on for the run (root; --ksm-pages a 20 ms scan), then as it was; "
        "off: nothing marked",
    )  # fmt: skip
    parser.add_argument("--ksm-pages", type=int, default=1000, help="with --ksm on: KSM's pages_to_scan")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, events)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())

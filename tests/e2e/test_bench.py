"""bench/load.py on a small real run: its figures are taken, not assumed.

One round (the bridge, the floor, the streaming floor) of 4 calls of looped speech through Kamailio. The
figures are not checked against targets (timings drift on a shared machine); what is checked is that
each one was measured: every call answered on both sides, every frame the pool received accounted for
(none dropped, none lost in transit, every one of the streaming floor's frames written to the engine),
the CPU, PSS, idle and load figures taken, the bridge's latency histograms scraped with samples, and the
summary printed with its median.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("kamailio", "sipp", "espeak-ng", "sox")),
    reason="kamailio, sipp, espeak-ng and sox are needed",
)

CALLS = 4
SECONDS = 8


def test_a_small_load_run_measures_and_attributes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    cmd = [sys.executable, str(ROOT / "bench" / "load.py"), "--calls", str(CALLS), "--seconds", str(SECONDS)]
    cmd += ["--pairs", "1", "--idle-seconds", "5", "--floor-stream", "--json", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    (pair,) = json.loads(out.read_text())["pairs"]
    for side in ("bridge", "floor", "stream"):
        phase = pair[side]
        assert (phase["calls_ok"], phase["calls_failed"]) == (CALLS, 0), side
        assert phase["dropped"] == 0, side
        assert phase["rtp_lost"] == 0 and phase["rtp_discarded"] == 0, side
        # each call's media lasts about SECONDS: the expected frames are measured from the calls' durations
        assert CALLS * (SECONDS - 2) * 10 <= phase["expected_frames"] <= CALLS * (SECONDS + 5) * 10, side
        assert phase["frames"] >= 0.95 * phase["expected_frames"], side
        assert phase["rtp_received"] >= 0.8 * phase["expected_frames"] * 5, side  # 20 ms RTP, 100 ms frames
        assert phase["cpu_cores"] > 0 and phase["cpu_window"] > 0, side
        # an idle worker costs under 1 % of a core (its SIP thread is woken, not polling): 5 s of idle
        # is a few clock ticks of CPU, 1 s could be none
        assert phase["pss"] > 0 and phase["idle_cpu_per_worker"] > 0, side
        assert phase["load"][0] >= 0 and 0 <= phase["cpu_idle"] <= 100, side
        assert any(n.startswith(("KSM on:", "KSM off:", "no KSM:")) for n in phase["notes"]), side
    bridge, floor, stream = pair["bridge"], pair["floor"], pair["stream"]
    assert floor["streamed"] is None  # the bare floor streams nothing
    assert stream["stream_failures"] == 0
    assert stream["streamed"] >= 0.95 * stream["frames"]  # the streaming floor wrote what it received
    assert bridge["restart_seconds"] is not None and bridge["restart_seconds"] > 0
    for hop in ("audio_to_socket_seconds", "utterance_to_webhook_ack_seconds"):
        quantiles, samples = bridge["latency"][hop]
        assert samples > 0 and all(q is not None for q in quantiles), hop
    assert "streaming floor" in " ".join(stream["notes"])
    for ratio in ("bridge/floor", "bridge/streaming floor", "streaming floor/floor"):
        assert f"CPU {ratio}: median" in run.stdout and f"PSS {ratio}: median" in run.stdout, ratio


def test_the_standin_load_bench_measures_a_small_run(tmp_path: Path) -> None:
    """bench/standin_load.py: every stream gets its final result, the probe is answered each second, and
    the stand-in's CPU and the machine's load are taken."""
    out = tmp_path / "standin.json"
    cmd = [sys.executable, str(ROOT / "bench" / "standin_load.py"), "--streams", "6", "--seconds", "7"]
    cmd += ["--ramp", "2", "--json", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    (phase,) = json.loads(out.read_text())["phases"]
    assert phase["finished"] == 6 and phase["utterances"] > 0, phase
    assert phase["chunks"] == 6 * 70, phase
    assert phase["probe_failures"] == 0 and len(phase["probes"]) >= 5, phase
    assert phase["cpu_cores"] > 0 and phase["steady_seconds"] > 0 and 0 <= phase["idle"] <= 100, phase
    assert "6/6 final results" in run.stdout, run.stdout


def test_the_wake_cost_bench_prints_each_figure_per_round() -> None:
    """bench/wake_cost.py: a sleep's CPU and a send's, after a wake and with the thread kept busy, each a
    positive median over its rounds."""
    cmd = [sys.executable, str(ROOT / "bench" / "wake_cost.py"), "--rounds", "2", "--count", "20"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    for row in ("sleep and wake", "send after a wake", "send, thread kept busy"):
        (line,) = [line for line in run.stdout.splitlines() if line.strip().startswith(row)]
        assert float(line.split()[-5]) > 0, line


def test_the_idle_threads_bench_prints_the_worker_and_its_threads() -> None:
    """bench/idle_threads.py: an idle worker's CPU, then a line per thread that ran; no clock thread."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "idle_threads.py"), "--seconds", "2", "--settle", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    worker = re.search(r"^the worker: ([0-9.]+) % of a core$", out.stdout, re.M)
    assert worker is not None and float(worker.group(1)) > 0, out.stdout
    row = re.compile(r"^  (\S.*?) +([0-9.]+) % of a core +([0-9.]+) switches/s$", re.M)
    threads = {name: (float(cpu), float(rate)) for name, cpu, rate in row.findall(out.stdout)}
    assert threads["media"][1] > 0 and "main" in threads, out.stdout
    assert "clock" not in threads, out.stdout  # idle: no conference clock

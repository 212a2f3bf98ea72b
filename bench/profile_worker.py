"""Where one worker's CPU goes at 4 calls: a py-spy profile of a bridge worker, and of a floor worker.

Starts the stand-in (vad-only), then, in turn, a one-worker bridge and a one-worker floor
(bench/floor_worker.py, forked as in bench/load.py), each behind Kamailio with sipp placing 4 calls of
real speech. During the calls' steady part, `py-spy record --nonblocking` samples the worker
(`--rate` per second; threads waiting in a system call are left out, so the samples are CPU; time in
pjsua2's C code is charged to the Python frame that called it, or with `--native` shown as C frames,
which pauses the worker for each sample and no longer tells idle threads apart) and the script prints the
10 frames with the most samples of their own (self) and the 10 with the most samples under them
(inclusive), with the worker's CPU over the same window from /proc. The raw collapsed stacks stay in
the work directory (`--keep`) for a flame graph.

    .venv/bin/pip install -e '.[profile]'                        # py-spy, once
    .venv/bin/python bench/profile_worker.py                    # 4 calls x 40 s, 25 s of samples
    .venv/bin/python bench/profile_worker.py --only bridge --seconds 60 --duration 40
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import (  # noqa: E402
    CLK_TCK,
    SPEECH,
    children_of,
    cpu_ticks,
    free_port_block_media,
    load_average,
    pool_config,
    proxied_scenario_file,
    sipp_command,
    start_kamailio,
    start_pool,
    stop_pool,
)
from bridge.config import parse_config  # noqa: E402
from bridge.demo import free_port, speech_file, start_standin, stop_process  # noqa: E402
from bridge.dispatcher import dispatcher_list  # noqa: E402

CALLS = 4  # what one worker holds
PY_SPY = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")


def collapse(raw: str, thread: str | None = None) -> tuple[Counter[str], Counter[str], int]:
    """py-spy's raw (collapsed) output with --threads: one `thread (TID): NAME;frame;... count` line a
    distinct stack, root first. Returns the samples a frame was the leaf of (self), the samples a frame
    was anywhere in (inclusive, once a stack), and the total; of the thread named `thread` only if given."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        head, _, stack = stack.partition(";")
        if not stack or (thread is not None and not head.endswith(f": {thread}")):
            continue
        n = int(count)
        total += n
        frames = [tidy(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            under[frame] += n
    return own, under, total


def tidy(frame: str) -> str:
    """`function (path/to/file.py:LINE)` as `function (file.py)`: lines apart are one frame here."""
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"\((?:[^()]*/)?([^/()]+)\)$", r"(\1)", frame)


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> name: Python's thread names (py-spy dump), else the kernel's (pjsip's threads)."""
    names = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        names[int(task.name)] = (task / "comm").read_text().strip()
    dump = subprocess.run(
        [PY_SPY or "py-spy", "dump", "--pid", str(pid), "--nonblocking"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    for tid, name in re.findall(r'^Thread (\d+) \(\w+\): "([^"]*)"', dump.stdout, re.M):
        names[int(tid)] = f"{name} (Python)"
    return names


def thread_ticks(pid: int) -> dict[int, tuple[int, int]]:
    """Thread id -> (utime + stime in clock ticks, context switches: voluntary + involuntary)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended
        switches = sum(int(n) for n in re.findall(r"^(?:non)?voluntary_ctxt_switches:\s+(\d+)", status, re.M))
        out[int(task.name)] = (int(fields[11]) + int(fields[12]), switches)  # utime + stime
    return out


def by_thread(
    names: dict[int, str],
    before: dict[int, tuple[int, int]],
    after: dict[int, tuple[int, int]],
    seconds: float,
) -> str:
    """Each thread's CPU and how often it was switched off its core (mostly: went to sleep, to be woken
    again), over the window: on a virtual machine each wake-up costs CPU of its own (docs/benchmarks.md)."""
    rows = []
    for tid, (ticks, switches) in after.items():
        ticks0, switches0 = before.get(tid, (0, 0))
        rows.append((ticks - ticks0, (switches - switches0) / seconds, tid))
    return "\n".join(
        f"  {100 * ticks / CLK_TCK / seconds:5.2f} % of a core, {rate:6.1f} switches/s"
        f"  {names.get(tid, '?')} [{tid}]"
        for ticks, rate, tid in sorted(rows, reverse=True)
        if ticks
    )


def top(counter: Counter[str], total: int, n: int = 10) -> str:
    return "\n".join(f"  {100 * count / total:5.1f} %  {frame}" for frame, count in counter.most_common(n))


def perf_profile(
    kind: str,
    worker: int,
    args: argparse.Namespace,
    workdir: Path,
    names: dict[int, str],
    th0: dict[int, tuple[int, int]],
    t0: float,
    c0: int,
    l0: float,
) -> str:
    """The same window sampled by `perf record -e cpu-clock` (kernel and C frames, every thread): where
    the worker's CPU goes by thread and by shared object, the kernel's share included."""
    data = workdir / f"{kind}-perf.data"
    subprocess.run(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(args.rate), "-p", str(worker),
         "-o", str(data), "--", "sleep", str(args.duration)],
        capture_output=True, text=True, timeout=args.duration + 60, check=True,
    )  # fmt: skip
    window = time.monotonic() - t0
    cores, threads = (cpu_ticks([worker]) - c0) / CLK_TCK / window, thread_ticks(worker)
    reports = []
    for sort in ("pid,dso", "dso,sym"):
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--sort", sort, "--percent-limit", "1.5"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        reports.append("\n".join(line for line in out.splitlines() if line and not line.startswith("#")))
    return (
        f"[{kind}] worker pid {worker}, {CALLS} calls: {100 * cores:.2f} % of a core over the"
        f" {args.duration} s window, load average {l0:.2f} -> {load_average():.2f}\n"
        f"by thread (/proc, same window):\n{by_thread(names, th0, threads, window)}\n"
        f"perf, by thread and shared object:\n{reports[0]}\nperf, by shared object and symbol:\n{reports[1]}"
    )


def profile(kind: str, args: argparse.Namespace, workdir: Path, audio: Path, url: str) -> str:
    config_path, config = pool_config(
        workdir, kind, CALLS, url, free_port() if kind == "bridge" else 0, 100, chunk_ms=args.chunk_ms
    )
    procs = start_pool(kind, config_path, config, workdir, fork=kind == "floor")
    kam = None
    sipp = None
    try:
        kam = start_kamailio(dispatcher_list(parse_config(config, kind)), workdir / f"kamailio-{kind}")
        kam.wait_destinations(1)
        workers = [pid for proc in procs for pid in children_of(proc.pid)]
        if kind == "bridge":  # the supervisor's children: the zygote and the worker it forked
            workers = [pid for pid in workers if "worker" in Path(f"/proc/{pid}/cmdline").read_text()]
        (worker,) = workers
        scenario = proxied_scenario_file(audio, workdir, args.seconds * 1000, loop=True)
        stats = workdir / f"{kind}-sipp.csv"
        cmd = sipp_command(
            scenario, kam.port, stats, calls=CALLS, concurrent=CALLS, rate=args.call_rate,
            local_port=free_port(socket.SOCK_DGRAM), media_port=free_port_block_media(CALLS),
        )  # fmt: skip
        with (workdir / f"{kind}-sipp.log").open("ab") as log:
            sipp = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=workdir, start_new_session=True)
        time.sleep(3.0)  # every call up
        raw = workdir / f"{kind}-pyspy.txt"
        names = thread_names(worker)
        t0, c0, l0, th0 = time.monotonic(), cpu_ticks([worker]), load_average(), thread_ticks(worker)
        if args.perf:
            return perf_profile(kind, worker, args, workdir, names, th0, t0, c0, l0)
        spy = subprocess.run(
            [
                PY_SPY, "record", "--pid", str(worker), "--duration", str(args.duration),
                "--rate", str(args.rate), "--format", "raw", "--output", str(raw), "--threads",
                *(["--native"] if args.native else ["--nonblocking"]),
            ],
            capture_output=True, text=True, timeout=args.duration + 60, check=False,
        )  # fmt: skip
        window = time.monotonic() - t0
        cores, threads = (cpu_ticks([worker]) - c0) / CLK_TCK / window, thread_ticks(worker)
        if spy.returncode != 0 or not raw.exists():
            return f"[{kind}] py-spy failed ({spy.returncode}): {spy.stderr[-800:]}"
        own, under, total = collapse(raw.read_text())
        main_own, _, main_total = collapse(raw.read_text(), "MainThread")
        return (
            f"[{kind}] worker pid {worker}, {CALLS} calls: {100 * cores:.2f} % of a core over the"
            f" {args.duration} s window, {total} samples with the worker on a core, load average"
            f" {l0:.2f} -> {load_average():.2f}\n"
            f"by thread (/proc, same window):\n{by_thread(names, th0, threads, window)}\n"
            f"self (the frame itself was running):\n{top(own, total)}\n"
            f"inclusive (the frame was on the stack):\n{top(under, total)}"
            + (f"\nthe main thread alone (asyncio), self:\n{top(main_own, main_total)}" if main_total else "")
        )
    finally:
        if sipp is not None and sipp.poll() is None:
            sipp.send_signal(signal.SIGTERM)
            try:
                sipp.wait(timeout=args.seconds + 30)
            except subprocess.TimeoutExpired:
                sipp.kill()
                sipp.wait(timeout=10)
        if kam is not None:
            kam.stop()
        stop_pool(procs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=40, help="length of each call")
    parser.add_argument("--duration", type=int, default=25, help="seconds of samples")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument(
        "--call-rate",
        type=float,
        default=10,
        help="calls placed per second (10: 100 ms apart, one port frame; 7 spreads them over its ticks)",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="C frames too (pauses the worker per sample; idle not told apart)",
    )
    parser.add_argument(
        "--perf", action="store_true", help="perf record (kernel and C, by shared object) instead of py-spy"
    )
    parser.add_argument(
        "--chunk-ms", type=int, default=None, help="the bridge's audio.chunk_ms (default 100)"
    )
    parser.add_argument("--only", choices=("bridge", "floor"), default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (raw stacks)")
    args = parser.parse_args(argv)
    if args.duration > args.seconds - 8:
        parser.error("--duration must leave the calls' ramp and end outside the window")
    sampler = "perf" if args.perf else PY_SPY or "py-spy"
    for tool in ("sipp", "kamailio", "espeak-ng", "sox", sampler):
        if shutil.which(tool) is None:
            hint = {"py-spy": "pip install -e '.[profile]'", "perf": "apt-get install linux-perf"}.get(
                Path(tool).name, "make setup"
            )
            print(f"profile: {tool} is not installed ({hint})", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="vblaze-profile-"))
    print(f"work directory: {workdir}", file=sys.stderr)
    audio = speech_file(SPEECH, workdir)
    standin, url = start_standin(["--recognizer", "vad-only"])
    try:
        for kind in ("bridge", "floor"):
            if args.only in (None, kind):
                print(profile(kind, args, workdir, audio, url), flush=True)
    finally:
        stop_process(standin, 15)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What an idle bridge worker spends, thread by thread.

Starts a one-worker bridge (forked from its zygote, as bench/load.py does; the engine URL points at
nothing, since no call is placed), lets it settle, then reads each of the worker's threads from /proc:
the time it ran (`schedstat`, in ns, so far finer than the 10 ms clock ticks of `stat`) and how often it
gave up its core (`voluntary_ctxt_switches`, i.e. how often it slept and was woken). Threads are named
by the kernel's `comm`: `clock` is pjmedia's conference clock, `media` its RTP thread; `main` is the
asyncio thread, and the worker's other Python threads (the SIP thread, woken about 10 times a second
when idle) show as `python TID`, setproctitle having renamed them all.

    .venv/bin/python bench/idle_threads.py --seconds 20 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import children_of, pool_config, start_pool, stop_pool
from bridge.demo import free_port


def sample(pid: int) -> dict[int, tuple[str, int, int]]:
    """Thread id -> (name, ns on a core, voluntary switches)."""
    out: dict[int, tuple[str, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ran = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text()
        except FileNotFoundError:  # the thread ended while we looked
            continue
        switches = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        tid = int(task.name)
        if tid == pid:
            name = "main"
        elif name.startswith("vblaze-bridge"):
            name = f"python {tid}"
        out[tid] = (name, ran, switches)
    return out


def measure(pid: int, seconds: float) -> str:
    before = sample(pid)
    started = time.monotonic()
    time.sleep(seconds)
    after = sample(pid)
    window = time.monotonic() - started
    rows = []
    total = 0
    for tid, (name, ran, switches) in sorted(after.items()):
        if tid not in before:
            continue
        ran -= before[tid][1]
        total += ran
        if ran or switches - before[tid][2]:
            rows.append(
                f"  {name:16} {100 * ran / 1e9 / window:6.3f} % of a core"
                f"  {(switches - before[tid][2]) / window:6.1f} switches/s"
            )
    return f"the worker: {100 * total / 1e9 / window:.3f} % of a core\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before measuring")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="idle-threads-") as tmp:
        workdir = Path(tmp)
        for round_ in range(args.rounds):
            config_path, config = pool_config(
                workdir, f"bridge-{round_}", 4, "ws://127.0.0.1:9/transcribe", free_port(), 100
            )
            procs = start_pool("bridge", config_path, config, workdir)
            try:
                time.sleep(args.settle)
                workers = [
                    pid
                    for proc in procs
                    for pid in children_of(proc.pid)
                    if "worker" in Path(f"/proc/{pid}/cmdline").read_text()
                ]
                (worker,) = workers
                load = Path("/proc/loadavg").read_text().split()[0]
                print(
                    f"round {round_ + 1}, idle worker pid {worker}, {args.seconds:g} s, load average {load}"
                )
                print(measure(worker, args.seconds), flush=True)
            finally:
                stop_pool(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

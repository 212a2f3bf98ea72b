"""What a thread's wake-up costs on this machine: the CPU of a sleep and wake, and of a loopback send
made just after one against one made back to back.

A worker's CPU at light load is mostly its threads being woken: the SIP thread's polls, pjmedia's
clock ticks, RTP arriving, the asyncio loop woken for each tick's frames. On a virtual machine each
wake-up costs more than the work it wakes for; this prints how much, so the by-thread switch counts of
`bench/profile_worker.py` can be read as CPU. Rounds alternate (A B A B) and medians are printed.

    .venv/bin/python bench/wake_cost.py                 # 5 rounds of 300 sleeps / sends, about 1 minute
    .venv/bin/python bench/wake_cost.py --gap-ms 5 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time


def receiver(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    while conn.recv(65536):
        pass
    os._exit(0)


def sleeps(count: int, gap: float) -> float:
    """CPU (this thread's) per sleep of `gap` seconds and the wake-up after it, in microseconds."""
    cpu = time.thread_time()
    for _ in range(count):
        time.sleep(gap)
    return (time.thread_time() - cpu) / count * 1e6


def sends(sock: socket.socket, count: int, gap: float, busy: bool) -> float:
    """Median CPU of one 1600-byte send (100 ms of 8 kHz 16-bit audio), in microseconds: after a
    sleep of `gap` (the thread was just woken), or with the thread kept busy for `gap` in between."""
    chunk = b"\0" * 1600
    costs = []
    for _ in range(count):
        cpu = time.thread_time()
        sock.send(chunk)
        costs.append(time.thread_time() - cpu)
        if busy:
            end = time.perf_counter() + gap
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(gap)
    return statistics.median(costs) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=300, help="sleeps or sends a round")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="time between sends or sleeps")
    args = parser.parse_args(argv)
    gap = args.gap_ms / 1000
    listener = socket.create_server(("127.0.0.1", 0))
    pid = os.fork()
    if pid == 0:
        receiver(listener)
    sock = socket.create_connection(listener.getsockname())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rows: dict[str, list[float]] = {
        "sleep and wake": [],
        "send after a wake": [],
        "send, thread kept busy": [],
    }
    try:
        for _ in range(args.rounds):
            rows["sleep and wake"].append(sleeps(args.count, gap))
            rows["send after a wake"].append(sends(sock, args.count, gap, busy=False))
            rows["send, thread kept busy"].append(sends(sock, args.count, gap, busy=True))
    finally:
        sock.close()
        os.waitpid(pid, 0)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{args.rounds} rounds of {args.count}, {args.gap_ms:g} ms apart, load average {load}")
    for name, values in rows.items():
        low, high = min(values), max(values)
        print(f"  {name:24s} {statistics.median(values):7.1f} us CPU (rounds {low:.1f}-{high:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

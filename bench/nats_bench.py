"""NATS sink benchmark: what the JetStream sink sustains, and utterance -> JetStream ack latency.

Starts its own `nats-server` (one node, or a 3-node R=3 cluster with ``--cluster``) on free ports with
its store in a temporary directory, and drives the bridge's real sink (`WebhookSink` with the
`NatsTransport`: spool fsync'ed on insert and delete, per-call order, ack awaited) without SIP or an
engine, so that the figures are the sink's own:

1. **one worker**: ``--events`` events over ``--calls`` calls submitted at once; events/s from the
   first submit until the last ack (the spool is emptied);
2. **the pool**: ``--workers`` processes doing the same at once on one spool and one stream; the sum;
3. **latency at a call load**: ``--load-calls`` calls, each submitting an utterance every
   ``--utterance-interval`` seconds (what a talking caller produces) for ``--seconds`` seconds, from one
   worker; p50/p99 of utterance produced -> JetStream ack (the figure of
   ``vblaze_bridge_utterance_to_nats_ack_seconds``).

The load average is printed next to the figures: the machine is shared. Every process it starts is
killed at the end.

    .venv/bin/python bench/nats_bench.py                       # about a minute
    .venv/bin/python bench/nats_bench.py --cluster --load-calls 200 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.config import NatsConfig
from bridge.events import BridgeEvent
from bridge.nats.policy import Outcome, destination
from bridge.nats.transport import NatsSettings, NatsTransport
from bridge.webhook.delivery import WebhookSettings, WebhookSink
from bridge.webhook.queue import DropReason
from tests.fixtures.nats import NatsCluster

STREAM = "BENCH"
DRAIN_TIMEOUT = 300.0


class Recorder:
    """The NATS observer, keeping ack latencies and counting outcomes."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.outcomes: dict[str, int] = {}

    def attempt(self, outcome: Outcome, seconds: float) -> None:
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1

    def sent(self, latency_seconds: float) -> None:
        pass

    def delivered(self, latency_seconds: float) -> None:
        self.latencies.append(latency_seconds)

    def rejected(self, status: int) -> None:
        pass

    def dropped(self, reason: DropReason) -> None:
        pass

    def connected(self, up: bool) -> None:
        pass


async def open_sink(urls: list[str], spool: Path, replicas: int) -> tuple[WebhookSink, Recorder]:
    recorder = Recorder()
    config = NatsConfig(servers=tuple(urls), stream=STREAM, replicas=replicas, reconnect_wait_seconds=0.2)
    transport = NatsTransport(NatsSettings.from_config(config), recorder)
    dest = destination(STREAM, "vblaze", "bench")
    settings = WebhookSettings(urls=(dest,), secret=b"", spool_path=spool, backoff_initial_seconds=0.05)
    sink = WebhookSink(settings, transports=[transport])
    await sink.start()
    return sink, recorder


async def drained(sink: WebhookSink) -> None:
    async with asyncio.timeout(DRAIN_TIMEOUT):
        while sink.pending:  # noqa: ASYNC110 (the sink has no event for "empty"; polled every 5 ms)
            await asyncio.sleep(0.005)


def event(call: str, seq: int, kind: str = "utterance") -> BridgeEvent:
    data = {"text": "one two three four five six", "start": seq * 2.0, "end": seq * 2.0 + 1.5}
    return BridgeEvent(kind, call, seq, time.time(), data)  # type: ignore[arg-type]


async def throughput(urls: list[str], spool: Path, replicas: int, calls: int, events: int, tag: str) -> float:
    """Events/s: `events` over `calls` calls, submitted at once, until the last ack."""
    sink, recorder = await open_sink(urls, spool, replicas)
    per_call = max(1, events // calls)
    started = time.monotonic()
    for seq in range(per_call):
        for call in range(calls):
            sink.submit(event(f"{tag}-{call}@bench", seq))
    await drained(sink)
    elapsed = time.monotonic() - started
    await sink.aclose(10)
    print(f"  {tag}: publish outcomes {recorder.outcomes}", flush=True)
    return per_call * calls / elapsed


def pool_member(
    urls: list[str], spool: str, replicas: int, calls: int, events: int, tag: str, out: object
) -> None:
    rate = asyncio.run(throughput(urls, Path(spool), replicas, calls, events, tag))
    out.put(rate)  # type: ignore[attr-defined]


def pool(urls: list[str], spool: Path, replicas: int, workers: int, calls: int, events: int) -> float:
    """The sum of `workers` processes' events/s, on one spool and one stream."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [
        context.Process(target=pool_member, args=(urls, str(spool), replicas, calls, events, f"p{i}", out))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    rates = [out.get(timeout=DRAIN_TIMEOUT) for _ in procs]
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return sum(rates)


async def latency(
    urls: list[str], spool: Path, replicas: int, calls: int, seconds: float, interval: float
) -> list[float]:
    """Utterance -> ack latencies of `calls` calls talking for `seconds`."""
    sink, recorder = await open_sink(urls, spool, replicas)
    seqs = dict.fromkeys(range(calls), 0)

    async def talk(call: int) -> None:
        await asyncio.sleep(interval * call / calls)  # spread the calls over one interval
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sink.submit(event(f"load-{call}@bench", seqs[call]))
            seqs[call] += 1
            await asyncio.sleep(interval)

    async with asyncio.timeout(seconds + interval + 10):
        await asyncio.gather(*(talk(call) for call in range(calls)))
    await drained(sink)
    await sink.aclose(10)
    print(f"  latency run: publish outcomes {recorder.outcomes}", flush=True)
    return recorder.latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cluster", action="store_true", help="3 nodes, R=3 (default: one node, R=1)")
    parser.add_argument("--calls", type=int, default=100, help="calls of the throughput runs")
    parser.add_argument("--events", type=int, default=4000, help="events of one worker's throughput run")
    parser.add_argument("--workers", type=int, default=2, help="processes of the pool run")
    parser.add_argument("--load-calls", type=int, default=100, help="calls of the latency run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the latency run")
    parser.add_argument(
        "--utterance-interval", type=float, default=2.0, help="seconds between a call's utterances"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nats-bench-") as tmp:
        nodes = NatsCluster(Path(tmp), size=3 if args.cluster else 1)
        replicas = 3 if args.cluster else 1
        nodes.start()
        try:
            nodes.wait_jetstream()
            one = asyncio.run(
                throughput(nodes.urls, Path(tmp) / "one.sqlite3", replicas, args.calls, args.events, "one")
            )
            many = pool(
                nodes.urls, Path(tmp) / "pool.sqlite3", replicas, args.workers, args.calls, args.events
            )
            lat = asyncio.run(
                latency(
                    nodes.urls,
                    Path(tmp) / "lat.sqlite3",
                    replicas,
                    args.load_calls,
                    args.seconds,
                    args.utterance_interval,
                )
            )
        finally:
            nodes.stop_all()
    load = os.getloadavg()
    print(f"NATS sink, {'3-node cluster, R=3' if args.cluster else '1 node, R=1'}, {os.cpu_count()} cores")
    print(f"one worker          {one:8.0f} events/s  ({args.events} events over {args.calls} calls)")
    print(f"pool of {args.workers}           {many:8.0f} events/s  (one spool, one stream)")
    rate = args.load_calls / args.utterance_interval
    p50, p99 = 1000 * statistics.median(lat), 1000 * percentile(lat, 0.99)
    print(
        f"utterance -> ack     p50 {p50:.1f} ms  p99 {p99:.1f} ms"
        f"  ({args.load_calls} calls, {rate:.0f} utterances/s, {len(lat)} acks)"
    )
    print(f"load average        {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()

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

4. with ``--bridge-calls K``, **a real bridge**: bench/load.py's pool (K/4 workers, the stand-in with
   ``--recognizer vad-only``, Kamailio in front, sipp placing K calls of real speech for
   ``--bridge-seconds``) with ``sink.kind: nats``; p50/p99 of the bridge's own
   ``vblaze_bridge_utterance_to_nats_ack_seconds`` (scraped, interpolated within buckets), and every
   call's events checked in the stream (seq 0..n, in order, each event_id once).

The load average is printed next to the figures: the machine is shared. Every process it starts is
killed at the end.

    .venv/bin/python bench/nats_bench.py                       # about a minute
    .venv/bin/python bench/nats_bench.py --cluster --load-calls 200 --seconds 30
    .venv/bin/python bench/nats_bench.py --cluster --bridge-calls 40 --bridge-seconds 20
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


def real_bridge(nodes: NatsCluster, replicas: int, calls: int, seconds: int, workdir: Path) -> str:
    """K sipp calls through Kamailio into a bridge publishing to `nodes`; its ack latency, checked."""
    import yaml

    from bench import load

    audio = load.speech_file(load.SPEECH, workdir)
    standin, url = load.start_standin(["--recognizer", "vad-only", "--max-streams", str(calls + 16)])
    metrics_port = load.free_port()
    procs: list[object] = []
    kam = None
    try:
        config_path, config = load.pool_config(workdir, "bridge", calls, url, metrics_port, 100)
        config["sink"] = {"kind": "nats"}
        config["nats"] = {
            "servers": nodes.urls,
            "stream": "REAL",
            "subject_prefix": "real",
            "replicas": replicas,
        }
        config["webhook"] = {"spool_path": str(workdir / "real-spool.sqlite3")}
        config_path.write_text(yaml.safe_dump(config))
        procs = load.start_pool("bridge", config_path, config, workdir)
        kam = load.start_kamailio(load.dispatcher_list(load.parse_config(config, "bridge")), workdir / "kam")
        kam.wait_destinations(config["sip"]["workers"])
        scenario = load.proxied_scenario_file(audio, workdir, seconds * 1000, loop=True)
        stats = workdir / "real-sipp.csv"
        cmd = load.sipp_command(
            scenario, kam.port, stats, calls=calls, concurrent=calls, rate=20.0,
            local_port=load.free_port(load.socket.SOCK_DGRAM), media_port=load.free_port_block_media(calls),
        )  # fmt: skip
        load.subprocess.run(cmd, cwd=workdir, capture_output=True, timeout=seconds + calls / 20 + 120)
        ok = int(load.sipp_stats(stats).get("SuccessfulCall(C)", 0))
        deadline = time.monotonic() + 120
        while True:
            messages = nodes.read_stream("REAL")
            ended = {m.data["call_id"] for m in messages if m.data["type"] == "call.ended"}
            if len(ended) >= ok or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        by_call: dict[str, list[int]] = {}
        for m in messages:
            by_call.setdefault(m.data["call_id"], []).append(m.data["seq"])
        in_order = all(seqs == list(range(len(seqs))) for seqs in by_call.values())
        if not messages:
            print((workdir / "bridge.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        samples = load.scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        (p50, p99), count = load.histogram_quantiles(
            samples, "vblaze_bridge_utterance_to_nats_ack_seconds", (0.5, 0.99)
        )
    finally:
        if kam is not None:
            kam.stop()
        load.stop_pool(procs)  # type: ignore[arg-type]
        load.stop_process(standin, 15)
    shown = "/".join("-" if v is None else f"{1000 * v:.1f}" for v in (p50, p99))
    return (
        f"real bridge         {ok} of {calls} calls ok x {seconds} s, {len(ended)} ended in the stream, "
        f"{len(messages)} events, each call in seq order: {in_order}\n"
        f"  utterance -> ack  p50/p99 {shown} ms ({count} utterances; the bridge's histogram)"
    )


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
    parser.add_argument(
        "--bridge-calls", type=int, default=0, help="also K real calls into a bridge (0: not)"
    )
    parser.add_argument("--bridge-seconds", type=int, default=20, help="length of each real call")
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
            real = ""
            if args.bridge_calls:
                real = real_bridge(nodes, replicas, args.bridge_calls, args.bridge_seconds, Path(tmp))
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
    if real:
        print(real)
    print(f"load average        {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()

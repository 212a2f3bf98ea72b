"""Events through a real bridge into a real 3-node JetStream cluster (R=3), through faults.

Every `nats-server` is started here (tests/fixtures/nats.py: ports from free_port_block, stores in
tmp_path) and killed in teardown. What each test shows:

- the node worker 0 is connected to killed mid-way, then the one it reconnects to killed and
  restarted: every event of every call is in the stream exactly once (by event_id), in per-call seq
  order;
- the whole cluster down for `OUTAGE_SECONDS`: events wait in the spool and arrive afterwards, in order;
- the bridge killed -9 mid-call, right after JetStream acked an event and before its spool row was
  deleted: after the restart the spooled events are published again, JetStream says duplicate (counted
  by vblaze_bridge_nats_duplicates_total) and stores none twice.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.nats import subject
from tests.e2e.conftest import Bridge, Standin, run_sipp, speech
from tests.fixtures.harness import free_port_block, wait_until
from tests.fixtures.nats import NatsCluster, StoredMessage

pytestmark = pytest.mark.timeout(400)

OUTAGE_SECONDS = 60.0  # the whole cluster down (the figure)
CALLS = 20
PHRASE = "one two three four five six"
RETRY = {"backoff_initial_seconds": 0.1, "backoff_max_seconds": 1.0, "claim_interval_seconds": 1.0}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path, size=3)
    nodes.start()
    try:
        nodes.wait_jetstream()
        yield nodes
    finally:
        nodes.stop_all()


def nats_bridge(make_bridge: Any, engine: Standin, cluster: NatsCluster, stream: str, **extra: Any) -> Bridge:
    bridge: Bridge = make_bridge(
        engine.url,
        sink={"kind": "nats"},
        nats={"servers": cluster.urls, "stream": stream, "replicas": 3, "reconnect_wait_seconds": 0.2},
        webhook=RETRY,
        **extra,
    )
    return bridge


def by_call(messages: list[StoredMessage]) -> dict[str, list[StoredMessage]]:
    out: dict[str, list[StoredMessage]] = {}
    for message in messages:  # stream order
        out.setdefault(message.data["call_id"], []).append(message)
    return out


def ended_calls(cluster: NatsCluster, stream: str) -> dict[str, list[StoredMessage]]:
    calls = by_call(cluster.read_stream(stream))
    return {c: ms for c, ms in calls.items() if any(m.data["type"] == "call.ended" for m in ms)}


def wait_all_ended(
    cluster: NatsCluster, stream: str, count: int, timeout: float
) -> dict[str, list[StoredMessage]]:
    deadline = time.monotonic() + timeout
    while True:
        calls = ended_calls(cluster, stream)
        if len(calls) >= count or time.monotonic() > deadline:
            assert len(calls) >= count, f"{len(calls)} of {count} calls complete in {stream}"
            return calls
        time.sleep(0.5)


def assert_exactly_once_in_order(calls: dict[str, list[StoredMessage]]) -> None:
    """Each call: seq 0..n in stream order, each event_id once, the subject its own."""
    for call_id, messages in calls.items():
        seqs = [m.data["seq"] for m in messages]
        assert seqs == list(range(len(seqs))), (call_id, seqs)
        ids = [m.msg_id for m in messages]
        assert ids == [m.data["event_id"] for m in messages]
        assert len(set(ids)) == len(ids), (call_id, ids)
        assert messages[-1].data["type"] == "call.ended"
        token = subject.encode_call_id(call_id)
        for m in messages:
            assert m.subject == f"vblaze.default.{token}.{subject.event_type(m.data['type'])}"


def place_calls(
    bridge: Bridge,
    audio: Path,
    workdir: Path,
    calls: int,
    concurrent: int,
    *,
    worker: int = 0,
    hold_extra_ms: int = 500,
) -> threading.Thread:
    """sipp placing `calls` calls to one worker, in a thread (joined by the test)."""
    seconds = audio.stat().st_size / 8000
    results: list[Any] = []

    def caller() -> None:
        results.append(
            run_sipp(
                bridge.sip_port + worker,
                audio,
                workdir,
                hold_ms=int(seconds * 1000) + hold_extra_ms,
                calls=calls,
                concurrent=concurrent,
                rate=5,
                timeout=240,
            )
        )

    thread = threading.Thread(target=caller, name="sipp")
    thread.start()
    return thread


def connected_node(bridge: Bridge, cluster: NatsCluster, process: str = "worker-0") -> int:
    """The node `process` last said it (re)connected to, from its JSON log lines."""
    ports = [node.port for node in cluster.nodes]
    node = -1
    for record in bridge.log_records():
        said = re.fullmatch(r"(?:re)?connected to NATS at 127\.0\.0\.1:(\d+)", record.get("msg", ""))
        if said and record.get("process") == process:
            node = ports.index(int(said.group(1)))
    assert node >= 0, f"{process} never said which NATS node it is connected to"
    return node


def spooled_nats_rows(bridge: Bridge) -> int:
    spool = bridge.config_path.parent / f"spool-{bridge.config_path.stem.split('-')[-1]}.sqlite3"
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=5) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM events WHERE url LIKE 'nats:%'").fetchone()
    return int(count)


def test_twenty_calls_survive_a_node_killed_and_another_restarted(
    standin_vad: Standin, make_bridge: Any, cluster: NatsCluster, speech_dir: Path, tmp_path: Path
) -> None:
    bridge = nats_bridge(make_bridge, standin_vad, cluster, "CALLS", sip={"workers": 2})
    audio = speech(PHRASE, speech_dir, "six")
    # half the calls to each worker of the pool: one spool, one stream
    callers = [place_calls(bridge, audio, tmp_path, CALLS // 2, 4, worker=w) for w in (0, 1)]
    wait_until(lambda: len(by_call(cluster.read_stream("CALLS"))) >= 4, 60, "the first calls' events")
    # the node a worker is connected to: the client picks one of nats.servers at random
    first = connected_node(bridge, cluster)
    cluster.kill(first)
    wait_until(lambda: len(by_call(cluster.read_stream("CALLS"))) >= 10, 90, "events with a node down")
    wait_until(lambda: connected_node(bridge, cluster) != first, 30, "a worker reconnected")
    second = connected_node(bridge, cluster)
    cluster.kill(second)  # and restart it: no quorum until it is back
    time.sleep(1.0)
    cluster.start(second)
    for caller in callers:
        caller.join(240)
        assert not caller.is_alive()
    calls = wait_all_ended(cluster, "CALLS", CALLS, timeout=120)
    assert len(calls) == CALLS
    assert_exactly_once_in_order(calls)
    assert bridge.proc is not None and bridge.proc.poll() is None
    assert "disconnected from NATS" in bridge.log()


@pytest.mark.slow
def test_the_whole_cluster_down_events_wait_in_the_spool_and_arrive_in_order(
    standin_vad: Standin, make_bridge: Any, cluster: NatsCluster, speech_dir: Path, tmp_path: Path
) -> None:
    bridge = nats_bridge(make_bridge, standin_vad, cluster, "OUTAGE")
    audio = speech(PHRASE, speech_dir, "six")
    caller = place_calls(bridge, audio, tmp_path, 6, concurrent=3)
    wait_until(lambda: len(by_call(cluster.read_stream("OUTAGE"))) >= 1, 60, "the first events")
    before = len(cluster.read_stream("OUTAGE"))
    cluster.kill_all()
    down_at = time.monotonic()
    caller.join(240)
    assert not caller.is_alive()
    assert spooled_nats_rows(bridge) > 0  # the events of the calls placed meanwhile wait on disk
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
    cluster.start()
    calls = wait_all_ended(cluster, "OUTAGE", 6, timeout=120)
    assert_exactly_once_in_order(calls)
    assert sum(map(len, calls.values())) > before  # most arrived after the outage
    wait_until(lambda: spooled_nats_rows(bridge) == 0, 30, "the spool emptied")
    assert "cannot connect" in bridge.log() or "disconnected from NATS" in bridge.log()


def dead(pid: int) -> bool:
    """Gone, or a zombie its stopped parent has not reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_bridge_killed_after_an_ack_republishes_and_jetstream_stores_once(
    standin_vad: Standin,
    make_bridge: Any,
    cluster: NatsCluster,
    speech_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port_block(1)
    # The worker SIGKILLs itself once JetStream acked its 4th event, before the spool row is deleted.
    monkeypatch.setenv("VBLAZE_BRIDGE_CRASH_AT", "delivery.after_2xx:4")
    bridge = nats_bridge(make_bridge, standin_vad, cluster, "CRASH", metrics={"port": port})
    assert bridge.proc is not None
    worker = bridge.worker_pid(0)
    bridge.proc.send_signal(signal.SIGSTOP)  # no respawn: the whole bridge goes down with the worker
    try:
        caller = place_calls(bridge, speech(PHRASE, speech_dir, "six"), tmp_path, 3, 3, hold_extra_ms=6000)
        wait_until(lambda: dead(worker), 60, "the worker killed after an ack")
    finally:
        bridge.proc.send_signal(signal.SIGKILL)  # the supervisor too: the bridge killed -9 mid-call
        bridge.proc.wait(10)
    monkeypatch.delenv("VBLAZE_BRIDGE_CRASH_AT")
    assert spooled_nats_rows(bridge) > 0  # the acked one among them
    bridge.start()
    calls = wait_all_ended(cluster, "CRASH", 3, timeout=120)
    assert_exactly_once_in_order(calls)
    reasons = {ms[-1].data["data"]["reason"] for ms in calls.values()}
    assert reasons == {"worker_lost"}  # cut by the kill, ended after their spooled events
    wait_until(lambda: metric(port, "vblaze_bridge_nats_duplicates_total") >= 1, 30, "a duplicate counted")
    assert "duplicate" in bridge.log()
    caller.join(240)
    wait_until(lambda: spooled_nats_rows(bridge) == 0, 30, "the spool emptied")


def test_a_bridge_started_with_every_server_down_takes_calls_and_publishes_later(
    standin_vad: Standin, make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    """No server reachable is not a startup failure: the call is answered, its events are spooled, the
    error names nats.servers, and they are published, in order, once a server is up."""
    node = NatsCluster(tmp_path, size=1)
    try:
        bridge: Bridge = make_bridge(
            standin_vad.url,
            sink={"kind": "nats"},
            nats={"servers": node.urls, "stream": "LATE", "reconnect_wait_seconds": 0.2},
            webhook=RETRY,
        )
        caller = place_calls(bridge, speech(PHRASE, speech_dir, "six"), tmp_path, 1, 1)
        caller.join(120)
        wait_until(lambda: "nats.servers: cannot connect" in bridge.log(), 30, "the error naming the key")
        assert spooled_nats_rows(bridge) >= 3  # call.started, utterances, call.ended
        node.start()
        calls = wait_all_ended(node, "LATE", 1, timeout=60)
        assert_exactly_once_in_order(calls)
        assert bridge.proc is not None and bridge.proc.poll() is None
    finally:
        node.stop_all()

"""Two bridge hosts behind one Kamailio, each host a network namespace (tests/e2e/fleet.py, docs/fleet.md).

Calls spread over both hosts; a host that dies (its link pulled, every process SIGKILLed) under 20
calls costs only its own calls, and new calls go to the other host as soon as Kamailio's probes miss it;
when it comes back with the same config, spool and state, it reports its lost calls as `worker_lost` and
delivers the events it had spooled, in order. SIGTERM on a host drains it without a failed call.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bridge.webhook.receiver import SECRET
from tests.e2e.conftest import speech
from tests.e2e.fleet import ADDRESSES, BRIDGE_HOSTS, FR_TIMER, PING_INTERVAL, SIP_PORT, Fleet, wait_delivered
from tests.e2e.test_kamailio import finish
from tests.e2e.test_options import options, reason_text
from tests.fixtures import netns

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed"),
]

COUNT = "one two three four five six seven eight nine ten"
WORKERS = 4  # per host: 16 calls a host, 32 in all


@pytest.fixture
def fleet(tmp_path: Path, speech_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """The whole bed, up: torn down (every process killed, every namespace deleted) whatever happens."""
    reason = netns.usable()
    if reason is not None:
        pytest.skip(f"network namespaces are not usable here: {reason}")
    monkeypatch.setenv("VBLAZE_BRIDGE_WEBHOOK_SECRET", SECRET.decode())
    bed = netns.TestBed.create()
    try:
        built = Fleet(bed, tmp_path, speech(COUNT, speech_dir, "count"))
        bed.add_host("caller", ADDRESSES["caller"])
        built.start_engine()
        built.start_hooks()
        for role in BRIDGE_HOSTS:
            built.add_bridge(role, WORKERS, drain_seconds=30)
        built.start_proxy().wait_destinations(WORKERS * len(BRIDGE_HOSTS), timeout=30)
        yield built
    finally:
        bed.close()
    assert not (Path("/run/netns") / bed.switch).exists()


def spooled_calls(path: Path) -> set[str]:
    """The calls with events in a (dead) host's spool, read without taking part in it."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT DISTINCT call_id FROM events")}


def seqs_in_order(events: list[dict[str, Any]]) -> bool:
    return [e["seq"] for e in events] == list(range(len(events)))


def test_calls_spread_a_lost_host_costs_only_its_calls_and_reports_them_when_back(fleet: Fleet) -> None:
    kam, b = fleet.kam, fleet.bridges["b"]
    assert kam is not None and b.host is not None

    # 1. Eight calls through the one address land on both hosts.
    proc, stats, marker = fleet.sipp(8, hold_ms=3000)
    assert finish(proc, stats, 60) == {"ok": 8, "failed": 0}, kam.log()[-3000:]
    spread = fleet.wait_where(marker, 8, 30, kind="call.ended")
    assert spread["a"] and spread["b"] and not spread["a"] & spread["b"], spread
    for role, bridge in fleet.bridges.items():
        assert bridge.counted("vblaze_bridge_calls_total") == len(spread[role])
        wait_delivered(fleet.hooks[role], spread[role], 30)

    # 2. 20 calls; b's receiver refuses, so b spools. Then b dies: link down, every process SIGKILLed.
    fleet.hooks["b"].refuse(True)
    first, first_stats, first_marker = fleet.sipp(20, hold_ms=15000, rate=20)
    held = fleet.wait_where(first_marker, 20, 30)
    assert held["b"] and len(held["a"]) <= WORKERS * 4 - 4, held  # room on a for the calls to come
    b.host.link(False)
    killed = b.host.kill_all()
    died, died_at = time.monotonic(), time.time()
    assert len(killed) >= 1 + WORKERS  # the supervisor and its workers
    seen = len(kam.log())
    second, second_stats, second_marker = fleet.sipp(4, hold_ms=3000, rate=2)  # new calls meanwhile
    flags = kam.wait_destinations(WORKERS, active=False, timeout=10)
    out_after = time.monotonic() - died
    out_at = len(kam.log())
    assert all(flags[uri].startswith("I") for uri in b.uris()), flags
    assert out_after <= PING_INTERVAL + FR_TIMER + 1.5, out_after  # one probe missed, plus slack
    a_b = f"{len(spread['a'])}/{len(spread['b'])} then {len(held['a'])}/{len(held['b'])}"
    print(f"fleet: calls on a/b {a_b}; b out of the rotation {out_after:.2f} s after it died")
    assert finish(second, second_stats, 60) == {"ok": 4, "failed": 0}, kam.log()[seen:]
    landed = fleet.where(second_marker)
    assert len(landed["a"]) == 4 and not landed["b"], landed
    # The last new call (placed up to 1.5 s after the death) was answered on a within one failover.
    answered_after = max(fleet.hooks["a"].started_at(landed["a"]).values()) - died_at
    assert answered_after <= 1.5 + FR_TIMER + 2, answered_after  # placed within 1.5 s, one failover
    print(f"fleet: the last new call answered on a {answered_after:.2f} s after b died")
    # Only b's calls fail (their BYE gets no answer), a's all complete.
    assert finish(first, first_stats, 60) == {"ok": len(held["a"]), "failed": len(held["b"])}
    ended_on_a = wait_delivered(fleet.hooks["a"], held["a"] | landed["a"], 30)
    assert {data["reason"] for data in ended_on_a.values()} == {"remote_bye"}, ended_on_a
    assert not re.search(rf"to sip:{re.escape(b.host.address)}:", kam.log()[out_at:])

    # 3. b comes back with the same config, spool and state: its lost calls end as worker_lost and
    #    the events it had spooled are delivered, each call's seq in order.
    spooled = spooled_calls(b.config_path.parent / "spool.sqlite3")
    assert held["b"] <= spooled, (held["b"], spooled)  # refused by the receiver, kept on b's disk
    b.host.link(True)
    restarted = time.time()
    b.start()
    fleet.hooks["b"].refuse(False)
    ended = wait_delivered(fleet.hooks["b"], held["b"], 60)
    assert {data["reason"] for data in ended.values()} == {"worker_lost"}, ended
    delivered = fleet.hooks["b"].delivered()
    for cid in held["b"]:
        events = delivered[cid]
        assert seqs_in_order(events) and events[0]["type"] == "call.started", events
    accepted = [
        r for r in fleet.hooks["b"].requests() if r["status"] == 200 and r["envelope"]["call_id"] in held["b"]
    ]
    assert all(r["at"] >= restarted for r in accepted)  # delivered only by the new life, from the spool
    assert all(r["signature_ok"] for hook in fleet.hooks.values() for r in hook.requests())
    assert b.counted("vblaze_bridge_calls_total", result="worker_lost") == len(held["b"])
    kam.wait_destinations(WORKERS * 2, timeout=15)  # back in the rotation


def test_sigterm_drains_one_host_without_a_failed_call(fleet: Fleet) -> None:
    kam, a, b = fleet.kam, fleet.bridges["a"], fleet.bridges["b"]
    assert kam is not None and b.proc is not None
    first, first_stats, first_marker = fleet.sipp(8, hold_ms=8000, rate=20)
    held = fleet.wait_where(first_marker, 8, 30)
    assert held["a"] and held["b"], held
    b.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    flags = kam.wait_destinations(WORKERS, active=False, timeout=5)
    out_after = time.monotonic() - signalled
    assert all(flags[uri].startswith("I") for uri in b.uris()), flags
    assert out_after <= 2 * PING_INTERVAL + 1, out_after  # the next probes' 503 answers
    for index in range(WORKERS):  # what Kamailio's probes get: 503, draining, come back later
        reply = b.host.call(options, SIP_PORT + index, host=b.host.address)
        assert reply.status == 503 and reason_text(reply) == "draining", reply.raw[:400]
        assert "retry-after" in reply.headers, reply.raw[:400]
    a_b = f"{len(held['a'])}/{len(held['b'])}"
    print(f"fleet: calls on a/b {a_b}; draining b out of the rotation {out_after:.2f} s after SIGTERM")
    seen = len(kam.log())
    second, second_stats, second_marker = fleet.sipp(6, hold_ms=2000)
    assert finish(second, second_stats, 60) == {"ok": 6, "failed": 0}, kam.log()[seen:]
    landed = fleet.where(second_marker)
    assert len(landed["a"]) == 6 and not landed["b"], landed
    assert not re.search(rf"to sip:{re.escape(b.host.address if b.host else '')}:", kam.log()[seen:])
    assert finish(first, first_stats, 60) == {"ok": 8, "failed": 0}  # b's calls in progress complete
    for role in BRIDGE_HOSTS:
        ended = wait_delivered(fleet.hooks[role], held[role] | landed[role], 30)
        assert {data["reason"] for data in ended.values()} == {"remote_bye"}, ended
    assert b.proc.wait(timeout=40) == 0
    assert a.proc is not None and a.proc.poll() is None

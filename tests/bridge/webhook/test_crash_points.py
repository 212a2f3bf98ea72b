"""SIGKILL at each step of an event's life, with real processes, a real spool and a real receiver.

Each test runs worker stand-ins (`worker_child.py`: a WebhookSink and a CallLedger used as the worker
uses them) that die at a named crash point (`bridge.webhook.crashpoint`) or by SIGKILL from the test,
then starts replacements and checks what the receiver got: every event that was on disk when the
process died arrives, each call's seq only goes up (a repeat of the same event_id is a duplicate,
allowed and counted), and each call ends with exactly one call.ended, last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.webhook import crashpoint

from .children import read_line, reap
from .conftest import spool_rows
from .receiver import Answer, Receiver, free_port

CHILD = Path(__file__).with_name("worker_child.py")
CALLS = 3
UTTERANCES = 3  # per call: call.started, 3 utterances, a dtmf, call.ended: 6 events
Make = Callable[..., Any]


@dataclass
class Pool:
    """Spawns worker stand-ins on one spool and one state directory; kills what is left at the end."""

    spool: Path
    state: Path
    url: str
    started: list[asyncio.subprocess.Process]

    @property
    def port(self) -> int:
        return int(self.url.split(":")[2].split("/")[0])

    async def spawn(
        self, index: int, mode: str, crash: str | None = None, prefix: str | None = None
    ) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env.pop(crashpoint.ENV, None)
        if crash is not None:
            env[crashpoint.ENV] = crash
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CHILD),
            str(self.spool),
            self.url,
            str(self.state),
            str(index),
            prefix if prefix is not None else f"w{index}-",
            str(CALLS),
            str(UTTERANCES),
            mode,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        self.started.append(proc)
        return proc


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    p = Pool(tmp_path / "spool" / "webhook.sqlite3", tmp_path / "state", "", [])
    p.url = f"http://127.0.0.1:{free_port()}/hook"
    yield p
    await reap(p.started)


async def killed(proc: asyncio.subprocess.Process, seconds: float = 20.0) -> None:
    """Wait until `proc` has died of SIGKILL (its own crash point, or ours)."""
    async with asyncio.timeout(seconds):
        assert await proc.wait() == -signal.SIGKILL


async def sigkill(*procs: asyncio.subprocess.Process) -> None:
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
    for proc in procs:
        await killed(proc)


def on_disk(pool: Pool) -> set[tuple[str, int]]:
    return {(call_id, seq) for _, call_id, seq in spool_rows(pool.spool)}


async def settled(receiver: Receiver, pool: Pool, calls: set[str], seconds: float = 20.0) -> None:
    """Every call has its call.ended at the receiver and the spool is empty."""

    def done() -> bool:
        ended = {e["call_id"] for e in receiver.processed if e["type"] == "call.ended"}
        return ended >= calls and not spool_rows(pool.spool)

    await receiver.wait_for(done, seconds=seconds)


def check(receiver: Receiver, calls: set[str], durable: set[tuple[str, int]]) -> dict[str, int]:
    """The order rules; returns duplicates and holes counted over all calls."""
    per_call: dict[str, list[dict[str, Any]]] = {}
    for env in receiver.processed:
        per_call.setdefault(env["call_id"], []).append(env)
    assert set(per_call) == calls
    duplicates = holes = 0
    for call_id, envs in per_call.items():
        seen: list[dict[str, Any]] = []
        for env in envs:
            if seen and env["event_id"] == seen[-1]["event_id"]:
                duplicates += 1  # the last event again: an answer lost with the process
                continue
            assert not seen or env["seq"] > seen[-1]["seq"], f"{call_id}: {[e['seq'] for e in envs]}"
            seen.append(env)
        seqs = [e["seq"] for e in seen]
        assert [e["type"] for e in seen].count("call.ended") == 1, f"{call_id}: {seqs}"
        assert seen[-1]["type"] == "call.ended", f"{call_id}: {seqs}"
        assert seen[0]["seq"] == 0
        holes += seqs[-1] + 1 - len(seqs)
        lost = {seq for c, seq in durable if c == call_id} - set(seqs)
        assert not lost, f"{call_id}: spooled events {sorted(lost)} never arrived"
    return {"duplicates": duplicates, "holes": holes}


CALL_IDS = {f"w0-{i}" for i in range(CALLS)}


@pytest.mark.parametrize(
    ("point", "mode"),
    [
        ("spool.before_insert:8", "open"),
        ("spool.before_insert:16", "full"),  # the 16th write is call w0-0's call.ended
        ("delivery.before_post:8", "open"),
        ("delivery.after_2xx:8", "open"),
    ],
)
async def test_killed_at_a_step_of_delivery(pool: Pool, receivers: Make, point: str, mode: str) -> None:
    """The worker dies at its 8th spool write, before its 8th POST, after its 8th 2xx, or on its way
    to spooling a call.ended (its ledger must not have forgotten that call); its replacement (same
    index: same ledger) ends its calls after whatever was spooled."""
    receiver: Receiver = await receivers(port=pool.port)
    first = await pool.spawn(0, mode, crash=point)
    await killed(first)
    durable = on_disk(pool) | {(e["call_id"], e["seq"]) for e in receiver.processed}
    second = await pool.spawn(0, "idle")
    assert (await read_line(second)).startswith("STARTED ")
    await settled(receiver, pool, CALL_IDS)
    counts = check(receiver, CALL_IDS, durable)
    # A repeat is of a call's last event only (check() fails otherwise): at most one per call.
    assert counts["duplicates"] <= CALLS
    if point.startswith("delivery.after_2xx"):
        assert counts["duplicates"] >= 1  # the event answered 2xx, not yet deleted, is sent again
    # Holes are events produced and not yet on disk when the process died (check() proves every
    # spooled one arrived); the lost call.ended is numbered past them.


async def test_killed_while_claiming_a_dead_owners_rows(pool: Pool, receivers: Make) -> None:
    """Worker 0 dies with its events spooled (receiver down); worker 1 dies inside its claim of them;
    the claim rolls back and worker 0's replacement delivers all, then the call.endeds."""
    owner = await pool.spawn(0, "open")
    assert await read_line(owner) == "STARTED 0"
    assert await read_line(owner) == "PERSISTED"
    await sigkill(owner)
    durable = on_disk(pool)
    assert len(durable) == CALLS * (UTTERANCES + 2)
    claimer = await pool.spawn(1, "idle", crash="spool.claim")
    await killed(claimer)
    assert on_disk(pool) == durable  # nothing moved, nothing lost
    receiver: Receiver = await receivers(port=pool.port)
    again = await pool.spawn(0, "idle")
    assert await read_line(again) == f"STARTED {CALLS}"
    await settled(receiver, pool, CALL_IDS)
    assert check(receiver, CALL_IDS, durable) == {"duplicates": 0, "holes": 0}


async def test_killed_while_writing_the_ledger(pool: Pool, receivers: Make) -> None:
    """Killed before its 8th ledger line (the 8th event is submitted, maybe spooled): the lost
    call.ended is numbered past whatever the spool holds, so it never collides with a spooled event."""
    receiver: Receiver = await receivers(answer=lambda r: Answer(503), port=pool.port)
    first = await pool.spawn(0, "open", crash="ledger.write:8")
    await killed(first)
    durable = on_disk(pool)
    receiver.answer = lambda r: Answer(200)
    second = await pool.spawn(0, "idle")
    assert await read_line(second) == f"STARTED {CALLS}"
    await settled(receiver, pool, CALL_IDS)
    check(receiver, CALL_IDS, durable)


async def test_killed_while_compacting_the_ledger(pool: Pool, receivers: Make) -> None:
    """The replacement dies between writing the compacted ledger and renaming it; the next one still
    ends every call, once."""
    first = await pool.spawn(0, "open")
    assert await read_line(first) == "STARTED 0"
    assert await read_line(first) == "PERSISTED"
    await sigkill(first)
    durable = on_disk(pool)
    second = await pool.spawn(0, "idle", crash="ledger.compact")
    await killed(second)
    receiver: Receiver = await receivers(port=pool.port)
    third = await pool.spawn(0, "idle")
    assert await read_line(third) == f"STARTED {CALLS}"
    await settled(receiver, pool, CALL_IDS)
    assert check(receiver, CALL_IDS, durable) == {"duplicates": 0, "holes": 0}


async def test_whole_pool_killed_then_restarted(pool: Pool, receivers: Make) -> None:
    """Both workers die mid-call with the receiver down. On restart worker 1 comes up first and adopts
    worker 0's spooled events; worker 0 then ends its lost calls from its ledger. The call.ended of a
    call goes out after that call's events, though another process holds them."""
    first = [await pool.spawn(i, "open") for i in range(2)]
    for proc in first:
        assert await read_line(proc) == "STARTED 0"
        assert await read_line(proc) == "PERSISTED"
    await sigkill(*first)
    durable = on_disk(pool)
    assert len(durable) == 2 * CALLS * (UTTERANCES + 2)
    # A slow receiver: worker 1 is still sending worker 0's events when worker 0 ends the calls.
    receiver: Receiver = await receivers(answer=lambda r: Answer(200, hang=0.25), port=pool.port)
    one = await pool.spawn(1, "idle")
    assert await read_line(one) == f"STARTED {CALLS}"
    zero = await pool.spawn(0, "idle")
    assert await read_line(zero) == f"STARTED {CALLS}"
    calls = CALL_IDS | {f"w1-{i}" for i in range(CALLS)}
    await settled(receiver, pool, calls, seconds=30)
    assert check(receiver, calls, durable) == {"duplicates": 0, "holes": 0}
    ended = [e for e in receiver.processed if e["type"] == "call.ended"]
    assert {e["data"]["reason"] for e in ended} == {"worker_lost"}

from __future__ import annotations

import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.webhook.spool import NewEvent, Spool, prepare

from .conftest import spool_rows


def ev(call_id: str, seq: int, url: str = "http://r/hook", size: int = 10) -> NewEvent:
    return NewEvent(url, call_id, seq, f"id-{call_id}-{seq}", "utterance", 1.0 + seq, b"x" * size)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.sqlite3"


def test_wal_mode_and_order(path: Path) -> None:
    spool = Spool(path, 10**8)
    spool.open()
    try:
        assert spool.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        spool.insert([ev("b", 1), ev("a", 2)])
        spool.insert([ev("a", 0), ev("b", 0), ev("a", 1)])
        assert [(e.call_id, e.seq) for e in spool.pending()] == [
            ("a", 0),
            ("a", 1),
            ("a", 2),
            ("b", 0),
            ("b", 1),
        ]
        assert spool.body("http://r/hook", "a", 1) == b"x" * 10
        spool.delete("http://r/hook", "a", 0)
        spool.reject("http://r/hook", "a", 1, 400, "bad")
        assert [(e.call_id, e.seq) for e in spool.pending()] == [("a", 2), ("b", 0), ("b", 1)]
        (rej,) = spool.rejected()
        assert (rej.call_id, rej.seq, rej.status, rej.detail) == ("a", 1, 400, "bad")
        assert spool.count() == 3
    finally:
        spool.close()


def test_duplicate_insert_is_ignored(path: Path) -> None:
    spool = Spool(path, 10**8)
    spool.open()
    try:
        spool.insert([ev("a", 0)])
        spool.insert([ev("a", 0)])
        assert spool.count() == 1
    finally:
        spool.close()


def test_live_owner_is_not_claimed_closed_owner_is(path: Path) -> None:
    first, second = Spool(path, 10**8), Spool(path, 10**8)
    first.open()
    second.open()
    try:
        first.insert([ev("a", 0), ev("a", 1)])
        assert second.claim_orphans() == []  # first is alive
        assert second.pending() == []
        first.close()  # leaves its rows: they are orphans now
        claimed = second.claim_orphans()
        assert [(e.call_id, e.seq) for e in claimed] == [("a", 0), ("a", 1)]
        assert [(e.call_id, e.seq) for e in second.pending()] == [("a", 0), ("a", 1)]
        assert second.claim_orphans() == []
    finally:
        second.close()


def test_killed_owner_is_claimed(path: Path) -> None:
    """A process that dies with SIGKILL leaves its lock free: its rows are claimed."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from bridge.webhook.spool import NewEvent, Spool
        s = Spool({str(path)!r}, 10**8)
        s.open()
        s.insert([NewEvent("u", "dead-call", i, f"id{{i}}", "dtmf", 0.0, b"{{}}") for i in range(3)])
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        spool = Spool(path, 10**8)
        spool.open()
        try:
            assert spool.claim_orphans() == []  # alive
            child.kill()
            child.wait(5)
            claimed = spool.claim_orphans()
            assert [(e.call_id, e.seq) for e in claimed] == [
                ("dead-call", 0),
                ("dead-call", 1),
                ("dead-call", 2),
            ]
            assert not any(p.suffix == ".lock" and p.stem != spool.owner for p in spool.owners_dir.iterdir())
        finally:
            spool.close()
    finally:
        child.kill()
        child.wait(5)


def test_size_bound(path: Path) -> None:
    spool = Spool(path, 200_000)
    spool.open()
    try:
        accepted = 0
        for seq in range(100):
            result = spool.insert([ev("a", seq, size=10_000)])
            if not result.accepted:
                break
            accepted += 1
            assert result.used_bytes <= 200_000
        assert 5 < accepted < 20
        assert spool.count() == accepted
        # Room again once delivered
        for seq in range(accepted):
            spool.delete("http://r/hook", "a", seq)
        assert spool.insert([ev("a", 1000, size=10_000)]).accepted
    finally:
        spool.close()


def test_schema_version_mismatch_is_refused(path: Path) -> None:
    spool = Spool(path, 10**8)
    spool.open()
    spool.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    spool.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema 99"):
        Spool(path, 10**8).open()


def test_insert_then_delete_leaves_nothing_and_reports_its_cost(path: Path) -> None:
    """One fsync'ed insert + delete (the spool thread's work per event), 50 times: nothing is left. The
    time is printed, not asserted (tests check behaviour; on a shared machine timings drift: the figure
    belongs to bench/, see docs/benchmarks.md)."""
    spool = Spool(path, 10**8)
    spool.open()
    try:
        n = 50
        started = time.perf_counter()
        for seq in range(n):
            spool.insert([ev("a", seq, size=2000)])
            spool.delete("http://r/hook", "a", seq)
        per_event = (time.perf_counter() - started) / n
        print(f"spool insert+delete: {per_event * 1000:.2f} ms per event")
        assert spool_rows(path) == []
    finally:
        spool.close()


def _open_at_once(path: str, barrier: Any, results: Any) -> None:
    """In a child process: wait for the others, then open (and close) the fresh spool."""
    spool = Spool(path, 10**8)
    barrier.wait(10)
    try:
        spool.open()
        spool.insert([ev(f"c{os.getpid()}", 0)])
        spool.close()
        results.put("ok")
    except Exception as exc:  # reported to the test, which fails on it
        results.put(f"{type(exc).__name__}: {exc}")


def _race(paths: list[Path], processes: int, prepared: bool) -> list[str]:
    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    for path in paths:
        if prepared:
            prepare(path)
        barrier = ctx.Barrier(processes)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_open_at_once, args=(str(path), barrier, results)) for _ in range(processes)
        ]
        for proc in procs:
            proc.start()
        try:
            outcomes = [results.get(timeout=30) for _ in procs]
        finally:
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        failures.extend(o for o in outcomes if o != "ok")
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == processes
    return failures


def test_fresh_spool_opened_by_four_processes_at_once(tmp_path: Path) -> None:
    """20 rounds of 4 processes released by one barrier onto a spool that does not exist yet."""
    paths = [tmp_path / f"round{i}" / "spool.sqlite3" for i in range(20)]
    assert _race(paths, 4, prepared=False) == []


def test_prepared_spool_opened_by_four_processes_at_once(tmp_path: Path) -> None:
    """What the supervisor does: prepare() once, then the workers open it together."""
    paths = [tmp_path / f"round{i}" / "spool.sqlite3" for i in range(5)]
    assert _race(paths, 4, prepared=True) == []
    prepare(paths[0])  # again, on an existing spool: a no-op


def _encode(seq: int) -> tuple[str, bytes]:
    return f"id-{seq}", f"ended at {seq}".encode()


def test_lost_call_end_is_numbered_after_what_is_spooled(path: Path) -> None:
    """The ledger may lag the spool by an event (killed between the two writes): the lost call's
    call.ended then takes the next seq after the spooled ones, never one of theirs."""
    dead = Spool(path, 10**8)
    dead.open()
    dead.insert([ev("c", 0), ev("c", 1), ev("c", 2)])
    dead.close()
    spool = Spool(path, 10**8)
    spool.open()
    try:
        assert spool.earlier_elsewhere("http://r/hook", "c", 3)  # held by the dead owner
        result = spool.insert_lost_end(["http://r/hook"], "c", 2, 9.0, _encode)
        assert (result.written, result.seq) == (True, 3)
        assert spool.body("http://r/hook", "c", 3) == b"ended at 3"
        assert spool.insert_lost_end(["http://r/hook"], "d", 5, 9.0, _encode).seq == 5  # nothing spooled
        spool.claim_orphans()
        assert not spool.earlier_elsewhere("http://r/hook", "c", 3)  # ours now
    finally:
        spool.close()


def test_lost_call_end_is_not_written_if_the_real_one_is_spooled(path: Path) -> None:
    spool = Spool(path, 10**8)
    spool.open()
    try:
        ended = NewEvent("http://r/hook", "c", 4, "id-c-4", "call.ended", 5.0, b"real")
        spool.insert([ev("c", 3), ended])
        result = spool.insert_lost_end(["http://r/hook"], "c", 4, 9.0, _encode)
        assert (result.written, result.already_ended, result.seq) == (False, True, None)
        assert spool.body("http://r/hook", "c", 4) == b"real"
        dup = spool.insert([ended])  # the same row again, as a lost copy would be
        assert dup.inserted == (False,)
    finally:
        spool.close()


def test_owners_differ_between_hosts_with_one_name_and_one_pid(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts in network namespaces, or cloned machines, share a host name, and two hosts may give their
    workers the same pid: an owner id also carries 48 random bits, so no two hosts' owners collide."""
    monkeypatch.setattr(socket, "gethostname", lambda: "bridge")
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    owners = {Spool(path, 10**8).owner for _ in range(2000)}
    assert len(owners) == 2000 and all(owner.startswith("bridge-4242-") for owner in owners)

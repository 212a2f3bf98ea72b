"""The call ledger: its journal, its compaction, its order against the sink, and SIGKILL while it writes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge import ledger as ledger_module
from bridge.ledger import COMPACT_EVERY, CallLedger, LedgerEntry, end_lost_calls
from tests.fixtures.sinks import ListSink


class HeldSink(ListSink):
    """An ordered sink whose writes are done only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.after: list[Callable[[], None]] = []

    def ordered_after(self, fn: Callable[[], None]) -> None:
        self.after.append(fn)


def lines(ledger: CallLedger) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in ledger.path.read_bytes().splitlines()]


def test_replayed_journal_gives_the_calls_still_up(tmp_path: Path) -> None:
    ledger = CallLedger(tmp_path, 5080)
    assert ledger.take_orphans() == []
    a, b = LedgerEntry("a", 0, 100.0), LedgerEntry("b", 0, 100.0)
    for seq in range(1, 4):
        a.next_seq = b.next_seq = seq
        ledger.update(a)
        ledger.update(b)
    b.utterances, b.last_end = 2, 7.5
    ledger.update(b)
    ledger.forget("a")
    assert [r["op"] for r in lines(ledger)] == ["life"] + ["call"] * 7 + ["end"]
    orphans = CallLedger(tmp_path, 5080).take_orphans()
    assert [o.entry for o in orphans] == [LedgerEntry("b", 3, 100.0, 2, 7.5)]
    assert orphans[0].same_supervisor  # our parent wrote the life line: it saw the death


def test_a_whole_pool_restart_is_not_the_same_supervisor(tmp_path: Path) -> None:
    ledger = CallLedger(tmp_path, 5080)
    ledger.path.write_text(
        json.dumps({"op": "life", "pid": 1, "ppid": os.getppid() + 1})
        + "\n"
        + json.dumps({"op": "call", "call_id": "x", "next_seq": 4, "started_at": 10.0})
        + "\n"
    )
    (orphan,) = ledger.take_orphans()
    assert not orphan.same_supervisor


def test_the_journal_is_compacted(tmp_path: Path) -> None:
    ledger = CallLedger(tmp_path, 5080)
    ledger.take_orphans()
    entry = LedgerEntry("long", 0, 1.0)
    for seq in range(3 * COMPACT_EVERY):
        entry.next_seq = seq
        ledger.update(entry)
    assert len(lines(ledger)) < COMPACT_EVERY + 2
    (orphan,) = CallLedger(tmp_path, 5080).take_orphans()
    assert orphan.entry.next_seq == 3 * COMPACT_EVERY - 1


def test_an_update_is_one_append_not_a_rewrite(tmp_path: Path) -> None:
    """The ledger used to rewrite and rename its file on every event; now one write() of one line."""
    ledger = CallLedger(tmp_path, 5080)
    ledger.take_orphans()
    entries = [LedgerEntry(f"call-{i}", 0, 1.0) for i in range(4)]
    inode = ledger.path.stat().st_ino
    for entry in entries:
        ledger.update(entry)
    assert ledger.path.stat().st_ino == inode  # not replaced: appended to
    assert len(lines(ledger)) == 1 + len(entries)
    started = time.perf_counter()
    n = 2000
    for i in range(n):
        entry = entries[i % 4]
        entry.next_seq += 1
        ledger.update(entry)
    per_update = (time.perf_counter() - started) / n
    print(f"ledger update: {per_update * 1e6:.1f} µs")
    assert per_update < 500e-6  # compactions included, on a loaded machine


def test_end_is_written_only_after_the_sink_has_the_call_ended(tmp_path: Path) -> None:
    sink = HeldSink()
    ledger = CallLedger(tmp_path, 5080)
    assert end_lost_calls(ledger, sink) == []
    ledger.update(LedgerEntry("c", 5, 1.0))
    ledger.forget("c")
    assert [r["op"] for r in lines(ledger)] == ["life", "call"]  # call.ended not on disk yet
    assert [o.entry.call_id for o in CallLedger(tmp_path, 5080).take_orphans()] == ["c"]


def test_lost_calls_end_counted_to_the_last_sign_of_life(tmp_path: Path) -> None:
    ledger = CallLedger(tmp_path, 5080)
    ledger.take_orphans()
    started = time.time() - 100
    ledger.update(LedgerEntry("lost", 3, started, utterances=1, last_end=20.0))
    os.utime(ledger.path, (started + 60, started + 60))  # the worker's last write or heartbeat
    sink = ListSink()
    ((lost, data),) = end_lost_calls(CallLedger(tmp_path, 5080), sink)
    assert lost.lost_at == pytest.approx(started + 60)
    (event,) = sink.events
    assert (event.kind, event.call_id, event.seq) == ("call.ended", "lost", 3)
    assert data["reason"] == "worker_lost"
    assert data["duration"] == pytest.approx(60.0, abs=0.01)  # not 100: up to the death, not the restart
    assert data["gaps"] == [
        {"start": 20.0, "duration": pytest.approx(40.0, abs=0.01), "cause": "worker_lost"}
    ]
    # Submitted, then forgotten: a third life has nothing to end.
    assert CallLedger(tmp_path, 5080).take_orphans() == []


def test_a_lost_calls_gap_is_on_the_audio_timeline_not_the_answers(tmp_path: Path) -> None:
    """The timeline starts with the first audio frame, 1.5 s after the answer here: the gap from the last
    utterance (20 s into the audio) to the death (60 s after the answer) is 38.5 s, the call 60 s."""
    ledger = CallLedger(tmp_path, 5080)
    ledger.take_orphans()
    started = time.time() - 100
    entry = LedgerEntry("late-audio", 3, started, utterances=1, last_end=20.0, audio_started_at=started + 1.5)
    ledger.update(entry)
    os.utime(ledger.path, (started + 60, started + 60))
    ((_, data),) = end_lost_calls(CallLedger(tmp_path, 5080), ListSink())
    assert data["duration"] == pytest.approx(60.0, abs=0.01)
    assert data["gaps"] == [
        {"start": 20.0, "duration": pytest.approx(38.5, abs=0.01), "cause": "worker_lost"}
    ]


def test_the_previous_single_document_ledger_is_read(tmp_path: Path) -> None:
    legacy = tmp_path / "worker-5080.calls.json"
    legacy.write_text(
        json.dumps({"written_at": 1.0, "calls": [{"call_id": "old", "next_seq": 2, "started_at": 1.0}]})
    )
    (orphan,) = CallLedger(tmp_path, 5080).take_orphans()
    assert orphan.entry.call_id == "old"
    assert not legacy.exists()


CHILD = textwrap.dedent(
    """
    import sys
    from bridge.ledger import CallLedger, LedgerEntry
    ledger = CallLedger(sys.argv[1], 5080)
    ledger.take_orphans()
    entries = [LedgerEntry(f"c{i}", 0, 1.0) for i in range(8)]
    print("go", flush=True)
    seq = 0
    while True:
        seq += 1
        entry = entries[seq % 8]
        entry.next_seq = seq
        ledger.update(entry)
        if seq % 3 == 0:
            ledger.forget(entries[(seq + 4) % 8].call_id)
    """
)


@pytest.mark.parametrize("crash", [None, "ledger.write:1500", "ledger.compact:2"])
def test_sigkill_while_writing_leaves_a_readable_ledger(tmp_path: Path, crash: str | None) -> None:
    """A process updating the ledger as fast as it can is killed (by us at a random moment, in the
    middle of a line's write, or between writing the compacted file and renaming it); the next life
    reads every call it had, with a next_seq it had written."""
    env = dict(os.environ)
    env.pop("VBLAZE_BRIDGE_CRASH_AT", None)
    if crash:
        env["VBLAZE_BRIDGE_CRASH_AT"] = crash
    for delay in (0.05, 0.13, 0.21):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "go\n"
            if crash is None:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
            assert proc.wait(20) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        orphans = CallLedger(tmp_path, 5080).take_orphans()
        assert orphans, "the calls up at the kill are in the ledger"
        for orphan in orphans:
            assert orphan.entry.next_seq % 8 == int(orphan.entry.call_id[1:])
        assert not (tmp_path / "worker-5080.calls.tmp").exists() or crash == "ledger.compact:2"


@pytest.mark.parametrize("same_supervisor", [True, False])
def test_worker_counts_lost_calls_the_supervisor_did_not_see(tmp_path: Path, same_supervisor: bool) -> None:
    """After a whole-pool restart no supervisor saw the death: the worker counts the calls
    in vblaze_bridge_calls_total{result="worker_lost"}; otherwise the supervisor already did."""
    from bridge import metrics
    from bridge.worker import Worker

    ppid = os.getppid() if same_supervisor else os.getppid() + 1
    ledger = CallLedger(tmp_path, 5080)
    ledger.path.write_text(
        json.dumps({"op": "life", "pid": 1, "ppid": ppid})
        + "\n"
        + "".join(
            json.dumps({"op": "call", "call_id": f"x{i}", "next_seq": 2, "started_at": time.time() - 5})
            + "\n"
            for i in range(3)
        )
    )
    worker = Worker.__new__(Worker)  # only what _end_lost_calls uses: no SIP endpoint
    worker.index, worker.ledger, worker.sink = 0, ledger, ListSink()
    worker.engine_metrics = metrics.EngineMetrics()
    counter = metrics.CALLS.labels("worker_lost", "none")
    before = counter._value.get()
    worker._end_lost_calls()
    assert [e.call_id for e in worker.sink.events] == ["x0", "x1", "x2"]
    assert counter._value.get() - before == (0 if same_supervisor else 3)


async def test_heartbeat_keeps_the_last_sign_of_life_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While calls are up the worker touches its journal, so a lost call's duration runs to within a
    heartbeat of the death even if no event came for a long time; with no call up it stops."""
    monkeypatch.setattr(ledger_module, "HEARTBEAT_SECONDS", 0.05)
    ledger = CallLedger(tmp_path, 5080)
    ledger.take_orphans()
    ledger.update(LedgerEntry("quiet", 1, time.time()))
    os.utime(ledger.path, (1.0, 1.0))
    await asyncio.sleep(0.2)
    assert time.time() - ledger.path.stat().st_mtime < 1.0
    ledger.forget("quiet")
    await asyncio.sleep(0.1)
    os.utime(ledger.path, (1.0, 1.0))
    await asyncio.sleep(0.2)
    assert ledger.path.stat().st_mtime == 1.0  # nothing up: no heartbeat

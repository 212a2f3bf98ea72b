"""The webhook ordering rules (`bridge.webhook.queue`) with a fake clock: no sockets, no spool, no loop.

`Driver` below does what `delivery.WebhookSink` does with the rules' answers, one step at a time: the
clock only moves when the test or the driver says so, and the receivers are functions of
(url, call, seq, attempt) giving an HTTP status.
"""

from __future__ import annotations

import ast
import email.utils
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.webhook import policy, queue

A = "http://a.example/hook"
B = "http://b.example/hook"

Answerer = Callable[[str, str, int, int], int]  # (url, call, seq, attempt) -> status


def ok(url: str, call: str, seq: int, attempt: int) -> int:
    return 200


@dataclass
class Sent:
    time: float
    url: str
    call: str
    seq: int
    attempt: int
    status: int


@dataclass
class Driver:
    """The asyncio driver's decisions replayed on a fake clock, for one owner alone on its spool."""

    answer: Answerer = ok
    retry_after: Callable[[int], str | None] = lambda status: None
    initial: float = 0.5
    maximum: float = 60.0
    now: float = 0.0
    rand: random.Random = field(default_factory=lambda: random.Random(7))
    book: queue.Book[None] = field(default_factory=lambda: queue.Book(claim_interval=10.0))
    due: dict[queue.Key, float] = field(default_factory=dict)
    retries: dict[queue.Key, queue.Retry] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    finished: list[tuple[str, str, int, str]] = field(default_factory=list)  # url, call, seq, how

    def submit(self, url: str, call: str, seq: int, kind: str = "utterance") -> None:
        assert self.book.accepts(url, call, seq)
        lane = self.book.enqueue(url, call, queue.Item(seq, f"{call}-{seq}", kind, self.now, b"{}", None))
        self.due.setdefault(lane.key, self.now)

    def step(self, key: queue.Key) -> None:
        """One attempt at the head of the lane `key` (it is due)."""
        lane = self.book.lanes[key]
        if not lane.in_flight:
            if self.book.order(lane) is queue.Order.CHECK:  # alone on the spool: nobody holds earlier
                assert self.book.order_checked(lane, queue.Check.CLEAR, self.now) is None
            self.book.start(lane)
            self.retries[key] = queue.Retry(self.initial, self.maximum, self.rand)
        item = lane.items[0]
        item.attempts += 1
        status = self.answer(lane.url, lane.call_id, item.seq, item.attempts)
        self.sent.append(Sent(self.now, lane.url, lane.call_id, item.seq, item.attempts, status))
        answer = queue.answer(status, self.retry_after(status), self.now)
        if answer.verdict == "retry":
            self.due[key] = self.retries[key].failed(self.now, answer.retry_after)
            return
        self.book.finish(lane)
        self.finished.append((lane.url, lane.call_id, item.seq, answer.verdict))
        self.due[key] = self.now
        if not lane.items:
            self.book.release(lane)
            del self.due[key]

    def run(self, until: float) -> None:
        """Step every due lane, moving the clock to the next due time, up to `until`."""
        while self.due:
            key = min(self.due, key=lambda k: (self.due[k], k))
            if self.due[key] > until:
                break
            self.now = max(self.now, self.due[key])
            self.step(key)
        self.now = max(self.now, until)

    def finished_of(self, url: str, call: str) -> list[int]:
        return [seq for u, c, seq, _ in self.finished if (u, c) == (url, call)]


# --- per-(url, call) order ----------------------------------------------------------------------------


def test_a_failing_url_holds_only_its_own_call_back() -> None:
    def answer(url: str, call: str, seq: int, attempt: int) -> int:
        return 503 if (url, call, seq) == (A, "c1", 0) and attempt <= 3 else 200

    d = Driver(answer)
    for seq in range(3):
        for call in ("c1", "c2"):
            for url in (A, B):
                d.submit(url, call, seq)
    d.run(until=0.0)
    # at t=0 every other lane is done; A/c1 has tried its first event once
    assert d.finished_of(B, "c1") == [0, 1, 2]
    assert d.finished_of(A, "c2") == [0, 1, 2]
    assert d.finished_of(B, "c2") == [0, 1, 2]
    assert d.finished_of(A, "c1") == []
    d.run(until=3600.0)
    assert d.finished_of(A, "c1") == [0, 1, 2]
    a_c1 = [s for s in d.sent if (s.url, s.call) == (A, "c1")]
    assert [(s.seq, s.attempt) for s in a_c1] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (2, 1)]
    assert all(s.time > 0 for s in a_c1[1:])  # the retries waited
    assert d.book.depth == 0 and not d.book.lanes


def test_an_event_arriving_while_the_head_is_in_flight_queues_behind_it() -> None:
    book: queue.Book[None] = queue.Book(claim_interval=10.0)
    lane = book.enqueue(A, "c", queue.Item(5, "e5", "utterance", 0.0, b"", None))
    head = book.start(lane)
    book.enqueue(A, "c", queue.Item(3, "e3", "utterance", 0.0, b"", None))  # e.g. claimed late
    assert lane.items[0] is head and [i.seq for i in lane.items] == [5, 3]
    book.finish(lane)
    assert [i.seq for i in lane.items] == [3]


def test_a_second_copy_of_a_queued_event_is_not_accepted() -> None:
    book: queue.Book[None] = queue.Book(claim_interval=10.0)
    book.enqueue(A, "c", queue.Item(0, "e0", "utterance", 0.0, b"", None))
    assert not book.accepts(A, "c", 0)
    assert book.accepts(A, "c", 1) and book.accepts(B, "c", 0) and book.accepts(A, "other", 0)


def test_a_rejected_event_lets_the_next_one_go_and_is_not_retried() -> None:
    def answer(url: str, call: str, seq: int, attempt: int) -> int:
        return 422 if seq == 0 else 200

    d = Driver(answer)
    for seq in range(3):
        d.submit(A, "c", seq)
    d.run(until=0.0)
    assert [(seq, how) for _, _, seq, how in d.finished] == [
        (0, "reject"),
        (1, "delivered"),
        (2, "delivered"),
    ]
    assert [s.seq for s in d.sent] == [0, 1, 2]  # no retry of the rejected one
    assert d.now == 0.0


def test_408_429_and_5xx_are_retried_other_4xx_and_3xx_are_final() -> None:
    for status in (408, 429, 500, 503, 599):
        assert queue.answer(status, None, 0.0).verdict == "retry"
    for status in (400, 401, 404, 422, 301, 302, 101):
        assert queue.answer(status, None, 0.0).verdict == "reject"
    assert queue.answer(204, None, 0.0).verdict == "delivered"
    assert queue.answer(302, None, 0.0).outcome is policy.Outcome.OTHER


# --- retry timing -------------------------------------------------------------------------------------


def test_retries_back_off_exponentially_with_equal_jitter() -> None:
    def answer(url: str, call: str, seq: int, attempt: int) -> int:
        return 500 if attempt <= 10 else 200

    d = Driver(answer, initial=0.5, maximum=8.0)
    d.submit(A, "c", 0)
    d.run(until=3600.0)
    times = [s.time for s in d.sent]
    waits = [b - a for a, b in itertools.pairwise(times)]
    assert len(waits) == 10
    for n, wait in enumerate(waits, start=1):
        full = min(8.0, 0.5 * 2 ** (n - 1))
        assert full / 2 <= wait <= full, (n, wait)


def test_retry_after_replaces_the_backoff_capped_at_the_maximum() -> None:
    def answer(url: str, call: str, seq: int, attempt: int) -> int:
        return (429, 503, 200)[min(attempt, 3) - 1]

    after = {429: "7", 503: "3600"}
    d = Driver(answer, retry_after=after.get, initial=0.5, maximum=60.0)
    d.submit(A, "c", 0)
    d.run(until=10_000.0)
    assert [s.time for s in d.sent] == [0.0, 7.0, 67.0]


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert queue.answer(503, date, now).retry_after == pytest.approx(30.0)
    assert queue.answer(503, email.utils.formatdate(now - 30, usegmt=True), now).retry_after == 0.0
    assert queue.answer(503, "soon", now).retry_after is None
    assert queue.answer(200, "7", now).retry_after is None  # only a retry waits
    assert queue.answer(404, "7", now).retry_after is None


@settings(max_examples=200, deadline=None)
@given(
    initial=st.floats(0.001, 10.0),
    maximum=st.floats(0.001, 600.0),
    failures=st.integers(1, 80),
    seed=st.integers(0, 2**32),
    now=st.floats(0.0, 1e6),
)
def test_every_retry_waits_between_half_and_all_of_its_backoff(
    initial: float, maximum: float, failures: int, seed: int, now: float
) -> None:
    retry = queue.Retry(initial, maximum, random.Random(seed))
    for _ in range(failures - 1):
        retry.failed(now)
    wait = retry.failed(now) - now
    full = min(maximum, initial * 2.0 ** min(failures - 1, 62))
    assert full / 2 - 1e-6 <= wait <= full + 1e-6
    assert retry.failures == failures


# --- spool before send, spool full, duplicates --------------------------------------------------------


def test_what_a_spool_write_means() -> None:
    assert queue.written(True, (True, True), 1) is queue.Written.SEND
    assert queue.written(True) is queue.Written.SEND
    assert queue.written(True, (True, False), 1) is queue.Written.DUPLICATE
    assert queue.written(False) is queue.Written.DROP
    assert queue.written(None) is queue.Written.FROM_MEMORY  # failed or slow: not held back


def test_spool_full_drops_the_waiting_events_and_leaves_the_head_to_its_driver() -> None:
    book: queue.Book[str] = queue.Book(claim_interval=10.0)
    items = [queue.Item(seq, f"e{seq}", "utterance", 0.0, b"{}", "write") for seq in range(3)]
    lane = book.enqueue(A, "c", items[0])
    book.enqueue(A, "c", items[1])
    book.enqueue(A, "c", items[2])
    head = book.start(lane)
    refused = queue.written(False)
    assert [book.settle(lane, item, refused) for item in items] == [False, True, True]
    assert lane.items == [head] and book.depth == 1
    # the head's driver sees the same verdict, drops it, and the lane is done
    assert queue.written(False) is queue.Written.DROP
    book.finish(lane)
    book.release(lane)
    assert book.depth == 0 and not book.lanes


def test_after_a_drop_the_next_event_goes_without_asking_the_spool() -> None:
    book: queue.Book[None] = queue.Book(claim_interval=10.0)
    lane = book.enqueue(A, "c", queue.Item(4, "e4", "utterance", 0.0, b"", None))
    assert book.order(lane) is queue.Order.CHECK
    assert book.order_checked(lane, queue.Check.CLEAR, 0.0) is None
    book.start(lane)
    book.finish(lane)  # dropped: its seq counts as finished, the receiver sees a hole
    book.enqueue(A, "c", queue.Item(5, "e5", "utterance", 0.0, b"", None))
    assert book.order(lane) is queue.Order.SEND


def test_a_duplicate_waiting_event_is_taken_out_and_deep_bodies_go_back_to_the_spool() -> None:
    book: queue.Book[str] = queue.Book(claim_interval=10.0, bodies_kept=2)
    items = [queue.Item(seq, f"e{seq}", "utterance", 0.0, b"{}", "w", row=0) for seq in range(4)]
    lane = book.enqueue(A, "c", items[0])
    for item in items[1:]:
        book.enqueue(A, "c", item)
    assert [i.deep for i in items] == [False, False, True, True]
    assert book.settle(lane, items[1], queue.written(True, (False,), 0))
    assert not book.settle(lane, items[2], queue.Written.SEND)
    assert not book.settle(lane, items[0], queue.Written.SEND)
    assert items[2].body is None and items[0].body == b"{}"  # the deep one is read back when due
    assert [i.seq for i in lane.items] == [0, 2, 3] and book.depth == 3


def test_spool_size_alarms_at_most_every_interval() -> None:
    watch = queue.SpoolWatch(1000, 0.8, interval=30.0)
    assert watch.check(500, 0.0) is None
    assert watch.check(800, 1.0) is queue.Alarm.NEAR
    assert watch.check(900, 2.0) is None
    assert watch.check(900, 2.0, refused=True) is queue.Alarm.FULL  # its own interval
    assert watch.check(900, 3.0, refused=True) is None
    assert watch.check(900, 31.0) is queue.Alarm.NEAR
    assert watch.check(900, 32.0, refused=True) is queue.Alarm.FULL


def test_a_lost_calls_end() -> None:
    assert queue.lost_end(already_ended=False, seq=7) is queue.LostEnd.QUEUE
    assert queue.lost_end(already_ended=True, seq=None) is queue.LostEnd.ALREADY_ENDED
    assert queue.lost_end(already_ended=False, seq=None) is queue.LostEnd.DROP


# --- vanished rows ------------------------------------------------------------------------------------


def test_a_vanished_row_is_finished_without_a_send_and_the_next_one_goes() -> None:
    assert queue.read_back(True, b"{}") is queue.Read.SEND
    assert queue.read_back(True, None) is queue.Read.VANISHED
    assert queue.read_back(False, None) is queue.Read.RETRY  # the read failed: back off, read again
    book: queue.Book[None] = queue.Book(claim_interval=10.0)
    lane = book.enqueue(A, "c", queue.Item(0, "e0", "utterance", 0.0, None, None))
    book.enqueue(A, "c", queue.Item(1, "e1", "utterance", 0.0, None, None))
    book.start(lane)
    book.finish(lane)  # vanished
    assert [i.seq for i in lane.items] == [1] and book.order(lane) is queue.Order.SEND


# --- other owners, dead and alive ---------------------------------------------------------------------


def test_the_head_waits_while_another_owner_holds_earlier_events_and_claims_at_once() -> None:
    book: queue.Book[None] = queue.Book(claim_interval=10.0, order_poll=0.25)
    lane = book.enqueue(A, "c", queue.Item(3, "e3", "call.ended", 0.0, None, None))
    head = lane.items[0]
    assert book.order(lane) is queue.Order.CHECK
    assert book.order_checked(lane, queue.Check.HELD, 100.0) == queue.Hold(0.25, claim=True, first=True)
    assert book.order_checked(lane, queue.Check.HELD, 100.1) == queue.Hold(0.25)  # claim throttled
    assert book.order_checked(lane, queue.Check.HELD, 100.35) == queue.Hold(0.25, claim=True)
    # the claim brought the dead owner's earlier events in, ahead of the waiting head
    for seq in (1, 2):
        book.enqueue(A, "c", queue.Item(seq, f"e{seq}", "utterance", 0.0, None, None))
    assert lane.moved(head) and [i.seq for i in lane.items] == [1, 2, 3]
    assert book.order(lane) is queue.Order.CHECK
    assert book.order_checked(lane, queue.Check.CLEAR, 100.4) is None
    for expected in (1, 2, 3):
        assert book.order(lane) is queue.Order.SEND
        assert book.start(lane).seq == expected
        book.finish(lane)
    book.release(lane)
    assert not book.lanes


def test_a_busy_spool_holds_the_head_without_claiming_a_failed_check_sends_it() -> None:
    book: queue.Book[None] = queue.Book(claim_interval=0.1, order_poll=0.25)
    lane = book.enqueue(A, "c", queue.Item(3, "e3", "utterance", 0.0, None, None))
    assert book.order_checked(lane, queue.Check.BUSY, 0.0) == queue.Hold(0.25)
    assert book.order_checked(lane, queue.Check.HELD, 0.0) == queue.Hold(0.1, claim=True, first=True)
    assert book.order_checked(lane, queue.Check.FAILED, 0.0) is None
    assert book.order(lane) is queue.Order.SEND  # checked once, not again


def test_a_call_ended_forgets_the_lane_so_a_later_copy_is_checked_again() -> None:
    book: queue.Book[None] = queue.Book(claim_interval=10.0)
    lane = book.enqueue(A, "c", queue.Item(0, "e0", "utterance", 0.0, None, None))
    book.enqueue(A, "c", queue.Item(1, "e1", "call.ended", 0.0, None, None))
    for _ in range(2):
        book.start(lane)
        book.finish(lane)
    book.release(lane)
    lane = book.enqueue(A, "c", queue.Item(2, "e2", "call.ended", 0.0, None, None))
    assert book.order(lane) is queue.Order.CHECK


def test_the_finished_memory_is_bounded() -> None:
    book: queue.Book[None] = queue.Book(claim_interval=10.0, finished_kept=3)
    lanes = []
    for n in range(4):
        lane = book.enqueue(A, f"c{n}", queue.Item(0, "e", "utterance", 0.0, None, None))
        book.start(lane)
        book.finish(lane)
        lanes.append(lane)
    for n in range(4):
        book.enqueue(A, f"c{n}", queue.Item(1, "e", "utterance", 0.0, None, None))
    # the first three were forgotten when the fourth came: one spool check each, nothing else
    assert [book.order(lane) for lane in lanes] == [queue.Order.CHECK] * 3 + [queue.Order.SEND]


def test_only_dead_owners_rows_are_claimed() -> None:
    candidates = queue.claim_candidates("me", ["w2", "me", "w1", "w2"], ["w3", "me", "w1"])
    assert candidates == ["w1", "w2", "w3"]
    liveness = {"w1": queue.Liveness.ALIVE, "w2": queue.Liveness.DEAD, "w3": queue.Liveness.GONE}
    assert [o for o in candidates if queue.may_claim(liveness[o])] == ["w2", "w3"]
    assert queue.claim_candidates("me", ["me"], ["me"]) == []


# --- properties ---------------------------------------------------------------------------------------

LANES = [(url, call) for url in (A, B) for call in ("c1", "c2")]
ops = st.lists(
    st.tuples(
        st.sampled_from(["submit", "step"]),
        st.integers(0, len(LANES) - 1),
        st.sampled_from([200, 200, 204, 422, 500, 503, 429, 408, 0]),  # 0: the spool is full
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops)
def test_any_mix_of_submits_answers_and_drops_keeps_each_lane_in_order_and_loses_nothing(
    ops: list[tuple[str, int, int]],
) -> None:
    book: queue.Book[None] = queue.Book(claim_interval=10.0)
    next_seq = dict.fromkeys(LANES, 0)
    outcome: dict[queue.Key, list[int]] = {key: [] for key in LANES}  # finished seqs, in order
    for op, index, status in ops:
        key = LANES[index]
        if op == "submit":
            book.enqueue(*key, queue.Item(next_seq[key], "e", "utterance", 0.0, b"", None))
            next_seq[key] += 1
            continue
        lane = book.lanes.get(key)
        if lane is None or not lane.items:
            continue
        if not lane.in_flight:
            if book.order(lane) is queue.Order.CHECK:
                assert book.order_checked(lane, queue.Check.CLEAR, 0.0) is None
            book.start(lane)
        head = lane.items[0]
        if status == 0:
            verdict = queue.written(False)
            assert not book.settle(lane, head, verdict)  # the head in flight stays with its driver
        elif queue.answer(status, None, 0.0).verdict == "retry":
            assert lane.items[0] is head and lane.in_flight
            continue
        book.finish(lane)
        outcome[key].append(head.seq)
        if not lane.items:
            book.release(lane)
        assert book.depth == sum(len(lane.items) for lane in book.lanes.values())
    # drain: every lane answers 200 from now on
    for key in LANES:
        lane = book.lanes.get(key)
        while lane is not None and lane.items:
            if not lane.in_flight and book.order(lane) is queue.Order.CHECK:
                assert book.order_checked(lane, queue.Check.CLEAR, 0.0) is None
            outcome[key].append(book.start(lane).seq)
            book.finish(lane)
        if lane is not None:
            book.release(lane)
    for key in LANES:
        assert outcome[key] == list(range(next_seq[key]))  # in order, each exactly once
    assert book.depth == 0 and not book.lanes


@settings(max_examples=200, deadline=None)
@given(seqs=st.lists(st.integers(0, 50), unique=True, max_size=30), in_flight=st.booleans())
def test_a_lane_stays_sorted_behind_its_head_whatever_order_events_come_in(
    seqs: list[int], in_flight: bool
) -> None:
    book: queue.Book[None] = queue.Book(claim_interval=10.0)
    lane = None
    for n, seq in enumerate(seqs):
        lane = book.enqueue(A, "c", queue.Item(seq, "e", "utterance", 0.0, None, None))
        if n == 0 and in_flight:
            book.start(lane)
    if lane is None:
        return
    got = [i.seq for i in lane.items]
    rest = got[1:] if in_flight else got
    assert rest == sorted(rest)
    if in_flight:
        assert got[0] == seqs[0]
    assert sorted(got) == sorted(seqs) and all(lane.has(s) for s in seqs)
    assert not any(lane.has(s) for s in range(51) if s not in seqs)


def test_the_rules_do_no_io() -> None:
    """queue.py and policy.py import no socket, SQLite, HTTP, asyncio, clock or metrics module."""
    allowed = {"__future__", "bisect", "email", "enum", "math", "random", "collections", "dataclasses"}
    allowed |= {"typing", "bridge"}
    for module in (queue, policy):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module if node.module != "bridge.webhook" else "bridge.webhook.policy")
        assert {name.split(".")[0] for name in imported} <= allowed, (module.__name__, imported)
        assert {name for name in imported if name.startswith("bridge")} <= {"bridge.webhook.policy"}

"""The webhook ordering rules, without I/O: which event goes next to which URL, when it is retried,
and what happens when the spool refuses an event, has lost one, or belongs to a dead owner.

Nothing here touches a socket, SQLite, the clock or asyncio: methods take the time as an argument
and return a decision, which `delivery.py` (the driver) carries out. The rules:

1. **One lane per (url, call).** A `Lane` holds that call's events for that URL, ordered by ``seq``.
   Only its head is ever sent; the next event goes only once the head is finished (delivered,
   rejected, dropped or vanished). Other lanes never wait for it. An event arriving while the head is
   in flight is queued behind the head, whatever its ``seq``.
2. **Order across owners** (`Book.order`, `Book.order_checked`). The head may go once this sink has
   finished its predecessor (``seq - 1``) in the lane, or ``seq`` is 0. Otherwise the driver asks the
   spool whether another owner, alive or dead, holds an earlier event of the lane: if not, the head
   goes (and the lane counts as checked); if so, it waits, looking again every `ORDER_POLL`, and the
   sink claims the rows of dead owners at once (at most every `ORDER_POLL`), so that they come into
   the lane ahead of it. A check that fails with an error sends the head (the error is logged); a
   check that times out waits `ORDER_POLL` and asks again.
3. **Spool before send** (`written`). The head's first attempt waits for its spool write: on disk, it
   is sent; refused because the spool is full, it is dropped (`DropReason.SPOOL_FULL`) and the next
   event goes; if the spool already held that ``seq`` of the call (written by another owner: a lost
   call's ``call.ended`` whose real one is spooled), this copy is not sent; a write that failed or is
   slow does not hold the event back, it is sent from memory. Events not yet due behave the same once
   the write is done (`Book.settle`), and those queued deep (behind `BODIES_KEPT` others) give their
   body back to the spool.
4. **Retry** (`Retry`, `answer`): the verdicts of `policy`; the head is retried after
   `policy.backoff` until the receiver answers 2xx or a final status, which lets the next event go.
5. **Vanished rows** (`read_back`): a head whose body is no longer in the spool when it is due is
   finished without a send (someone else finished it); a failed read is retried like a failed attempt.
6. **Spool size** (`SpoolWatch`): near the limit a warning, at the limit an error, each at most every
   `SPOOL_WARN_INTERVAL`.
7. **Dead owners** (`claim_candidates`, `may_claim`): every owner named by a row or a lock file, but
   this one, is a candidate; the rows of one whose lock nobody holds are claimed, a live one's never.
"""

from __future__ import annotations

import bisect
import enum
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bridge.webhook import policy

W = TypeVar("W")  # the driver's handle on an event's spool write (an asyncio future in delivery.py)
Key = tuple[str, str]  # (url, call_id)

ORDER_POLL = 0.25  # while an earlier event of the call is held by another owner: how often to look again
FINISHED_KEPT = 100_000  # (url, call) pairs whose last finished seq is remembered
BODIES_KEPT = 8  # per lane, the first events keep their body in memory; the rest are read back when due
SPOOL_WARN_INTERVAL = 30.0  # at most one spool-size log line of each kind per interval


class DropReason(enum.StrEnum):
    """Why an event was refused before any attempt: the ``reason`` label of
    ``vblaze_bridge_webhook_dropped_total`` (`bridge/metrics.py` derives its values from these)."""

    SPOOL_FULL = "spool_full"  # webhook.spool_max_bytes reached: the receiver sees a hole in seq


class Written(enum.StrEnum):
    """What the spool write of an event means for its sending (rule 3)."""

    SEND = "send"  # on disk
    FROM_MEMORY = "from_memory"  # the write failed or is slow: send it all the same
    DROP = "drop"  # refused, the spool is full: never sent (DropReason.SPOOL_FULL)
    DUPLICATE = "duplicate"  # another owner spooled this seq of the call first: that copy is sent


class Order(enum.StrEnum):
    """May the head of a lane go (rule 2)?"""

    SEND = "send"
    CHECK = "check"  # ask the spool (`earlier_elsewhere`), then call `Book.order_checked`


class Check(enum.StrEnum):
    """The spool's answer to "does another owner hold an earlier event of this lane?"."""

    CLEAR = "clear"  # no
    HELD = "held"  # yes
    BUSY = "busy"  # the spool did not answer in time
    FAILED = "failed"  # the spool raised: the head is sent


class Read(enum.StrEnum):
    """What to do with a head whose body had to be read back from the spool (rule 5)."""

    SEND = "send"
    VANISHED = "vanished"  # no row any more: finish it without a send
    RETRY = "retry"  # the read failed: back off and read again


class Alarm(enum.StrEnum):
    FULL = "full"  # an event was refused
    NEAR = "near"  # at or above spool_warn_fraction of spool_max_bytes


class LostEnd(enum.StrEnum):
    """What to do once a lost call's ``call.ended`` has been offered to the spool."""

    QUEUE = "queue"  # written: queue it for every URL
    ALREADY_ENDED = "already_ended"  # the real call.ended is spooled: that one is sent
    DROP = "drop"  # the spool is full (DropReason.SPOOL_FULL)


class Liveness(enum.StrEnum):
    """A spool owner, as its lock file shows it."""

    ALIVE = "alive"  # its lock is held
    DEAD = "dead"  # its lock file is there, nobody holds it
    GONE = "gone"  # no lock file: closed cleanly, or died before taking it


@dataclass(eq=False)
class Item(Generic[W]):
    """One event for one URL."""

    seq: int
    event_id: str
    kind: str
    event_time: float
    body: bytes | None  # None: read it back from the spool when due
    write: W | None  # the pending spool write; None: loaded from the spool, already there
    attempts: int = 0
    deep: bool = False  # queued behind BODIES_KEPT others: free the body once it is spooled
    row: int = 0  # index of this item's row in its spool insert


@dataclass(eq=False)
class Lane(Generic[W]):
    """The events of one call for one URL, in order; only `items[0]` is ever sent."""

    url: str
    call_id: str
    items: list[Item[W]] = field(default_factory=list)
    in_flight: bool = False  # items[0] is being sent: nothing may go before it

    @property
    def key(self) -> Key:
        return (self.url, self.call_id)

    def has(self, seq: int) -> bool:
        if self.in_flight and self.items and self.items[0].seq == seq:
            return True
        lo = 1 if self.in_flight else 0  # behind a head in flight the order starts again (`insert`)
        i = bisect.bisect_left(self.items, seq, lo=lo, key=lambda it: it.seq)
        return i < len(self.items) and self.items[i].seq == seq

    def insert(self, item: Item[W]) -> None:
        lo = 1 if self.in_flight else 0
        self.items.insert(bisect.bisect_right(self.items, item.seq, lo=lo, key=lambda it: it.seq), item)

    def moved(self, item: Item[W]) -> bool:
        """Whether another event now heads the lane instead of `item` (a claim queued an earlier one)."""
        return bool(self.items) and self.items[0] is not item


@dataclass(frozen=True)
class Hold:
    """The head may not go yet (rule 2): optionally claim dead owners' rows, then wait `seconds`."""

    seconds: float
    claim: bool = False  # claim now; if the lane's head then changed, look again without waiting
    first: bool = False  # the first wait of this lane: worth a log line


class Book(Generic[W]):
    """Every lane of one sink, and what it remembers across them: the rules 1-3."""

    def __init__(
        self,
        *,
        claim_interval: float,
        order_poll: float = ORDER_POLL,
        finished_kept: int = FINISHED_KEPT,
        bodies_kept: int = BODIES_KEPT,
    ) -> None:
        self.lanes: dict[Key, Lane[W]] = {}
        self.depth = 0  # events queued and not finished
        self._claim_interval = claim_interval
        self._order_poll = order_poll
        self._finished_kept = finished_kept
        self._bodies_kept = bodies_kept
        # (url, call_id) -> seq of the last event this sink finished; dropped with the call.ended.
        self._finished: dict[Key, int] = {}
        self._waiting: set[Key] = set()  # lanes whose wait was reported
        self._last_claim = -math.inf

    def accepts(self, url: str, call_id: str, seq: int) -> bool:
        """False if (url, call_id) already has `seq` queued: a second copy is ignored."""
        lane = self.lanes.get((url, call_id))
        return lane is None or not lane.has(seq)

    def enqueue(self, url: str, call_id: str, item: Item[W]) -> Lane[W]:
        """Queue `item` in its lane (made if needed); the lane, whose driver must be running."""
        lane = self.lanes.get((url, call_id))
        if lane is None:
            lane = self.lanes[(url, call_id)] = Lane(url, call_id)
        item.deep = len(lane.items) >= self._bodies_kept
        lane.insert(item)
        self.depth += 1
        return lane

    def undelivered(self) -> int:
        return sum(len(lane.items) for lane in self.lanes.values())

    # --- rule 2: order ---------------------------------------------------------------------------

    def order(self, lane: Lane[W]) -> Order:
        seq = lane.items[0].seq
        if seq == 0 or self._finished.get(lane.key) == seq - 1:
            return Order.SEND
        return Order.CHECK

    def order_checked(self, lane: Lane[W], check: Check, now: float) -> Hold | None:
        """After `Order.CHECK`: None if the head goes, else how to hold it. `now`: a monotonic time."""
        key = lane.key
        if check is Check.BUSY:
            return Hold(self._order_poll)
        if check is not Check.HELD:
            self._waiting.discard(key)
            self._finished[key] = lane.items[0].seq - 1  # checked once, not again
            return None
        first = key not in self._waiting
        self._waiting.add(key)
        claim = now - self._last_claim >= self._order_poll
        if claim:
            self._last_claim = now
        return Hold(min(self._order_poll, self._claim_interval), claim=claim, first=first)

    # --- the head's life -------------------------------------------------------------------------

    def start(self, lane: Lane[W]) -> Item[W]:
        """The head goes: nothing is queued before it from now on."""
        lane.in_flight = True
        return lane.items[0]

    def finish(self, lane: Lane[W]) -> Item[W]:
        """The head is done (delivered, rejected, dropped, duplicate or vanished): the next may go."""
        item = lane.items.pop(0)
        lane.in_flight = False
        self.depth -= 1
        if item.kind == "call.ended":
            self._finished.pop(lane.key, None)
        else:
            if len(self._finished) >= self._finished_kept:  # calls whose end another owner sends
                self._finished.clear()  # costs one spool check per call, nothing else
            self._finished[lane.key] = item.seq
        return item

    def release(self, lane: Lane[W]) -> None:
        """The lane's driver stopped (empty, or cancelled): forget the lane if nothing is left in it."""
        lane.in_flight = False
        if not lane.items and self.lanes.get(lane.key) is lane:
            del self.lanes[lane.key]

    def settle(self, lane: Lane[W], item: Item[W], verdict: Written) -> bool:
        """Once `item`'s spool write is done: True if it was taken out of its lane (dropped or a
        duplicate, see `verdict`). The head in flight is left to its driver (`written`)."""
        head = lane.in_flight and lane.items[0] is item
        if verdict in (Written.DROP, Written.DUPLICATE):
            if not head and item in lane.items:
                lane.items.remove(item)
                self.depth -= 1
                return True
        elif item.deep and not head:
            item.body = None
        return False


def written(accepted: bool | None, inserted: Sequence[bool] = (), row: int = 0) -> Written:
    """Rule 3, from the spool's answer to an insert: `accepted` (None: the write failed or is slow),
    `inserted` (per row, False where the spool already held that seq) and the event's `row`."""
    if accepted is None:
        return Written.FROM_MEMORY
    if not accepted:
        return Written.DROP
    if inserted and not inserted[row]:
        return Written.DUPLICATE
    return Written.SEND


def read_back(ok: bool, body: bytes | None) -> Read:
    """Rule 5: `ok` False if reading the body failed; `body` None if the row is gone."""
    if not ok:
        return Read.RETRY
    return Read.VANISHED if body is None else Read.SEND


def lost_end(already_ended: bool, seq: int | None) -> LostEnd:
    """A lost call's ``call.ended`` after the spool's `insert_lost_end`."""
    if already_ended:
        return LostEnd.ALREADY_ENDED
    return LostEnd.DROP if seq is None else LostEnd.QUEUE


# --- rule 4: retries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What an HTTP answer means for the head."""

    verdict: policy.Verdict
    outcome: policy.Outcome
    retry_after: float | None  # seconds the receiver asked for (retries only)


def answer(status: int, retry_after: str | None, now: float) -> Answer:
    """The receiver answered `status` with `Retry-After` header `retry_after`; `now`: wall-clock time."""
    verdict = policy.verdict(status)
    delay = policy.parse_retry_after(retry_after, now) if verdict == "retry" else None
    return Answer(verdict, policy.outcome(status), delay)


class Retry:
    """The retry schedule of one head: `failed` after each failed attempt says when to try again."""

    def __init__(self, initial: float, maximum: float, rand: random.Random | None = None) -> None:
        self.failures = 0
        self._initial = initial
        self._maximum = maximum
        self._rand = rand

    def failed(self, now: float, retry_after: float | None = None) -> float:
        """The time of the next attempt, after a failure at `now` (a monotonic time)."""
        self.failures += 1
        return now + policy.backoff(self.failures, self._initial, self._maximum, retry_after, self._rand)


# --- rule 6: spool size ------------------------------------------------------------------------------


class SpoolWatch:
    """Which spool-size alarm to log, at most one of each kind every `interval` seconds."""

    def __init__(self, limit: int, warn_fraction: float, interval: float = SPOOL_WARN_INTERVAL) -> None:
        self.limit = limit
        self._warn_at = limit * warn_fraction
        self._interval = interval
        self._last_near = -math.inf
        self._last_full = -math.inf

    def check(self, used: int, now: float, *, refused: bool = False) -> Alarm | None:
        """After a write (`refused`: it was refused) or a claim, with `used` bytes at `now`."""
        if refused:
            if now - self._last_full >= self._interval:
                self._last_full = now
                return Alarm.FULL
        elif used >= self._warn_at and now - self._last_near >= self._interval:
            self._last_near = now
            return Alarm.NEAR
        return None


# --- rule 7: dead owners -----------------------------------------------------------------------------


def claim_candidates(me: str, row_owners: Iterable[str], lock_owners: Iterable[str]) -> list[str]:
    """The owners whose rows may be claimed if they are dead, in the order to try them."""
    return sorted((set(row_owners) | set(lock_owners)) - {me})


def may_claim(liveness: Liveness) -> bool:
    """A candidate's rows are claimed unless it is alive."""
    return liveness is not Liveness.ALIVE

"""The live event feed: every event of every call, held briefly and fanned out to watchers (no I/O).

Workers copy each event they hand to their sinks to the supervisor (`bridge.control.feed` says how
and what is left out); the supervisor publishes it here. `GET /v1/events` (Server-Sent Events,
`bridge/control/sse.py`) subscribes.

- Every published event gets an id ``RUN:N``: RUN names this hub (one per supervisor run), N counts
  from 1. A watcher that reconnects with ``Last-Event-ID: RUN:N`` gets the events after N still held,
  then the live ones; an id of another run (the supervisor restarted) or none gets the held events of
  calls still up, so a page that opens mid-call sees the call from its start.
- Held: the events of calls up, and of the last `ended_calls` calls that ended, at most `per_call`
  events a call (the oldest go first; a call's call.started is kept). So memory is bounded by calls,
  not by time.
- A watcher has a queue of `queue_limit` live events (its backlog when it subscribes comes on top).
  One that falls that far behind is cut off with a reason (`Watcher.cut`): the feed never waits for a
  slow reader and never slows delivery to sinks.

The feed is a view, not a sink: it is not spooled and promises nothing across supervisor restarts.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PER_CALL = 500  # events held per call (a 1-hour call of utterances every 8 s has ~450)
DEFAULT_ENDED_CALLS = 50  # ended calls whose events are still held
DEFAULT_QUEUE_LIMIT = 1000  # events a watcher may be behind before it is cut off
CLOSING = "the supervisor is stopping"


@dataclass(frozen=True)
class LiveEvent:
    """One event as the feed carries it: its id and the envelope (as webhooks get it, see feed.py)."""

    id: str
    call_id: str
    type: str
    envelope: dict[str, Any]


@dataclass(eq=False)  # watchers are told apart by identity (held in a set)
class Watcher:
    """One subscriber: a bounded queue, an optional call filter, and why it was cut off, if it was."""

    call_id: str | None
    limit: int
    queue: collections.deque[LiveEvent] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    cut: str | None = None  # set once cut off: the reason, for the log

    def offer(self, event: LiveEvent) -> None:
        if self.cut is not None or (self.call_id is not None and event.call_id != self.call_id):
            return
        if len(self.queue) >= self.limit:
            self.cut = f"more than {self.limit} events behind"
            self.queue.clear()
        else:
            self.queue.append(event)
        self.wake.set()

    def take(self) -> list[LiveEvent]:
        """The events queued so far (empty once cut off); clears the wake flag."""
        out = list(self.queue)
        self.queue.clear()
        self.wake.clear()
        return out


class _Held:
    """One call's held events."""

    def __init__(self, per_call: int) -> None:
        self.first: LiveEvent | None = None  # call.started, kept whatever else goes
        self.rest: collections.deque[LiveEvent] = collections.deque(maxlen=per_call - 1)
        self.ended = False

    def add(self, event: LiveEvent) -> None:
        if event.type == "call.started" and self.first is None:
            self.first = event
        else:
            self.rest.append(event)
        if event.type == "call.ended":
            self.ended = True

    def events(self) -> list[LiveEvent]:
        return ([self.first] if self.first is not None else []) + list(self.rest)


class EventHub:
    def __init__(
        self,
        *,
        per_call: int = DEFAULT_PER_CALL,
        ended_calls: int = DEFAULT_ENDED_CALLS,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        run: str | None = None,
    ) -> None:
        if per_call < 2 or ended_calls < 0 or queue_limit < 1:
            raise ValueError("per_call >= 2, ended_calls >= 0 and queue_limit >= 1")
        self.run = run if run is not None else secrets.token_hex(4)
        self._per_call = per_call
        self._ended_calls = ended_calls
        self._queue_limit = queue_limit
        self._counter = itertools.count(1)
        self._held: dict[str, _Held] = {}  # insertion order: the order calls were first seen
        self._ended: collections.deque[str] = collections.deque()
        self._watchers: set[Watcher] = set()

    def publish(self, envelope: dict[str, Any]) -> LiveEvent:
        """Hold one event and offer it to every watcher; the event as published."""
        call_id = str(envelope.get("call_id", ""))
        event = LiveEvent(
            f"{self.run}:{next(self._counter)}", call_id, str(envelope.get("type", "")), envelope
        )
        held = self._held.get(call_id)
        if held is None:
            held = self._held[call_id] = _Held(self._per_call)
        was_ended = held.ended
        held.add(event)
        if held.ended and not was_ended:
            self._ended.append(call_id)
            while len(self._ended) > self._ended_calls:
                self._held.pop(self._ended.popleft(), None)
        for watcher in self._watchers:
            watcher.offer(event)
        return event

    def subscribe(self, call_id: str | None = None, last_event_id: str | None = None) -> Watcher:
        """A new watcher, its queue primed with the held events it has not seen."""
        watcher = Watcher(call_id, self._queue_limit)
        # The backlog is bounded by what is held; only falling behind live events cuts a watcher off.
        watcher.queue.extend(self.backlog(call_id, last_event_id))
        if watcher.queue:
            watcher.wake.set()
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def backlog(self, call_id: str | None, last_event_id: str | None) -> list[LiveEvent]:
        """Held events after `last_event_id` (of this run), or those of calls still up."""
        after = self._position(last_event_id)
        calls: Iterable[_Held]
        if call_id is not None:
            calls = [self._held[call_id]] if call_id in self._held else []
        else:
            calls = self._held.values()
        if after is None:
            chosen = [e for held in calls if not held.ended or call_id is not None for e in held.events()]
        else:
            chosen = [e for held in calls for e in held.events() if self._number(e.id) > after]
        return sorted(chosen, key=lambda e: self._number(e.id))

    def close(self, reason: str = CLOSING) -> None:
        """Cut every watcher off (the supervisor is stopping): their streams end at once."""
        for watcher in self._watchers:
            watcher.cut = reason
            watcher.wake.set()

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def _position(self, last_event_id: str | None) -> int | None:
        if not last_event_id:
            return None
        run, _, number = last_event_id.partition(":")
        if run != self.run or not number.isdigit():
            return None
        return int(number)

    @staticmethod
    def _number(event_id: str) -> int:
        return int(event_id.rpartition(":")[2])

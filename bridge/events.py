"""Events a call produces, and the sink interface they go to.

The call pipeline (`bridge/call.py`) produces `BridgeEvent`s in order, numbering them with a per-call
`seq` starting at 0. A sink takes them without blocking and from then on owns getting them out.
The JSON-lines sink (`bridge/sinks.py`) and webhook delivery (`bridge/webhook/delivery.py`) implement it.

An event's `data` is built by `bridge/event_data.py`, one typed builder per kind, which says what each
kind carries; `bridge/webhook/schema.json` is its JSON Schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

EventKind = Literal["call.started", "utterance", "dtmf", "call.ended", "call.paused", "call.resumed"]


@dataclass(frozen=True)
class BridgeEvent:
    """One event of one call, numbered by `seq` within that call."""

    kind: EventKind
    call_id: str
    seq: int
    time: float  # unix time at which the bridge produced the event
    data: dict[str, Any] = field(default_factory=dict)


class EventSink(Protocol):
    """Where a call's events go. `submit` never blocks and never drops silently.

    `start` runs once before the first call (a webhook sink opens its spool there and raises if it
    cannot); `aclose` delivers what it can within the bound.
    """

    async def start(self) -> None: ...

    def submit(self, event: BridgeEvent) -> None: ...

    async def aclose(self, timeout: float) -> None: ...  # noqa: ASYNC109 (a bound, not an await timeout)

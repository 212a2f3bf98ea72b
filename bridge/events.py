"""Events a call produces, and the sink interface they go to.

The call pipeline (`bridge/call.py`) produces `BridgeEvent`s in order, numbering them with a per-call
`seq` starting at 0. A sink takes them without blocking and owns their delivery from then on.
The JSON-lines sink (`bridge/sinks.py`) and webhook delivery (`bridge/webhook/delivery.py`) implement it.

`data` by kind (times on the call's timeline are seconds since the call was answered):
- ``call.started``: from, to, headers {name: value}, started_at (ISO 8601 UTC), worker (int),
  remote (ip:port), siprec (null for a plain call; for a SIPREC session {evidence, roles [stream role],
  session_ids, group_id, problems, framing, delivery: mono | stereo | streams})
- ``utterance``: text, words [{word, start, end, confidence}], start, end, confidence, channel,
  engine (the engine's utterance JSON untouched), latency {engine_seconds, ...}; SIPREC calls also
  role (caller, agent, mixed, unknown), participant ({participant_id, aor, name} or null), stream (index)
- ``dtmf``: digit, at
- ``call.ended``: reason, duration, utterances (count), transcript (the engine's complete transcript,
  JSON object or text, or null if none arrived; with SIPREC delivery "streams"
  {"streams": [{stream, role, channel, transcript}]}), gaps [{start, duration, cause}]; SIPREC calls
  also streams [stream role] (as last mapped) and remaps (count)

A stream role is {index, label, direction, role, channel, participants, reason} (`sip.siprec.StreamRole`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

EventKind = Literal["call.started", "utterance", "dtmf", "call.ended"]


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

"""What a worker does with a control request, over its calls (no I/O).

`execute(request, calls, hangup)` finds the call (by SIP Call-ID), carries the op out and returns the
`Reply` the worker sends back:

- ``list``: 200 ``{"calls": [snapshot, ...]}``, every call the worker holds;
- ``get``: 200 ``{"call": snapshot}``; 404 ``{"error": ...}`` if this worker does not hold it (another
  may: the supervisor asks them all);
- ``pause``: the reason is checked against the call's own ``pause.reason_max_length`` (400 naming
  ``reason``), then the pause takes effect before the reply is written (so the API's 200 means it is
  in force): 200 ``{"call": snapshot, "changed": bool}``, ``changed`` false for a call paused already;
- ``resume``: as pause; ``hangup``: the hang-up is handed to the SIP thread, 200 with ``changed``;
- a call that already ended (its last events are on their way): 409 for pause and resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from bridge.control.lines import Op, Reply, Request
from bridge.pause import ReasonError, check_reason


class ControlledCall(Protocol):
    call_id: str
    reason_max_length: int

    @property
    def ending(self) -> bool: ...

    def pause(self, by: str, reason: str | None = None) -> bool: ...

    def resume(self, by: str) -> bool: ...

    def snapshot(self) -> dict[str, Any]: ...


def execute(
    request: Request, calls: Iterable[ControlledCall], hangup: Callable[[ControlledCall], None]
) -> Reply:
    held = list(calls)
    if request.op is Op.LIST:
        return Reply(request.id, 200, {"calls": [call.snapshot() for call in held]})
    call = next((c for c in held if c.call_id == request.call_id), None)
    if call is None:
        return Reply(request.id, 404, {"error": "no such call on this worker"})
    if request.op is Op.GET:
        return Reply(request.id, 200, {"call": call.snapshot()})
    if request.op is Op.HANGUP:
        changed = not call.ending
        if changed:
            hangup(call)
        return Reply(request.id, 200, {"call": call.snapshot(), "changed": changed})
    if call.ending:
        return Reply(request.id, 409, {"error": "the call has ended"})
    by = request.by or "api"
    if request.op is Op.PAUSE:
        try:
            reason = check_reason(request.reason, call.reason_max_length)
        except ReasonError as exc:
            return Reply(request.id, 400, {"error": str(exc), "field": "reason"})
        changed = call.pause(by, reason)
    else:
        changed = call.resume(by)
    return Reply(request.id, 200, {"call": call.snapshot(), "changed": changed})

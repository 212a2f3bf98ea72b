"""`vblaze-bridge calls --follow`: the live feed in a terminal (the parsing and the lines, no I/O).

`SseParser` turns the lines of a Server-Sent Events stream (`GET /v1/events`, `bridge/control/sse.py`)
into messages; `event_line` makes one line of text of each event, e.g.::

    08:00:01  a84b4c76  call.started  "Alice" <sip:+15550100@pbx> -> <sip:1001@bridge>  route sales
    08:00:04  a84b4c76  utterance     [  0.52-  2.87 s] caller: I'd like to check my balance
    08:00:09  a84b4c76  call.paused   at 7.10 s by api:desk (card number)
    08:00:31  a84b4c76  call.ended    remote_bye, 29.4 s, 6 utterances, gaps: paused 7.1+12.0 s

The call is shown by the first 8 characters of its Call-ID (`--follow --call ID` keeps one call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CALL_ID_SHOWN = 8
TEXT_SHOWN = 200  # characters of an utterance shown on its line


@dataclass
class Message:
    id: str | None = None
    event: str = "message"
    data: list[str] = field(default_factory=list)


class SseParser:
    """Lines in (without their newline), complete messages out; comments and unknown fields skipped."""

    def __init__(self) -> None:
        self._message = Message()

    def feed(self, line: str) -> Message | None:
        if not line:
            done, self._message = self._message, Message()
            return done if done.data or done.event != "message" else None
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "id":
            self._message.id = value
        elif name == "event":
            self._message.event = value
        elif name == "data":
            self._message.data.append(value)
        return None


def envelope_of(message: Message) -> dict[str, Any] | None:
    """The event envelope a message carries, or None (a `cut` notice, or data that is no JSON object)."""
    try:
        body = json.loads("\n".join(message.data))
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def event_line(envelope: dict[str, Any]) -> str:
    """One line of text for one event."""
    data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
    assert isinstance(data, dict)
    when = str(envelope.get("time", ""))[11:19]
    call = str(envelope.get("call_id", ""))[:CALL_ID_SHOWN]
    kind = str(envelope.get("type", ""))
    return f"{when:8}  {call:8}  {kind:12}  {_detail(kind, data)}".rstrip()


def _detail(kind: str, data: dict[str, Any]) -> str:
    if kind == "call.started":
        route = f"  route {data['route']}" if data.get("route") else ""
        return f"{data.get('from', '')} -> {data.get('to', '')}{route}"
    if kind == "utterance":
        who = data.get("role") or (f"ch {data['channel']}" if data.get("channel") is not None else "")
        text = " ".join(str(data.get("text", "")).split())[:TEXT_SHOWN]
        return (
            f"[{_num(data.get('start')):>6}-{_num(data.get('end')):>6} s] {who + ': ' if who else ''}{text}"
        )
    if kind == "dtmf":
        return f"{data.get('digit', '')} at {_num(data.get('at'))} s"
    if kind == "call.paused":
        reason = f" ({data['reason']})" if data.get("reason") else ""
        return f"at {_num(data.get('at'))} s by {data.get('by', '')}{reason}"
    if kind == "call.resumed":
        return f"at {_num(data.get('at'))} s by {data.get('by', '')}"
    if kind == "call.ended":
        gaps = ", ".join(
            f"{g.get('cause')} {_num(g.get('start'), 1)}+{_num(g.get('duration'), 1)} s"
            for g in data.get("gaps") or []
            if isinstance(g, dict)
        )
        return (
            f"{data.get('reason', '')}, {_num(data.get('duration'), 1)} s, "
            f"{data.get('utterances', 0)} utterances, gaps: {gaps or 'none'}"
        )
    return ""


def _num(value: Any, places: int = 2) -> str:
    return f"{value:.{places}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"

"""The live feed's wire: each event a worker hands to its sinks, copied to the supervisor.

A worker wraps its sink in a `FeedTap`: every event still goes to the sink first and unchanged; a copy
goes as one line ``event <JSON envelope>`` on the worker's control channel (see `bridge.app`). The
supervisor parses it with `parse_line` and publishes it to its `EventHub` (`bridge/control/hub.py`).

What the copy leaves out: `call.ended`'s `transcript` and `engine_finals` (the whole call's text,
unbounded; the sinks have them), listed in ``data.live_omitted``; an event whose line would still pass
MAX_LINE_BYTES keeps only its envelope, with ``data = {"live_omitted": ["*"]}``. The control channel
is never allowed to back up: once more than MAX_BUFFERED_BYTES wait to be written (the supervisor is
not reading), copies are dropped, counted in ``vblaze_bridge_live_events_dropped_total`` and logged
once per call, and the sinks are untouched by it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from bridge.errors import BridgeError
from bridge.events import BridgeEvent, EventSink
from bridge.webhook import payload

logger = logging.getLogger(__name__)

PREFIX = b"event "
MAX_LINE_BYTES = 48 * 1024  # under the control channel reader's 64 KiB line limit
MAX_BUFFERED_BYTES = 1024 * 1024  # unwritten bytes on the channel beyond which copies are dropped
OMITTED_FROM_ENDED = ("transcript", "engine_finals")
REQUIRED = {"type": str, "call_id": str, "seq": int}


class FeedError(BridgeError):
    """A feed line that is not an event envelope (its reason in the message)."""


class Channel(Protocol):
    """The part of an asyncio StreamWriter the tap uses."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    @property
    def transport(self) -> Any: ...


def encode_line(event: BridgeEvent) -> bytes:
    """The ``event …`` line for `event`, newline included, at most MAX_LINE_BYTES."""
    body = payload.envelope(event)
    if event.kind == "call.ended":
        data = dict(body["data"])
        omitted = [key for key in OMITTED_FROM_ENDED if key in data]
        for key in omitted:
            del data[key]
        data["live_omitted"] = omitted
        body["data"] = data
    line = _dump(body)
    if len(line) > MAX_LINE_BYTES:
        body["data"] = {"live_omitted": ["*"]}
        line = _dump(body)
    return line


def _dump(body: dict[str, Any]) -> bytes:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return PREFIX + text.encode("utf-8") + b"\n"


def parse_line(rest: bytes) -> dict[str, Any]:
    """The envelope of a line's text after ``event ``; FeedError if it is not one."""
    try:
        body = json.loads(rest)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FeedError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise FeedError("not a JSON object")
    for key, kind in REQUIRED.items():
        value = body.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise FeedError(f"{key}: missing or not {kind.__name__}")
    if not isinstance(body.get("data", {}), dict):
        raise FeedError("data: not an object")
    return body


class FeedTap:
    """An EventSink that passes every event on to `sink`, then copies it to the supervisor's channel."""

    def __init__(
        self, sink: EventSink, channel: Callable[[], Channel | None], dropped: Callable[[], None]
    ) -> None:
        self.sink = sink
        self._channel = channel
        self._dropped = dropped
        self._logged: set[str] = set()  # calls whose first dropped copy was logged

    async def start(self) -> None:
        await self.sink.start()

    def submit(self, event: BridgeEvent) -> None:
        self.sink.submit(event)
        channel = self._channel()
        if channel is None or channel.is_closing():
            return  # no supervisor to copy to (a worker run by hand, or the supervisor is gone)
        if channel.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            self._dropped()
            if event.call_id not in self._logged:
                self._logged.add(event.call_id)
                logger.warning(
                    "live feed: the supervisor is not reading; copies of this call's events are dropped "
                    "(its sinks get every event)",
                    extra={"call_id": event.call_id},
                )
            return
        channel.write(encode_line(event))
        if event.kind == "call.ended":
            self._logged.discard(event.call_id)

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, as EventSink says)
        await self.sink.aclose(timeout)

"""`GET /v1/events`: the live feed (`bridge/control/hub.py`) as Server-Sent Events.

Each event goes out as::

    id: RUN:N
    event: utterance
    data: {"version": 1, "event_id": ..., "type": "utterance", "call_id": ..., "seq": 3, ...}

``?call_id=X`` keeps one call's events; a ``Last-Event-ID`` header (or ``?last_event_id=``, for
clients that cannot set headers) resumes after that event while it is still held. A comment line
goes out every KEEPALIVE_SECONDS so that proxies keep the stream open. Every write is bounded by
WRITE_TIMEOUT_SECONDS; a watcher that falls QUEUE_LIMIT events behind or whose write times out is cut
off: it gets a last ``event: cut`` with the reason, the stream ends, and a warning is logged. The
watcher reconnects and resumes with its last id.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from bridge.control.hub import CLOSING, EventHub, LiveEvent, Watcher

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
WRITE_TIMEOUT_SECONDS = 5.0
HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(event: LiveEvent) -> bytes:
    """One event in the SSE wire format."""
    data = json.dumps(event.envelope, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()


def cut_frame(reason: str) -> bytes:
    return f"event: cut\ndata: {json.dumps({'reason': reason})}\n\n".encode()


async def stream_events(request: web.Request, hub: EventHub) -> web.StreamResponse:
    """Serve the feed to one watcher until it goes away or is cut off."""
    call_id = request.query.get("call_id") or None
    last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or None
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    watcher = hub.subscribe(call_id, last)
    try:
        await _pump(response, watcher)
    except TimeoutError:
        watcher.cut = f"a write took longer than {WRITE_TIMEOUT_SECONDS:.0f} s"
    except ConnectionError:
        return response  # the watcher went away
    finally:
        hub.unsubscribe(watcher)
    if watcher.cut is not None:
        level = logging.INFO if watcher.cut == CLOSING else logging.WARNING
        logger.log(level, "live feed: watcher %s cut off: %s", request.remote, watcher.cut)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                await response.write(cut_frame(watcher.cut))
        except (TimeoutError, ConnectionError):
            pass  # it was cut off for not reading; the reason is in the log
    return response


async def _pump(response: web.StreamResponse, watcher: Watcher) -> None:
    while watcher.cut is None:
        events = watcher.take()
        if watcher.cut is not None:
            return
        if events:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                await response.write(b"".join(frame(e) for e in events))
            continue
        try:
            async with asyncio.timeout(KEEPALIVE_SECONDS):
                await watcher.wake.wait()
        except TimeoutError:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                await response.write(b": keepalive\n\n")

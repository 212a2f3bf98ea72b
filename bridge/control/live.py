"""The call monitor's routes on the control API: the page, its files, the live feed, the pool's figures.

- ``GET /``: the page (`bridge/control/page/`, shipped in the wheel); ``GET /static/{name}`` its
  script and style. No token is needed to load them: the page asks for one and sends it with every
  API request, and without it the API answers 401.
- ``GET /v1/events``: the live feed as Server-Sent Events (`bridge/control/sse.py`).
- ``GET /v1/pool``: ``{"ready": bool, "reason": str, "hops": {hop: {"p50", "p99", "count"}}}``, the
  readiness `/readyz` would answer and each hop's p50/p99 over the last minute (`latency.py`).

`add_page` registers the page and its files on the control API's aiohttp application
(`bridge/control/server.py`), which serves ``/v1/events`` and ``/v1/pool`` behind its bearer tokens
with `sse.stream_events` and `LivePool.figures`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from aiohttp import web

from bridge import metrics
from bridge.control.hub import EventHub
from bridge.control.latency import HOPS, LatencyWindow
from bridge.readiness import Readiness, decide

PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
READ_TIMEOUT_SECONDS = 5.0  # bound on reading the workers' metric files for /v1/pool


def page_text(name: str) -> str:
    return resources.files("bridge.control").joinpath("page", name).read_text(encoding="utf-8")


class LivePool:
    """The pool's readiness and the hop latencies of the last minute, for /v1/pool."""

    def __init__(self, readiness: Callable[[], Readiness], metrics_dir: Path | None) -> None:
        self._readiness = readiness
        self._metrics_dir = metrics_dir
        self.window = LatencyWindow()

    async def snapshot(self) -> None:
        """Add a snapshot of the hop histograms if one is due (called every few seconds)."""
        now = time.monotonic()
        if not self.window.due(now):
            return
        async with asyncio.timeout(READ_TIMEOUT_SECONDS):
            histograms = await asyncio.to_thread(metrics.read_histograms, HOPS, self._metrics_dir)
        self.window.add(now, histograms)

    async def figures(self) -> dict[str, object]:
        await self.snapshot()
        decision = decide(self._readiness())
        hops = {hop: asdict(latency) for hop, latency in self.window.hops().items()}
        return {"ready": decision.ready, "reason": decision.reason, "hops": hops}


def add_page(app: web.Application, hub: EventHub) -> None:
    """The page and its files (public), and the feed's close at shutdown."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=page_text("index.html"), content_type="text/html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in PAGE_FILES:
            raise web.HTTPNotFound()
        return web.Response(text=page_text(name), content_type=PAGE_FILES[name])

    async def close_feed(app: web.Application) -> None:
        hub.close()  # SSE streams end now rather than at their next keepalive

    app.on_shutdown.append(close_feed)
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)

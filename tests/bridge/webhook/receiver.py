"""A real HTTP webhook receiver on 127.0.0.1 for tests: verifies signatures, records every request, and
answers as the test's `answer` function decides (status, Retry-After, hang, or drop the connection)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bridge.webhook import payload

SECRET = b"test-secret"


@dataclass
class Request:
    envelope: dict[str, Any]
    headers: dict[str, str]
    signature_ok: bool
    at: float  # monotonic
    n: int  # 0-based index over all requests
    status: int | None = None  # None: hung or dropped


@dataclass
class Answer:
    status: int = 200
    retry_after: str | None = None
    hang: float = 0.0  # sleep this long before answering
    processed: bool | None = None  # whether the receiver "processed" the event; default: status is 2xx


Answerer = Callable[[Request], Answer | Awaitable[Answer]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Receiver:
    answer: Answerer = field(default=lambda r: Answer())
    secret: bytes = SECRET
    port: int = 0
    host: str = "127.0.0.1"
    requests: list[Request] = field(default_factory=list)
    processed: list[dict[str, Any]] = field(default_factory=list)  # events the receiver acted on, in order
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        sig = request.headers.get(payload.SIGNATURE_HEADER, "")
        rec = Request(
            envelope=json.loads(body),
            headers=dict(request.headers),
            signature_ok=payload.verify(self.secret, sig, body, time.time()),
            at=time.monotonic(),
            n=len(self.requests),
        )
        self.requests.append(rec)
        self._arrived.set()
        result = self.answer(rec)
        ans = await result if asyncio.iscoroutine(result) else result
        assert isinstance(ans, Answer)
        processed = ans.processed if ans.processed is not None else 200 <= ans.status < 300
        if processed:
            self.processed.append(rec.envelope)
        if ans.hang:
            await asyncio.sleep(ans.hang)
        rec.status = ans.status
        headers = {"Retry-After": ans.retry_after} if ans.retry_after is not None else {}
        return web.Response(status=ans.status, text="nope" if ans.status >= 400 else "ok", headers=headers)

    def by_call(self) -> dict[str, list[int]]:
        """seq of processed events per call, in processing order (duplicates included)."""
        out: dict[str, list[int]] = {}
        for env in self.processed:
            out.setdefault(env["call_id"], []).append(env["seq"])
        return out

    def deduplicated(self) -> dict[str, list[int]]:
        """Like `by_call`, keeping the first event with each event_id."""
        seen: set[str] = set()
        out: dict[str, list[int]] = {}
        for env in self.processed:
            if env["event_id"] in seen:
                continue
            seen.add(env["event_id"])
            out.setdefault(env["call_id"], []).append(env["seq"])
        return out

    async def wait_for(self, predicate: Callable[[], bool], seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds):
            while not predicate():
                self._arrived.clear()
                try:
                    async with asyncio.timeout(0.05):
                        await self._arrived.wait()
                except TimeoutError:
                    pass

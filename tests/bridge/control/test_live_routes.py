"""The monitor's routes over a real HTTP server on 127.0.0.1: the page, the SSE feed, /v1/pool."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.control import live, sse
from bridge.control.hub import EventHub
from bridge.readiness import Readiness

READY = Readiness(workers_alive=1, workers_total=1, calls_active=0, capacity=4, engine_reachable=True)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, EventHub]]:
    hub = EventHub(run="r1", queue_limit=20)
    app = web.Application()
    live.add_routes(app, hub, live.LivePool(lambda: READY, tmp_path))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", hub
    await runner.cleanup()


def env(call_id: str, seq: int, kind: str = "utterance") -> dict[str, Any]:
    return {"type": kind, "call_id": call_id, "seq": seq, "data": {"text": f"t{seq}"}}


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """Parse `count` SSE messages (comments skipped) off a streaming response."""
    out: list[dict[str, Any]] = []
    message: dict[str, Any] = {}
    async with asyncio.timeout(10):
        while len(out) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if not line:
                if message:
                    out.append(message)
                message = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                message[field] = json.loads(value) if field == "data" else value
    return out


async def test_the_page_and_its_files_load_without_a_token(served: tuple[str, EventHub]) -> None:
    base, _ = served
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/") as page:
            assert page.status == 200 and page.content_type == "text/html"
            html = await page.text()
        for name, kind in live.PAGE_FILES.items():
            assert f"/static/{name}" in html
            async with http.get(f"{base}/static/{name}") as part:
                assert part.status == 200 and part.content_type == kind
        async with http.get(base + "/static/../live.py") as missing:
            assert missing.status == 404


async def test_events_stream_live_and_resume_after_the_last_id(served: tuple[str, EventHub]) -> None:
    base, hub = served
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/events") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            hub.publish(env("a", 0, "call.started"))
            hub.publish(env("a", 1))
            first = await read_events(stream, 2)
        assert [(m["id"], m["event"], m["data"]["seq"]) for m in first] == [
            ("r1:1", "call.started", 0),
            ("r1:2", "utterance", 1),
        ]
        hub.publish(env("a", 2))  # while nobody watches
        hub.publish(env("b", 0, "call.started"))
        async with http.get(base + "/v1/events", headers={"Last-Event-ID": "r1:2"}) as again:
            resumed = await read_events(again, 2)
        assert [(m["data"]["call_id"], m["data"]["seq"]) for m in resumed] == [("a", 2), ("b", 0)]
        async with http.get(base + "/v1/events?call_id=b&last_event_id=r1:1") as one_call:
            hub.publish(env("a", 3))
            hub.publish(env("b", 1))
            only_b = await read_events(one_call, 2)
        assert [(m["data"]["call_id"], m["data"]["seq"]) for m in only_b] == [("b", 0), ("b", 1)]


async def test_a_watcher_that_falls_behind_is_cut_off_with_the_reason_and_logged(
    served: tuple[str, EventHub], caplog: Any
) -> None:
    base, hub = served
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/events?call_id=a") as stream:
            await asyncio.sleep(0.2)  # subscribed
            for seq in range(25):  # more than its queue of 20, with no chance to write in between
                hub.publish(env("a", seq))
            body = await asyncio.wait_for(stream.content.read(), 10)  # the server ends the stream
    assert b"event: cut" in body and b"more than 20 events behind" in body
    assert any("cut off: more than 20 events behind" in r.message for r in caplog.records)
    assert hub.watchers == 0
    # The feed goes on for others.
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/events?call_id=a") as stream:
            assert len(await read_events(stream, 25)) == 25


async def test_keepalive_comments_while_nothing_happens(
    served: tuple[str, EventHub], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.2)
    base, _ = served
    async with aiohttp.ClientSession() as http, http.get(base + "/v1/events") as stream:
        async with asyncio.timeout(5):
            assert await stream.content.readline() == b": keepalive\n"


async def test_pool_figures_say_readiness_and_each_hop(served: tuple[str, EventHub]) -> None:
    base, _ = served
    async with aiohttp.ClientSession() as http, http.get(base + "/v1/pool") as response:
        body = await response.json()
    assert body["ready"] is True and body["reason"] == "ready"
    assert set(body["hops"]) == {
        "audio_to_socket",
        "speech_end_to_utterance",
        "utterance_to_webhook_sent",
        "utterance_to_webhook_ack",
    }
    assert all(h == {"p50": None, "p99": None, "count": 0.0} for h in body["hops"].values())

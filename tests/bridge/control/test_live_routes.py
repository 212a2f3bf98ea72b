"""The monitor's routes of the control API over a real HTTP server on 127.0.0.1: the page, the SSE
feed, /v1/pool and /v1/whoami, with their tokens (no worker is asked: these answer from the supervisor)."""

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
from bridge.control.server import ControlServer
from bridge.readiness import Readiness

TOKEN = "desk-token-0123456789"
WATCHER = "wall-token-9876543210"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READY = Readiness(workers_alive=1, workers_total=1, calls_active=0, capacity=4, engine_reachable=True)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, EventHub]]:
    hub = EventHub(run="r1", queue_limit=20)

    async def no_worker(*request: Any) -> list[Any]:
        raise AssertionError("the monitor's routes ask no worker")

    server = ControlServer(
        {"desk": TOKEN, "wall": WATCHER},
        no_worker,
        actors={"desk"},
        hub=hub,
        pool=live.LivePool(lambda: READY, tmp_path),
    )
    runner = web.AppRunner(server.app())
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
        async with http.get(base + "/v1/events", headers=AUTH) as stream:
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
        async with http.get(base + "/v1/events", headers={**AUTH, "Last-Event-ID": "r1:2"}) as again:
            resumed = await read_events(again, 2)
        assert [(m["data"]["call_id"], m["data"]["seq"]) for m in resumed] == [("a", 2), ("b", 0)]
        async with http.get(base + "/v1/events?call_id=b&last_event_id=r1:1", headers=AUTH) as one_call:
            hub.publish(env("a", 3))
            hub.publish(env("b", 1))
            only_b = await read_events(one_call, 2)
        assert [(m["data"]["call_id"], m["data"]["seq"]) for m in only_b] == [("b", 0), ("b", 1)]


async def test_a_watcher_that_falls_behind_is_cut_off_with_the_reason_and_logged(
    served: tuple[str, EventHub], caplog: Any
) -> None:
    base, hub = served
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/events?call_id=a", headers=AUTH) as stream:
            await asyncio.sleep(0.2)  # subscribed
            for seq in range(25):  # more than its queue of 20, with no chance to write in between
                hub.publish(env("a", seq))
            body = await asyncio.wait_for(stream.content.read(), 10)  # the server ends the stream
    assert b"event: cut" in body and b"more than 20 events behind" in body
    assert any("cut off: more than 20 events behind" in r.message for r in caplog.records)
    assert hub.watchers == 0
    # The feed goes on for others.
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/events?call_id=a", headers=AUTH) as stream:
            assert len(await read_events(stream, 25)) == 25


async def test_keepalive_comments_while_nothing_happens(
    served: tuple[str, EventHub], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.2)
    base, _ = served
    async with aiohttp.ClientSession() as http, http.get(base + "/v1/events", headers=AUTH) as stream:
        async with asyncio.timeout(5):
            assert await stream.content.readline() == b": keepalive\n"


async def test_pool_figures_say_readiness_and_each_hop(served: tuple[str, EventHub]) -> None:
    base, _ = served
    async with aiohttp.ClientSession() as http, http.get(base + "/v1/pool", headers=AUTH) as response:
        body = await response.json()
    assert body["ready"] is True and body["reason"] == "ready"
    assert set(body["hops"]) == {
        "audio_to_socket",
        "speech_end_to_utterance",
        "utterance_to_webhook_sent",
        "utterance_to_webhook_ack",
    }
    assert all(h == {"p50": None, "p99": None, "count": 0.0} for h in body["hops"].values())


async def test_feed_pool_and_whoami_need_a_token_and_say_who_may_act(served: tuple[str, EventHub]) -> None:
    base, hub = served
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/events", "/v1/pool", "/v1/whoami"):
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
                async with http.get(base + path, headers=headers) as refused:
                    assert refused.status == 401, (path, headers)
        assert hub.watchers == 0  # no refused request subscribed
        async with http.get(base + "/v1/whoami", headers=AUTH) as desk:
            assert await desk.json() == {"name": "desk", "can_act": True}
        watcher = {"Authorization": f"Bearer {WATCHER}"}
        async with http.get(base + "/v1/whoami", headers=watcher) as wall:
            assert await wall.json() == {"name": "wall", "can_act": False}
        for action in ("pause", "resume", "hangup"):  # refused before any worker is asked
            async with http.post(f"{base}/v1/calls/c1/{action}", headers=watcher, json={}) as forbidden:
                assert forbidden.status == 403
                assert "may watch but not act" in (await forbidden.json())["error"]

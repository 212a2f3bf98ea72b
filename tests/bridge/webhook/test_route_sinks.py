"""bridge.route_sinks: each route's events reach that route's receivers only, signed with that route's
secret, through one webhook sink and one spool (per-call order kept); jsonl routes get their file; a
reload adds receivers without touching the calls in progress; the ledger's ordering hook waits for
every sink. Real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.config import Config, parse_config
from bridge.ledger import CallLedger, LedgerEntry, end_lost_calls
from bridge.route_sinks import RouteSinks
from tests.bridge.webhook.conftest import Observer, spool_rows
from tests.bridge.webhook.factory import call_events
from tests.bridge.webhook.receiver import SECRET, Receiver

OTHER_SECRET = b"support-secret"
ENV = {"TOP_SECRET": SECRET.decode(), "SUPPORT_SECRET": OTHER_SECRET.decode(), "SUPPORT_TOKEN": "tok"}


def config(a: Receiver, b: Receiver, tmp_path: Path, extra: list[dict[str, Any]] | None = None) -> Config:
    return parse_config(
        {
            "sink": {"kind": "webhook"},
            "webhook": {
                "urls": [a.url],
                "secret_env": "TOP_SECRET",
                "spool_path": str(tmp_path / "spool.sqlite3"),
                "backoff_initial_seconds": 0.02,
                "backoff_max_seconds": 0.2,
            },
            "routes": [
                {"name": "sales", "match": {"to": "1001"}},
                {
                    "name": "support",
                    "match": {"to": "2002"},
                    "webhook": {
                        "urls": [b.url],
                        "secret_env": "SUPPORT_SECRET",
                        "bearer_env": "SUPPORT_TOKEN",
                    },
                },
                {
                    "name": "archive",
                    "match": {"to": "3003"},
                    "sink": {"kind": "jsonl", "jsonl_path": str(tmp_path / "archive.jsonl")},
                },
                *(extra or []),
            ],
        }
    )


async def test_each_route_to_its_receivers_through_one_spool(
    receivers: Callable[..., Any], tmp_path: Path
) -> None:
    a = await receivers()
    b = await receivers(secret=OTHER_SECRET)
    cfg = config(a, b, tmp_path)
    sinks = RouteSinks(cfg, environ=ENV, observer=Observer())
    await sinks.start()
    try:
        assert sinks.webhook is not None and len(sinks.all()) == 2  # one webhook sink, one jsonl file
        routed = {name: sinks.sink_for(cfg.for_route(name)) for name in ("sales", "support", "archive")}
        calls = {name: call_events(f"{name}-call", 3) for name in routed}
        for index in range(len(calls["sales"])):  # interleaved, as calls run side by side
            for name, sink in routed.items():
                sink.submit(calls[name][index])
        n = len(calls["sales"])
        await a.wait_for(lambda: len(a.processed) >= n)
        await b.wait_for(lambda: len(b.processed) >= n)
        assert a.by_call() == {"sales-call": list(range(n))}
        assert b.by_call() == {"support-call": list(range(n))}
        assert all(r.signature_ok for r in a.requests + b.requests)  # each with its route's secret
        assert {r.headers.get("Authorization") for r in b.requests} == {"Bearer tok"}
        assert {r.headers.get("Authorization") for r in a.requests} == {None}
        await sinks.aclose(2.0)
        lines = (tmp_path / "archive.jsonl").read_text().splitlines()
        assert [json.loads(line)["seq"] for line in lines] == list(range(n))
        assert spool_rows(tmp_path / "spool.sqlite3") == []  # one spool, emptied by the 2xx
    finally:
        await sinks.aclose(1.0)


async def test_a_reload_adds_receivers_and_calls_keep_theirs(
    receivers: Callable[..., Any], tmp_path: Path
) -> None:
    a = await receivers()
    b = await receivers(secret=OTHER_SECRET)
    c = await receivers()
    cfg = config(a, b, tmp_path)
    sinks = RouteSinks(cfg, environ=ENV, observer=Observer())
    await sinks.start()
    try:
        in_progress = sinks.sink_for(cfg.for_route("sales"))
        new = {"name": "new", "match": {"to": "4004"}, "webhook": {"urls": [c.url]}}
        fresh = config(a, b, tmp_path, [new])
        updated = cfg.with_routes(fresh.routes)
        await sinks.update(updated)
        events = call_events("old-call", 1)
        newer = call_events("new-call", 1)
        for first, second in zip(events, newer, strict=True):
            in_progress.submit(first)
            sinks.sink_for(updated.for_route("new")).submit(second)
        await a.wait_for(lambda: len(a.processed) >= len(events))
        await c.wait_for(lambda: len(c.processed) >= len(newer))
        assert set(a.by_call()) == {"old-call"} and set(c.by_call()) == {"new-call"}
        assert all(r.signature_ok for r in c.requests)  # the top-level secret: the route names none
    finally:
        await sinks.aclose(1.0)


async def test_a_lost_call_ends_on_its_routes_receivers(
    receivers: Callable[..., Any], tmp_path: Path
) -> None:
    a = await receivers()
    b = await receivers(secret=OTHER_SECRET)
    cfg = config(a, b, tmp_path)
    ledger = CallLedger(tmp_path / "state", 5080)
    ledger.update(LedgerEntry("lost-support", 2, 1.0, route="support"))
    sinks = RouteSinks(cfg, environ=ENV, observer=Observer())
    await sinks.start()
    try:
        survivor = CallLedger(tmp_path / "state", 5080)
        lost = end_lost_calls(survivor, sinks)
        assert [item.entry.call_id for item, _ in lost] == ["lost-support"]
        await b.wait_for(lambda: len(b.processed) >= 1)
        assert b.processed[0]["type"] == "call.ended" and b.processed[0]["data"]["reason"] == "worker_lost"
        assert a.processed == []
        done: list[bool] = []
        sinks.ordered_after(lambda: done.append(True))  # runs once every sink has written
        await b.wait_for(lambda: bool(done), 5.0)
    finally:
        await sinks.aclose(1.0)

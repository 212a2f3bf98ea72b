"""A worker's sinks with NATS destinations (bridge/route_sinks.py) against a real nats-server: one
spool for the webhook URLs and the stream, no webhook secret needed without a URL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.config import parse_config
from bridge.events import BridgeEvent
from bridge.route_sinks import RouteSinks
from bridge.webhook.delivery import WebhookSink
from tests.fixtures.nats import NatsCluster

pytestmark = pytest.mark.timeout(120)


async def test_a_routes_events_reach_its_stream_in_order_on_its_subjects(
    server: NatsCluster, tmp_path: Path
) -> None:
    config = parse_config(
        {
            "sink": {"kind": "nats"},
            "nats": {"servers": server.urls, "stream": "SINK"},
            "webhook": {"spool_path": str(tmp_path / "spool.sqlite3")},
            "routes": [{"name": "sales", "match": {"to": "1"}}],
        }
    )
    sinks = RouteSinks(config, environ={})  # no VBLAZE_BRIDGE_WEBHOOK_SECRET: no URL to sign for
    await sinks.start()
    try:
        sink = sinks.for_route("sales")
        for seq, kind in enumerate(["call.started", "utterance", "dtmf", "call.ended"]):
            sink.submit(BridgeEvent(kind, "x.y@h", seq, 0.0, {}))  # type: ignore[arg-type]
        assert isinstance(sinks.webhook, WebhookSink)
        async with asyncio.timeout(20):
            while sinks.webhook.pending:  # noqa: ASYNC110 (the sink has no event for "empty")
                await asyncio.sleep(0.02)
    finally:
        await sinks.aclose(5)
    stored = await asyncio.to_thread(server.read_stream, "SINK")
    assert [m.data["seq"] for m in stored] == [0, 1, 2, 3]
    assert [m.subject for m in stored] == [
        f"vblaze.sales.x%2Ey@h.{t}" for t in ("call_started", "utterance", "dtmf", "call_ended")
    ]

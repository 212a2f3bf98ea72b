"""The consumer example of docs/nats.md replays one call's events, in order, from a real server; its
encoder is the bridge's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import NatsConfig
from bridge.events import BridgeEvent
from bridge.nats import subject
from bridge.nats.policy import destination
from bridge.nats.transport import NatsSettings, NatsTransport
from bridge.webhook import payload
from tests.bridge.jetstream.test_transport import Seen, connected
from tests.fixtures.nats import NatsCluster

pytestmark = pytest.mark.timeout(120)
DOC = Path(__file__).parents[3] / "docs" / "nats.md"


def example() -> dict[str, Any]:
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace


@given(st.text())
def test_the_documented_encoder_is_the_bridges(call_id: str) -> None:
    assert example()["encode_call_id"](call_id) == subject.encode_call_id(call_id)


async def test_the_documented_consumer_replays_one_call_in_order(server: NatsCluster) -> None:
    seen = Seen()
    transport = NatsTransport(NatsSettings.from_config(NatsConfig(servers=tuple(server.urls))), seen)
    await connected(transport, seen)
    kinds = ["call.started", "utterance", "dtmf", "utterance", "call.ended"]
    try:
        for call_id in ("a.b*c>d e@h", "other"):
            for seq, kind in enumerate(kinds):
                event = BridgeEvent(kind, call_id, seq, 0.0, {})  # type: ignore[arg-type]
                body = payload.encode(event)
                await transport.send(
                    destination("VBLAZE", "vblaze", "r"), call_id, kind, json.loads(body)["event_id"], body
                )
    finally:
        await transport.aclose(5)
    events = await example()["replay"](server.urls, "a.b*c>d e@h")
    assert [(e["call_id"], e["seq"], e["type"]) for e in events] == [
        ("a.b*c>d e@h", i, k) for i, k in enumerate(kinds)
    ]

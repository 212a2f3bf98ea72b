"""The JetStream transport against a real single `nats-server` (tests/fixtures/nats.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.config import NatsConfig
from bridge.errors import ConfigError
from bridge.nats.policy import Outcome, destination
from bridge.nats.transport import NatsSettings, NatsTransport
from bridge.webhook.queue import DropReason
from tests.fixtures.nats import NatsCluster

pytestmark = pytest.mark.timeout(120)


class Seen:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.up: list[bool] = []

    def attempt(self, outcome: Outcome, seconds: float) -> None:
        self.outcomes.append(outcome)

    def sent(self, latency_seconds: float) -> None:
        pass

    def delivered(self, latency_seconds: float) -> None:
        pass

    def rejected(self, status: int) -> None:
        pass

    def dropped(self, reason: DropReason) -> None:
        pass

    def connected(self, up: bool) -> None:
        self.up.append(up)


async def connected(transport: NatsTransport, seen: Seen) -> None:
    transport.begin()
    async with asyncio.timeout(10):
        while not seen.up:  # noqa: ASYNC110 (the observer is a plain recorder)
            await asyncio.sleep(0.02)


async def test_publish_is_acked_stored_once_and_a_republish_is_a_duplicate(server: NatsCluster) -> None:
    seen = Seen()
    transport = NatsTransport(
        NatsSettings.from_config(NatsConfig(servers=tuple(server.urls), stream="T1")), seen
    )
    await connected(transport, seen)
    dest = destination("T1", "vblaze", "sales")
    try:
        first = await transport.send(dest, "a b.c@host", "call.started", "id-0", b'{"seq": 0}')
        again = await transport.send(dest, "a b.c@host", "call.started", "id-0", b'{"seq": 0}')
    finally:
        await transport.aclose(5)
    assert (first.verdict, again.verdict) == ("delivered", "delivered")
    assert seen.outcomes == [Outcome.OK, Outcome.DUPLICATE]
    (stored,) = await asyncio.to_thread(server.read_stream, "T1")
    assert stored.subject == "vblaze.sales.a%20b%2Ec@host.call_started"
    assert stored.msg_id == "id-0"


async def test_a_stream_that_cannot_be_created_is_a_retried_stream_error(server: NatsCluster) -> None:
    seen = Seen()
    config = NatsConfig(servers=tuple(server.urls), stream="T2", replicas=3)  # one server: no R=3
    transport = NatsTransport(NatsSettings.from_config(config), seen)
    await connected(transport, seen)
    try:
        result = await transport.send(destination("T2", "vblaze", "default"), "c", "utterance", "i", b"{}")
    finally:
        await transport.aclose(5)
    assert result.verdict == "retry"
    assert "nats.stream" in result.reason and "T2" in result.reason
    assert seen.outcomes == [Outcome.STREAM_ERROR]


async def test_no_server_is_not_connected_and_retried(tmp_path: Path) -> None:
    down = NatsCluster(tmp_path, size=1)  # never started: its port refuses
    seen = Seen()
    config = NatsConfig(servers=tuple(down.urls), connect_timeout_seconds=0.5, reconnect_wait_seconds=0.1)
    transport = NatsTransport(NatsSettings.from_config(config), seen)
    transport.begin()
    await asyncio.sleep(0.3)
    try:
        result = await transport.send(destination("T3", "vblaze", "default"), "c", "dtmf", "i", b"{}")
    finally:
        await transport.aclose(5)
    assert result.verdict == "retry"
    assert seen.outcomes == [Outcome.NOT_CONNECTED]


def test_unreadable_credentials_are_a_config_error_naming_the_key(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.creds")
    with pytest.raises(ConfigError, match=r"nats\.creds_file"):
        NatsSettings.from_config(NatsConfig(servers=("nats://127.0.0.1:4222",), creds_file=missing))
    bad = tmp_path / "userpass"
    bad.write_text("no-colon\n")
    with pytest.raises(ConfigError, match=r"nats\.user_password_file"):
        NatsSettings.from_config(NatsConfig(servers=("nats://127.0.0.1:4222",), user_password_file=str(bad)))

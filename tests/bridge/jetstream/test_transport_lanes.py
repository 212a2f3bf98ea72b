"""The webhook lanes driving a transport (`bridge.webhook.delivery.Transport`): the same order per call,
retries and spool as for a URL, and the destination's events counted by the transport's observer.

A scripted transport stands in for JetStream here (the real one: test_transport.py, tests/e2e/test_nats.py):
it answers each attempt as told, so the lanes' decisions are seen one by one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.events import BridgeEvent
from bridge.webhook.delivery import NullObserver, TransportResult, WebhookSettings, WebhookSink
from bridge.webhook.queue import DropReason
from bridge.webhook.spool import Spool

DEST = "nats:S:vblaze:default"


class Counts:
    def __init__(self) -> None:
        self.acks = 0
        self.refusals: list[int] = []

    def sent(self, latency_seconds: float) -> None:
        pass

    def delivered(self, latency_seconds: float) -> None:
        self.acks += 1

    def rejected(self, status: int) -> None:
        self.refusals.append(status)

    def dropped(self, reason: DropReason) -> None:
        pass


class HookObserver(NullObserver):
    def __init__(self) -> None:
        self.acks = 0
        self.refusals: list[int] = []

    def delivered(self, latency_seconds: float) -> None:
        self.acks += 1

    def rejected(self, status: int) -> None:
        self.refusals.append(status)


class Scripted:
    """Fails the first attempt of every event, rejects events whose body says so, acks the rest."""

    scheme = "nats"

    def __init__(self) -> None:
        self.observer = Counts()
        self.log: list[tuple[str, int, str]] = []  # (call, seq, verdict) in attempt order
        self.tried: set[str] = set()

    def begin(self) -> None:
        pass

    async def send(
        self, destination: str, call_id: str, kind: str, event_id: str, body: bytes
    ) -> TransportResult:
        assert destination == DEST
        await asyncio.sleep(0)
        seq = int(body.split(b'"seq":')[1].split(b",")[0])
        if event_id not in self.tried:
            self.tried.add(event_id)
            verdict = "retry"
        elif b"too-large" in body:
            verdict = "reject"
        else:
            verdict = "delivered"
        self.log.append((call_id, seq, verdict))
        return TransportResult(verdict, "scripted", 413 if verdict == "reject" else 0)  # type: ignore[arg-type]

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109
        pass


async def test_each_calls_events_go_in_order_retried_and_a_rejection_lets_the_next_go(tmp_path: Path) -> None:
    spool = tmp_path / "spool.sqlite3"
    transport = Scripted()
    settings = WebhookSettings(urls=(DEST,), secret=b"", spool_path=spool, backoff_initial_seconds=0.01)
    webhook_observer = HookObserver()
    sink = WebhookSink(settings, observer=webhook_observer, transports=[transport])
    await sink.start()
    try:
        for seq in range(4):
            for call in ("a", "b"):
                data = {"text": "too-large"} if (call, seq) == ("b", 1) else {}
                sink.submit(BridgeEvent("utterance", call, seq, 0.0, data))
        async with asyncio.timeout(20):
            while sink.pending:  # noqa: ASYNC110 (the sink has no event for "empty")
                await asyncio.sleep(0.01)
    finally:
        await sink.aclose(5)
    for call in ("a", "b"):
        done = [seq for c, seq, verdict in transport.log if c == call and verdict != "retry"]
        assert done == [0, 1, 2, 3]  # in order, each after its retry
        tried = [seq for c, seq, _ in transport.log if c == call]
        assert tried == sorted(tried)  # never an event before its predecessor was finished
    assert (transport.observer.acks, transport.observer.refusals) == (7, [413])
    assert webhook_observer.acks == 0 and not webhook_observer.refusals  # the URLs' metrics untouched
    check = Spool(spool, 1 << 30)
    check.open()
    try:
        assert check.count() == 0
        (rejected,) = check.rejected()
        assert (rejected.url, rejected.call_id, rejected.seq, rejected.status) == (DEST, "b", 1, 413)
    finally:
        check.close()

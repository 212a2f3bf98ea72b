"""WebhookSink against a real aiohttp receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bridge.config import Config, SinkConfig, WebhookConfig
from bridge.errors import ConfigError
from bridge.events import BridgeEvent
from bridge.webhook import payload
from bridge.webhook.delivery import (
    SinkStateError,
    WebhookSettings,
    WebhookSink,
    make_webhook_sink,
    shown_url,
)
from bridge.webhook.http import Answer as HttpAnswer
from bridge.webhook.http import HttpClient
from bridge.webhook.spool import NewEvent, Spool

from .conftest import Observer, spool_rows
from .factory import call_events
from .receiver import Answer, Receiver, Request, free_port

VALIDATOR = jsonschema.Draft202012Validator(json.loads(payload.SCHEMA_PATH.read_text()))

Make = Callable[..., Any]


async def test_delivers_every_event_in_order_signed_and_valid(
    receivers: Make, sinks: Make, settings: Make, spool_path: Path
) -> None:
    receiver: Receiver = await receivers()
    observer = Observer()
    sink_settings = settings(receiver.url)
    sink: WebhookSink = await sinks(sink_settings, observer=observer)
    calls = {f"call-{i}": call_events(f"call-{i}", utterances=4) for i in range(3)}
    for batch in zip(*calls.values(), strict=True):  # interleaved, as concurrent calls are
        for event in batch:
            sink.submit(event)
    total = sum(len(v) for v in calls.values())
    await receiver.wait_for(lambda: len(receiver.processed) == total)
    assert receiver.by_call() == {c: list(range(len(v))) for c, v in calls.items()}
    assert all(r.signature_ok for r in receiver.requests)
    for env in receiver.processed:
        VALIDATOR.validate(env)
    first = receiver.requests[0]
    assert first.headers[payload.EVENT_ID_HEADER] == first.envelope["event_id"]
    assert first.headers[payload.EVENT_TYPE_HEADER] == first.envelope["type"]
    assert first.headers[payload.ATTEMPT_HEADER] == "1"
    await sink.wait_persisted(5)
    await receiver.wait_for(lambda: sink.pending == 0)
    assert spool_rows(spool_path) == []
    assert [o for o, _ in observer.attempts] == ["ok"] * total
    assert len(observer.sends) == len(observer.deliveries) == 12  # utterances only
    assert observer.depths[-1] == 0
    # The spool's size after each write, against its limit (the spool-filling alert's two gauges).
    assert observer.sizes and all(0 < used <= limit for used, limit in observer.sizes)
    assert {limit for _, limit in observer.sizes} == {sink_settings.spool_max_bytes}


async def test_sent_the_moment_it_is_submitted(receivers: Make, sinks: Make, settings: Make) -> None:
    receiver: Receiver = await receivers()
    sink: WebhookSink = await sinks(settings(receiver.url))
    latencies = []
    for event in call_events("c", utterances=5):
        started = time.monotonic()
        sink.submit(event)
        await receiver.wait_for(lambda e=event: len(receiver.processed) == e.seq + 1)  # type: ignore[misc]
        latencies.append(receiver.requests[-1].at - started)
    assert max(latencies) < 0.25, latencies


async def test_5xx_is_retried_and_holds_back_the_call(receivers: Make, sinks: Make, settings: Make) -> None:
    def answer(r: Request) -> Answer:
        if r.envelope["seq"] == 1 and r.headers[payload.ATTEMPT_HEADER] in ("1", "2"):
            return Answer(503 if r.headers[payload.ATTEMPT_HEADER] == "1" else 500)
        return Answer(200)

    receiver: Receiver = await receivers(answer=answer)
    sink: WebhookSink = await sinks(settings(receiver.url))
    events = call_events("c", utterances=3)
    for event in events:
        sink.submit(event)
    await receiver.wait_for(lambda: len(receiver.processed) == len(events))
    assert receiver.by_call() == {"c": list(range(len(events)))}
    seqs = [(r.envelope["seq"], r.status) for r in receiver.requests]
    assert seqs[:4] == [(0, 200), (1, 503), (1, 500), (1, 200)]  # nothing after 1 until 1 is through


async def test_429_retry_after_is_honoured(receivers: Make, sinks: Make, settings: Make) -> None:
    def answer(r: Request) -> Answer:
        if r.headers[payload.ATTEMPT_HEADER] == "1":
            return Answer(429, retry_after="1")
        return Answer(200)

    receiver: Receiver = await receivers(answer=answer)
    observer = Observer()
    sink: WebhookSink = await sinks(settings(receiver.url, backoff_max_seconds=5.0), observer=observer)
    sink.submit(call_events("c", utterances=0)[0])
    await receiver.wait_for(lambda: len(receiver.processed) == 1 and sink.pending == 0)
    first, second = receiver.requests
    assert 0.95 <= second.at - first.at < 2.0
    assert [o for o, _ in observer.attempts] == ["http_429", "ok"]


async def test_hanging_receiver_times_out_and_is_retried(
    receivers: Make, sinks: Make, settings: Make
) -> None:
    def answer(r: Request) -> Answer:
        if r.n == 0:
            return Answer(200, hang=30, processed=False)
        return Answer(200)

    receiver: Receiver = await receivers(answer=answer)
    observer = Observer()
    sink: WebhookSink = await sinks(settings(receiver.url, timeout_seconds=0.3), observer=observer)
    sink.submit(call_events("c", utterances=0)[0])
    await receiver.wait_for(lambda: len(receiver.processed) == 1 and sink.pending == 0, seconds=5)
    first, second = receiver.requests
    assert 0.3 <= second.at - first.at < 1.0
    assert observer.attempts[0][0] == "timeout" and 0.29 < observer.attempts[0][1] < 0.6
    assert second.headers[payload.ATTEMPT_HEADER] == "2"
    assert second.envelope["event_id"] == first.envelope["event_id"]


async def test_receiver_down_then_up_loses_nothing(
    receivers: Make, sinks: Make, settings: Make, spool_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    read_body = Spool.body

    def counting_body(self: Spool, url: str, call_id: str, seq: int) -> bytes | None:
        reads.append(seq)
        return read_body(self, url, call_id, seq)

    monkeypatch.setattr(Spool, "body", counting_body)
    port = free_port()
    observer = Observer()
    sink: WebhookSink = await sinks(settings(f"http://127.0.0.1:{port}/hook"), observer=observer)
    # 'a' queues more events than the sink keeps bodies for in memory: the rest are read back from disk
    events = call_events("a", utterances=20) + call_events("b", utterances=2)
    for event in events:
        sink.submit(event)
    await sink.wait_persisted(5)
    await asyncio.sleep(0.8)  # several failed attempts, backoff at its (test) maximum
    assert "connect_error" in {o for o, _ in observer.attempts}
    assert len(spool_rows(spool_path)) == len(events)
    receiver: Receiver = await receivers(port=port)
    await receiver.wait_for(lambda: len(receiver.processed) == len(events))
    assert receiver.by_call() == {"a": list(range(23)), "b": list(range(5))}
    assert reads == list(range(8, 23))  # bodies beyond the first 8 of a queue were not kept in memory
    await receiver.wait_for(lambda: sink.pending == 0)
    assert spool_rows(spool_path) == []


async def test_final_4xx_is_recorded_counted_and_not_retried(
    receivers: Make, sinks: Make, settings: Make, spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver: Receiver = await receivers(answer=lambda r: Answer(422 if r.envelope["seq"] == 1 else 200))
    observer = Observer()
    sink: WebhookSink = await sinks(settings(receiver.url), observer=observer)
    events = call_events("c", utterances=2)
    for event in events:
        sink.submit(event)
    await receiver.wait_for(lambda: len(receiver.processed) == len(events) - 1)
    await receiver.wait_for(lambda: sink.pending == 0)
    assert [r.envelope["seq"] for r in receiver.requests] == list(range(len(events)))  # seq 1 tried once
    assert receiver.by_call() == {"c": [0, 2, 3, 4]}
    assert observer.rejections == [422]
    assert spool_rows(spool_path) == []
    assert spool_rows(spool_path, "rejected") == [(receiver.url, "c", 1)]
    assert any(r.levelno == logging.ERROR and "422" in r.getMessage() for r in caplog.records)


async def test_a_failing_call_never_holds_back_another(receivers: Make, sinks: Make, settings: Make) -> None:
    broken = {"stuck"}
    receiver: Receiver = await receivers(
        answer=lambda r: Answer(500) if r.envelope["call_id"] in broken else Answer(200)
    )
    sink: WebhookSink = await sinks(settings(receiver.url))
    stuck, fine = call_events("stuck", utterances=3), call_events("fine", utterances=3)
    for a, b in zip(stuck, fine, strict=True):
        sink.submit(a)
        sink.submit(b)
    await receiver.wait_for(lambda: receiver.by_call().get("fine") == list(range(len(fine))))
    assert "stuck" not in receiver.by_call()
    assert {r.envelope["seq"] for r in receiver.requests if r.envelope["call_id"] == "stuck"} == {0}
    broken.clear()
    await receiver.wait_for(lambda: receiver.by_call().get("stuck") == list(range(len(stuck))))


async def test_every_other_request_fails_and_order_holds(
    receivers: Make, sinks: Make, settings: Make, spool_path: Path
) -> None:
    """Half the requests fail: 500, 429, a drop after processing (a true duplicate), a timeout. Each call
    is still seen complete and in order once duplicates are removed by event_id."""
    failures = [
        Answer(500),
        Answer(429, retry_after="0"),
        Answer(200, hang=5, processed=True),  # processed, but the answer never arrives in time
        Answer(503, hang=5, processed=False),
    ]

    def answer(r: Request) -> Answer:
        return failures[(r.n // 2) % len(failures)] if r.n % 2 == 0 else Answer(200)

    receiver: Receiver = await receivers(answer=answer)
    sink: WebhookSink = await sinks(settings(receiver.url, timeout_seconds=0.2))
    calls = {f"c{i}": call_events(f"c{i}", utterances=6) for i in range(4)}
    for batch in zip(*calls.values(), strict=True):
        for event in batch:
            sink.submit(event)
        await asyncio.sleep(0.01)
    expected = {c: list(range(len(v))) for c, v in calls.items()}
    await receiver.wait_for(lambda: receiver.deduplicated() == expected, seconds=30)
    await receiver.wait_for(lambda: sink.pending == 0)
    assert any(len(v) > len(expected[c]) for c, v in receiver.by_call().items())  # duplicates did happen
    ids = [env["event_id"] for env in receiver.processed]
    assert len(set(ids)) == sum(len(v) for v in expected.values())
    assert spool_rows(spool_path) == []


async def test_fan_out_each_url_has_its_own_queue(
    receivers: Make, sinks: Make, settings: Make, spool_path: Path
) -> None:
    up: Receiver = await receivers()
    down_url = f"http://127.0.0.1:{free_port()}/hook"
    sink: WebhookSink = await sinks(settings(up.url, down_url))
    events = call_events("c", utterances=2)
    for event in events:
        sink.submit(event)
    await up.wait_for(lambda: len(up.processed) == len(events))
    await up.wait_for(lambda: sink.pending == len(events))  # the down URL's queue only
    assert spool_rows(spool_path) == [(down_url, "c", e.seq) for e in events]


async def test_aclose_is_bounded_and_leaves_the_rest_spooled(
    receivers: Make, settings: Make, spool_path: Path
) -> None:
    receiver: Receiver = await receivers(answer=lambda r: Answer(200, hang=30, processed=False))
    sink = WebhookSink(settings(receiver.url, timeout_seconds=10.0))
    await sink.start()
    events = call_events("c", utterances=2)
    for event in events:
        sink.submit(event)
    await receiver.wait_for(lambda: len(receiver.requests) == 1)
    started = time.monotonic()
    await sink.aclose(0.5)
    assert time.monotonic() - started < 2.5
    assert len(spool_rows(spool_path)) == len(events)
    with pytest.raises(SinkStateError):
        sink.submit(events[0])
    # The next sink on the same spool takes them over and delivers them, in order.
    receiver.answer = lambda r: Answer(200)
    again = WebhookSink(settings(receiver.url))
    await again.start()
    try:
        await receiver.wait_for(lambda: len(receiver.processed) == len(events))
        assert receiver.by_call() == {"c": list(range(len(events)))}
    finally:
        await again.aclose(1)


async def test_orphans_of_a_dead_owner_are_adopted_while_running(
    receivers: Make, sinks: Make, settings: Make, spool_path: Path
) -> None:
    receiver: Receiver = await receivers()
    await sinks(settings(receiver.url, claim_interval_seconds=0.1))
    other = Spool(spool_path, 10**8)
    other.open()
    events = call_events("orphan", utterances=2)
    other.insert(spooled_rows(receiver.url, events))
    await asyncio.sleep(0.4)
    assert receiver.processed == []  # its owner is alive: not ours to send
    other.close()  # the owner goes away with events left
    await receiver.wait_for(lambda: len(receiver.processed) == len(events), seconds=5)
    assert receiver.by_call() == {"orphan": list(range(len(events)))}


async def test_auth_headers(receivers: Make, sinks: Make, settings: Make) -> None:
    receiver: Receiver = await receivers()
    sink: WebhookSink = await sinks(settings(receiver.url, bearer_token="tok"))
    sink.submit(call_events("c", utterances=0)[0])
    await receiver.wait_for(lambda: len(receiver.processed) == 1)
    assert receiver.requests[0].headers["Authorization"] == "Bearer tok"


async def test_basic_auth(receivers: Make, sinks: Make, settings: Make) -> None:
    receiver: Receiver = await receivers()
    sink: WebhookSink = await sinks(settings(receiver.url, basic_auth=("user", "pw")))
    sink.submit(call_events("c", utterances=0)[0])
    await receiver.wait_for(lambda: len(receiver.processed) == 1)
    assert receiver.requests[0].headers["Authorization"] == "Basic dXNlcjpwdw=="


async def test_spool_full_refuses_loudly(
    settings: Make, sinks: Make, caplog: pytest.LogCaptureFixture, spool_path: Path
) -> None:
    observer = Observer()
    url = f"http://127.0.0.1:{free_port()}/hook"
    sink: WebhookSink = await sinks(settings(url, spool_max_bytes=150_000), observer=observer)
    base = call_events("big", utterances=30)
    for event in base:
        if event.kind == "utterance":
            event.data["text"] = "x" * 8000
        sink.submit(event)
    await sink.wait_persisted(5)
    await asyncio.sleep(0.1)
    stored = len(spool_rows(spool_path))
    assert 5 < stored < len(base)
    assert observer.drops and set(observer.drops) == {"spool_full"}
    messages = [r.getMessage() for r in caplog.records]
    assert any("% of its limit" in m for m in messages)  # the warning before it is full
    assert any("spool full" in m for m in messages)


async def test_submit_before_start_is_an_error(settings: Make) -> None:
    sink = WebhookSink(settings("http://127.0.0.1:9/hook"))
    with pytest.raises(SinkStateError):
        sink.submit(call_events("c", utterances=0)[0])
    await sink.aclose(0.1)


def test_credentials_are_not_logged() -> None:
    assert shown_url("http://user:pw@127.0.0.1:8080/hook?x=1") == "http://127.0.0.1:8080/hook?x=1"


def test_settings_from_config(tmp_path: Path) -> None:
    config = WebhookConfig(urls=("http://127.0.0.1:1/h",), bearer_env="TOKEN", spool_path=str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="VBLAZE_BRIDGE_WEBHOOK_SECRET"):
        WebhookSettings.from_config(config, {})
    with pytest.raises(ConfigError, match=r"webhook\.bearer_env"):
        WebhookSettings.from_config(config, {"VBLAZE_BRIDGE_WEBHOOK_SECRET": "s"})
    s = WebhookSettings.from_config(config, {"VBLAZE_BRIDGE_WEBHOOK_SECRET": "s", "TOKEN": "t"})
    assert (s.secret, s.bearer_token, s.urls, s.spool_path) == (b"s", "t", config.urls, tmp_path / "s")


async def test_basic_auth_from_url_credentials(receivers: Make, sinks: Make, settings: Make) -> None:
    receiver: Receiver = await receivers()
    url = receiver.url.replace("http://", "http://user:pw@")
    sink: WebhookSink = await sinks(settings(url))
    sink.submit(call_events("c", utterances=0)[0])
    await receiver.wait_for(lambda: len(receiver.processed) == 1)
    assert receiver.requests[0].headers["Authorization"] == "Basic dXNlcjpwdw=="


async def test_submit_right_after_begin_is_sent_once_started(
    receivers: Make, settings: Make, spool_path: Path
) -> None:
    receiver: Receiver = await receivers()
    config = Config(
        sink=SinkConfig(kind="webhook"),
        webhook=WebhookConfig(urls=(receiver.url,), spool_path=str(spool_path), backoff_initial_seconds=0.05),
    )
    observer = Observer()
    sink = make_webhook_sink(
        config, environ={"VBLAZE_BRIDGE_WEBHOOK_SECRET": "test-secret"}, observer=observer
    )
    try:
        events = call_events("early", utterances=1)
        for event in events:
            sink.submit(event)  # the spool is not open yet
        await sink.start()
        await receiver.wait_for(lambda: receiver.by_call() == {"early": list(range(len(events)))})
        assert all(r.signature_ok for r in receiver.requests)
    finally:
        await sink.aclose(1)


async def test_start_fails_loudly_if_the_spool_cannot_be_opened(settings: Make, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = WebhookSink(settings("http://127.0.0.1:9/hook", spool_path=blocker / "spool.sqlite3"))
    with pytest.raises(OSError):
        await sink.start()
    with pytest.raises(SinkStateError):
        sink.submit(call_events("c", utterances=0)[0])
    await sink.aclose(0.5)


def spooled_rows(url: str, events: list[BridgeEvent]) -> list[NewEvent]:
    """The spool rows a sink would write for these events to `url`."""
    return [
        NewEvent(url, e.call_id, e.seq, payload.event_id(e.call_id, e.seq), e.kind, e.time, payload.encode(e))
        for e in events
    ]


def _settings_from(tmp_path: Path, **keys: Any) -> WebhookSettings:
    config = WebhookConfig(spool_path=str(tmp_path / "spool" / "s.sqlite3"), **keys)
    return WebhookSettings.from_config(config, {"VBLAZE_BRIDGE_WEBHOOK_SECRET": "test-secret"})


@pytest.mark.parametrize(("fraction", "warned"), [(0.05, True), (0.8, False)])
async def test_spool_warn_fraction_from_config_takes_effect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fraction: float, warned: bool
) -> None:
    """About 15% of a 1 MiB spool filled while the receiver is down: warned at 5%, not at 80%."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    settings = _settings_from(
        tmp_path, urls=(url,), spool_max_bytes=1024 * 1024, spool_warn_fraction=fraction
    )
    assert settings.spool_warn_fraction == fraction
    sink = WebhookSink(settings)
    await sink.start()
    try:
        for event in call_events("big", utterances=8):
            event.data["text"] = "x" * 20_000
            sink.submit(event)
        await sink.wait_persisted(5)
        await asyncio.sleep(0.05)
    finally:
        await sink.aclose(0.1)
    assert any("% of its limit" in r.getMessage() for r in caplog.records) == warned


async def test_claim_interval_from_config_takes_effect(receivers: Make, tmp_path: Path) -> None:
    """With webhook.claim_interval_seconds 0.1 a running sink adopts a gone owner's events at once
    (the default, 10 s, would leave them for this test's whole bound)."""
    receiver: Receiver = await receivers()
    settings = _settings_from(tmp_path, urls=(receiver.url,), claim_interval_seconds=0.1)
    assert settings.claim_interval_seconds == 0.1
    sink = WebhookSink(settings)
    await sink.start()
    try:
        other = Spool(settings.spool_path, 10**8)
        other.open()
        events = call_events("orphan", utterances=1)
        other.insert(spooled_rows(receiver.url, events))
        other.close()
        await receiver.wait_for(lambda: len(receiver.processed) == len(events), seconds=2)
    finally:
        await sink.aclose(1)


class DefectiveOnce(HttpClient):
    """The real client, with a defect on its first POST: an exception no HTTP client should raise."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        if not self.failed:
            self.failed = True
            raise TypeError("a defect")
        return await super().post(url, body, headers)


async def test_a_defect_of_the_http_client_is_logged_and_the_event_retried(
    receivers: Make, sinks: Make, settings: Make, caplog: pytest.LogCaptureFixture
) -> None:
    receiver: Receiver = await receivers()
    http = DefectiveOnce()
    sink: WebhookSink = await sinks(settings(receiver.url), http=http)
    events = call_events("c", utterances=1)
    for event in events:
        sink.submit(event)
    await receiver.wait_for(lambda: len(receiver.processed) == len(events))
    assert http.failed and receiver.by_call() == {"c": list(range(len(events)))}
    (logged,) = [r for r in caplog.records if "the HTTP client failed" in r.getMessage()]
    assert logged.exc_info is not None and logged.exc_info[0] is TypeError
    await http.aclose()

from __future__ import annotations

import hashlib
import hmac
import json
import math

import jsonschema
import pytest

from bridge.events import BridgeEvent
from bridge.webhook import payload

from .factory import call_events

SCHEMA = json.loads(payload.SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_kind_of_event_validates() -> None:
    events = call_events("call-1@127.0.0.1", utterances=3)
    assert {e.kind for e in events} == {"call.started", "utterance", "dtmf", "call.ended"}
    for event in events:
        VALIDATOR.validate(json.loads(payload.encode(event)))


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("utterance", {"text": "hi"}),  # words, times, engine... missing
        ("dtmf", {"digit": "55", "at": 1.0}),
        ("call.ended", {"reason": "bye", "duration": 1.0, "utterances": -1, "transcript": None, "gaps": []}),
        ("call.started", {"from": "a", "to": "b", "headers": {"X": 1}, "started_at": "x", "worker": 0}),
    ],
)
def test_schema_rejects_malformed_data(kind: str, data: dict[str, object]) -> None:
    event = BridgeEvent(kind=kind, call_id="c", seq=0, time=0.0, data=data)  # type: ignore[arg-type]
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(json.loads(payload.encode(event)))


def test_envelope() -> None:
    event = call_events("c1", utterances=1)[1]
    env = json.loads(payload.encode(event))
    assert set(env) == {"version", "event_id", "type", "call_id", "seq", "time", "data"}
    assert env["type"] == "utterance" and env["call_id"] == "c1" and env["seq"] == 1
    assert env["time"].endswith("Z") and env["time"][:2] == "20"


def test_engine_json_is_untouched() -> None:
    event = call_events("c1", utterances=1)[1]
    env = json.loads(payload.encode(event))
    assert env["data"]["engine"] == event.data["engine"]


def test_event_id_is_stable_and_distinct() -> None:
    assert payload.event_id("c1", 3) == payload.event_id("c1", 3)
    ids = {payload.event_id(c, s) for c in ("c1", "c2", "c1\n3") for s in range(50)}
    assert len(ids) == 150
    # Fixed for ever: receivers may have stored ids across a bridge upgrade.
    assert payload.event_id("call-1", 0) == "7d255ce4-0e35-5faf-9465-8502b9fd027c"


def test_encode_is_deterministic_and_json_safe() -> None:
    event = BridgeEvent(
        kind="utterance",
        call_id="c",
        seq=0,
        time=1.5,
        data={"confidence": math.nan, "t": (1, 2), "x": math.inf},
    )
    body = payload.encode(event)
    assert body == payload.encode(event)
    data = json.loads(body)["data"]
    assert data == {"confidence": None, "t": [1, 2], "x": None}


def test_non_ascii_text_is_utf8() -> None:
    event = BridgeEvent(kind="dtmf", call_id="c", seq=0, time=0.0, data={"text": "ça va ✓"})
    body = payload.encode(event)
    assert "ça va ✓".encode() in body


def test_sign_matches_a_plain_hmac() -> None:
    body = b'{"a":1}'
    header = payload.sign(b"s3cret", 1700000000, body)
    mac = hmac.new(b"s3cret", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"


def test_verify() -> None:
    body = b'{"a":1}'
    header = payload.sign(b"k", 1000, body)
    assert payload.verify(b"k", header, body, now=1000)
    assert payload.verify(b"k", header, body, now=1299)
    assert not payload.verify(b"k", header, body, now=1301)  # too old: replay
    assert not payload.verify(b"k", header, b'{"a":2}', now=1000)  # body changed
    assert not payload.verify(b"other", header, body, now=1000)  # wrong secret
    assert not payload.verify(b"k", "garbage", body, now=1000)
    assert not payload.verify(b"k", "t=abc,v1=00", body, now=1000)
    rotated = header + ",v1=" + "0" * 64
    assert payload.verify(b"k", rotated, body, now=1000)


def test_request_headers() -> None:
    headers = payload.request_headers(
        secret=b"k", timestamp=5, body=b"{}", event_id="id", event_type="dtmf", attempt=2, bearer_token="tok"
    )
    assert headers["Authorization"] == "Bearer tok"
    assert headers[payload.ATTEMPT_HEADER] == "2"
    assert headers[payload.EVENT_ID_HEADER] == "id"
    assert headers["Content-Type"] == "application/json"
    assert payload.verify(b"k", headers[payload.SIGNATURE_HEADER], b"{}", now=5)
    assert "Authorization" not in payload.request_headers(
        secret=b"k", timestamp=5, body=b"{}", event_id="id", event_type="dtmf", attempt=1
    )

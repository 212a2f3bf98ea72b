"""The control channel's request and reply lines (bridge/control/lines.py): round trips, and random or
mutated lines raise LineError only."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.control.lines import (
    MAX_LINE_BYTES,
    LineError,
    Op,
    Reply,
    Request,
    format_reply,
    format_request,
    parse_reply,
    parse_request,
)

SAMPLES = [
    Request(1, Op.LIST),
    Request(2, Op.GET, "a84b4c76e66710@pc33.example.com"),
    Request(3, Op.PAUSE, "c@h", "api:desk", "card nº ✓"),
    Request(999_999_999, Op.RESUME, "c@h", "api:desk"),
    Request(5, Op.HANGUP, "c@h"),
]


@pytest.mark.parametrize("request_", SAMPLES, ids=lambda r: r.op.value)
def test_requests_round_trip_in_ascii(request_: Request) -> None:
    line = format_request(request_)
    assert line.endswith(b"\n") and line.isascii()
    assert parse_request(line) == request_


def test_replies_round_trip() -> None:
    reply = Reply(7, 200, {"calls": [{"call_id": "c@h", "from": "sip:ü@x"}]})
    assert parse_reply(format_reply(reply)) == reply


@pytest.mark.parametrize(
    ("line", "message", "line_id"),
    [
        (b"call x {}", "bad id", None),
        (b"call 1234567890 {}", "bad id", None),
        (b"reply 1 {}", "not a call line", None),
        (b'call 4 {"op": "reboot"}', "unknown op", 4),
        (b'call 4 {"op": "get"}', "call_id", 4),
        (b'call 4 {"op": "pause", "call_id": "c"}', "by", 4),
        (b'call 4 {"op": "list", "x": 1}', "unknown key", 4),
        (b'call 4 {"op": "pause", "call_id": "c", "by": "b", "reason": 5}', "reason", 4),
        (b"call 4 [1]", "object", 4),
        (b"call 4 {", "JSON", 4),
        (b"call 4 " + b"[" * 100_000, "too long", None),
    ],
)
def test_bad_requests_name_the_problem_and_the_id(line: bytes, message: str, line_id: int | None) -> None:
    with pytest.raises(LineError, match=message) as caught:
        parse_request(line)
    assert caught.value.id == line_id


@pytest.mark.parametrize(
    "line",
    [
        b'reply 1 {"status": 99, "body": {}}',
        b'reply 1 {"status": true, "body": {}}',
        b'reply 1 {"status": 200}',
    ],
)
def test_bad_replies(line: bytes) -> None:
    with pytest.raises(LineError):
        parse_reply(line)


def test_a_line_too_long_is_refused_when_formatted() -> None:
    with pytest.raises(LineError, match="longer"):
        format_reply(Reply(1, 200, {"x": "y" * MAX_LINE_BYTES}))


def mutations() -> st.SearchStrategy[bytes]:
    samples = [format_request(r) for r in SAMPLES] + [format_reply(Reply(1, 200, {"a": [1, None]}))]

    def mutate(args: tuple[bytes, int, bytes]) -> bytes:
        line, at, insert = args
        at %= len(line)
        return line[:at] + insert + line[at + len(insert) :]

    return st.tuples(st.sampled_from(samples), st.integers(0, 500), st.binary(max_size=8)).map(mutate)


def nested_json() -> st.SearchStrategy[bytes]:
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=10,
    )
    payload = st.dictionaries(st.sampled_from(["op", "call_id", "by", "reason", "x"]), values, max_size=5)
    return st.tuples(st.sampled_from([b"call", b"reply"]), st.integers(-5, 10**10), payload).map(
        lambda t: t[0] + b" %d " % t[1] + json.dumps(t[2]).encode()
    )


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.one_of(st.binary(max_size=200), mutations(), nested_json()))
def test_only_line_error_escapes(line: bytes) -> None:
    for parse in (parse_request, parse_reply):
        try:
            parsed = parse(line)
        except LineError:
            continue
        assert parsed.id >= 0

"""The live feed's wire: what a worker copies to the supervisor, parsed back; the tap never blocks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.control import feed
from bridge.events import BridgeEvent
from bridge.webhook import payload
from tests.fixtures.sinks import ListSink


def ended(transcript_words: int) -> BridgeEvent:
    data = {"reason": "remote_bye", "gaps": [], "utterances": 1, "duration": 3.0}
    data["transcript"] = {"utterances": [{"text": "word " * transcript_words}]}
    data["engine_finals"] = [{"stream": 0, "offset": 0.0, "transcript": {}}]
    return BridgeEvent("call.ended", "c1", 7, 1_700_000_000.0, data)


def test_a_line_parses_back_to_the_webhook_envelope() -> None:
    event = BridgeEvent("utterance", "c1", 3, 1_700_000_000.0, {"text": "hello", "start": 0.5, "end": 1.0})
    line = feed.encode_line(event)
    assert line.startswith(feed.PREFIX) and line.endswith(b"\n") and line.count(b"\n") == 1
    assert feed.parse_line(line[len(feed.PREFIX) :]) == payload.envelope(event)


def test_call_ended_goes_without_its_transcript_and_says_so() -> None:
    body = feed.parse_line(feed.encode_line(ended(10))[len(feed.PREFIX) :])
    assert body["data"]["live_omitted"] == ["transcript", "engine_finals"]
    assert "transcript" not in body["data"] and body["data"]["reason"] == "remote_bye"


def test_a_line_never_passes_the_channel_limit() -> None:
    huge = BridgeEvent("utterance", "c1", 1, 1_700_000_000.0, {"text": "x" * 100_000})
    line = feed.encode_line(huge)
    assert len(line) <= feed.MAX_LINE_BYTES
    assert feed.parse_line(line[len(feed.PREFIX) :])["data"] == {"live_omitted": ["*"]}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "utterance", "call_id": "c", "seq": "3"}', "seq: missing or not int"),
        (b'{"type": "utterance", "call_id": "c", "seq": true}', "seq: missing or not int"),
        (b'{"type": "utterance", "seq": 3}', "call_id: missing or not str"),
        (b'{"type": "utterance", "call_id": "c", "seq": 3, "data": 5}', "data: not an object"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_a_line_that_is_no_event_is_a_feed_error(line: bytes, reason: str) -> None:
    with pytest.raises(feed.FeedError, match=reason):
        feed.parse_line(line)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_only_feed_errors_escape_the_parser(line: bytes) -> None:
    try:
        body = feed.parse_line(line)
    except feed.FeedError:
        return
    assert isinstance(body["call_id"], str) and isinstance(body["seq"], int)


class Transport:
    def __init__(self) -> None:
        self.buffered = 0

    def get_write_buffer_size(self) -> int:
        return self.buffered


class Channel:
    def __init__(self) -> None:
        self.transport = Transport()
        self.lines: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.lines.append(data)

    def is_closing(self) -> bool:
        return self.closing


def events(call_id: str, n: int) -> list[BridgeEvent]:
    return [BridgeEvent("utterance", call_id, seq, 1.0, {"text": str(seq)}) for seq in range(n)]


def test_the_tap_passes_every_event_to_the_sink_first_and_copies_it() -> None:
    sink, channel, drops = ListSink(), Channel(), []
    tap = feed.FeedTap(sink, lambda: channel, lambda: drops.append(1))
    for event in events("a", 3):
        tap.submit(event)
    assert [e.seq for e in sink.events] == [0, 1, 2]
    assert [json.loads(line[len(feed.PREFIX) :])["seq"] for line in channel.lines] == [0, 1, 2]
    assert drops == []


def test_a_supervisor_that_does_not_read_costs_copies_not_events(caplog: Any) -> None:
    sink, channel, drops = ListSink(), Channel(), []
    tap = feed.FeedTap(sink, lambda: channel, lambda: drops.append(1))
    channel.transport.buffered = feed.MAX_BUFFERED_BYTES + 1
    for event in events("a", 3):
        tap.submit(event)
    assert len(sink.events) == 3 and channel.lines == [] and len(drops) == 3
    assert sum("live feed" in r.message for r in caplog.records) == 1  # once per call
    channel.closing = True
    channel.transport.buffered = 0
    tap.submit(events("b", 1)[0])  # no channel to copy to: the sink still gets it, nothing is counted
    assert len(sink.events) == 4 and channel.lines == [] and len(drops) == 3
    unattached = feed.FeedTap(ListSink(), lambda: None, lambda: drops.append(1))
    unattached.submit(events("c", 1)[0])
    assert len(drops) == 3

"""`calls --follow`: the SSE parser and the one-line view of each event (no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.control.follow import Message, SseParser, envelope_of, event_line


def messages(lines: list[str]) -> list[Message]:
    parser = SseParser()
    return [m for m in (parser.feed(line) for line in lines) if m is not None]


def test_messages_are_parsed_as_the_sse_format_says() -> None:
    got = messages(
        [": keepalive", "", "id: r:1", "event: utterance", 'data: {"a":', "data: 1}", "", "event: cut",
         'data: {"reason": "behind"}', "", "id:r:2", "data:x", ""]
    )  # fmt: skip
    assert [(m.id, m.event, m.data) for m in got] == [
        ("r:1", "utterance", ['{"a":', "1}"]),
        (None, "cut", ['{"reason": "behind"}']),
        ("r:2", "message", ["x"]),
    ]
    assert envelope_of(got[0]) == {"a": 1} and envelope_of(got[2]) is None


@given(st.lists(st.text(max_size=30), max_size=30))
def test_any_lines_give_messages_and_never_raise(lines: list[str]) -> None:
    for message in messages([line.replace("\n", "") for line in lines]):
        envelope_of(message)


def test_each_kind_has_a_readable_line() -> None:
    base = {"call_id": "a84b4c76e66710@pc33", "time": "2026-11-24T08:00:01.000Z"}
    cases = [
        ("call.started", {"from": "<sip:+1555@pbx>", "to": "<sip:1001@b>", "route": "sales"},
         "08:00:01  a84b4c76  call.started  <sip:+1555@pbx> -> <sip:1001@b>  route sales"),
        ("utterance", {"text": "I'd like\n  to pay", "start": 0.5, "end": 2.87, "role": "caller"},
         "08:00:01  a84b4c76  utterance     [  0.50-  2.87 s] caller: I'd like to pay"),
        ("utterance", {"text": "hello", "start": 1, "end": 2, "channel": 1},
         "08:00:01  a84b4c76  utterance     [  1.00-  2.00 s] ch 1: hello"),
        ("dtmf", {"digit": "5", "at": 3.0}, "08:00:01  a84b4c76  dtmf          5 at 3.00 s"),
        ("call.paused", {"at": 7.1, "by": "api:desk", "reason": "card"},
         "08:00:01  a84b4c76  call.paused   at 7.10 s by api:desk (card)"),
        ("call.resumed", {"at": 19.1, "by": "dtmf"}, "08:00:01  a84b4c76  call.resumed  at 19.10 s by dtmf"),
        ("call.ended", {"reason": "remote_bye", "duration": 29.44, "utterances": 6,
                        "gaps": [{"cause": "paused", "start": 7.1, "duration": 12.0}]},
         "08:00:01  a84b4c76  call.ended    remote_bye, 29.4 s, 6 utterances, gaps: paused 7.1+12.0 s"),
    ]  # fmt: skip
    for kind, data, line in cases:
        assert event_line({**base, "type": kind, "data": data}) == line
    # Whatever a feed carries, a line comes out.
    assert event_line({"type": "call.ended", "data": {"gaps": "nonsense", "duration": "x"}}).endswith(
        "gaps: none"
    )
    assert event_line({}) == ""

"""Properties of the secure-edge test fixtures' parsers: bencode (rtpengine's NG answers), SIP framing on
a TLS stream (the SBC fixture) and the compound-RTCP check the capture assertions rely on."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fixtures.edge import bdecode, bencode, plain_rtcp_types
from tests.fixtures.sbc import split_message

texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
values: st.SearchStrategy[Any] = st.recursive(
    st.integers() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


@given(values)
def test_bencode_round_trips(value: Any) -> None:
    data = bencode(value)
    assert bdecode(data) == (value, len(data))


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4), st.integers(1, 50))
def test_sip_messages_split_off_a_stream_in_any_chunks(bodies: list[bytes], chunk: int) -> None:
    messages = [b"BYE sip:a SIP/2.0\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b) for b in bodies]
    stream, buffer, out = b"".join(messages), b"", []
    for at in range(0, len(stream), chunk):
        buffer += stream[at : at + chunk]
        while True:
            message, buffer = split_message(buffer)
            if message is None:
                break
            out.append(message)
    assert out == messages and buffer == b""


@given(st.binary(max_size=120))
def test_the_rtcp_check_never_raises(data: bytes) -> None:
    types = plain_rtcp_types(data)
    assert types is None or all(isinstance(t, int) for t in types)


def test_srtcp_is_not_taken_for_plain_rtcp() -> None:
    receiver_report = bytes([0x81, 201, 0, 7]) + bytes(28)  # RR with one report block: 32 bytes
    assert plain_rtcp_types(receiver_report) == [201]
    srtcp = receiver_report + bytes([0x80, 0, 0, 1]) + bytes(10)  # E|index and the tag follow
    assert plain_rtcp_types(srtcp) is None

"""The subject encoding of Call-IDs: reversible, canonical, only subject-safe characters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.nats import subject
from bridge.nats.policy import destination, parse_destination

UNSAFE = set(".*> \t\r\n\x00")


@given(st.text())
def test_round_trip(call_id: str) -> None:
    assert subject.decode_call_id(subject.encode_call_id(call_id)) == call_id


@given(st.text())
def test_the_token_is_one_subject_token_of_safe_characters(call_id: str) -> None:
    token = subject.encode_call_id(call_id)
    assert token and subject.TOKEN.fullmatch(token)
    assert not UNSAFE & set(token)
    assert token.isascii() and token.isprintable()


@given(st.text(), st.text())
def test_distinct_call_ids_have_distinct_tokens(a: str, b: str) -> None:
    if a != b:
        assert subject.encode_call_id(a) != subject.encode_call_id(b)


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=40))
def test_decode_refuses_what_encode_never_makes_and_nothing_else_escapes(token: str) -> None:
    try:
        decoded = subject.decode_call_id(token)
    except ValueError:
        return
    assert subject.encode_call_id(decoded) == token  # canonical: one token a Call-ID


@pytest.mark.parametrize("token", ["%2e", "%41", "%4", "a.b", "a b", "é", "%"[:0] + "%zz"])
def test_non_canonical_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError):
        subject.decode_call_id(token)


def test_examples() -> None:
    assert subject.encode_call_id("a84b4c76e66710@pc33.example.com") == "a84b4c76e66710@pc33%2Eexample%2Ecom"
    assert subject.encode_call_id("") == "%" and subject.decode_call_id("%") == ""
    assert subject.encode_call_id("x*>y") == "x%2A%3Ey"
    assert subject.subject("vblaze", "sales", "1.2", "call.started") == "vblaze.sales.1%2E2.call_started"
    assert subject.call_filter("vblaze", "1.2") == "vblaze.*.1%2E2.>"


def test_destinations_round_trip_and_refuse_others() -> None:
    assert parse_destination(destination("S", "p", "r")) == ("S", "p", "r")
    for other in ("https://x/y", "nats:S:p", "nats::p:r", "nats:S:p:r:x"):
        assert parse_destination(other) is None

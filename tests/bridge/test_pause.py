"""The pause switch and the DTMF sequences (bridge/pause.py), without I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.pause import (
    DTMF_DIGITS,
    DtmfSequencer,
    PauseAction,
    PauseChange,
    PauseState,
    ReasonError,
    check_reason,
    check_sequence,
)

SEQUENCES = {"*1": PauseAction.PAUSE, "*2": PauseAction.RESUME}


def test_pause_and_resume_are_idempotent() -> None:
    state = PauseState()
    assert state.pause(1.0, 101.0, "api:desk", "card") == PauseChange(True, 1.0, "api:desk", "card")
    assert state.pause(2.0, 102.0, "dtmf") is None  # paused already: nothing to announce
    assert (state.paused, state.by, state.reason, state.since_at) == (True, "api:desk", "card", 1.0)
    assert state.resume(5.0, 105.0, "dtmf") == PauseChange(False, 5.0, "dtmf", None)
    assert state.resume(6.0, 106.0, "dtmf") is None
    assert state.pauses == 1


def test_frames_captured_before_the_resume_stay_silent() -> None:
    state = PauseState()
    assert not state.silences(99.0)
    state.pause(1.0, 100.0, "dtmf")
    assert state.silences(99.0)  # while paused, whatever the frame: fail closed
    state.resume(5.0, 105.0, "dtmf")
    assert state.silences(104.95)  # began before the resume: it holds paused audio
    assert not state.silences(105.0)


def test_auto_resume_deadline() -> None:
    assert PauseState().auto_resume_at is None
    state = PauseState(auto_resume_seconds=30)
    assert state.auto_resume_at is None  # not paused
    state.pause(1.0, 100.0, "api:x")
    assert state.auto_resume_at == 130.0
    state.resume(2.0, 101.0, "auto")
    assert state.auto_resume_at is None


@pytest.mark.parametrize(
    ("reason", "error"),
    [(5, "string"), ("x" * 11, "longer than 10"), ("a\nb", "control"), ("\x00", "control")],
)
def test_bad_reasons(reason: object, error: str) -> None:
    with pytest.raises(ReasonError, match=error):
        check_reason(reason, 10)


def test_good_reasons() -> None:
    assert check_reason(None, 10) is None
    assert check_reason("card nº 1", 10) == "card nº 1"


def test_sequences_of_the_config() -> None:
    assert check_sequence("*1") == "*1" and check_sequence("") == "" and check_sequence("#a") == "#A"
    for bad in ("*x", "123456789", " 1"):
        with pytest.raises(ValueError, match="DTMF"):
            check_sequence(bad)


def feed(seq: DtmfSequencer, digits: str, now: float = 0.0) -> tuple[str, list[PauseAction]]:
    out, actions = "", []
    for i, digit in enumerate(digits):
        released, action = seq.feed(digit, float(i), now)
        out += "".join(d for d, _ in released)
        if action is not None:
            actions.append(action)
    return out, actions


def test_sequence_digits_are_never_released() -> None:
    seq = DtmfSequencer(dict(SEQUENCES), 2.0)
    assert feed(seq, "5*1") == ("5", [PauseAction.PAUSE])
    assert feed(seq, "*2") == ("", [PauseAction.RESUME])
    assert seq.held == [] and seq.deadline is None


def test_a_prefix_that_cannot_become_a_sequence_is_released_in_order_with_its_time() -> None:
    seq = DtmfSequencer(dict(SEQUENCES), 2.0)
    released, action = seq.feed("*", 1.5, 10.0)
    assert (released, action, seq.deadline) == ([], None, 12.0)
    released, action = seq.feed("9", 1.8, 10.3)
    assert (released, action) == ([("*", 1.5), ("9", 1.8)], None)
    assert feed(seq, "**1") == ("*", [PauseAction.PAUSE])  # the second * starts the sequence again


def test_a_lone_star_is_released_after_the_hold() -> None:
    seq = DtmfSequencer(dict(SEQUENCES), 2.0)
    seq.feed("*", 3.0, 10.0)
    assert seq.expire(11.9) == []
    assert seq.expire(12.0) == [("*", 3.0)]
    assert seq.deadline is None and seq.expire(99.0) == []


def test_sequences_off() -> None:
    seq = DtmfSequencer({"": PauseAction.PAUSE, "": PauseAction.RESUME}, 2.0)  # noqa: F601
    assert feed(seq, "*1*2") == ("*1*2", [])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet=DTMF_DIGITS, max_size=30), st.booleans())
def test_every_digit_is_released_once_or_forms_a_sequence(digits: str, expire: bool) -> None:
    """What comes out, in order, is the input with each completed sequence taken out."""
    seq = DtmfSequencer(dict(SEQUENCES), 2.0)
    out, actions = feed(seq, digits)
    out += "".join(d for d, _ in (seq.expire(99.0) if expire else seq.flush()))
    expected, rest = "", digits
    found = []
    while rest:  # a reference matcher: leftmost sequence first
        if rest[:2] in SEQUENCES:
            found.append(SEQUENCES[rest[:2]])
            rest = rest[2:]
        else:
            expected, rest = expected + rest[0], rest[1:]
    assert (out, actions) == (expected, found)

"""The V-Blaze session fed what a broken or hostile engine might send: only EngineProtocolError escapes.

Whatever arrives (random text, mutated utterances, JSON of the right shape with values of any type,
binary frames, scrubbed audio split anywhere or made hostile), `receive_text`/`receive_binary` return
an event or raise `EngineProtocolError`, a
refused message leaves the session as it was, and every event's JSON can be written as strict JSON
(no NaN or Infinity reaches a webhook).
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import AudioConfig
from bridge.errors import EngineProtocolError
from bridge.vblaze.protocol import (
    Final,
    ScrubbedAudio,
    Separator,
    Session,
    State,
    Utterance,
    wav_stream_header,
)
from tests.bridge.vblaze.vblaze_scripted import utt
from tests.fixtures.fuzz import FUZZ, mutated, random_text

AUDIO = AudioConfig()


MESSAGES = [
    utt(0.5, 1.5),
    utt(2, 3.25, text="hello there"),
    json.dumps({"utterance": json.loads(utt(1, 2)), "requestid": "r"}),
    json.dumps({"requestid": "x", "utterances": [json.loads(utt(0.5, 1.5))]}),
    "",
    "hello there\n",
]
KEYS = [
    "start",
    "end",
    "events",
    "metadata",
    "text",
    "utterance",
    "utterances",
    "confidence",
    "word",
    "channel",
]


def session(state: str) -> Session:
    """A stereo session that has sent audio with a jump (so times are mapped), in the given state."""
    s = Session(AUDIO, "NONE", channels=2)
    s.send_audio(b"\x00" * 3200, 0)
    s.send_audio(b"\x00" * 3200, 64000)  # audio dropped in between: the session maps across the jump
    if state in ("draining", "separated"):
        s.send_end()
    if state == "separated":
        s.receive_text("", 0.0)
    if state == "done":
        s.receive_text(json.dumps({"utterances": []}), 0.0)
    return s


STATES = st.sampled_from(["open", "draining", "separated", "done"])


def snapshot(s: Session) -> tuple[object, ...]:
    return (s.state, s.separator_seen, s.final, s.stream_bytes, s.sent_until)


def check(s: Session, text: str) -> None:
    before = snapshot(s)
    try:
        event = s.receive_text(text, 1.0)
    except EngineProtocolError:
        assert snapshot(s) == before, "a refused message changed the session"
        return
    if isinstance(event, Utterance):
        times = [event.start, event.end, *(t for w in event.words for t in (w.start, w.end))]
        assert all(isinstance(t, float) and math.isfinite(t) for t in times)
        assert isinstance(event.text, str) and isinstance(event.channel, int)
        assert event.confidence is None or math.isfinite(event.confidence)
        json.dumps(event.raw, allow_nan=False)
        assert s.state is before[0]
    elif isinstance(event, Final):
        json.dumps(event.raw, allow_nan=False)
        assert s.state is State.DONE
    else:
        assert isinstance(event, Separator) and s.separator_seen


@FUZZ
@given(STATES, random_text())
def test_random_text(state: str, text: str) -> None:
    check(session(state), text)


@FUZZ
@given(STATES, st.lists(mutated(MESSAGES), min_size=1, max_size=4))
def test_mutated_messages_in_sequence(state: str, texts: list[str]) -> None:
    s = session(state)
    for text in texts:
        check(s, text)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner)
    ),
    max_leaves=20,
)
NUMBERS = (
    st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 1.5, 10**309, -(10**309), math.nan, math.inf, -math.inf, 1e308])
)
WORDS = st.lists(
    st.fixed_dictionaries(
        {"word": st.text(max_size=5) | JSON_VALUES},
        optional={"start": NUMBERS | JSON_VALUES, "end": NUMBERS, "confidence": NUMBERS | JSON_VALUES},
    ),
    max_size=3,
)
SHAPED = st.fixed_dictionaries(
    {"start": NUMBERS, "end": NUMBERS},
    optional={
        "events": WORDS | JSON_VALUES,
        "metadata": st.fixed_dictionaries({"channel": JSON_VALUES}) | JSON_VALUES,
        "text": JSON_VALUES,
        "confidence": NUMBERS | JSON_VALUES,
        "utterances": JSON_VALUES,
    },
)


@FUZZ
@given(STATES, SHAPED)
def test_json_of_the_right_shape_with_any_values(state: str, doc: dict[str, Any]) -> None:
    check(session(state), json.dumps(doc))  # NaN and Infinity go out as the engine might write them
    check(session(state), json.dumps({"utterance": doc, "requestid": "r"}))


@FUZZ
@given(st.binary(max_size=4096))
def test_binary_messages_are_refused(data: bytes) -> None:
    s = session("open")
    before = snapshot(s)
    with pytest.raises(EngineProtocolError):
        s.receive_binary(data)
    assert snapshot(s) == before


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # RecursionError from json
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        '{"start": 1' + "0" * 400 + ', "end": 2}',  # OverflowError converting to float
        '{"start": NaN, "end": 1}',
        '{"start": 0, "end": Infinity}',
        '{"start": 0, "end": -Infinity}',
        '{"start": 1e400, "end": 2}',
        '{"start": 0, "end": 1, "confidence": 1e999}',  # json reads 1e999 as inf
        '{"start": 0, "end": 1, "events": [{"word": "a", "start": -1e999}]}',
    ],
)
def test_refused_messages(text: str) -> None:
    s = session("open")
    with pytest.raises(EngineProtocolError):
        s.receive_text(text, 0.0)
    assert s.state is State.OPEN


def test_fields_of_the_wrong_type_are_ignored() -> None:
    event = session("open").receive_text(
        '{"start": 0, "end": 1, "events": 5, "confidence": "x", "metadata": {"channel": true}}', 0.0
    )
    assert isinstance(event, Utterance) and event.words == () and event.confidence is None
    assert event.channel == 0
    big = "1" + "0" * 400  # an int too large for a float
    words = session("open").receive_text(
        f'{{"start": 0, "end": 1, "events": [{{"word": "a", "start": {big}, "confidence": {big}}}]}}', 0.0
    )
    assert isinstance(words, Utterance) and words.words[0].start == 0.0 and words.words[0].confidence is None


def test_final_with_nan_is_kept_as_text() -> None:
    s = session("separated")
    final = s.receive_text('{"utterances": [], "score": NaN}', 0.0)
    assert final == Final('{"utterances": [], "score": NaN}') and s.state is State.DONE


def test_the_samples_are_valid() -> None:
    s = session("open")
    events = [s.receive_text(text, 0.0) for text in MESSAGES[:3]]
    assert all(isinstance(event, Utterance) and event.words for event in events)
    assert isinstance(s.receive_text(MESSAGES[3], 0.0), Final)
    assert isinstance(session("draining").receive_text("", 0.0), Separator)


# -- scrubbed audio: the binary messages of a stream that asked for scrubaudio -------------------------

WAV_HEADER = wav_stream_header(AUDIO.sample_rate, 2)
SCRUBBED_SAMPLES = [WAV_HEADER + bytes(range(256)) * 4, WAV_HEADER, bytes(1000), b"RIFF", b"RI"]


def scrubbing(state: str = "open") -> Session:
    s = Session(AUDIO, "NONE", channels=2, scrub_audio=True)
    s.send_audio(b"\x00" * 64000, 0)
    if state == "done":
        s.receive_text(json.dumps({"utterances": []}), 0.0)
    return s


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=2048), st.sampled_from(SCRUBBED_SAMPLES)), max_size=8))
def test_scrubbed_audio_of_any_bytes_gives_whole_frames_in_order_or_the_one_error(
    messages: list[bytes],
) -> None:
    s = scrubbing()
    position = 0
    for message in messages:
        try:
            piece = s.receive_binary(message)
        except EngineProtocolError:
            continue
        if piece is None:
            continue
        assert isinstance(piece, ScrubbedAudio) and piece.data
        assert piece.position == position and len(piece.data) % 4 == 0  # whole 16-bit stereo frames
        position += len(piece.data)
        for call, offset, length in s.call_segments(piece.position, len(piece.data)):
            assert 0 <= offset and length > 0 and offset + length <= len(piece.data) and call >= 0


@FUZZ
@given(st.binary(min_size=1, max_size=2048), st.lists(st.integers(0, 3000), max_size=6))
def test_a_header_and_audio_split_anywhere_give_the_same_audio(pcm: bytes, cuts: list[int]) -> None:
    whole = WAV_HEADER + pcm
    bounds = sorted({min(c, len(whole)) for c in cuts} | {0, len(whole)})
    s = scrubbing()
    got = b""
    for a, b in itertools.pairwise(bounds):
        piece = s.receive_binary(whole[a:b])
        got += piece.data if piece is not None else b""
    assert got == pcm[: len(pcm) - len(pcm) % 4]


@FUZZ
@given(mutated([WAV_HEADER.decode("latin-1") + "abcd" * 8]))
def test_mutated_headers_give_audio_or_the_one_error(text: str) -> None:
    s = scrubbing()
    try:
        s.receive_binary(text.encode("latin-1", "replace"))
    except EngineProtocolError:
        pass


def test_binary_after_the_final_is_refused() -> None:
    with pytest.raises(EngineProtocolError):
        scrubbing("done").receive_binary(bytes(4))

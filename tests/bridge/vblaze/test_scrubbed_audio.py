"""Scrubbed audio and the redaction tags, without I/O: headers, the binary messages, the call timeline,
the engine that refuses scrubaudio (bridge/vblaze/protocol.py, session.py)."""

from __future__ import annotations

import json
import random
import struct
import sys
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import AudioConfig, EngineConfig, RedactionConfig, ScrubRule
from bridge.errors import ConfigError, EngineProtocolError, EngineRejected, EngineUnavailable
from bridge.recording import Track
from bridge.vblaze.protocol import (
    Final,
    ScrubbedAudio,
    Separator,
    Session,
    Utterance,
    request_headers,
    wav_stream_header,
)
from bridge.vblaze.session import (
    CallSession,
    Connect,
    ConnectCause,
    ConnectFailed,
    LostCause,
    RecordAudio,
    ScrubAudioRefused,
    SleepUntil,
    refuses_scrub_audio,
)
from bridge.vblaze.session import State as SessionState
from tests.bridge.vblaze.test_session import BPS, Driver, lose, of
from tests.bridge.vblaze.vblaze_scripted import utt
from tests.fixtures.fuzz import FUZZ

assert sys.byteorder == "little"  # the property test builds 16-bit little-endian PCM with array("H")

AUDIO = AudioConfig()
ENGINE = EngineConfig(url="ws://engine.invalid/transcribe")
REDACT = RedactionConfig(text=True, audio=True, rules=(ScrubRule(regex="[0-9]{4,}"),))


def names(headers: list[tuple[str, str]]) -> dict[str, str]:
    return dict(headers)


def test_the_redaction_tags_go_with_every_stream_and_scrubaudio_can_be_left_out() -> None:
    headers = names(request_headers(ENGINE, AUDIO, "c@h", 1, REDACT))
    assert headers["X-Voci-Scrubtext"] == "true" and headers["X-Voci-Scrubaudio"] == "true"
    assert headers["X-Voci-Scruboutfmt"] == "wav"
    assert headers["X-Voci-Scrubconf"] == '[{"regex":"[0-9]{4,}","repl":"#"}]'
    without = names(request_headers(ENGINE, AUDIO, "c@h", 1, REDACT, scrub_audio=False))
    assert "X-Voci-Scrubaudio" not in without and "X-Voci-Scruboutfmt" not in without
    assert without["X-Voci-Scrubtext"] == "true"  # the transcript stays redacted
    plain = names(request_headers(ENGINE, AUDIO, "c@h"))
    assert not any(name.startswith("X-Voci-Scrub") for name in plain)


def test_engine_tags_may_not_set_the_redaction_tags() -> None:
    engine = EngineConfig.model_construct(**{**ENGINE.model_dump(), "tags": {"ScrubText": False}})
    with pytest.raises(ConfigError, match=r"engine.tags.scrubtext \(use redaction.text\)"):
        request_headers(engine, AUDIO, "c@h", 1, REDACT)


def stereo_scrubbing() -> Session:
    s = Session(AUDIO, "NONE", channels=2, scrub_audio=True)
    s.send_audio(bytes(8000), 0)
    return s


def test_a_first_message_with_a_streaming_wav_header_and_headerless_ones() -> None:
    s = stereo_scrubbing()
    pcm = bytes(range(200)) * 4
    assert s.receive_binary(wav_stream_header(8000, 2) + pcm[:6]) == ScrubbedAudio(pcm[:4], 0)
    assert s.receive_binary(pcm[6:]) == ScrubbedAudio(pcm[4:], 4)  # the odd bytes were kept
    bare = stereo_scrubbing()
    assert bare.receive_binary(pcm) == ScrubbedAudio(pcm, 0)  # no header at all
    assert bare.receive_binary(b"") is None  # an empty message is nothing


def test_a_header_with_extra_chunks_split_over_messages() -> None:
    header = wav_stream_header(8000, 2)
    fmt_end = 36
    listed = header[:fmt_end] + b"LIST" + struct.pack("<I", 5) + b"hello\x00" + header[fmt_end:]
    s = stereo_scrubbing()
    assert s.receive_binary(listed[:2]) is None  # "RI": maybe a header
    assert s.receive_binary(listed[2:30]) is None
    assert s.receive_binary(listed[30:] + bytes(8)) == ScrubbedAudio(bytes(8), 0)


@pytest.mark.parametrize(
    ("rate", "channels", "bits"), [(16000, 2, 16), (8000, 1, 16), (8000, 2, 8)], ids=["rate", "mono", "8 bit"]
)
def test_scrubbed_audio_in_another_format_is_refused_for_good(rate: int, channels: int, bits: int) -> None:
    header = bytearray(wav_stream_header(rate, channels))
    header[34:36] = struct.pack("<H", bits)
    s = stereo_scrubbing()
    with pytest.raises(EngineProtocolError, match="not the 2-channel 16-bit PCM at 8000 Hz"):
        s.receive_binary(bytes(header) + bytes(8))
    with pytest.raises(EngineProtocolError):
        s.receive_binary(bytes(8))  # the audio is unusable: every later message too


def test_without_scrubaudio_a_binary_message_stays_a_protocol_error() -> None:
    s = Session(AUDIO, "NONE")
    s.send_audio(bytes(1600), 0)
    with pytest.raises(EngineProtocolError, match="unexpected binary message"):
        s.receive_binary(bytes(1600))


def test_call_segments_follow_the_jumps_and_stop_at_what_was_sent() -> None:
    s = Session(AUDIO, "NONE", scrub_audio=True)
    s.send_audio(bytes(1000), 5000)
    s.send_audio(bytes(1000), 6000)  # contiguous
    s.send_audio(bytes(1000), 20000)  # a jump: audio dropped in between
    assert s.call_segments(0, 3000) == [(5000, 0, 2000), (20000, 2000, 1000)]
    assert s.call_segments(1500, 1000) == [(6500, 0, 500), (20000, 500, 500)]
    assert s.call_segments(2500, 9999) == [(20500, 0, 500)]  # clipped to the 3000 bytes sent


def scrub_session() -> tuple[CallSession, Driver]:
    call = CallSession(ENGINE, AUDIO, rng=random.Random(3), scrub_audio=True)
    return call, Driver(call)


def test_a_400_naming_scrubaudio_reconnects_at_once_without_it() -> None:
    refusal = EngineRejected(400, "invalid tag value: scrubaudio: not supported\n")
    assert refuses_scrub_audio(refusal)
    assert not refuses_scrub_audio(EngineRejected(400, "invalid tag value: samprate"))
    assert not refuses_scrub_audio(EngineRejected(403, "scrubaudio"))
    assert not refuses_scrub_audio(EngineUnavailable("scrubaudio"))
    call, d = scrub_session()
    call.start()
    actions = call.connect_failed(ConnectCause.REJECTED, refusal, d.now)
    assert actions == [ConnectFailed(ConnectCause.REJECTED), ScrubAudioRefused(), Connect()]
    assert not call.scrub_audio and call.scrub_audio_refused
    d.up()
    d.audio(1.0)
    assert call.receive(bytes(1600), d.now) == []  # a binary message is no scrubbed audio now
    assert call.stats.protocol_errors == 1
    # A second 400 (another tag) is a plain rejection: no loop.
    call2, d2 = scrub_session()
    call2.start()
    call2.connect_failed(ConnectCause.REJECTED, refusal, d2.now)
    last = call2.connect_failed(ConnectCause.REJECTED, EngineRejected(400, "scrubaudio"), d2.now)
    assert not of(Connect, last) and call2.result().scrub_audio_refused


def test_scrubbed_audio_lands_on_the_call_timeline_across_a_reconnect() -> None:
    call, d = scrub_session()
    call.start()
    d.up()
    d.audio(4.0)
    first = of(RecordAudio, call.receive(bytes(2 * BPS), d.now))
    assert first == [RecordAudio(0, bytes(2 * BPS))]
    d.message(utt(0.5, 3.0))  # confirms the audio up to 3.0 s
    d.now = lose(d).at
    call.timer_fired(d.now)
    d.up()
    d.pump()  # the replay from 3.0 s
    again = of(RecordAudio, call.receive(bytes(BPS), d.now))
    assert again == [RecordAudio(3 * BPS, bytes(BPS))]  # the new stream's byte 0 is the call's 3.0 s
    assert not of(SleepUntil, again)


# -- a property: the engine session and the recording's track together ---------------------------------

COURSE = st.lists(
    st.one_of(
        st.tuples(st.just("audio"), st.integers(1, 15)),  # frames of 100 ms arriving
        st.tuples(st.just("echo"), st.integers(0, 20000)),  # bytes of scrubbed audio coming back
        st.tuples(st.just("echo"), st.integers(0, 4000)),  # (twice: the engine answers more than it fails)
        st.tuples(st.just("utterance"), st.floats(0.0, 1.0)),  # an utterance ending that far into the stream
        st.tuples(st.just("lose"), st.just(0)),
    ),
    max_size=30,
)


def sample_at(position: int) -> int:
    """The call's audio: each sample says where it is (never 0, so silence stands out)."""
    return (position // 2) % 65535 + 1


@FUZZ
@given(COURSE)
def test_scrubbed_audio_lands_in_the_recording_where_it_was_said(course: list[tuple[str, float]]) -> None:
    """Whatever the order of audio, losses, replays and scrubbed audio coming back, the recording is the
    call's audio length, each sample the one said at that point of the call or silence (a gap)."""
    engine = EngineConfig(url="ws://engine.invalid/transcribe", buffer_seconds=3.0, replay_seconds=1.0)
    call = CallSession(engine, AUDIO, rng=random.Random(1), scrub_audio=True)
    track, recording = Track(block=2), bytearray()
    now, pushed, sent, returned = 100.0, 0, bytearray(), 0

    def write(parts: list[bytes | int]) -> None:
        for part in parts:
            recording.extend(bytes(part) if isinstance(part, int) else part)

    call.start()
    for kind, value in course:
        if call.state is SessionState.BACKING_OFF:
            call.timer_fired(now)
        if call.state is SessionState.CONNECTING:
            call.connected(now)
            sent, returned = bytearray(), 0
        if kind == "audio":
            frames = array("H", [sample_at(pushed + 2 * i) for i in range(800 * int(value))])
            call.audio(frames.tobytes(), now)
            pushed += len(frames) * 2
        elif kind == "echo":
            n = min(int(value), len(sent) - returned) // 2 * 2
            for action in of(RecordAudio, call.receive(bytes(sent[returned : returned + n]), now)):
                assert 0 <= action.position and action.position + len(action.data) <= pushed
                write(track.place(action.position, action.data))
            returned += n
        elif kind == "utterance" and sent:
            call.receive(utt(0.0, value * len(sent) / BPS), now)
        elif kind == "lose":
            call.stream_ended(LostCause.CLOSED, None, now)
        while (send := call.next_send()) is not None:
            sent += send.frame if send.chunk is not None else b""
            call.frame_written(send, now)
        now += 0.1
    write(track.finish(pushed))
    assert len(recording) == pushed
    samples = array("H", bytes(recording))
    silent = {i // 2 for start, end in track.gaps for i in range(start, end, 2)}
    for index, value in enumerate(samples):
        assert value == (0 if index in silent else sample_at(2 * index)), index


@pytest.mark.parametrize("separator", [True, False], ids=["separator", "no separator"])
def test_scrubbed_audio_around_the_separator_and_a_final_without_one(separator: bool) -> None:
    s = stereo_scrubbing()
    s.send_end()
    assert s.receive_binary(bytes(400)) == ScrubbedAudio(bytes(400), 0)
    assert isinstance(s.receive_text(utt(0.0, 0.5), 1.0), Utterance)
    if separator:
        assert isinstance(s.receive_text("", 1.0), Separator)
    assert s.receive_binary(bytes(400)) == ScrubbedAudio(bytes(400), 400)  # after the separator too
    assert isinstance(s.receive_text(json.dumps({"utterances": []}), 1.0), Final)
    with pytest.raises(EngineProtocolError):
        s.receive_binary(bytes(4))


def test_refused_binary_messages_are_logged_once_per_stream(caplog: pytest.LogCaptureFixture) -> None:
    call = CallSession(ENGINE, AUDIO, rng=random.Random(3))  # no scrubaudio asked
    d = Driver(call)
    call.start()
    d.up()
    d.audio(0.5)
    with caplog.at_level("DEBUG", logger="bridge.vblaze.session"):
        for _ in range(5):
            assert call.receive(bytes(1600), d.now) == []
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and call.stats.protocol_errors == 5

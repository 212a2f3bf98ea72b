"""The V-Blaze protocol core, checked with bytes and messages only (no sockets)."""

from __future__ import annotations

import json
import struct

import pytest
from pydantic import ValidationError

from bridge.config import AudioConfig, EngineConfig
from bridge.errors import ConfigError, EngineProtocolError
from bridge.vblaze.protocol import (
    Final,
    InvalidState,
    Separator,
    Session,
    State,
    Utterance,
    header_name,
    request_headers,
    wav_stream_header,
)
from tests.bridge.vblaze.vblaze_scripted import utt

AUDIO = AudioConfig()  # 8 kHz → 16000 bytes per second


# -- request headers ------------------------------------------------------------------------------


def test_headers_none_datahdr() -> None:
    headers = request_headers(EngineConfig(), AUDIO, "call-1@host")
    assert headers[:9] == [
        ("X-Voci-Realtime", "true"),
        ("X-Voci-Outstream", "true"),
        ("X-Voci-Output", "json"),
        ("X-Voci-Utterance_fmt", "json"),
        ("X-Voci-Datahdr", "NONE"),
        ("X-Voci-Encoding", "SPCM"),
        ("X-Voci-Samprate", "8000"),
        ("X-Voci-Sampwidth", "2"),
        ("X-Voci-Endian", "LITTLE"),
    ]
    as_dict = dict(headers)
    assert as_dict["X-Voci-Vadtype"] == "level"
    assert as_dict["X-Voci-Activitylevel"] == "175"
    assert as_dict["X-Voci-Uttmaxgap"] == "0"
    assert headers[-1] == ("X-Voci-Requestid", "call-1@host")
    assert len(as_dict) == len(headers)  # no header twice


def test_headers_wave_datahdr_and_tag_values() -> None:
    engine = EngineConfig(datahdr="WAVE", tags={"vadtype": "level", "diarize": False, "uttpadding": 0.25})
    headers = dict(request_headers(engine, AudioConfig(sample_rate=16000), "x"))
    assert headers["X-Voci-Datahdr"] == "WAVE"
    assert "X-Voci-Encoding" not in headers and "X-Voci-Samprate" not in headers
    assert headers["X-Voci-Diarize"] == "false"
    assert headers["X-Voci-Uttpadding"] == "0.25"


def test_headers_refuse_bridge_tags() -> None:
    with pytest.raises(ValidationError, match="output set by the bridge"):
        EngineConfig(tags={"Output": "text"})  # the config refuses it first ...
    engine = EngineConfig.model_construct(tags={"Output": "text"})
    with pytest.raises(ConfigError, match=r"engine\.tags\.output"):  # ... and the protocol again
        request_headers(engine, AUDIO, "x")


def test_header_name_spelling() -> None:
    assert header_name("utterance_fmt") == "X-Voci-Utterance_fmt"
    assert header_name("MODEL") == "X-Voci-Model"


# -- WAV header -----------------------------------------------------------------------------------


def test_wav_stream_header_bytes() -> None:
    header = wav_stream_header(8000)
    assert len(header) == 44
    assert header == (
        b"RIFF\xff\xff\xff\xffWAVE"
        b"fmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00\x80\x3e\x00\x00\x02\x00\x10\x00"
        b"data\xff\xff\xff\xff"
    )
    fields = struct.unpack("<4sI4s4sIHHIIHH4sI", wav_stream_header(16000))
    assert fields[7:11] == (16000, 32000, 2, 16)


# -- audio frames and states ----------------------------------------------------------------------


def test_wave_header_goes_with_first_frame_only() -> None:
    session = Session(AUDIO, "WAVE")
    first = session.send_audio(b"\x01\x00" * 800, 0)
    assert first[:4] == b"RIFF" and len(first) == 44 + 1600
    assert session.send_audio(b"\x02\x00" * 800, 1600) == b"\x02\x00" * 800
    assert session.send_end() == [b""]
    assert session.state is State.DRAINING


def test_none_datahdr_frames_are_raw_pcm() -> None:
    session = Session(AUDIO, "NONE")
    assert session.send_audio(b"\x01\x00" * 10, 0) == b"\x01\x00" * 10
    assert session.send_end() == [b""]


def test_end_without_audio_still_sends_the_wave_header() -> None:
    session = Session(AUDIO, "WAVE")
    frames = session.send_end()
    assert len(frames) == 2 and frames[0][:4] == b"RIFF" and frames[1] == b""


def test_wrong_state_raises() -> None:
    session = Session(AUDIO, "NONE")
    with pytest.raises(ValueError):
        session.send_audio(b"", 0)  # would end the stream
    session.send_end()
    with pytest.raises(InvalidState):
        session.send_audio(b"\x00\x00", 0)
    with pytest.raises(InvalidState):
        session.send_end()


# -- messages -------------------------------------------------------------------------------------


def test_utterance_separator_final_sequence() -> None:
    session = Session(AUDIO, "NONE")
    session.send_audio(b"\x00" * 32000, 0)
    event = session.receive_text(utt(0.5, 1.5), received_at=12.5)
    assert isinstance(event, Utterance)
    assert event.text == "hello there"
    assert [w.word for w in event.words] == ["hello", "there"]
    assert (event.start, event.end, event.confidence, event.channel) == (0.5, 1.5, 0.9, 0)
    assert event.received_at == 12.5
    assert event.raw["metadata"]["uttid"] == 1
    session.send_end()
    assert session.receive_text("", 13.0) == Separator()
    assert session.state is State.DRAINING
    final = session.receive_text(json.dumps({"utterances": [json.loads(utt(0.5, 1.5))]}), 14.0)
    assert isinstance(final, Final) and isinstance(final.raw, dict)
    assert session.state.name == "DONE"
    with pytest.raises(EngineProtocolError):
        session.receive_text(utt(2, 3), 15.0)


def test_wrapped_utterance_with_text_and_channel() -> None:
    session = Session(AUDIO, "NONE")
    doc = {"source": "stream", "utterance": {"start": 1, "end": 2, "text": "Hi.", "metadata": {"channel": 1}}}
    event = session.receive_text(json.dumps(doc), 0.0)
    assert isinstance(event, Utterance)
    assert (event.text, event.channel, event.words, event.confidence) == ("Hi.", 1, (), None)
    assert event.raw == doc


def test_text_final_and_empty_final() -> None:
    session = Session(AUDIO, "NONE")
    session.receive_text("", 0.0)
    assert session.receive_text("hello there\n", 0.0) == Final("hello there\n")
    session = Session(AUDIO, "NONE")
    session.receive_text("", 0.0)
    assert session.receive_text("", 0.0) == Final(None)


def test_final_without_separator_is_recognised() -> None:
    session = Session(AUDIO, "NONE")
    event = session.receive_text(json.dumps({"requestid": "x", "utterances": []}), 0.0)
    assert isinstance(event, Final) and session.state is State.DONE


@pytest.mark.parametrize(
    "text",
    ["{not json", "[1, 2]", '"a string"', json.dumps({"start": "zero", "end": 1}), json.dumps({"text": "x"})],
)
def test_garbage_raises_and_leaves_the_session_usable(text: str) -> None:
    session = Session(AUDIO, "NONE")
    with pytest.raises(EngineProtocolError):
        session.receive_text(text, 0.0)
    assert session.state is State.OPEN
    assert isinstance(session.receive_text(utt(0, 1), 0.0), Utterance)


def test_binary_message_is_a_protocol_error() -> None:
    with pytest.raises(EngineProtocolError):
        Session(AUDIO, "NONE").receive_binary(b"PK\x03\x04")


def test_malformed_word_events_are_skipped() -> None:
    session = Session(AUDIO, "NONE")
    doc = {"start": 0, "end": 1, "events": [{"word": "ok", "start": 0, "end": 1}, {"start": 0}, "x"]}
    event = session.receive_text(json.dumps(doc), 0.0)
    assert isinstance(event, Utterance) and [w.word for w in event.words] == ["ok"]


# -- timeline mapping -----------------------------------------------------------------------------


def test_times_map_onto_the_call_timeline() -> None:
    session = Session(AUDIO, "NONE")
    # This stream's audio starts 30 s into the call (a replay after a reconnect).
    session.send_audio(b"\x00" * 16000, 30 * 16000)
    session.send_audio(b"\x00" * 16000, 31 * 16000)
    assert session.call_start == 30.0
    event = session.receive_text(utt(0.25, 1.5), 0.0)
    assert isinstance(event, Utterance)
    assert (event.start, event.end) == (30.25, 31.5)
    assert event.words[0].start == 30.25
    assert event.raw["start"] == 0.25  # raw untouched


def test_times_map_across_a_jump_in_the_audio() -> None:
    session = Session(AUDIO, "NONE")
    session.send_audio(b"\x00" * 16000, 0)  # call 0..1 s
    session.send_audio(b"\x00" * 16000, 5 * 16000)  # call 5..6 s (4 s dropped)
    assert session.call_time(0.5) == 0.5
    assert session.call_time(1.5) == 5.5
    event = session.receive_text(utt(0.5, 1.5), 0.0)
    assert isinstance(event, Utterance) and (event.start, event.end) == (0.5, 5.5)

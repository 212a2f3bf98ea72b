"""Stereo streams (a SIPREC call's caller and agent on channels 0 and 1), checked with bytes only."""

from __future__ import annotations

import json
import struct

import pytest

from bridge.config import AudioConfig, EngineConfig
from bridge.vblaze.protocol import Session, Utterance, request_headers, stream_datahdr

AUDIO = AudioConfig()  # 8 kHz


@pytest.mark.parametrize("datahdr", ["NONE", "WAVE"])
def test_stereo_headers_always_use_wave(datahdr: str) -> None:
    headers = dict(request_headers(EngineConfig(datahdr=datahdr), AUDIO, "c;stream=0", channels=2))  # type: ignore[arg-type]
    assert headers["X-Voci-Datahdr"] == "WAVE"
    assert not {"X-Voci-Encoding", "X-Voci-Samprate", "X-Voci-Sampwidth"} & set(headers)
    assert headers["X-Voci-Requestid"] == "c;stream=0"


def test_mono_headers_keep_the_configured_datahdr() -> None:
    headers = dict(request_headers(EngineConfig(datahdr="NONE"), AUDIO, "c"))
    assert headers["X-Voci-Datahdr"] == "NONE" and headers["X-Voci-Encoding"] == "SPCM"
    assert stream_datahdr("NONE", 1) == "NONE" and stream_datahdr("NONE", 2) == "WAVE"


def test_stereo_session_header_and_timeline() -> None:
    session = Session(AUDIO, "NONE", channels=2)
    assert session.bytes_per_second == 8000 * 2 * 2
    first = session.send_audio(bytes(3200), 0)  # 100 ms of stereo
    channels, rate, byte_rate, block_align, bits = struct.unpack("<HIIHH", first[22:36])
    assert (channels, rate, byte_rate, block_align, bits) == (2, 8000, 32000, 4, 16)
    assert len(first) == 44 + 3200
    assert session.send_audio(bytes(3200), 3200) == bytes(3200)
    # A jump on the call's timeline (audio dropped in between) maps stream times across it.
    session.send_audio(bytes(3200), 32000 * 2)
    event = session.receive_text(
        json.dumps({"start": 0.25, "end": 0.4, "text": "hi", "metadata": {"channel": 1}}), 0.0
    )
    assert isinstance(event, Utterance)
    assert event.channel == 1
    assert event.start == pytest.approx(2.05) and event.end == pytest.approx(2.2)


def test_stereo_end_without_audio_sends_the_header() -> None:
    frames = Session(AUDIO, "NONE", channels=2).send_end()
    assert frames[0][:4] == b"RIFF" and struct.unpack("<H", frames[0][22:24])[0] == 2
    assert frames[-1] == b""

"""WAVE header parsing in any split, and sample decoding."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from standin.audio import ALAW_TABLE, ULAW_TABLE, AudioError, AudioFormat, SampleDecoder, WaveParser
from standin.tags import Encoding
from tests.fixtures.audio import speech_wav, tone, wav_bytes


def feed_all(parser: WaveParser, data: bytes, size: int) -> bytes:
    return b"".join(parser.feed(data[i : i + size]) for i in range(0, len(data), size))


@pytest.mark.parametrize("size", [1, 3, 43, 44, 45, 1000])
def test_header_split_anywhere(size: int) -> None:
    samples = tone(0.1)
    parser = WaveParser()
    assert feed_all(parser, wav_bytes(samples), size) == samples.astype("<i2").tobytes()
    assert parser.format == AudioFormat(Encoding.PCM, 8000, 2, 1)


@pytest.mark.parametrize("size_field", [0, 0xFFFFFFFF])
def test_streaming_size_fields(size_field: int) -> None:
    data = bytearray(wav_bytes(tone(0.1)))
    data[4:8] = data[40:44] = struct.pack("<I", size_field)
    parser = WaveParser()
    assert len(feed_all(parser, bytes(data) + b"\x00\x01" * 100, 7)) == 1600 + 200


def test_definite_data_size_drops_trailing_chunks_and_extra_chunks_are_skipped() -> None:
    wav = wav_bytes(tone(0.01))
    with_list = (
        wav[:36] + b"LIST" + struct.pack("<I", 5) + b"abcde\x00" + wav[36:] + b"LIST\x04\x00\x00\x00junk"
    )
    assert WaveParser().feed(with_list) == wav[44:]


def test_missing_riff_header_fails_early() -> None:
    with pytest.raises(AudioError, match="missing data WAVE header"):
        WaveParser().feed(b"\x00\x00")


def test_stereo_frames_split_mid_sample() -> None:
    left, right = tone(0.05), tone(0.05, freq=1000)
    payload = np.stack([left, right], axis=1).astype("<i2").tobytes()
    decoder = SampleDecoder(AudioFormat(Encoding.PCM, 8000, 2, 2))
    out = np.concatenate([decoder.decode(payload[i : i + 3]) for i in range(0, len(payload), 3)])
    assert np.array_equal(out[:, 0], left) and np.array_equal(out[:, 1], right)


def test_big_endian_and_8_bit_pcm() -> None:
    x = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    assert np.array_equal(
        SampleDecoder(AudioFormat(Encoding.PCM, 8000, 2, 1, True)).decode(x.astype(">i2").tobytes())[:, 0], x
    )
    assert list(SampleDecoder(AudioFormat(Encoding.PCM, 8000, 1, 1)).decode(bytes([128, 255, 0]))[:, 0]) == [
        0,
        32512,
        -32768,
    ]


def test_g711_tables_known_values() -> None:
    assert (
        ULAW_TABLE[0xFF] == 0
        and ULAW_TABLE[0x7F] == 0
        and ULAW_TABLE[0x00] == -32124
        and ULAW_TABLE[0x80] == 32124
    )
    assert (
        ALAW_TABLE[0xD5] == 8
        and ALAW_TABLE[0x55] == -8
        and ALAW_TABLE[0xAA] == 32256
        and ALAW_TABLE[0x2A] == -32256
    )


@pytest.mark.parametrize("encoding", ["u-law", "a-law"])
def test_g711_wav_decodes_like_sox(encoding: str, tmp_path: Path) -> None:
    src = speech_wav("one two three", encoding=encoding)
    linear = tmp_path / "linear.raw"
    subprocess.run(
        ["sox", str(src), "-t", "raw", "-e", "signed-integer", "-b", "16", str(linear)], check=True
    )
    parser = WaveParser()
    payload = feed_all(parser, src.read_bytes(), 4096)
    assert parser.format is not None and parser.format.sampwidth == 1
    ours = SampleDecoder(parser.format).decode(payload)[:, 0]
    assert np.array_equal(ours, np.frombuffer(linear.read_bytes(), dtype="<i2"))


def test_format_bounds() -> None:
    with pytest.raises(AudioError):
        AudioFormat(Encoding.PCM, 8000, 2, 6)
    with pytest.raises(AudioError):
        AudioFormat(Encoding.ULAW, 8000, 2, 1)

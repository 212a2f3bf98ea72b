"""The scrubbed audio of a stream on synthetic signals (standin/scrubber.py), and sox reading it back."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from standin.audio import ALAW_TABLE, ULAW_TABLE, AudioFormat, WaveParser
from standin.scrubber import STREAMING_SIZE, AudioScrubber, wave_header
from standin.tags import Encoding

RATE = 8000
PCM = AudioFormat(Encoding.PCM, RATE, 2, 1)


def tone(seconds: float, rate: int = RATE, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype("<i2")


def body(wav: bytes) -> bytes:
    parser = WaveParser()
    out = parser.feed(wav)
    assert parser.format is not None
    return out


def test_the_first_piece_carries_a_streaming_header_and_the_pieces_make_one_file() -> None:
    audio = tone(2.0).tobytes()
    scrubber = AudioScrubber(PCM, "wav", 0.3, 0.0, False)
    scrubber.feed(audio[:1001])  # any split, half a frame included
    scrubber.feed(audio[1001:])
    scrubber.add(0, [(0.5, 1.0)], [(0.4, 1.1)])
    pieces = [scrubber.release(4000), scrubber.release(4000), scrubber.release(12000), scrubber.finish()]
    assert pieces[1] == b"" and pieces[0].startswith(b"RIFF")
    assert struct.unpack("<I", pieces[0][4:8])[0] == STREAMING_SIZE
    out = np.frombuffer(body(b"".join(pieces)), dtype="<i2")
    source = np.frombuffer(audio, dtype="<i2")
    assert len(out) == len(source)
    assert not out[4000:8000].any()  # 0.5-1.0 s silenced
    assert np.array_equal(out[:4000], source[:4000]) and np.array_equal(out[8000:], source[8000:])
    assert scrubber.bytes_out == sum(len(p) for p in pieces)


def test_spans_closer_than_mindist_merge_and_the_offset_shifts_them() -> None:
    scrubber = AudioScrubber(PCM, "wav", 0.3, -0.1, False)
    scrubber.feed(tone(3.0).tobytes())
    scrubber.add(0, [(1.0, 1.2), (1.4, 1.6), (2.5, 2.6)], [])
    out = np.frombuffer(body(scrubber.finish()), dtype="<i2")
    silent = np.flatnonzero(out == 0)
    runs = np.split(silent, np.flatnonzero(np.diff(silent) != 1) + 1)
    long_runs = [(round(r[0] / RATE, 2), round((r[-1] + 1) / RATE, 2)) for r in runs if len(r) > 40]
    assert long_runs == [(0.9, 1.5), (2.4, 2.5)]


def test_scrubsil_blanks_everything_but_the_words() -> None:
    scrubber = AudioScrubber(PCM, "wav", 0.0, 0.0, True)
    scrubber.feed(tone(2.0).tobytes())
    scrubber.add(0, [], [(0.5, 0.75), (1.0, 1.25)])
    out = np.frombuffer(body(scrubber.finish()), dtype="<i2")
    loud = np.abs(out.astype(np.int32)) > 0
    assert not loud[:4000].any() and loud[4000:6000].sum() > 1900
    assert not loud[6000:8000].any() and loud[8000:10000].sum() > 1900 and not loud[10000:].any()


@pytest.mark.parametrize(
    ("encoding", "table", "zero"), [(Encoding.ULAW, ULAW_TABLE, 0xFF), (Encoding.ALAW, ALAW_TABLE, 0xD5)]
)
def test_g711_comes_back_in_its_own_law_with_its_own_silence(
    encoding: Encoding, table: np.ndarray, zero: int
) -> None:
    fmt = AudioFormat(encoding, RATE, 1, 1)
    codes = bytes(range(256)) * 40  # 1.28 s
    scrubber = AudioScrubber(fmt, "wav", 0.3, 0.0, False)
    scrubber.feed(codes)
    scrubber.add(0, [(0.25, 0.5)], [])
    wav = scrubber.finish()
    assert struct.unpack("<H", wav[20:22])[0] == (7 if encoding is Encoding.ULAW else 6)
    out = body(wav)
    assert out[:2000] == codes[:2000] and out[4000:] == codes[4000:]
    assert set(out[2000:4000]) == {zero} and table[zero] in (0, 8, -8)


def test_stereo_spans_silence_their_own_channel_and_big_endian_input_comes_out_little() -> None:
    fmt = AudioFormat(Encoding.PCM, RATE, 2, 2, big_endian=True)
    left, right = tone(1.0), tone(1.0, amplitude=4000)
    interleaved = np.stack([left, right], axis=1).astype(">i2").tobytes()
    scrubber = AudioScrubber(fmt, "wav", 0.0, 0.0, False)
    scrubber.feed(interleaved)
    scrubber.add(1, [(0.0, 0.5)], [])
    out = np.frombuffer(body(scrubber.finish()), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(out[:, 0], left)
    assert not out[:4000, 1].any() and np.array_equal(out[4000:, 1], right[4000:])


@given(st.lists(st.integers(1, 3000), min_size=1, max_size=20), st.integers(0, 16000))
def test_every_frame_goes_out_once_in_order_whatever_the_splits(splits: list[int], early: int) -> None:
    audio = tone(1.0).tobytes()
    scrubber = AudioScrubber(PCM, "wav", 0.3, 0.0, False)
    pieces, at = [], 0
    for size in splits:
        scrubber.feed(audio[at : at + size])
        at += size
        pieces.append(scrubber.release(early))
    scrubber.feed(audio[at:])
    pieces.append(scrubber.finish())
    assert body(b"".join(pieces)) == audio


def test_mp3_at_the_asked_bit_rate(tmp_path: Path) -> None:
    scrubber = AudioScrubber(PCM, "mp3-32", 0.3, 0.0, False)
    scrubber.feed(tone(4.0).tobytes())
    scrubber.add(0, [(1.0, 3.0)], [])
    data = scrubber.release(16000) + scrubber.finish()
    assert 14_000 <= len(data) <= 18_000  # 4 s at 32 kbit/s
    assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    path = tmp_path / "out.mp3"
    path.write_bytes(data)
    with av.open(str(path)) as container:  # PyAV, which faster-whisper decodes with; sox lacks mp3 here
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels, stream.codec_context.name) == (8000, 1, "mp3float")
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)]) * 32768.0
    rms = [np.sqrt(np.mean(pcm[i * 4000 : (i + 1) * 4000] ** 2)) for i in range(len(pcm) // 4000)]
    # 1.0-3.0 s silenced; the decoder lags the encoder by a few hundred samples, so 1.0-1.5 s is mixed
    assert min(rms[:2]) > 1000 and max(rms[3:6]) < 100 and min(rms[7:8]) > 1000, rms


def test_sox_reads_the_streamed_wav(tmp_path: Path) -> None:
    if shutil.which("sox") is None:
        pytest.skip("sox not installed")
    scrubber = AudioScrubber(PCM, "wav", 0.3, 0.0, False)
    scrubber.feed(tone(1.0).tobytes())
    path = tmp_path / "out.wav"
    path.write_bytes(scrubber.release(4000) + scrubber.finish())
    stat = subprocess.run(["sox", str(path), "-n", "stat"], capture_output=True, text=True, timeout=30)
    assert stat.returncode == 0, stat.stderr
    assert "Length (seconds):      1.000000" in stat.stderr, stat.stderr


def test_the_header_describes_the_format() -> None:
    header = wave_header(AudioFormat(Encoding.PCM, 16000, 2, 2))
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt " and header[36:40] == b"data"
    assert struct.unpack("<HHIIHH", header[20:36]) == (1, 2, 16000, 64000, 4, 16)

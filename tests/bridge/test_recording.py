"""Redacted recordings (bridge/recording.py): the timeline rules without I/O, the file's steps, and a
real process killed between them (SIGKILL at the crash points ``recording.write`` and
``recording.before_rename``): never a file under the final name unless it is complete."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.recording import (
    HEADER_BYTES,
    PARTIAL_SUFFIX,
    STREAMING_SIZE,
    CallRecording,
    RecordingError,
    RecordingFile,
    RecordingResult,
    Track,
    file_name,
    wav_header,
)
from bridge.webhook import crashpoint
from tests.fixtures.fuzz import FUZZ

RATE = 8000
BPS = RATE * 2


def test_the_header_says_streaming_until_the_length_is_known() -> None:
    streaming = wav_header(None, RATE, 1)
    assert len(streaming) == HEADER_BYTES and streaming[:4] == b"RIFF" and streaming[8:16] == b"WAVEfmt "
    assert int.from_bytes(streaming[4:8], "little") == STREAMING_SIZE
    assert int.from_bytes(streaming[40:44], "little") == STREAMING_SIZE
    final = wav_header(3200, RATE, 2)
    assert (
        int.from_bytes(final[4:8], "little") == 36 + 3200 and int.from_bytes(final[40:44], "little") == 3200
    )
    assert int.from_bytes(final[22:24], "little") == 2 and int.from_bytes(final[32:34], "little") == 4


def test_file_names_are_safe_and_apart() -> None:
    a, b = file_name("a/b@h"), file_name("a_b@h")
    assert "/" not in a and a != b and a.startswith("a_b@h-")
    assert not file_name("../../etc").startswith(".") and "/" not in file_name("../../etc")
    assert file_name("c@h", 1).endswith("-stream1") and file_name("").startswith("call-")


def test_the_track_skips_replays_and_fills_holes_with_silence() -> None:
    track = Track(block=2)
    assert track.place(0, b"aa" * 5) == [b"aa" * 5]
    assert track.place(4, b"bb" * 4) == [b"bb"]  # 4..10 already written: only 10..12 is new
    assert track.place(2, b"cc") == [] and track.skipped == 2 * 4 - 2 + 2
    assert track.place(20, b"dd") == [8, b"dd"]  # 12..20 never came back: silence, a gap
    assert track.gaps == [(12, 20)]
    assert track.finish(30) == [8] and track.gaps == [(12, 20), (22, 30)]
    assert track.written == 30 and track.finish(30) == []


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 200)), max_size=20), st.integers(0, 800))
def test_the_track_writes_each_byte_of_the_timeline_once(pieces: list[tuple[int, int]], total: int) -> None:
    """Whatever order and overlap the pieces come in, the file is the timeline from 0, each call byte
    once: the first piece that covered it, else silence (and a gap)."""
    track = Track(block=2)
    out: list[int] = []  # what the file gets, byte by byte, as the byte's call position or -1 (silence)
    for position, length in pieces:
        data = bytes((position + i) % 251 for i in range(length))
        for part in track.place(position, data):
            out += [-1] * part if isinstance(part, int) else list(part)
    for part in track.finish(total):
        out += [-1] * part if isinstance(part, int) else list(part)
    assert len(out) == track.written >= total - total % 2
    silent = {i for start, end in track.gaps for i in range(start, end)}
    for i, value in enumerate(out):
        assert (value == -1) == (i in silent)
        if value != -1:
            assert value == i % 251  # the byte of its own call position


def test_a_file_is_written_renamed_and_hashed(tmp_path: Path) -> None:
    rec = CallRecording(RecordingFile(tmp_path / "rec", "c", RATE, 1))
    rec.audio(0, bytes(range(256)) * 25)
    rec.audio(3200, b"\x01\x00" * 1600)  # 3200..6400, which the file has: skipped (a replay)
    assert not (tmp_path / "rec" / "c.wav").exists() and (tmp_path / "rec" / "c.wav.partial").exists()
    result, written = rec.finish(3 * BPS, refused=False)
    assert result is RecordingResult.WRITTEN and written is not None
    assert (
        written.path == tmp_path / "rec" / "c.wav" and not written.path.with_suffix(".wav.partial").exists()
    )
    body = written.path.read_bytes()
    assert written.size == len(body) and written.sha256 == hashlib.sha256(body).hexdigest()
    with wave.open(str(written.path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (
            1,
            2,
            RATE,
            3 * RATE,
        )
    assert rec.track.gaps == [(6400, 3 * BPS)] and rec.track.skipped == 3200
    assert body[HEADER_BYTES : HEADER_BYTES + 6400] == bytes(range(256)) * 25
    assert body[HEADER_BYTES + 6400 :] == bytes(3 * BPS - 6400)


def test_an_engine_refusal_leaves_no_file(tmp_path: Path) -> None:
    rec = CallRecording(RecordingFile(tmp_path, "c", RATE, 1))
    rec.audio(0, bytes(3200))
    assert rec.finish(BPS, refused=True) == (RecordingResult.ENGINE_REFUSED, None)
    assert list(tmp_path.iterdir()) == []
    assert RecordingResult.ENGINE_REFUSED.reason == "engine refused scrubaudio"


def test_a_write_error_turns_the_recording_off_and_the_call_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    rec = CallRecording(RecordingFile(blocker / "rec", "c", RATE, 1))
    with pytest.raises(RecordingError):
        rec.audio(0, bytes(320))
    rec.audio(320, bytes(320))  # off now: no second error
    assert rec.finish(BPS, refused=False) == (RecordingResult.WRITE_FAILED, None)
    assert rec.error is not None and "cannot write" in rec.error
    with pytest.raises(RecordingError, match="only wav"):
        RecordingFile(tmp_path, "c", RATE, 1, "mp3")


# -- a real process killed between the steps -------------------------------------------------------

CHILD = """
import sys
from bridge.recording import CallRecording, RecordingFile
rec = CallRecording(RecordingFile(sys.argv[1], "call", 8000, 1))
for i in range(10):
    rec.audio(i * 1600, bytes([i + 1]) * 1600)
print(rec.finish(16000, refused=False)[0], flush=True)
"""


def run_child(directory: Path, crash: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != crashpoint.ENV}
    if crash is not None:
        env[crashpoint.ENV] = crash
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(directory)], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("crash", ["recording.write", "recording.write:7", "recording.before_rename"])
def test_killed_mid_write_leaves_only_a_partial_file(tmp_path: Path, crash: str) -> None:
    done = run_child(tmp_path, crash)
    assert done.returncode == -9, done.stderr
    assert not (tmp_path / "call.wav").exists()
    (partial,) = tmp_path.iterdir()
    assert partial.name == "call.wav" + PARTIAL_SUFFIX
    body = partial.read_bytes()
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"
    if crash.startswith("recording.write"):
        # Still the streaming header: a reader sees a recording of unknown length, never a finished one.
        assert int.from_bytes(body[40:44], "little") == STREAMING_SIZE
        assert len(body) < HEADER_BYTES + 16000
    else:
        assert len(body) == HEADER_BYTES + 16000  # complete and fsynced, only the rename is missing
    again = run_child(tmp_path, None)  # the next run of the same call writes it whole
    assert again.returncode == 0 and again.stdout.strip() == "written", again.stderr
    with wave.open(str(tmp_path / "call.wav")) as w:
        assert w.getnframes() == 8000
    assert not (tmp_path / ("call.wav" + PARTIAL_SUFFIX)).exists()


def test_the_metric_labels_are_the_results_and_other() -> None:
    from bridge import metrics

    assert metrics.RECORDING_RESULTS == (*(r.value for r in RecordingResult), metrics.OTHER)
    assert metrics.bounded("disk on fire", metrics.RECORDING_RESULTS) == metrics.OTHER

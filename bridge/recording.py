"""Redacted call recordings: the engine's scrubbed audio of a call, one WAV file per call (or audio stream).

The bridge never writes the audio it receives from the caller: a recording is made only of what the
engine sends back with ``scrubaudio`` (`bridge.vblaze.session.RecordAudio`), so it carries the engine's
redaction (config: ``recording.enabled`` needs ``redaction.audio``).

The rules, without I/O:

- `Track` places scrubbed audio on the call's timeline (byte positions, `bridge/call.py`). The file holds
  the timeline from byte 0 on, contiguous: audio at or behind what the file already has (a replayed
  stream after a reconnect repeats the audio since the last utterance) is skipped, so nothing is written
  twice; a hole (audio the engine never sent back scrubbed: a stream lost before it released it, audio
  never replayed) is written as silence and recorded as a gap. `Track.finish(total)` pads the file with
  silence to the call's audio length (a gap too), so the recording is exactly as long as the call's audio.
- `wav_header(data_bytes, ...)` is the 44-byte PCM header: sizes 0xFFFFFFFF while the length is not
  known (the file being written), the real ones once it is.

`RecordingFile` is the thin file part. The file is created at the first audio as ``NAME.wav.partial`` in
``recording.directory`` (a streaming header, sizes 0xFFFFFFFF: recognisably unfinished) and appended to
as the audio arrives; `close()` (blocking, run it in a thread) fixes the header's sizes, fsyncs and closes
the file, renames it to ``NAME.wav`` with `os.replace`, fsyncs the directory and returns the final file's
size and sha256. A process killed at any step leaves either no ``NAME.wav`` or the complete one; only a
``.partial`` file can be left behind (tests/bridge/test_recording.py kills a real process between the
steps at the crash points ``recording.write`` and ``recording.before_rename``). `discard()` removes the
partial file (the recording failed). Errors of the file system raise `RecordingError`.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from bridge.errors import BridgeError
from bridge.webhook import crashpoint

STREAMING_SIZE = 0xFFFFFFFF  # RIFF and data sizes of a WAV header whose length is not known yet
HEADER_BYTES = 44
SAMPLE_WIDTH = 2  # 16-bit PCM, as the bridge sends it to the engine (and the engine sends it back)
PARTIAL_SUFFIX = ".partial"
SILENCE_CHUNK = 64 * 1024  # silence is written in pieces of this many bytes
HASH_CHUNK = 1024 * 1024
MAX_NAME_CHARS = 100


class RecordingError(BridgeError):
    """A recording file could not be written (the call goes on; the recording failed)."""


class RecordingResult(StrEnum):
    """How a call's recording ended (a metrics label value: vblaze_bridge_recordings_total{result})."""

    WRITTEN = "written"  # the file is complete and in place
    ENGINE_REFUSED = "engine_refused"  # the engine refused scrubaudio (400 naming it): nothing to record
    WRITE_FAILED = "write_failed"  # the file system failed (logged with the error)
    CANCELLED = "cancelled"  # the call was torn down (forced stop) before its recording was finished

    @property
    def reason(self) -> str | None:
        """The `call.ended` recording's ``reason`` for a failure."""
        return _REASONS.get(self)


_REASONS = {
    RecordingResult.ENGINE_REFUSED: "engine refused scrubaudio",
    RecordingResult.WRITE_FAILED: "write failed",
    RecordingResult.CANCELLED: "call cancelled",
}


def wav_header(data_bytes: int | None, sample_rate: int, channels: int) -> bytes:
    """A 44-byte 16-bit PCM WAV header; ``data_bytes`` None: the streaming sizes (0xFFFFFFFF)."""
    block = channels * SAMPLE_WIDTH
    data = STREAMING_SIZE if data_bytes is None else data_bytes
    riff = STREAMING_SIZE if data_bytes is None else 36 + data_bytes
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, 8 * SAMPLE_WIDTH)
    return b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", data)


def file_name(call_id: str, stream: int | None = None) -> str:
    """A safe file name (without ``.wav``) for a call's recording: the call id's harmless characters and
    a short hash of the whole id (two call ids that differ only in other characters stay apart)."""
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9@._-]", "_", call_id)[:MAX_NAME_CHARS].lstrip(".") or "call"
    return f"{safe}-{digest}" + ("" if stream is None else f"-stream{stream}")


@dataclass
class Track:
    """Where the recording is on the call's timeline (see the module docstring). Bytes, whole frames."""

    block: int  # bytes per frame (2 per channel)
    written: int = 0  # call bytes the file holds, from 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [start, end) call bytes written as silence
    skipped: int = 0  # bytes received that the file already had (replays)

    def place(self, position: int, data: bytes) -> list[bytes | int]:
        """What to append for ``data`` at call byte ``position``: bytes, or an int of silent bytes."""
        lead = -position % self.block  # never the case for whole frames; then drop to the next frame
        position, data = position + lead, data[lead:]
        end = position + len(data) - len(data) % self.block
        out: list[bytes | int] = []
        if end <= self.written:
            self.skipped += len(data)
            return out
        if position > self.written:
            out.append(self._silence(position))
        skip = self.written - position if position < self.written else 0
        self.skipped += skip
        out.append(data[skip : end - position])
        self.written = end
        return out

    def finish(self, total: int) -> list[bytes | int]:
        """Silence to ``total`` bytes (the call's audio length), if the file is shorter."""
        total -= total % self.block
        return [self._silence(total)] if total > self.written else []

    def _silence(self, until: int) -> int:
        start, length = self.written, until - self.written
        if self.gaps and self.gaps[-1][1] == start:
            self.gaps[-1] = (self.gaps[-1][0], until)
        else:
            self.gaps.append((start, until))
        self.written = until
        return length


@dataclass(frozen=True)
class Written:
    """A finished recording: its path, size in bytes (header included) and sha256 (hex)."""

    path: Path
    size: int
    sha256: str
    data_bytes: int


class RecordingFile:
    """One WAV file being written (see the module docstring). Not thread-safe: one owner at a time."""

    def __init__(
        self, directory: str | Path, name: str, sample_rate: int, channels: int, fmt: str = "wav"
    ) -> None:
        if fmt != "wav":
            raise RecordingError(f"recording format {fmt!r}: only wav is written")
        self.directory = Path(directory)
        self.path = self.directory / f"{name}.{fmt}"
        self.partial = self.directory / f"{name}.{fmt}{PARTIAL_SUFFIX}"
        self.sample_rate = sample_rate
        self.channels = channels
        self.data_bytes = 0
        self._file: BinaryIO | None = None

    def append(self, parts: list[bytes | int]) -> None:
        """Append audio (bytes) and silence (ints: that many zero bytes); creates the file at first."""
        if not parts:
            return
        try:
            handle = self._file if self._file is not None else self._open()
            for part in parts:
                if isinstance(part, int):
                    for start in range(0, part, SILENCE_CHUNK):
                        handle.write(bytes(min(SILENCE_CHUNK, part - start)))
                    self.data_bytes += part
                else:
                    half = len(part) // 2
                    handle.write(part[:half])
                    crashpoint.reached("recording.write")
                    handle.write(part[half:])
                    self.data_bytes += len(part)
            handle.flush()  # a process killed later loses none of it (one write per piece of audio)
        except OSError as exc:
            raise RecordingError(f"{self.partial}: cannot write: {exc.strerror or exc}") from exc

    def _open(self) -> BinaryIO:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.partial, "wb")  # held open across appends; closed by close/discard
        self._file = handle
        handle.write(wav_header(None, self.sample_rate, self.channels))
        handle.flush()
        return handle

    def close(self) -> Written:
        """Fix the sizes, fsync, close, rename into place, fsync the directory; the final file's facts."""
        try:
            handle = self._file if self._file is not None else self._open()
            handle.flush()
            handle.seek(0)
            handle.write(wav_header(self.data_bytes, self.sample_rate, self.channels))
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            self._file = None
            crashpoint.reached("recording.before_rename")
            os.replace(self.partial, self.path)
            fsync_directory(self.directory)
            size, digest = sha256_of(self.path)
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot finish: {exc.strerror or exc}") from exc
        return Written(self.path, size, digest, self.data_bytes)

    def discard(self) -> None:
        """Close and remove the partial file, if any (the recording failed)."""
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
            self.partial.unlink(missing_ok=True)
        except OSError as exc:
            raise RecordingError(f"{self.partial}: cannot remove: {exc.strerror or exc}") from exc


class CallRecording:
    """One recording of a call (or of one audio stream): a `Track` and its `RecordingFile`. A write
    error turns it off (`failed`) for the rest of the call: the call goes on."""

    def __init__(self, file: RecordingFile) -> None:
        self.file = file
        self.track = Track(block=SAMPLE_WIDTH * file.channels)
        self.failed: RecordingResult | None = None
        self.error: str | None = None

    @property
    def bytes_per_second(self) -> int:
        return self.file.sample_rate * SAMPLE_WIDTH * self.file.channels

    def audio(self, position: int, data: bytes) -> None:
        """Scrubbed audio at call byte ``position``; raises `RecordingError` once, when writing fails."""
        if self.failed is not None:
            return
        try:
            self.file.append(self.track.place(position, data))
        except RecordingError as exc:
            self._fail(str(exc))
            raise

    def finish(self, total: int, refused: bool) -> tuple[RecordingResult, Written | None]:
        """End the recording at ``total`` call bytes (blocking: run it in a thread). ``refused``: the
        engine refused scrubaudio, so there is nothing to keep."""
        if refused and self.failed is None:
            self.failed = RecordingResult.ENGINE_REFUSED
        if self.failed is not None:
            self._discard()
            return self.failed, None
        try:
            self.file.append(self.track.finish(total))
            return RecordingResult.WRITTEN, self.file.close()
        except RecordingError as exc:
            self._fail(str(exc))
            self._discard()
            return RecordingResult.WRITE_FAILED, None

    def cancel(self) -> None:
        """The call was torn down: drop the partial file (quick; no fsync, no rename)."""
        self.failed = RecordingResult.CANCELLED
        self._discard()

    def _fail(self, error: str) -> None:
        self.failed = RecordingResult.WRITE_FAILED
        self.error = error

    def _discard(self) -> None:
        try:
            self.file.discard()
        except RecordingError as exc:
            self.error = self.error or str(exc)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> tuple[int, str]:
    """A file's size and sha256 (hex), read in pieces."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()

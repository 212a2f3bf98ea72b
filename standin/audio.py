"""Audio input of one stream: an incremental RIFF/WAVE header parser and sample decoders. No I/O.

`WaveParser.feed(data)` accepts the byte stream split anywhere (one byte at a time included) and
returns the audio payload bytes; `format` is set once the `fmt ` chunk and the `data` chunk header
have been read. Streaming writers put 0 or 0xFFFFFFFF in the RIFF and data size fields: both mean
"until the end of the stream". A definite data size is honoured and bytes after it (trailing chunks)
are dropped. `feed` raises `AudioError` and nothing else, whatever the bytes, and the same in any
split (tests/standin/test_standin_fuzz.py).

`SampleDecoder.decode(data)` turns payload bytes of any length into an int16 array of shape
(frames, channels), carrying a partial frame over to the next call. Linear PCM of 1 (unsigned),
2, 3 or 4 bytes, little or big endian, µ-law and A-law are decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from standin.tags import Encoding

Int16Array = npt.NDArray[np.int16]

MAX_HEADER_BYTES = 1 << 20  # everything before the data chunk
STREAMING_SIZES = (0, 0xFFFFFFFF)
MIN_SAMPRATE = 2000
MAX_SAMPRATE = 192000

WAVE_FORMAT_TAGS = {Encoding.PCM: 1, Encoding.ALAW: 6, Encoding.ULAW: 7}  # fmt chunk format tags, both ways
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


class AudioError(ValueError):
    """The audio cannot be decoded; the message goes into the result's `warning`."""


@dataclass(frozen=True)
class AudioFormat:
    encoding: Encoding
    samprate: int
    sampwidth: int
    channels: int
    big_endian: bool = False

    def __post_init__(self) -> None:
        if not MIN_SAMPRATE <= self.samprate <= MAX_SAMPRATE:
            raise AudioError(f"unsupported sample rate {self.samprate}")
        if self.channels not in (1, 2):
            raise AudioError(f"unsupported channel count {self.channels} (mono or stereo)")
        if self.encoding is Encoding.PCM and self.sampwidth not in (1, 2, 3, 4):
            raise AudioError(f"unsupported linear PCM sample width {self.sampwidth}")
        if self.encoding is not Encoding.PCM and self.sampwidth != 1:
            raise AudioError(f"{self.encoding.value} needs a sample width of 1, not {self.sampwidth}")

    @property
    def frame_bytes(self) -> int:
        return self.sampwidth * self.channels

    @property
    def bytes_per_second(self) -> int:
        return self.frame_bytes * self.samprate


class _State(IntEnum):
    RIFF = 0
    CHUNK_HEADER = 1
    FMT_BODY = 2
    SKIP = 3
    DATA = 4
    TRAILER = 5


class WaveParser:
    """Incremental WAVE reader: feed bytes, get payload bytes back."""

    def __init__(self) -> None:
        self._state = _State.RIFF
        self._buf = bytearray()
        self._need = 12
        self._skip = 0
        self._data_left: int | None = None  # None: until the end of the stream
        self._header_bytes = 0
        self._fmt: AudioFormat | None = None
        self.format: AudioFormat | None = None  # set when the data chunk starts

    def feed(self, data: bytes) -> bytes:
        """Consume `data`; return the audio payload it contained (may be empty). Raises `AudioError`."""
        if self._state is _State.DATA:
            return self._take_data(data)
        if self._state is _State.TRAILER:
            return b""
        self._buf += data
        while self._state not in (_State.DATA, _State.TRAILER):
            if self._state is _State.SKIP:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                self._count_header(n)
                if self._skip:
                    return b""
                self._state, self._need = _State.CHUNK_HEADER, 8
                continue
            if len(self._buf) < self._need:
                if self._state is _State.RIFF and self._buf and not b"RIFF".startswith(bytes(self._buf[:4])):
                    raise AudioError("missing data WAVE header")
                return b""
            chunk = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            self._count_header(len(chunk))
            self._step(chunk)
        rest = bytes(self._buf)
        self._buf.clear()
        return self._take_data(rest) if self._state is _State.DATA else b""

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise AudioError(f"WAVE header longer than {MAX_HEADER_BYTES} bytes")

    def _step(self, chunk: bytes) -> None:
        if self._state is _State.RIFF:
            if chunk[:4] != b"RIFF" or chunk[8:12] != b"WAVE":
                raise AudioError("missing data WAVE header")
            self._state, self._need = _State.CHUNK_HEADER, 8
        elif self._state is _State.CHUNK_HEADER:
            ident, size = chunk[:4], struct.unpack("<I", chunk[4:8])[0]
            if ident == b"fmt ":
                if not 16 <= size <= 1024:
                    raise AudioError(f"bad WAVE fmt chunk size {size}")
                self._state, self._need = _State.FMT_BODY, size + (size & 1)
            elif ident == b"data":
                if self._fmt is None:
                    raise AudioError("WAVE data chunk before fmt chunk")
                self.format = self._fmt
                self._data_left = None if size in STREAMING_SIZES else size
                self._state = _State.DATA
            else:
                if size in STREAMING_SIZES:
                    raise AudioError(f"WAVE chunk {ident!r} of unknown size before the data chunk")
                self._state, self._skip = _State.SKIP, size + (size & 1)
        elif self._state is _State.FMT_BODY:
            self._fmt = _parse_fmt(chunk)
            self._state, self._need = _State.CHUNK_HEADER, 8

    def _take_data(self, data: bytes) -> bytes:
        if self._data_left is None:
            return data
        out = data[: self._data_left]
        self._data_left -= len(out)
        if self._data_left == 0:
            self._state = _State.TRAILER
        return out


def _parse_fmt(body: bytes) -> AudioFormat:
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(body) < 26:
            raise AudioError("WAVE_FORMAT_EXTENSIBLE fmt chunk too short")
        tag = struct.unpack("<H", body[24:26])[0]
    encodings = {number: encoding for encoding, number in WAVE_FORMAT_TAGS.items()}
    if tag not in encodings:
        raise AudioError(f"unsupported WAVE format tag {tag}")
    width = block_align // channels if channels else 0
    if width * 8 < bits or width == 0:
        width = (bits + 7) // 8
    return AudioFormat(encodings[tag], rate, width, channels)


def _ulaw_table() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + 0x84) << exponent
    magnitude -= 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_TABLE = _ulaw_table()
ALAW_TABLE = _alaw_table()


class SampleDecoder:
    """Payload bytes in any split → int16 samples, shape (frames, channels)."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._carry = b""

    def decode(self, data: bytes) -> Int16Array:
        fmt = self.format
        data = self._carry + data
        usable = len(data) - len(data) % fmt.frame_bytes
        self._carry = data[usable:]
        raw = np.frombuffer(data, dtype=np.uint8, count=usable)
        if fmt.encoding is Encoding.ULAW:
            samples = ULAW_TABLE[raw]
        elif fmt.encoding is Encoding.ALAW:
            samples = ALAW_TABLE[raw]
        elif fmt.sampwidth == 2:  # the usual case, read as it lies
            samples = np.frombuffer(data, dtype=">i2" if fmt.big_endian else "<i2", count=usable // 2)
        elif fmt.sampwidth == 1:
            samples = ((raw.astype(np.int16) - 128) << 8).astype(np.int16)
        else:
            per = raw.reshape(-1, fmt.sampwidth)
            hi, lo = (per[:, 0], per[:, 1]) if fmt.big_endian else (per[:, -1], per[:, -2])
            samples = ((hi.astype(np.uint16) << 8) | lo).view(np.int16)
        return samples.reshape(-1, fmt.channels)

    @property
    def pending_bytes(self) -> int:
        return len(self._carry)

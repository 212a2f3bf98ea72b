"""The scrubbed audio of one stream (``scrubaudio=true``): held, silenced, encoded, released. No I/O.

The stream's audio is held from the moment it arrives until it is *settled*: no utterance still to
be recognised can cover it. Each recognised utterance adds the times of its scrubbed words (and, for
``scrubsil``, of all its words); :meth:`AudioScrubber.release` then silences what lies in those spans
and returns the audio up to a settled point, encoded per ``scruboutfmt``:

- ``wav``: a WAVE stream in the input's encoding (linear PCM little-endian, µ-law or A-law, the
  input's rate and channels). The first piece starts with a RIFF header whose RIFF and data sizes are
  0xFFFFFFFF ("until the end of the stream", as streaming writers put it), so the pieces appended in
  order are one playable file, as the vendor's example client writes it.
- ``mp3`` (16 kbit/s), ``mp3-8`` … ``mp3-64``: MPEG-1/2 layer III at that constant bit rate, mono or
  stereo as the input; :meth:`finish` flushes the encoder's last frames.

Spans apply per channel; merged where closer than ``scrubmindist``; shifted by ``scruboffset``.
Silence is the encoding's zero: 0 for linear PCM (0x80 for 8-bit, which is unsigned), 0xFF for
µ-law, 0xD5 for A-law.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import lameenc
import numpy as np

from standin.audio import STREAMING_SIZES, WAVE_FORMAT_TAGS, AudioFormat, SampleDecoder
from standin.redaction import Span, merge_spans
from standin.tags import Encoding

STREAMING_SIZE = max(STREAMING_SIZES)  # 0xFFFFFFFF: "until the end of the stream"
DEFAULT_MP3_KBPS = 16  # scruboutfmt=mp3
_SILENCE = {Encoding.ULAW: 0xFF, Encoding.ALAW: 0xD5}


def wave_header(fmt: AudioFormat) -> bytes:
    """A streaming RIFF/WAVE header for audio in `fmt` (little-endian whatever the input's order)."""
    bits = fmt.sampwidth * 8
    body = struct.pack(
        "<HHIIHH",
        WAVE_FORMAT_TAGS[fmt.encoding],
        fmt.channels,
        fmt.samprate,
        fmt.bytes_per_second,
        fmt.frame_bytes,
        bits,
    )
    return (
        b"RIFF"
        + struct.pack("<I", STREAMING_SIZE)
        + b"WAVEfmt "
        + struct.pack("<I", len(body))
        + body
        + b"data"
        + struct.pack("<I", STREAMING_SIZE)
    )


def silence_byte(fmt: AudioFormat) -> int:
    if fmt.encoding is Encoding.PCM:
        return 0x80 if fmt.sampwidth == 1 else 0x00
    return _SILENCE[fmt.encoding]


class AudioScrubber:
    """Holds one stream's audio until it is settled; see the module docstring."""

    def __init__(
        self,
        fmt: AudioFormat,
        outfmt: str,
        mindist: float,
        offset: float,
        blank_silence: bool,
    ) -> None:
        self.format = fmt
        self.mindist = mindist
        self.offset = offset
        self.blank_silence = blank_silence
        self.released_frames = 0  # frames handed out so far
        self.bytes_out = 0
        self._held = bytearray()  # whole frames from `released_frames` on
        self._carry = b""  # a partial frame
        self._scrub: list[list[Span]] = [[] for _ in range(fmt.channels)]
        self._spoken: list[list[Span]] = [[] for _ in range(fmt.channels)]
        self._header_sent = False
        self._mp3: lameenc.Encoder | None = None
        self._decoder = SampleDecoder(fmt)
        if outfmt != "wav":
            kbps = int(outfmt[4:]) if outfmt.startswith("mp3-") else DEFAULT_MP3_KBPS
            self._mp3 = lameenc.Encoder()
            self._mp3.set_bit_rate(kbps)
            self._mp3.set_in_sample_rate(fmt.samprate)
            self._mp3.set_channels(fmt.channels)
            self._mp3.set_quality(7)

    @property
    def held_frames(self) -> int:
        return len(self._held) // self.format.frame_bytes

    def feed(self, payload: bytes) -> None:
        """Audio payload bytes (after any WAVE header), in any split."""
        data = self._carry + payload
        whole = len(data) - len(data) % self.format.frame_bytes
        self._held += data[:whole]
        self._carry = data[whole:]

    def add(self, channel: int, scrubbed: Iterable[Span], spoken: Iterable[Span]) -> None:
        """One recognised utterance's word times (seconds from the stream's start) on `channel`."""
        self._scrub[channel].extend((s + self.offset, e + self.offset) for s, e in scrubbed)
        self._spoken[channel].extend(spoken)

    def release(self, upto_frame: int) -> bytes:
        """The encoded, silenced audio from the last release up to `upto_frame` (b"" if none)."""
        count = min(upto_frame - self.released_frames, self.held_frames)
        if count <= 0:
            return b""
        fmt = self.format
        chunk = np.frombuffer(bytes(self._held[: count * fmt.frame_bytes]), dtype=np.uint8).copy()
        del self._held[: count * fmt.frame_bytes]
        frames = chunk.reshape(count, fmt.channels, fmt.sampwidth)
        begin = self.released_frames
        for channel in range(fmt.channels):
            for start, end in self._spans(channel, begin, begin + count):
                frames[start - begin : end - begin, channel, :] = silence_byte(fmt)
        self.released_frames += count
        return self._encode(chunk.tobytes())

    def finish(self) -> bytes:
        """Everything still held, and the end of the mp3 stream."""
        out = self.release(self.released_frames + self.held_frames)
        if self._mp3 is not None:
            tail = bytes(self._mp3.flush())
            self.bytes_out += len(tail)
            out += tail
        return out

    def _spans(self, channel: int, first: int, last: int) -> list[tuple[int, int]]:
        """Frame ranges within [first, last) to silence on `channel`."""
        rate = self.format.samprate
        spans = list(self._scrub[channel])
        if self.blank_silence:
            cursor = 0.0
            for start, end in merge_spans(self._spoken[channel], 0.0):
                spans.append((cursor, start))
                cursor = end
            spans.append((cursor, (last + 1) / rate))
        out = []
        for start, end in merge_spans(spans, self.mindist):
            a, b = max(first, round(start * rate)), min(last, round(end * rate))
            if b > a:
                out.append((a, b))
        return out

    def _encode(self, raw: bytes) -> bytes:
        fmt = self.format
        if self._mp3 is not None:
            samples = self._decoder.decode(raw)
            out = bytes(self._mp3.encode(samples.astype("<i2").tobytes()))
        else:
            if fmt.encoding is Encoding.PCM and fmt.big_endian and fmt.sampwidth > 1:
                raw = np.frombuffer(raw, dtype=np.uint8).reshape(-1, fmt.sampwidth)[:, ::-1].tobytes()
            out = raw if self._header_sent else wave_header(fmt) + raw
            self._header_sent = True
        self.bytes_out += len(out)
        return out

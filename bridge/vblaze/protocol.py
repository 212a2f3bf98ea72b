"""The V-Blaze realtime WebSocket protocol, without I/O.

One `Session` is one WebSocket stream to the engine. It is fed what the socket delivers and returns what
to write; it never touches a socket, a clock or the event loop, so every rule below is tested with bytes.
A call's streams, one after the other, belong to its `session.CallSession` (reconnects, replay, the
call's result); `client.EngineStream` drives both over websockets.

Contract:

- `request_headers(engine, audio, request_id, channels)` gives the upgrade request's ``X-Voci-*`` headers:
  the tags the bridge sets itself (``realtime=true``, ``outstream=true``, ``output=json``,
  ``utterance_fmt=json``, the audio format, the redaction tags of `RedactionConfig.tags`, ``requestid``)
  and ``engine.tags``. A tag in
  ``engine.tags`` that the bridge sets itself raises `ConfigError` (call it once at startup to fail early).
- Stereo (``channels=2``, a SIPREC call: channel 0 the caller, 1 the agent) is 16-bit PCM interleaved
  sample by sample. V-Blaze documents no tag that gives the channel count of raw PCM, so a stereo
  stream always goes with ``datahdr=WAVE``, whose header says 2 channels, whatever ``engine.datahdr``
  says (`stream_datahdr`); the engine transcribes each channel and tags utterances ``metadata.channel``.
- `Session.send_audio(pcm, call_position)` returns the binary frame to write. The first frame of a
  ``datahdr=WAVE`` stream starts with the streaming WAV header (`wav_stream_header`). ``call_position`` is
  where the first byte of ``pcm`` lies on the call's timeline (in bytes; the timeline is defined in
  `bridge/call.py`: 0 is the start of the call's first audio frame); when it does not follow the previous
  chunk (a replay after a reconnect, or audio dropped in between) the session records the jump and maps
  the engine's times across it.
- `Session.send_end()` returns the frames that end the audio (the empty frame, preceded by the WAV header
  if no audio was sent) and moves ``OPEN -> DRAINING``.
- `Session.receive_text(text, received_at)` returns one event: `Utterance` (times already mapped onto the
  call's timeline), `Separator` (the empty message after the last utterance) or `Final` (the complete
  transcript, the message after the separator; moves the session to ``DONE``). A JSON object carrying an
  ``utterances`` list is taken as the final transcript even without a separator.
- Scrubbed audio (a stream opened with ``scrub_audio``: ``scrubaudio=true``, ``scruboutfmt=wav``): the
  engine interleaves binary messages with the utterances, the stream's audio with the redacted words
  silenced, in the encoding we sent (16-bit PCM at our rate and channel count). `receive_binary` turns
  each into `ScrubbedAudio(data, position)`, ``position`` the stream byte offset of ``data``'s first byte
  (0 = the first audio byte sent on this stream; `call_segments` maps it onto the call's timeline). The
  first message may start with a RIFF/WAVE header (the stand-in's choice, docs/standin.md; its sizes are
  ignored, its format must be ours) or carry bare PCM; a header split over messages is put together, and
  a message that ends mid-sample keeps the odd bytes for the next, so ``data`` is always whole frames. An
  empty binary message gives None. Without ``scrub_audio`` a binary message is an `EngineProtocolError`,
  as is a header in another format (then every later binary message too: the audio is unusable).
- Sending in the wrong state raises `InvalidState`. A message the engine should not have sent (binary,
  anything after the final, unparseable JSON in place of an utterance) raises `EngineProtocolError` and
  leaves the session as it was, so a caller may log it and go on. `receive_text` and `receive_binary`
  raise `EngineProtocolError` and nothing else, whatever the engine sends: JSON nested too deep to
  parse, ``NaN``/``Infinity`` (which would make the webhook's JSON invalid), numbers too large for a
  float and fields of the wrong type are refused or ignored, never passed on.

States: ``OPEN`` (audio may be sent) → ``DRAINING`` (empty frame sent, waiting for the final) → ``DONE``
(final received). The engine may send the final while the session is still ``OPEN`` (it ended the stream
on its own); the session then goes straight to ``DONE``.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from bisect import bisect_right
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NoReturn

from bridge.config import BRIDGE_TAGS, REDACTION_TAGS, AudioConfig, EngineConfig, RedactionConfig
from bridge.errors import BridgeError, ConfigError, EngineProtocolError

logger = logging.getLogger(__name__)

SAMPLE_WIDTH = 2  # bytes per sample: 16-bit signed little-endian PCM
CHANNELS = 1  # mono unless a stream asks for stereo
ENCODING = "SPCM"  # V-Blaze's name for signed linear PCM (datahdr=NONE)
STREAMING_SIZE = 0xFFFFFFFF  # RIFF and data sizes of a WAV header whose length is not known yet
HEADER_PREFIX = "X-Voci-"
MAX_WAV_HEADER_BYTES = 4096  # a scrubbed-audio RIFF header longer than this is refused
WAVE_FORMAT_PCM = 1
WAVE_FORMAT_EXTENSIBLE = 0xFFFE


class InvalidState(BridgeError):
    """A session operation was called in a state that does not allow it."""


class State(IntEnum):
    """Where a session is in its life."""

    OPEN = 1  # audio may be sent
    DRAINING = 2  # the empty frame was sent; utterances, separator and final may still arrive
    DONE = 3  # the final transcript arrived


@dataclass(frozen=True)
class Word:
    """One word event of an utterance; times on the call's timeline, in seconds."""

    word: str
    start: float
    end: float
    confidence: float | None


@dataclass(frozen=True)
class Utterance:
    """One utterance as the engine streamed it.

    ``start``/``end`` (and the words' times) are seconds on the call's timeline; ``raw`` is the engine's
    JSON untouched (its times are the stream's own). ``received_at`` is the monotonic time of arrival.
    """

    text: str
    words: tuple[Word, ...]
    start: float
    end: float
    confidence: float | None
    channel: int
    raw: dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class Separator:
    """The empty message the engine sends after the last utterance of a stream."""


@dataclass(frozen=True)
class Final:
    """The complete transcript: a JSON object for ``output=json``, text otherwise, None if empty."""

    raw: dict[str, Any] | str | None


@dataclass(frozen=True)
class Gap:
    """Audio of the call that was never transcribed: seconds on the call's timeline and why."""

    start: float
    duration: float
    cause: str

    @property
    def end(self) -> float:
        return self.start + self.duration

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "duration": self.duration, "cause": self.cause}


@dataclass(frozen=True)
class ScrubbedAudio:
    """A piece of the stream's scrubbed audio: whole frames of our PCM from stream byte ``position``."""

    data: bytes
    position: int


Event = Utterance | Separator | Final


def header_name(tag: str) -> str:
    """``utterance_fmt`` → ``X-Voci-Utterance_fmt`` (the spelling of V-Blaze's documentation)."""
    tag = tag.lower()
    return HEADER_PREFIX + tag[:1].upper() + tag[1:]


def tag_value(value: str | int | float | bool) -> str:
    """Tag values as V-Blaze writes them: booleans lowercase, numbers as Python prints them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def stream_datahdr(datahdr: str, channels: int) -> str:
    """The ``datahdr`` a stream uses: WAVE for stereo (see the module docstring), else the configured one."""
    return "WAVE" if channels > 1 else datahdr


def request_headers(
    engine: EngineConfig,
    audio: AudioConfig,
    request_id: str,
    channels: int = CHANNELS,
    redaction: RedactionConfig | None = None,
    scrub_audio: bool = True,
) -> list[tuple[str, str]]:
    """The ``X-Voci-*`` headers of the upgrade request for one stream of one call (``scrub_audio``
    False: leave out scrubaudio even if ``redaction`` asks for it, the engine refused it)."""
    clash = sorted({k.lower() for k in engine.tags} & set(BRIDGE_TAGS))
    if clash:
        keys = ", ".join(
            f"engine.tags.{k}" + (f" ({REDACTION_TAGS[k]})" if k in REDACTION_TAGS else "") for k in clash
        )
        raise ConfigError(f"{keys}: set by the bridge itself and cannot be overridden")
    tags: list[tuple[str, str | int | float | bool]] = [
        ("realtime", True),
        ("outstream", True),
        ("output", "json"),
        ("utterance_fmt", "json"),
        ("datahdr", stream_datahdr(engine.datahdr, channels)),
    ]
    if stream_datahdr(engine.datahdr, channels) == "NONE":
        tags += [
            ("encoding", ENCODING),
            ("samprate", audio.sample_rate),
            ("sampwidth", SAMPLE_WIDTH),
            ("endian", "LITTLE"),
        ]
    if redaction is not None:
        tags += redaction.tags(scrub_audio)
    tags += list(engine.tags.items())
    tags.append(("requestid", request_id))
    return [(header_name(name), tag_value(value)) for name, value in tags]


def wav_stream_header(sample_rate: int, channels: int = CHANNELS, sample_width: int = SAMPLE_WIDTH) -> bytes:
    """A 44-byte PCM WAV header for a stream of unknown length (both size fields 0xFFFFFFFF)."""
    block_align = channels * sample_width
    return b"".join(
        [
            b"RIFF",
            struct.pack("<I", STREAMING_SIZE),
            b"WAVE",
            b"fmt ",
            struct.pack(
                "<IHHIIHH",
                16,
                1,
                channels,
                sample_rate,
                sample_rate * block_align,
                block_align,
                8 * sample_width,
            ),
            b"data",
            struct.pack("<I", STREAMING_SIZE),
        ]
    )


def _number(value: Any) -> float | None:
    """A finite JSON number as a float, else None (an int too large for a float included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:40]} is too large for a float")
    return number


def _loads(text: str) -> Any:
    """`json.loads` that refuses NaN, Infinity and 1e999 and turns a nesting too deep into ValueError."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


class Session:
    """One stream (one WebSocket) of one call. See the module docstring for the contract."""

    def __init__(
        self, audio: AudioConfig, datahdr: str, channels: int = CHANNELS, scrub_audio: bool = False
    ) -> None:
        self.channels = channels
        self.scrubbed = ScrubbedReader(audio.sample_rate, channels) if scrub_audio else None
        self.bytes_per_second = audio.sample_rate * SAMPLE_WIDTH * channels
        wave = stream_datahdr(datahdr, channels) == "WAVE"
        self._header = wav_stream_header(audio.sample_rate, channels) if wave else b""
        self.state = State.OPEN
        self.stream_bytes = 0  # audio bytes sent on this stream
        self.end_sent = False  # the empty frame went out (the state may have moved on to DONE since)
        self.separator_seen = False
        self.final: Final | None = None
        # Where the stream's audio lies on the call's timeline: stream byte → call byte, one entry per jump.
        self._anchor_stream: list[int] = []
        self._anchor_call: list[int] = []
        self._next_call_position: int | None = None

    @property
    def call_start(self) -> float | None:
        """Call-timeline seconds at which this stream's audio starts (None before any audio)."""
        if not self._anchor_call:
            return None
        return self._anchor_call[0] / self.bytes_per_second

    def send_audio(self, pcm: bytes, call_position: int) -> bytes:
        """The frame that carries ``pcm``, whose first byte lies at ``call_position`` on the call."""
        if self.state is not State.OPEN:
            raise InvalidState(f"cannot send audio in state {self.state.name}")
        if not pcm:
            raise ValueError("an empty audio frame would end the stream; use send_end()")
        if call_position != self._next_call_position:
            self._anchor_stream.append(self.stream_bytes)
            self._anchor_call.append(call_position)
        frame = self._header + pcm if self._header else pcm
        self._header = b""
        self.stream_bytes += len(pcm)
        self._next_call_position = call_position + len(pcm)
        return frame

    def send_end(self) -> list[bytes]:
        """The frames that end the audio: the empty frame, after the WAV header if no audio went yet."""
        if self.state is not State.OPEN:
            raise InvalidState(f"cannot end the audio in state {self.state.name}")
        self.state = State.DRAINING
        self.end_sent = True
        frames = [self._header] if self._header else []
        self._header = b""
        return [*frames, b""]

    @property
    def sent_until(self) -> int | None:
        """Call-timeline byte position just after the last audio sent on this stream."""
        return self._next_call_position

    def call_time(self, stream_seconds: float) -> float:
        """Map a time of this stream (seconds) onto the call's timeline (seconds)."""
        bps = self.bytes_per_second
        if not self._anchor_stream:
            return stream_seconds
        i = max(bisect_right(self._anchor_stream, stream_seconds * bps) - 1, 0)
        return stream_seconds + (self._anchor_call[i] - self._anchor_stream[i]) / bps

    def call_segments(self, position: int, length: int) -> list[tuple[int, int, int]]:
        """Where stream bytes ``[position, position + length)`` lie on the call's timeline: (call byte,
        offset in the span, length) per piece between jumps; clipped to the audio this stream sent."""
        first = position
        end = min(position + length, self.stream_bytes)
        out = []
        i = max(bisect_right(self._anchor_stream, position) - 1, 0)
        while position < end and i < len(self._anchor_stream):
            stop = self._anchor_stream[i + 1] if i + 1 < len(self._anchor_stream) else end
            piece = min(stop, end) - position
            if piece > 0:
                call = self._anchor_call[i] + position - self._anchor_stream[i]
                out.append((call, position - first, piece))
                position += piece
            i += 1
        return out

    def receive_binary(self, data: bytes) -> ScrubbedAudio | None:
        """A binary message: scrubbed audio if this stream asked for it (see the module docstring)."""
        if self.state is State.DONE:
            raise EngineProtocolError("binary message after the final transcript")
        if self.scrubbed is None:
            raise EngineProtocolError(f"unexpected binary message of {len(data)} bytes")
        return self.scrubbed.feed(data)

    def receive_text(self, text: str, received_at: float) -> Event:
        """Turn one text message into an event (see the module docstring)."""
        if self.state is State.DONE:
            raise EngineProtocolError("message after the final transcript")
        if self.separator_seen:
            return self._final(text)
        if not text.strip():
            self.separator_seen = True
            return Separator()
        try:
            doc = _loads(text)
        except ValueError as exc:
            raise EngineProtocolError(f"utterance message is not JSON: {text[:80]!r}") from exc
        if not isinstance(doc, dict):
            raise EngineProtocolError(f"utterance message is not a JSON object: {text[:80]!r}")
        if isinstance(doc.get("utterances"), list) and "start" not in doc:
            logger.debug("final transcript without a separator")
            return self._final(text)
        return self._utterance(doc, received_at)

    def _final(self, text: str) -> Final:
        raw: dict[str, Any] | str | None
        if not text.strip():
            raw = None
        else:
            try:
                parsed = _loads(text)
            except ValueError:
                parsed = None
            raw = parsed if isinstance(parsed, dict) else text
        self.state = State.DONE
        self.final = Final(raw)
        return self.final

    def _utterance(self, doc: dict[str, Any], received_at: float) -> Utterance:
        body = doc.get("utterance") if isinstance(doc.get("utterance"), dict) else doc
        assert isinstance(body, dict)
        start = _number(body.get("start"))
        end = _number(body.get("end"))
        if start is None or end is None:
            raise EngineProtocolError("utterance without numeric start and end")
        words = []
        events = body.get("events")
        for event in events if isinstance(events, list) else ():
            if not isinstance(event, dict) or not isinstance(event.get("word"), str):
                continue
            w_start = _number(event.get("start"))
            w_end = _number(event.get("end"))
            words.append(
                Word(
                    word=event["word"],
                    start=self.call_time(start if w_start is None else w_start),
                    end=self.call_time(end if w_end is None else w_end),
                    confidence=_number(event.get("confidence")),
                )
            )
        text = body.get("text")
        if not isinstance(text, str):
            text = " ".join(w.word for w in words)
        metadata = body.get("metadata")
        channel = metadata.get("channel") if isinstance(metadata, dict) else None
        return Utterance(
            text=text,
            words=tuple(words),
            start=self.call_time(start),
            end=self.call_time(end),
            confidence=_number(body.get("confidence")),
            channel=channel if isinstance(channel, int) and not isinstance(channel, bool) else 0,
            raw=doc,
            received_at=received_at,
        )


class ScrubbedReader:
    """Scrubbed audio messages in, `ScrubbedAudio` of whole frames out (see the module docstring)."""

    def __init__(self, sample_rate: int, channels: int) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.block = SAMPLE_WIDTH * channels
        self.position = 0  # stream bytes handed out so far
        self.header_done = False
        self.failed: str | None = None
        self._held = b""  # a header not yet complete, or the odd bytes of a frame

    def feed(self, data: bytes) -> ScrubbedAudio | None:
        if self.failed is not None:
            raise EngineProtocolError(self.failed)
        held = self._held + data
        if not self.header_done:
            start = self._header(held)
            if start is None:
                self._held = held
                return None
            self.header_done = True
            held = held[start:]
        whole = len(held) - len(held) % self.block
        self._held = held[whole:]
        if not whole:
            return None
        piece = ScrubbedAudio(held[:whole], self.position)
        self.position += whole
        return piece

    def _header(self, data: bytes) -> int | None:
        """Where the PCM starts (0: no header), or None while a header is incomplete."""
        if len(data) < 4:
            return None if data and b"RIFF".startswith(data) else 0
        if data[:4] != b"RIFF":
            return 0
        if len(data) < 12:
            return None
        if data[8:12] != b"WAVE":
            self._fail("scrubbed audio: a RIFF header that is not WAVE")
        offset = 12
        while len(data) >= offset + 8:
            chunk, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
            if chunk == b"data":
                return offset + 8
            if offset + 8 + size > MAX_WAV_HEADER_BYTES:
                self._fail(f"scrubbed audio: a WAV header beyond {MAX_WAV_HEADER_BYTES} bytes")
            if len(data) < offset + 8 + size:
                return None
            if chunk == b"fmt ":
                self._check_format(data[offset + 8 : offset + 8 + size])
            offset += 8 + size + (size & 1)
        if offset > MAX_WAV_HEADER_BYTES:
            self._fail(f"scrubbed audio: a WAV header beyond {MAX_WAV_HEADER_BYTES} bytes")
        return None

    def _check_format(self, fmt: bytes) -> None:
        if len(fmt) < 16:
            self._fail("scrubbed audio: a WAV fmt chunk shorter than 16 bytes")
        tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
        ours = (channels, rate, bits) == (self.channels, self.sample_rate, 8 * SAMPLE_WIDTH)
        if tag not in (WAVE_FORMAT_PCM, WAVE_FORMAT_EXTENSIBLE) or not ours:
            self._fail(
                f"scrubbed audio in format {tag}, {channels} channels, {rate} Hz, {bits} bits: not the "
                f"{self.channels}-channel 16-bit PCM at {self.sample_rate} Hz that was sent"
            )

    def _fail(self, message: str) -> NoReturn:
        self.failed = message
        raise EngineProtocolError(message)

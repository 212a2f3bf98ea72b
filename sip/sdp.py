"""What an SDP offer asks for (no I/O): audio codecs, direction, RFC 4733 events.

Only what the bridge decides on is read: the payload encodings of each `m=audio` line and its
direction. Static payload types (0 PCMU, 8 PCMA, 9 G722) count even without an `a=rtpmap`.

`parse_offer` is tolerant of lines it does not use, but strict on the ones it does, and raises
`SdpError` (a `ValueError`) and nothing else, whatever the text. An offer it refuses must be
answered 400, never become a call:

- an `m=audio` line with fewer than four fields, a port or port count that is not ASCII digits, a
  port above 65535, or a payload type that is not an ASCII number from 0 to 127;
- an `a=rtpmap` of a media section whose payload type is not such a number, whose encoding name is
  empty, or whose clock rate is missing, not ASCII digits, 0 or above 2**32 - 1;
- more than `MAX_MEDIA_LINES` m-lines of any kind (a SIPREC offer has two audio lines; a peer that
  sends hundreds only wants to make the bridge work).

Only ASCII digits count as digits: `str.isdigit()` also says yes to `²` or `٣`, which `int()` then
refuses or reads as a number no peer meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STATIC_PT = {0: "PCMU", 8: "PCMA", 9: "G722", 3: "GSM", 18: "G729", 4: "G723"}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
MAX_MEDIA_LINES = 16
MAX_PORT = 65535
MAX_PT = 127
MAX_CLOCK_RATE = 2**32 - 1

_DIGITS = re.compile(r"[0-9]{1,10}")  # ASCII only; ten digits hold every bound above


class SdpError(ValueError):
    """The SDP offer is malformed in a line the bridge reads (see the module docstring)."""


@dataclass(frozen=True)
class AudioOffer:
    """One `m=audio` line."""

    port: int
    encodings: tuple[str, ...]  # upper-case encoding names in offer order
    direction: str
    label: str | None


@dataclass(frozen=True)
class Offer:
    audio: tuple[AudioOffer, ...]

    def encodings(self) -> set[str]:
        return {enc for media in self.audio for enc in media.encodings}


@dataclass
class _Media:
    audio: bool
    port: int = 0
    pts: list[int] = field(default_factory=list)
    rtpmap: dict[int, str] = field(default_factory=dict)
    direction: str | None = None
    label: str | None = None


def _number(text: str, what: str, high: int, low: int = 0) -> int:
    """An ASCII decimal number within [low, high], or SdpError naming `what`."""
    if not _DIGITS.fullmatch(text):
        raise SdpError(f"{what} is not a number: {text[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise SdpError(f"{what} {value} is out of range {low}..{high}")
    return value


def _media_line(value: str) -> _Media:
    parts = value.split()
    if not parts or parts[0] != "audio":
        return _Media(audio=False)  # video, image, application: not ours to judge
    if len(parts) < 4:
        raise SdpError(f"m=audio line with fewer than 4 fields: {value[:80]!r}")
    port, _, count = parts[1].partition("/")
    media = _Media(audio=True, port=_number(port, "m=audio port", MAX_PORT))
    if count:
        _number(count, "m=audio port count", MAX_PORT, low=1)
    media.pts = [_number(pt, "m=audio payload type", MAX_PT) for pt in parts[3:]]
    return media


def _rtpmap(rest: str) -> tuple[int, str]:
    pt, *spec = rest.split(None, 1) or [""]
    number = _number(pt, "a=rtpmap payload type", MAX_PT)
    fields = spec[0].split("/") if spec else [""]
    encoding = fields[0].strip().upper()
    if not encoding:
        raise SdpError(f"a=rtpmap:{number} without an encoding name")
    if len(fields) < 2:
        raise SdpError(f"a=rtpmap:{number} {encoding} without a clock rate")
    _number(fields[1].strip(), f"a=rtpmap:{number} clock rate", MAX_CLOCK_RATE, low=1)
    return number, encoding


def parse_offer(sdp: str) -> Offer:
    """Parse the audio part of an SDP body; tolerant of unknown lines, `SdpError` on bad ones we read."""
    session_dir = "sendrecv"
    media: list[_Media] = []
    for raw in sdp.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            if len(media) == MAX_MEDIA_LINES:
                raise SdpError(f"more than {MAX_MEDIA_LINES} m-lines")
            media.append(_media_line(value))
        elif kind == "a":
            attr, _, rest = value.partition(":")
            target = media[-1] if media else None
            if attr in DIRECTIONS:
                if target is None:
                    session_dir = attr
                else:
                    target.direction = attr
            elif attr == "rtpmap" and target is not None and target.audio:
                pt, encoding = _rtpmap(rest)
                target.rtpmap[pt] = encoding
            elif attr == "label" and target is not None:
                target.label = rest.strip()
    return Offer(
        tuple(
            AudioOffer(
                port=m.port,
                encodings=tuple(m.rtpmap.get(pt, STATIC_PT.get(pt, f"PT{pt}")) for pt in m.pts),
                direction=m.direction or session_dir,
                label=m.label,
            )
            for m in media
            if m.audio
        )
    )

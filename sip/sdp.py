"""What an SDP offer asks for (no I/O): audio codecs, direction, RFC 4733 events.

Only what the bridge decides on is read: the payload encodings of each `m=audio` line and its
direction. Static payload types (0 PCMU, 8 PCMA, 9 G722) count even without an `a=rtpmap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATIC_PT = {0: "PCMU", 8: "PCMA", 9: "G722", 3: "GSM", 18: "G729", 4: "G723"}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


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


def parse_offer(sdp: str) -> Offer:
    """Parse the audio part of an SDP body; tolerant of unknown lines."""
    session_dir = "sendrecv"
    media: list[_Media] = []
    for raw in sdp.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            if len(parts) < 4:
                media.append(_Media(audio=False))
                continue
            port = parts[1].split("/")[0]
            media.append(
                _Media(
                    audio=parts[0] == "audio",
                    port=int(port) if port.isdigit() else 0,
                    pts=[int(p) for p in parts[3:] if p.isdigit()],
                )
            )
        elif kind == "a":
            attr, _, rest = value.partition(":")
            target = media[-1] if media else None
            if attr in DIRECTIONS:
                if target is None:
                    session_dir = attr
                else:
                    target.direction = attr
            elif attr == "rtpmap" and target is not None:
                pt, _, enc = rest.partition(" ")
                if pt.strip().isdigit():
                    target.rtpmap[int(pt)] = enc.split("/")[0].strip().upper()
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

"""V-Blaze request tags: collection from the query string and `X-Voci-*` headers, validation. No I/O.

`collect_tags` merges the two documented places a tag can be given; `parse_tags` turns the raw strings
into a frozen `Tags`, raising `TagError` (which names the tag) for a value V-Blaze would not accept.
`TagError` is the only exception `parse_tags` raises, whatever the strings; `collect_tags` raises none.

Choices where the vendor page is silent (see docs/standin.md):
- tag names are matched case-insensitively; in header names `-` after `X-Voci-` is read as `_`, so
  `X-Voci-Utterance-Callback` and `X-Voci-utterance_callback` are the same tag;
- a tag given both as header and in the query string takes the query string's value;
- enumerated values (`WAVE`, `LITTLE`, `true`, `level`, ...) are matched case-insensitively;
- integers are ASCII decimal digits with an optional sign (`int()` would also read `٣` or `1_000`);
- a URL tag needs an http or https scheme, a host and, if it names one, a port from 1 to 65535;
- tags the stand-in does not implement are accepted, echoed in `streamtags` and otherwise ignored,
  except `diarize`, which would change the result's shape and gets a 400.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar
from urllib.parse import urlsplit

from standin.redaction import Rule, ScrubConfError, parse_scrubconf

HEADER_PREFIX = "x-voci-"
DEFAULT_MODEL = "eng1:callcenter"

# Documented V-Blaze defaults (vblaze-protocol.md §2).
DEFAULT_ACTIVITYLEVEL = 175
DEFAULT_UTTMINACTIVITY_MS = 500
DEFAULT_UTTMAXSILENCE_MS = 800
DEFAULT_UTTPADDING_MS = 300
DEFAULT_UTTMAXTIME_S = 150

MAX_TAG_VALUE_CHARS = 8192
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


class TagError(ValueError):
    """A tag has a value the engine does not accept; `tag` names it."""

    def __init__(self, tag: str, message: str) -> None:
        super().__init__(f"{tag}: {message}")
        self.tag = tag


class Encoding(StrEnum):
    PCM = "pcm"
    ULAW = "ulaw"
    ALAW = "alaw"


class VadType(StrEnum):
    ENERGY = "energy"
    LEVEL = "level"


class Format(StrEnum):
    JSON = "json"
    TEXT = "text"


_ENCODING_SPELLINGS: dict[str, Encoding] = {
    **dict.fromkeys(
        [
            "pcm",
            "spcm",
            "lpcm",
            "linear",
            "linear16",
            "lin16",
            "slin",
            "slinear",
            "s16le",
            "s16be",
            "signed",
            "signedinteger",
            "int16",
            "l16",
        ],
        Encoding.PCM,
    ),
    **dict.fromkeys(["ulaw", "mulaw", "pcmu", "g711u", "g711ulaw", "g711mulaw"], Encoding.ULAW),
    **dict.fromkeys(["alaw", "pcma", "g711a", "g711alaw"], Encoding.ALAW),
}

# Features that would change what the server sends; the stand-in says so instead of silently ignoring them.
_UNSUPPORTED_WHEN_TRUE = ("diarize",)
MP3_BITRATES_KBPS = (8, 16, 24, 32, 40, 48, 56, 64)  # scruboutfmt=mp3-N
SCRUB_OUTFMTS = ("wav", "mp3", *(f"mp3-{kbps}" for kbps in MP3_BITRATES_KBPS))
DEFAULT_SCRUBOUTFMT = "mp3"
DEFAULT_SCRUBMINDIST_S = 0.3
DEFAULT_SCRUBOFFSET_S = 0.0
N = TypeVar("N", int, float)
_DECIMAL = re.compile(r"[+-]?[0-9]{1,6}(\.[0-9]{1,6})?")
_TRUE = {"true": True, "false": False}


@dataclass(frozen=True)
class Redaction:
    """The number and redaction tags (standin/redaction.py, standin/scrubber.py)."""

    numtrans: bool = True
    scrubtext: bool = False
    rules: tuple[Rule, ...] | None = None  # scrubconf's rules, which replace the default ones
    scrubaudio: bool = False
    scrubsil: bool = False
    mindist_s: float = DEFAULT_SCRUBMINDIST_S
    offset_s: float = DEFAULT_SCRUBOFFSET_S
    outfmt: str = DEFAULT_SCRUBOUTFMT
    outzip: bool = False  # the result in a zip container (also implied by scrubaudio without outstream)
    notext: bool = False  # no transcript: the scrubbed audio only


@dataclass(frozen=True)
class Tags:
    """The tags of one /transcribe request, validated, with V-Blaze's defaults filled in."""

    raw: Mapping[str, str]
    model: str = DEFAULT_MODEL
    requestid: str | None = None
    datahdr_wave: bool = True
    encoding: Encoding | None = None
    samprate: int | None = None
    sampwidth: int | None = None
    big_endian: bool = False
    channels: int | None = None
    realtime: bool = False
    outstream: bool = False
    output: Format = Format.JSON
    utterance_fmt: Format = Format.JSON
    callback: str | None = None
    utterance_callback: str | None = None
    vadtype: VadType = VadType.ENERGY
    activitylevel: int = DEFAULT_ACTIVITYLEVEL
    uttminactivity_ms: int = DEFAULT_UTTMINACTIVITY_MS
    uttmaxsilence_ms: int = DEFAULT_UTTMAXSILENCE_MS
    uttpadding_ms: int = DEFAULT_UTTPADDING_MS
    uttmaxtime_s: int = DEFAULT_UTTMAXTIME_S
    redaction: Redaction = field(default_factory=Redaction)

    @property
    def streams_scrubbed_audio(self) -> bool:
        """True when scrubbed audio goes back over the socket in binary messages."""
        return self.redaction.scrubaudio and self.outstream

    @property
    def zipped(self) -> bool:
        """True when the result goes as one binary zip message (or callback body)."""
        r = self.redaction
        return r.outzip or (r.scrubaudio and not self.outstream)

    @property
    def streams_utterances(self) -> bool:
        """True when utterances go back over the socket (outstream and no utterance_callback)."""
        return self.outstream and self.utterance_callback is None and not self.redaction.notext


def collect_tags(query: Iterable[tuple[str, str]], headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Merge tags from `X-Voci-<Tag>` headers and the query string (the query string wins).

    Also reads `X-Request-Id` as `requestid`, as V-Blaze documents.
    """
    tags: dict[str, str] = {}
    for name, value in headers:
        low = name.lower()
        if low.startswith(HEADER_PREFIX) and len(low) > len(HEADER_PREFIX):
            tags[low[len(HEADER_PREFIX) :].replace("-", "_")] = value
        elif low == "x-request-id":
            tags.setdefault("requestid", value)
    for name, value in query:
        tags[name.lower()] = value
    return tags


def parse_encoding(value: str) -> Encoding | None:
    """Map the usual spellings (SPCM, LINEAR16, ULAW, µ-law, PCMU, G.711a, ...) to an `Encoding`."""
    key = re.sub(r"[\s\-_.]", "", value.strip().lower()).replace("µ", "u").replace("μ", "u")
    return _ENCODING_SPELLINGS.get(key)


def parse_tags(raw: Mapping[str, str]) -> Tags:
    """Validate raw tag strings; raise `TagError` naming the first bad tag."""
    for name, value in raw.items():
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise TagError(name, f"value longer than {MAX_TAG_VALUE_CHARS} characters")
    for name in _UNSUPPORTED_WHEN_TRUE:
        if name in raw and _bool(raw, name, False):
            raise TagError(name, "not supported by the stand-in engine")

    realtime = _bool(raw, "realtime", False)
    utterance_callback = _url(raw, "utterance_callback")
    outstream = _bool(raw, "outstream", realtime and utterance_callback is None)

    datahdr = raw.get("datahdr", "WAVE").strip().upper()
    if datahdr not in ("WAVE", "NONE"):
        raise TagError("datahdr", f"must be WAVE or NONE, not {raw['datahdr']!r}")

    encoding = None
    if "encoding" in raw:
        encoding = parse_encoding(raw["encoding"])
        if encoding is None:
            raise TagError("encoding", f"unknown encoding {raw['encoding']!r} (linear PCM, ulaw or alaw)")

    endian = raw.get("endian", "LITTLE").strip().upper()
    if endian not in ("LITTLE", "BIG"):
        raise TagError("endian", f"must be LITTLE or BIG, not {raw['endian']!r}")

    model = raw.get("model", DEFAULT_MODEL).strip()
    if not model:
        raise TagError("model", "must not be empty")

    return Tags(
        raw=dict(raw),
        model=model,
        requestid=raw.get("requestid") or None,
        datahdr_wave=datahdr == "WAVE",
        encoding=encoding,
        samprate=_int(raw, "samprate", None, 2000, 192000),
        sampwidth=_int(raw, "sampwidth", None, 1, 4),
        big_endian=endian == "BIG",
        channels=_int(raw, "channels", None, 1, 2),
        realtime=realtime,
        outstream=outstream,
        output=_format(raw, "output"),
        utterance_fmt=_format(raw, "utterance_fmt"),
        callback=_url(raw, "callback"),
        utterance_callback=utterance_callback,
        vadtype=_vadtype(raw),
        activitylevel=_req_int(raw, "activitylevel", DEFAULT_ACTIVITYLEVEL, 0, 32768),
        uttminactivity_ms=_req_int(raw, "uttminactivity", DEFAULT_UTTMINACTIVITY_MS, 0, 600_000),
        uttmaxsilence_ms=_req_int(raw, "uttmaxsilence", DEFAULT_UTTMAXSILENCE_MS, 10, 600_000),
        uttpadding_ms=_req_int(raw, "uttpadding", DEFAULT_UTTPADDING_MS, 0, 60_000),
        uttmaxtime_s=_req_int(raw, "uttmaxtime", DEFAULT_UTTMAXTIME_S, 1, 3600),
        redaction=_redaction(raw, outstream),
    )


def _redaction(raw: Mapping[str, str], outstream: bool) -> Redaction:
    return Redaction(
        numtrans=_bool(raw, "numtrans", True),
        scrubtext=_bool(raw, "scrubtext", False),
        rules=_scrubconf(raw),
        scrubaudio=_bool(raw, "scrubaudio", False),
        scrubsil=_bool(raw, "scrubsil", False),
        mindist_s=_decimal(raw, "scrubmindist", DEFAULT_SCRUBMINDIST_S, 0.0, 60.0),
        offset_s=_decimal(raw, "scruboffset", DEFAULT_SCRUBOFFSET_S, -60.0, 60.0),
        outfmt=_choice(raw, "scruboutfmt", DEFAULT_SCRUBOUTFMT, SCRUB_OUTFMTS),
        outzip=_outzip(raw),
        notext=_notext(raw),
    )


def _outzip(raw: Mapping[str, str]) -> bool:
    value = raw.get("outzip", "false").strip().lower()
    if value == "7z":
        raise TagError("outzip", "the stand-in makes zip containers, not 7z")
    if value not in ("true", "false", "zip"):
        raise TagError("outzip", f"must be true, false, zip or 7z, not {raw['outzip'][:80]!r}")
    return value != "false"


def _notext(raw: Mapping[str, str]) -> bool:
    on = _bool(raw, "notext", False)
    if on and not _bool(raw, "scrubaudio", False):
        raise TagError(
            "notext", "without a transcript the result is the scrubbed audio: needs scrubaudio=true"
        )
    return on


def _decimal(raw: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    text = _number_text(raw, name, _DECIMAL, "a number of seconds")
    return default if text is None else _in_range(name, float(text), low, high)


def _choice(raw: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = raw.get(name, default).strip().lower()
    if value not in allowed:
        raise TagError(name, f"must be one of {', '.join(allowed)}, not {raw[name][:80]!r}")
    return value


def _scrubconf(raw: Mapping[str, str]) -> tuple[Rule, ...] | None:
    if "scrubconf" not in raw:
        return None
    try:
        return parse_scrubconf(raw["scrubconf"])
    except ScrubConfError as exc:
        raise TagError("scrubconf", str(exc)) from None


def _bool(raw: Mapping[str, str], name: str, default: bool) -> bool:
    if name not in raw:
        return default
    value = _TRUE.get(raw[name].strip().lower())
    if value is None:
        raise TagError(name, f"must be true or false, not {raw[name]!r}")
    return value


def _int(raw: Mapping[str, str], name: str, default: int | None, low: int, high: int) -> int | None:
    text = _number_text(raw, name, _INTEGER, "an integer")
    return default if text is None else _in_range(name, int(text), low, high)


def _number_text(raw: Mapping[str, str], name: str, pattern: re.Pattern[str], what: str) -> str | None:
    """The tag's value if it is given and spelled as `pattern` says (ASCII digits only), else None."""
    if name not in raw:
        return None
    text = raw[name].strip()
    if not pattern.fullmatch(text):
        raise TagError(name, f"must be {what}, not {raw[name][:80]!r}")
    return text


def _shown(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


def _in_range(name: str, value: N, low: N, high: N) -> N:
    if not low <= value <= high:
        raise TagError(name, f"must be between {_shown(low)} and {_shown(high)}, not {_shown(value)}")
    return value


def _req_int(raw: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = _int(raw, name, default, low, high)
    assert value is not None
    return value


def _format(raw: Mapping[str, str], name: str) -> Format:
    value = raw.get(name, "json").strip().lower()
    if value == "jsontop":  # the documented variant; the stand-in's json already is a top-level object
        value = "json"
    try:
        return Format(value)
    except ValueError:
        raise TagError(name, f"the stand-in supports json or text, not {raw[name]!r}") from None


def _url(raw: Mapping[str, str], name: str) -> str | None:
    if name not in raw or not raw[name].strip():
        return None
    value = raw[name].strip()
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when not a number from 0 to 65535
    except ValueError:
        raise TagError(name, f"must be an http or https URL, not {value[:200]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise TagError(name, f"must be an http or https URL, not {value[:200]!r}")
    return value


def _vadtype(raw: Mapping[str, str]) -> VadType:
    value = raw.get("vadtype", "energy").strip().lower()
    try:
        return VadType(value)
    except ValueError:
        raise TagError("vadtype", f"must be energy or level, not {raw['vadtype']!r}") from None

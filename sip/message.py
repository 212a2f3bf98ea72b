"""Read what the bridge needs out of a raw SIP request (no I/O).

pjsua2 hands `onIncomingCall` the whole INVITE as text (`prm.rdata.wholeMsg`). We parse the header
section ourselves, tolerantly: folded lines are unfolded, compact header names are expanded, and
header names are matched case-insensitively. `parse_request` raises ValueError and nothing else,
whatever the text: a request line that is not `METHOD uri SIP/x` (method an RFC 3261 token, uri not
empty); header lines without a colon are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMPACT = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "m": "contact",
    "c": "content-type",
    "l": "content-length",
    "v": "via",
    "k": "supported",
}
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")  # RFC 3261 §25.1 `token`, ASCII only


@dataclass(frozen=True)
class SipRequest:
    """The request line, the headers (lower-case names, in order) and the body."""

    method: str
    uri: str
    headers: tuple[tuple[str, str], ...]
    body: str

    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        wanted = COMPACT.get(name.lower(), name.lower())
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def content_type(self) -> str:
        value = self.header("content-type") or ""
        return value.split(";", 1)[0].strip().lower()


def parse_request(text: str) -> SipRequest:
    """Parse a SIP request; raise ValueError if there is no request line."""
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    request_line = lines[0].strip().split(" ")
    if (
        len(request_line) != 3
        or not _TOKEN.fullmatch(request_line[0])
        or not request_line[1]
        or not request_line[2].upper().startswith("SIP/")
    ):
        raise ValueError(f"not a SIP request line: {lines[0][:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        headers.append((COMPACT.get(key, key), value.strip()))
    return SipRequest(request_line[0], request_line[1], tuple(headers), body)

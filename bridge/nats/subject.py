"""NATS subjects of events, without I/O: ``<prefix>.<route>.<call id>.<type>``.

A subject is tokens joined by ``.``; a token may not be empty nor hold ``.``, ``*``, ``>`` or white
space. Route names (`bridge.config.ROUTE_NAME`) and the prefix (`bridge.config.NATS_TOKEN`) are tokens
already; an event type becomes one with ``.`` replaced by ``_`` (``call.started`` → ``call_started``).

A SIP Call-ID is any string, so it is encoded, reversibly (`encode_call_id` / `decode_call_id`):

- its UTF-8 bytes ``A-Z a-z 0-9 - _ @`` are kept as they are;
- every other byte is written ``%XX`` (two upper-case hex digits): ``a84b4c76e66710@pc33.example.com``
  → ``a84b4c76e66710@pc33%2Eexample%2Ecom``;
- the empty Call-ID is the token ``%`` (a lone ``%`` is never otherwise produced).

The encoding is canonical: `decode_call_id` refuses (ValueError) anything `encode_call_id` would not
produce, so one Call-ID has exactly one token, and a consumer's filter ``vblaze.*.<token>.>`` matches
every event of that call and nothing else.
"""

from __future__ import annotations

import re

SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_@")
EMPTY = "%"  # the token of the empty Call-ID
_HEX = "0123456789ABCDEF"
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
TOKEN = re.compile(r"[^.*>\s]+")  # what NATS accepts as one subject token


def encode_call_id(call_id: str) -> str:
    """The subject token of `call_id` (see the module docstring)."""
    if not call_id:
        return EMPTY
    out: list[str] = []
    for byte in call_id.encode("utf-8", errors="surrogatepass"):
        if byte in SAFE:
            out.append(chr(byte))
        else:
            out.append("%" + _HEX[byte >> 4] + _HEX[byte & 15])
    return "".join(out)


def decode_call_id(token: str) -> str:
    """The Call-ID whose token is `token`; ValueError if `token` is not one `encode_call_id` makes."""
    if token == EMPTY:
        return ""
    if not token:
        raise ValueError("an empty token (the empty Call-ID is %)")
    raw = bytearray()
    i = 0
    while i < len(token):
        char = token[i]
        if char == "%":
            match = _ESCAPE.match(token, i)
            if match is None:
                raise ValueError(f"bad escape at {i} in {token!r}")
            byte = int(match.group(1), 16)
            if byte in SAFE:
                raise ValueError(f"escaped safe byte at {i} in {token!r}")
            raw.append(byte)
            i += 3
        elif ord(char) < 128 and ord(char) in SAFE:
            raw.append(ord(char))
            i += 1
        else:
            raise ValueError(f"unsafe character {char!r} at {i} in {token!r}")
    return raw.decode("utf-8", errors="surrogatepass")


def event_type(kind: str) -> str:
    """The subject token of an event kind: ``call.started`` → ``call_started``."""
    return kind.replace(".", "_")


def subject(prefix: str, route: str, call_id: str, kind: str) -> str:
    """The subject an event is published on."""
    return f"{prefix}.{route}.{encode_call_id(call_id)}.{event_type(kind)}"


def call_filter(prefix: str, call_id: str) -> str:
    """The subject filter of every event of one call, on any route."""
    return f"{prefix}.*.{encode_call_id(call_id)}.>"

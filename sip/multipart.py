"""Split a multipart SIP body into its parts (no I/O).

A SIPREC INVITE (RFC 7866 §8) carries `multipart/mixed` with an `application/sdp` part and an
`application/rs-metadata+xml` part (`Content-Disposition: recording-session`). Recording clients
in the field get the framing wrong in small ways, so this reader is tolerant:

- the boundary comes from the Content-Type parameter, quoted or not, any case of `boundary`, spaces
  around `=`; when it is missing, or the body never uses it, the first `--token` line of the body is
  taken as the boundary instead;
- lines end in CRLF or LF; trailing spaces or tabs after a delimiter are ignored (RFC 2046 allows
  transport padding, some SBCs add more);
- preamble and epilogue are dropped; a missing close delimiter (`--boundary--`) ends the last part
  at the end of the body;
- part header names are case-insensitive, folded lines are unfolded; a part without headers gets a
  content type sniffed from its body (SDP or XML) instead of the RFC default `text/plain`;
- nested multipart parts (`multipart/alternative` inside `multipart/mixed`) are flattened in order,
  `MAX_DEPTH` levels deep at most.

Nothing here raises, whatever the text: a body that cannot be split gives no parts (or one part,
for a body that is not multipart), and the caller decides what a missing part means.

    parts = split_multipart(request.header("content-type") or "", request.body)
    sdp = find_part(parts, "application/sdp")
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_DEPTH = 3
_TOKEN_LINE = re.compile(r"^--([^\s-][^\s]*?)(--)?[ \t]*$")


@dataclass(frozen=True)
class ContentType:
    """A parsed Content-Type (or Content-Disposition) value: lower-case type, lower-case param names."""

    value: str
    params: tuple[tuple[str, str], ...]

    def param(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.params:
            if key == wanted:
                return value
        return None


@dataclass(frozen=True)
class Part:
    """One body part: its content type (lower case, no parameters), its headers and its body.

    `headers` hold lower-case names in order. `body` keeps the part's own line endings, without the
    line break that belongs to the next delimiter.
    """

    content_type: str
    headers: tuple[tuple[str, str], ...]
    body: str

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    @property
    def disposition(self) -> str | None:
        """The Content-Disposition type in lower case (`session`, `recording-session`, ...), or None."""
        value = self.header("content-disposition")
        return parse_header_value(value).value if value else None

    @property
    def handling(self) -> str | None:
        """The Content-Disposition `handling` parameter (`required` / `optional`), or None."""
        value = self.header("content-disposition")
        return parse_header_value(value).param("handling") if value else None


def parse_header_value(value: str) -> ContentType:
    """Parse `type/subtype; name=value; name="quoted; value"` tolerantly."""
    items = _split_params(value)
    main = items[0].strip().lower() if items else ""
    params: list[tuple[str, str]] = []
    for item in items[1:]:
        name, sep, raw = item.partition("=")
        if not sep:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"')
        params.append((name.strip().lower(), raw))
    return ContentType(main, tuple(params))


def _split_params(value: str) -> list[str]:
    """Split at semicolons that are not inside double quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def is_multipart(content_type: str) -> bool:
    return parse_header_value(content_type).value.startswith("multipart/")


def split_multipart(content_type: str, body: str, _depth: int = 0) -> list[Part]:
    """The parts of a multipart body, in order (nested multiparts flattened).

    Not multipart at all: one part holding the whole body. Multipart with no delimiter found: an
    empty list.
    """
    ctype = parse_header_value(content_type)
    if not ctype.value.startswith("multipart/"):
        return [Part(ctype.value or _sniff(body), (), body)]
    boundary = (ctype.param("boundary") or "").strip()
    lines = body.splitlines(keepends=True)
    if not boundary or not any(_delimiter(line, boundary) for line in lines):
        boundary = _guess_boundary(lines) or ""
        if not boundary:
            return []
    chunks: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        kind = _delimiter(line, boundary)
        if kind is None:
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            chunks.append(current)
        current = None if kind == "close" else []
        if kind == "close":
            break
    if current is not None:  # no close delimiter: the last part runs to the end of the body
        chunks.append(current)
    parts: list[Part] = []
    for chunk in chunks:
        part = _part(chunk)
        if part is None:
            continue
        if part.content_type.startswith("multipart/") and _depth < MAX_DEPTH:
            parts.extend(split_multipart(part.header("content-type") or "", part.body, _depth + 1))
        else:
            parts.append(part)
    return parts


def framing_issues(content_type: str, body: str) -> tuple[str, ...]:
    """How a multipart body's framing departs from RFC 2046, for logs (empty: it does not).

    "no close delimiter" matters beyond logs: pjsip 2.15 then finds no SDP in the INVITE and
    answers it as an offerless INVITE (its own offer, sendrecv), measured with the PyPI wheel. A
    missing boundary parameter, a `Boundary` in another case, LF-only lines and padding after a
    delimiter it tolerates.
    """
    if not is_multipart(content_type):
        return ()
    issues: list[str] = []
    declared = (parse_header_value(content_type).param("boundary") or "").strip()
    lines = body.splitlines(keepends=True)
    boundary = declared
    if not declared:
        issues.append("no boundary parameter")
    elif not any(_delimiter(line, declared) for line in lines):
        issues.append("boundary parameter not used in the body")
        boundary = ""
    boundary = boundary or _guess_boundary(lines) or ""
    if not boundary:
        return (*issues, "no delimiter line")
    if not any(_delimiter(line, boundary) == "close" for line in lines):
        issues.append("no close delimiter")
    if any(line.endswith("\n") and not line.endswith("\r\n") for line in lines):
        issues.append("LF line endings")
    if any(_delimiter(line, boundary) and line.rstrip("\r\n") != line.rstrip() for line in lines):
        issues.append("padding after a delimiter")
    return tuple(issues)


def find_part(parts: list[Part], content_type: str) -> Part | None:
    """The first part of this content type (exact, lower case), or None."""
    wanted = content_type.lower()
    return next((part for part in parts if part.content_type == wanted), None)


def _delimiter(line: str, boundary: str) -> str | None:
    text = line.rstrip("\r\n").rstrip(" \t")
    if not text.startswith("--"):
        return None
    if text == f"--{boundary}":
        return "open"
    if text == f"--{boundary}--":
        return "close"
    return None


def _guess_boundary(lines: list[str]) -> str | None:
    for line in lines:
        match = _TOKEN_LINE.match(line.rstrip("\r\n"))
        if match:
            return match.group(1)
    return None


def _part(lines: list[str]) -> Part | None:
    if lines:  # the line break before a delimiter belongs to the delimiter
        lines = [*lines[:-1], lines[-1].rstrip("\r\n")]
    text = "".join(lines)
    if not text.strip():
        return None
    headers: list[tuple[str, str]] = []
    index = 0
    if _looks_like_header(lines[0]):
        while index < len(lines):
            line = lines[index].rstrip("\r\n")
            index += 1
            if not line.strip():
                break
            if line[:1] not in (" ", "\t") and not _looks_like_header(line):
                index -= 1  # no blank line after the headers: the body starts here
                break
            if line[:1] in (" ", "\t") and headers:
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}")
                continue
            name, sep, value = line.partition(":")
            if sep:
                headers.append((name.strip().lower(), value.strip()))
    body = "".join(lines[index:])
    declared = next((value for name, value in headers if name in ("content-type", "c")), None)
    ctype = parse_header_value(declared).value if declared else _sniff(body)
    return Part(ctype, tuple(headers), body)


def _looks_like_header(line: str) -> bool:
    name, sep, _ = line.partition(":")
    return bool(sep) and bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9\-_.!%*+`'~]*", name.strip()))


def _sniff(body: str) -> str:
    head = body.lstrip()
    if head.startswith("v=0"):
        return "application/sdp"
    if head.startswith("<"):
        return "application/rs-metadata+xml" if "recording" in head[:400] else "application/xml"
    return "text/plain"

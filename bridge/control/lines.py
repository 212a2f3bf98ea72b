"""Request and reply lines of the supervisor-worker control channel, without I/O.

The channel (see `bridge.app` and `bridge.worker`) carries ASCII lines. Besides ``ping``/``pong``,
``ready``, ``draining`` and ``engine R F``, the control API adds one request/reply pair:

- supervisor -> worker: ``call ID JSON`` — ID a decimal of 1 to 9 digits, JSON an object with ``op``
  (`Op`), and ``call_id`` (every op but ``list``), ``by`` (pause, resume), ``reason`` (pause, or null);
- worker -> supervisor: ``reply ID JSON`` — JSON an object ``{"status": S, "body": {...}}``, S an HTTP
  status the API answers with (200, 400, 404, 409, 500).

JSON goes as ASCII (``ensure_ascii``); a line is at most `MAX_LINE_BYTES` with its newline, which every
reader of the channel allows (asyncio's default limit is 64 KiB). `format_request` / `format_reply`
build lines; `parse_request` / `parse_reply` read them and raise only `LineError` (a `ValueError`),
whose ``id`` is the line's id when it could be read (so a worker can answer a bad request with 400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_LINE_BYTES = 60_000
MAX_ID = 999_999_999
REQUEST_WORD = b"call"
REPLY_WORD = b"reply"


class Op(StrEnum):
    LIST = "list"
    GET = "get"
    PAUSE = "pause"
    RESUME = "resume"
    HANGUP = "hangup"


class LineError(ValueError):
    """A control line that cannot be read; `id` is its id if that much could be read."""

    def __init__(self, message: str, line_id: int | None = None) -> None:
        super().__init__(message)
        self.id = line_id


@dataclass(frozen=True)
class Request:
    id: int
    op: Op
    call_id: str | None = None
    by: str | None = None
    reason: str | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op.value}
        for key in ("call_id", "by", "reason"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class Reply:
    id: int
    status: int
    body: dict[str, Any] = field(default_factory=dict)


def _line(word: bytes, line_id: int, payload: dict[str, Any]) -> bytes:
    if not 0 <= line_id <= MAX_ID:
        raise LineError(f"id {line_id} out of range")
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    line = b"%s %d %s\n" % (word, line_id, text.encode("ascii"))
    if len(line) > MAX_LINE_BYTES:
        raise LineError(f"line of {len(line)} bytes is longer than {MAX_LINE_BYTES}", line_id)
    return line


def format_request(request: Request) -> bytes:
    return _line(REQUEST_WORD, request.id, request.payload())


def format_reply(reply: Reply) -> bytes:
    return _line(REPLY_WORD, reply.id, {"status": reply.status, "body": reply.body})


def _split(line: bytes, word: bytes) -> tuple[int, dict[str, Any]]:
    if len(line) > MAX_LINE_BYTES:
        raise LineError("line too long")
    head, _, rest = line.strip().partition(b" ")
    if head != word:
        raise LineError(f"not a {word.decode()} line")
    digits, _, text = rest.partition(b" ")
    if not (1 <= len(digits) <= 9 and digits.isdigit()):
        raise LineError("bad id")
    line_id = int(digits)
    try:
        payload = json.loads(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise LineError(f"payload is not ASCII JSON: {type(exc).__name__}", line_id) from None
    if not isinstance(payload, dict):
        raise LineError("payload is not a JSON object", line_id)
    return line_id, payload


def _text(payload: dict[str, Any], key: str, line_id: int, required: bool) -> str | None:
    value = payload.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise LineError(f"{key} must be a{' non-empty' if required else ''} string", line_id)
    return value


def parse_request(line: bytes) -> Request:
    line_id, payload = _split(line, REQUEST_WORD)
    try:
        op = Op(str(payload.get("op")))
    except ValueError:
        raise LineError("unknown op", line_id) from None
    unknown = set(payload) - {"op", "call_id", "by", "reason"}
    if unknown:
        raise LineError(f"unknown key {sorted(unknown)[0]!r}", line_id)
    call_id = _text(payload, "call_id", line_id, op is not Op.LIST)
    by = _text(payload, "by", line_id, op in (Op.PAUSE, Op.RESUME))
    reason = _text(payload, "reason", line_id, False)
    return Request(line_id, op, call_id, by, reason)


def parse_reply(line: bytes) -> Reply:
    line_id, payload = _split(line, REPLY_WORD)
    status, body = payload.get("status"), payload.get("body")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise LineError("status must be an HTTP status", line_id)
    if not isinstance(body, dict):
        raise LineError("body must be a JSON object", line_id)
    return Reply(line_id, status, body)

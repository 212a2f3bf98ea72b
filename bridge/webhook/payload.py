"""Webhook payloads and signatures, without I/O.

A `BridgeEvent` becomes one JSON object, the *envelope*::

    {"version": 1, "event_id": "<uuid>", "type": "utterance", "call_id": "...", "seq": 3,
     "time": "2026-11-24T08:00:00.123Z", "data": {...}}

`data` is the event's own data (see `bridge/events.py`); `bridge/webhook/schema.json` is its JSON Schema.
`event_id` depends only on `call_id` and `seq`, so every retry, every restart and every receiver of a
fan-out sees the same id for the same event: receivers deduplicate on it.

The body is signed with HMAC-SHA256 over ``f"{t}.".encode() + body``, where `t` is the unix time of the
attempt, and sent as ``X-VBlaze-Signature: t=<t>,v1=<hex>``. `sign` and `verify` are pure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.events import BridgeEvent

PAYLOAD_VERSION = 1
SIGNATURE_HEADER = "X-VBlaze-Signature"
EVENT_ID_HEADER = "X-VBlaze-Event-Id"
EVENT_TYPE_HEADER = "X-VBlaze-Event-Type"
ATTEMPT_HEADER = "X-VBlaze-Attempt"
USER_AGENT = f"vblaze-bridge/{__version__}"
DEFAULT_TOLERANCE_SECONDS = 300
SCHEMA_PATH = Path(__file__).with_name("schema.json")  # JSON Schema (draft 2020-12) of the body

# Fixed namespace for event ids: uuid5(namespace, f"{call_id}\n{seq}"). Never change it.
EVENT_ID_NAMESPACE = uuid.UUID("5b0c6f0e-3c55-4c7a-9a51-6f3d2d1b7e42")


def event_id(call_id: str, seq: int) -> str:
    """The stable idempotency key of event `seq` of call `call_id`."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{call_id}\n{seq}"))


def iso_time(unix: float) -> str:
    """Unix time as ISO 8601 UTC with milliseconds, e.g. ``2026-11-24T08:00:00.123Z``."""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_safe(value: Any) -> Any:
    """Replace what JSON cannot carry: non-finite floats become null, tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def envelope(event: BridgeEvent) -> dict[str, Any]:
    """The JSON object sent for `event`."""
    return {
        "version": PAYLOAD_VERSION,
        "event_id": event_id(event.call_id, event.seq),
        "type": event.kind,
        "call_id": event.call_id,
        "seq": event.seq,
        "time": iso_time(event.time),
        "data": _json_safe(event.data),
    }


def encode(event: BridgeEvent) -> bytes:
    """The request body for `event`: compact UTF-8 JSON. Never raises for JSON-like data.

    Values JSON has no type for (a `datetime`, a `Path`) are sent as their `str()`.
    """
    return json.dumps(
        envelope(event), ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str
    ).encode("utf-8")


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `X-VBlaze-Signature` value for `body` sent at unix time `timestamp`."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(
    secret: bytes,
    header: str,
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """Whether `header` is a valid signature of `body`, made within `tolerance` seconds of `now`.

    Accepts several ``v1=`` entries (as during a secret rotation); any one matching is enough.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)


def request_headers(
    *,
    secret: bytes,
    timestamp: int,
    body: bytes,
    event_id: str,
    event_type: str,
    attempt: int,
    bearer_token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> dict[str, str]:
    """Headers of one attempt: content type, signature, event id and type, attempt number, and
    ``Authorization`` if a bearer token or basic credentials are given (the token wins)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        EVENT_ID_HEADER: event_id,
        EVENT_TYPE_HEADER: event_type,
        ATTEMPT_HEADER: str(attempt),
    }
    if bearer_token:
        headers["Authorization"] = f"Bearer {bearer_token}"
    elif basic_auth is not None:
        user, password = basic_auth
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return headers

"""The control API's rules, without I/O: who is asking, what a body says, what to answer.

The routes (`bridge/control/openapi.yaml` is the contract; `bridge/control/server.py` serves it):

    GET  /v1/calls                       every active call of the pool
    GET  /v1/calls/{call_id}             one call
    POST /v1/calls/{call_id}/pause       body {"reason": "..."} (optional): silence to the engine
    POST /v1/calls/{call_id}/resume      body {} or none
    POST /v1/calls/{call_id}/hangup      body {} or none
    GET  /v1/openapi.yaml                the OpenAPI document (no token needed)

- `authenticate`: ``Authorization: Bearer <token>`` against every configured token with
  `hmac.compare_digest` (no early exit on a match); the token's name, or None (401, nothing done).
- `read_body`: the JSON body of a POST (empty = ``{}``); an `Answer` 400 naming the field otherwise.
- `combine`: the workers' replies to one request (None for a worker that did not answer in time) make
  the answer: for a call, the reply of the worker holding it; 404 when every worker answered and none
  holds it; 503 when one did not answer and none holds it. The list is 503 unless every worker asked
  (serving or draining) answered (a partial list would pass for a complete one).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.config import MAX_REASON_LENGTH, ControlConfig
from bridge.control.lines import Op, Reply
from bridge.errors import ConfigError

MAX_BODY_BYTES = 16 * 1024
MAX_CALL_ID_LENGTH = 1024
BODY_KEYS: dict[Op, frozenset[str]] = {
    Op.PAUSE: frozenset({"reason"}),
    Op.RESUME: frozenset(),
    Op.HANGUP: frozenset(),
}


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any] = field(default_factory=dict)


def error(status: int, message: str, field_name: str | None = None) -> Answer:
    body: dict[str, Any] = {"error": message}
    if field_name is not None:
        body["field"] = field_name
    return Answer(status, body)


UNAUTHORIZED = error(401, "a valid bearer token is required")


def authenticate(header: str | None, tokens: Mapping[str, str]) -> str | None:
    """The name of the token `header` carries, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    given = value.strip().encode("utf-8", "replace")
    found = None
    for name, token in tokens.items():
        if hmac.compare_digest(given, token.encode("utf-8")):
            found = name
    return found


def check_call_id(call_id: str) -> Answer | None:
    if not call_id or len(call_id) > MAX_CALL_ID_LENGTH:
        return error(404, "no such call")
    return None


def read_body(op: Op, raw: bytes) -> dict[str, Any] | Answer:
    """The body of a POST for `op`, or the 400 to answer."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return error(400, "the body is not JSON", "body")
    if not isinstance(body, dict):
        return error(400, "the body must be a JSON object", "body")
    for key in body:
        if key not in BODY_KEYS[op]:
            return error(400, f"unknown field {str(key)[:64]!r}", str(key)[:64])
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        return error(400, "reason must be a string", "reason")
    if isinstance(reason, str) and len(reason) > MAX_REASON_LENGTH:
        return error(400, f"reason is longer than {MAX_REASON_LENGTH} characters", "reason")
    return body


def combine(op: Op, replies: Sequence[Reply | None]) -> Answer:
    """The API's answer from every serving worker's reply (see the module docstring)."""
    silent = sum(1 for reply in replies if reply is None)
    if op is Op.LIST:
        if silent:
            return error(503, f"{silent} worker(s) did not answer in time")
        calls = [call for reply in replies if reply is not None for call in reply.body.get("calls", [])]
        return Answer(200, {"calls": calls})
    for reply in replies:
        if reply is not None and reply.status != 404:
            return Answer(reply.status, reply.body)
    if silent:
        return error(503, f"{silent} worker(s) did not answer in time; the call may be theirs")
    return error(404, "no such call")


def load_tokens(control: ControlConfig, env: Mapping[str, str]) -> dict[str, str]:
    """Token name -> value, from the environment variables `control.tokens` names. A variable unset or
    empty is a `ConfigError` naming the key (the supervisor then does not start): a token configured but
    absent would lock its holder out without a word. Only with the API enabled (`control.port` > 0)."""
    tokens: dict[str, str] = {}
    if not control.port:
        return tokens
    for index, token in enumerate(control.tokens):
        value = env.get(token.env, "").strip()
        if not value:
            raise ConfigError(
                f"control.tokens.{index}.env: environment variable {token.env} "
                f"(token {token.name!r}) is not set"
            )
        tokens[token.name] = value
    return tokens

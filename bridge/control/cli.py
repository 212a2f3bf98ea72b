"""`vblaze-bridge calls` and `vblaze-bridge pause|resume|hangup CALL_ID`: thin clients of the control API.

`vblaze-bridge calls --follow [--call CALL_ID]` shows the live feed instead (`GET /v1/events`, one line
per event: `bridge/control/follow.py`): the events of the calls up from their start, then each event as
it happens, until Ctrl-C. A dropped stream is reopened with its last event id (no event twice, none
missed while it is still held), after FOLLOW_RETRY_SECONDS; a refused token ends it with status 1.

The address is the config file's ``control.host:control.port``; the token comes from the environment
variable ``--token-env`` names (``VBLAZE_CONTROL_TOKEN`` by default), never from the command line (it
would show in the process list). The API's JSON answer goes to stdout. Exit status: 0 for a 2xx, 1 for
any other answer (its error on stderr), 2 for a bad config or a missing token, 3 when the API cannot
be reached.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, TextIO

from bridge.config import Config
from bridge.control import follow as view

DEFAULT_TOKEN_ENV = "VBLAZE_CONTROL_TOKEN"
FOLLOW_READ_TIMEOUT = 45.0  # the feed sends a keepalive every 15 s: three missed, and it is reopened
FOLLOW_RETRY_SECONDS = (1.0, 2.0, 5.0)  # waits before reopening a dropped feed (the last repeats)
TIMEOUT_SECONDS = 10.0  # the API itself answers within control.timeout_seconds; this bounds the network
EXIT_OK, EXIT_ANSWER, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def request_for(command: str, call_id: str | None, reason: str | None) -> tuple[str, str, bytes | None]:
    """(method, path, body) of a CLI command."""
    if command == "calls":
        return "GET", "/v1/calls", None
    path = f"/v1/calls/{urllib.parse.quote(call_id or '', safe='')}/{command}"
    body: dict[str, Any] = {"reason": reason} if command == "pause" and reason is not None else {}
    return "POST", path, json.dumps(body).encode()


def run(
    config: Config,
    command: str,
    call_id: str | None,
    reason: str | None,
    token_env: str,
    env: Mapping[str, str],
) -> int:
    token = env.get(token_env, "").strip()
    if not token:
        print(
            f"vblaze-bridge: environment variable {token_env} (the control API token) is not set",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not config.control.port:
        print("vblaze-bridge: the control API is disabled (control.port is 0)", file=sys.stderr)
        return EXIT_USAGE
    method, path, body = request_for(command, call_id, reason)
    host = config.control.host if config.control.host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{host}:{config.control.port}{path}"
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            print(response.read().decode("utf-8", "replace"))
            return EXIT_OK
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        print(f"vblaze-bridge: {method} {path}: HTTP {exc.code}: {text.strip()}", file=sys.stderr)
        return EXIT_ANSWER
    except (urllib.error.URLError, OSError) as exc:
        print(f"vblaze-bridge: control API at {url} not reachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


def follow(config: Config, call_id: str | None, token_env: str, env: Mapping[str, str], out: TextIO) -> int:
    """Print the live feed until Ctrl-C; 1 if the token is refused, 2 for a bad setting."""
    token = env.get(token_env, "").strip()
    if not token or not config.control.port:
        return run(config, "calls", None, None, token_env, env)  # says which, with its exit status
    host = config.control.host if config.control.host not in ("0.0.0.0", "::") else "127.0.0.1"
    query = f"?{urllib.parse.urlencode({'call_id': call_id})}" if call_id else ""
    url = f"http://{host}:{config.control.port}/v1/events{query}"
    last: str | None = None
    failures = 0
    try:
        while True:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            if last is not None:
                request.add_header("Last-Event-ID", last)
            try:
                with urllib.request.urlopen(request, timeout=FOLLOW_READ_TIMEOUT) as response:
                    failures = 0
                    last = _print_feed(response, out, last)
                reason = "the feed ended"
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    print(f"vblaze-bridge: {url}: HTTP {exc.code}: the token was refused", file=sys.stderr)
                    return EXIT_ANSWER
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:  # refused, reset, or no keepalive in time
                reason = str(exc)
            wait = FOLLOW_RETRY_SECONDS[min(failures, len(FOLLOW_RETRY_SECONDS) - 1)]
            failures += 1
            print(f"vblaze-bridge: live feed: {reason}; reopening in {wait:.0f} s", file=sys.stderr)
            time.sleep(wait)
    except KeyboardInterrupt:
        return EXIT_OK


def _print_feed(response: Any, out: TextIO, last: str | None) -> str | None:
    """Print each event of one open feed; the id of the last one printed."""
    parser = view.SseParser()
    for raw in response:
        message = parser.feed(raw.decode("utf-8", "replace").rstrip("\r\n"))
        if message is None:
            continue
        if message.event == "cut":
            print(f"vblaze-bridge: live feed cut off: {' '.join(message.data)}", file=sys.stderr)
            break
        envelope = view.envelope_of(message)
        if envelope is not None:
            print(view.event_line(envelope), file=out, flush=True)
            last = message.id or last
    return last

"""`vblaze-bridge calls` and `vblaze-bridge pause|resume|hangup CALL_ID`: thin clients of the control API.

The address is the config file's ``control.host:control.port``; the token comes from the environment
variable ``--token-env`` names (``VBLAZE_CONTROL_TOKEN`` by default), never from the command line (it
would show in the process list). The API's JSON answer goes to stdout. Exit status: 0 for a 2xx, 1 for
any other answer (its error on stderr), 2 for a bad config or a missing token, 3 when the API cannot
be reached.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from bridge.config import Config

DEFAULT_TOKEN_ENV = "VBLAZE_CONTROL_TOKEN"
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

"""The test webhook receiver (`receiver.Receiver`) as a process of its own, for a host in a network namespace.

    python -m tests.bridge.webhook.receiver_main --host 10.231.0.30 --port 8080 --out hook.jsonl \\
        [--refuse-while GATE]

Every request is appended to `--out` as one JSON line, ``{"status", "signature_ok", "at", "envelope"}``
(`at` is the unix time it arrived), flushed at once, so a test in another namespace reads the file.
While the file `--refuse-while` exists every request is answered 503 with ``Retry-After: 1`` (the bridge
keeps the events in its spool); 200 otherwise. The secret is read from `--secret-env` (the bridge's
default variable). Prints ``receiver ready URL`` once it listens; runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import IO

from tests.bridge.webhook.receiver import Answer, Receiver, Request

REFUSED_RETRY_AFTER = "1"


class Recorder:
    """The receiver's answer function: decides by the gate file and records the request."""

    def __init__(self, out: IO[str], gate: Path | None) -> None:
        self._out = out
        self._gate = gate

    def __call__(self, request: Request) -> Answer:
        refused = self._gate is not None and self._gate.exists()
        answer = Answer(status=503, retry_after=REFUSED_RETRY_AFTER) if refused else Answer()
        line = {
            "status": answer.status,
            "signature_ok": request.signature_ok,
            "at": time.time(),
            "envelope": request.envelope,
        }
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()
        return answer


async def serve(args: argparse.Namespace, out: IO[str]) -> None:
    secret = os.environ.get(args.secret_env, "").encode()
    gate = Path(args.refuse_while) if args.refuse_while else None
    receiver = Receiver(answer=Recorder(out, gate), secret=secret, port=args.port, host=args.host)
    await receiver.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"receiver ready {receiver.url}", flush=True)
    await stop.wait()
    await receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON-lines file every request is appended to")
    parser.add_argument("--refuse-while", default=None, help="answer 503 while this file exists")
    parser.add_argument("--secret-env", default="VBLAZE_BRIDGE_WEBHOOK_SECRET")
    args = parser.parse_args()
    with Path(args.out).open("a", encoding="utf-8") as out:
        asyncio.run(serve(args, out))


if __name__ == "__main__":
    main()

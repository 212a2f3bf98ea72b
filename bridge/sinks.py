"""The JSON-lines sink: each event as one line on stdout or appended to a file.

Each line is written with a single `os.write`, so lines from several worker processes appending to
the same file (O_APPEND) or pipe do not interleave in practice (a pipe guarantees it up to PIPE_BUF).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

from bridge.config import Config
from bridge.events import BridgeEvent, EventSink


class JsonLinesSink:
    """Writes every event at once; a failed write raises, it is never dropped silently."""

    def __init__(self, path: str) -> None:
        if path == "-":
            self._fd = sys.stdout.fileno()
            self._own = False
        else:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self._own = True

    async def start(self) -> None:
        """Nothing to open: the file is opened in the constructor."""

    def submit(self, event: BridgeEvent) -> None:
        line = json.dumps(asdict(event), ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode()
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 (the EventSink contract)
        if self._own:
            os.close(self._fd)


def make_sink(config: Config) -> EventSink:
    """The sink named by `sink.kind`."""
    if config.sink.kind == "webhook":
        from bridge.webhook.delivery import make_webhook_sink

        return make_webhook_sink(config)
    return JsonLinesSink(config.sink.jsonl_path)

"""Logging: JSON lines under systemd or when asked, readable text on a terminal.

Each process calls :func:`setup_logging` once, first thing, with its name (``supervisor``,
``worker-0``, ...). Modules log through ``logging.getLogger(__name__)`` with lazy ``%`` arguments.
Code that handles one call wraps its logger with :func:`call_logger` so every line carries the
``call_id``. Nothing logs per audio frame: per-frame facts go to metrics.

A JSON line has ``ts`` (ISO 8601 UTC), ``level``, ``logger``, ``process`` (the process name), ``pid``,
``msg``, ``call_id`` when the line is about a call, any other ``extra=`` fields, and ``exc`` with the
traceback when there is one. A text line reads
``2024-05-01 12:00:00,123 INFO worker-0 bridge.call [call_id=abc] answered``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

from bridge.config import LoggingConfig

# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into JSON.
_RESERVED = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "process_name", "call_id", "taskName"}
)


class _ProcessNameFilter(logging.Filter):
    """Stamps every record with the process name given to setup_logging."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = self.process_name
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": getattr(record, "process_name", None),
            "pid": record.process,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None)
        if call_id is not None:
            out["call_id"] = call_id
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """A readable line: time, level, process, logger, ``[call_id=…]`` when about a call, message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(process_name)s %(name)s %(call_prefix)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None)
        record.call_prefix = f"[call_id={call_id}] " if call_id is not None else ""
        if not hasattr(record, "process_name"):
            record.process_name = "-"
        return super().format(record)


def wants_json(fmt: str, stream: TextIO | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether `fmt` (``auto``/``json``/``text``) means JSON for this stream and environment.

    ``auto`` is JSON under systemd (``JOURNAL_STREAM`` or ``INVOCATION_ID`` set) or when stderr is
    not a terminal, and text on a terminal.
    """
    if fmt == "json":
        return True
    if fmt == "text":
        return False
    environ = os.environ if env is None else env
    if environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"):
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def setup_logging(
    cfg: LoggingConfig,
    process_name: str,
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Configure the root logger for this process (replacing earlier handlers); return the handler."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if wants_json(cfg.format, stream, env) else TextFormatter())
    handler.addFilter(_ProcessNameFilter(process_name))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(cfg.level)
    # Quieten libraries that would otherwise log per request or per frame.
    for noisy in ("aiohttp.access", "websockets.client", "websockets.protocol"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    return handler


class CallLoggerAdapter(logging.LoggerAdapter[logging.Logger]):
    """Adds ``call_id`` (and any fixed extras) to every record, keeping extras passed per call."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def call_logger(logger: logging.Logger, call_id: str, **fields: Any) -> CallLoggerAdapter:
    """A logger whose every line carries `call_id` (JSON field; ``[call_id=…]`` prefix in text)."""
    return CallLoggerAdapter(logger, {"call_id": call_id, **fields})

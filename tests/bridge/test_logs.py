"""JSON lines under systemd, text on a terminal, call_id on every call line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bridge.config import LoggingConfig
from bridge.logs import call_logger, setup_logging, wants_json


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert wants_json("auto", _Tty(), env={}) is False
    assert wants_json("auto", io.StringIO(), env={}) is True
    assert wants_json("auto", _Tty(), env={"JOURNAL_STREAM": "8:1234"}) is True
    assert wants_json("auto", _Tty(), env={"INVOCATION_ID": "abc"}) is True
    assert wants_json("json", _Tty(), env={}) is True
    assert wants_json("text", io.StringIO(), env={"JOURNAL_STREAM": "8:1"}) is False


def test_json_lines_carry_process_and_call_id() -> None:
    out = io.StringIO()
    setup_logging(LoggingConfig(format="json"), "worker-1", stream=out, env={})
    log = logging.getLogger("bridge.call")
    log.info("worker up")
    call_logger(log, "c-42").info("answered from %s", "10.0.0.1", extra={"codec": "PCMU"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["process"] == "worker-1"
    assert "call_id" not in lines[0]
    assert lines[1]["call_id"] == "c-42"
    assert lines[1]["msg"] == "answered from 10.0.0.1"
    assert lines[1]["codec"] == "PCMU"
    assert lines[1]["level"] == "INFO"
    assert lines[1]["logger"] == "bridge.call"
    assert lines[1]["ts"].endswith("+00:00")


def test_json_carries_the_traceback() -> None:
    out = io.StringIO()
    setup_logging(LoggingConfig(format="json"), "supervisor", stream=out, env={})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("bridge.app").exception("it failed")
    line = json.loads(out.getvalue())
    assert "ValueError: boom" in line["exc"]


def test_text_has_a_call_id_prefix() -> None:
    out = _Tty()
    setup_logging(LoggingConfig(format="auto"), "worker-0", stream=out, env={})
    log = logging.getLogger("bridge.call")
    call_logger(log, "abc").warning("engine lost")
    log.info("plain")
    first, second = out.getvalue().splitlines()
    assert " WARNING worker-0 bridge.call [call_id=abc] engine lost" in first
    assert " INFO worker-0 bridge.call plain" in second
    assert not first.startswith("{")


def test_level_filters() -> None:
    out = io.StringIO()
    setup_logging(LoggingConfig(format="json", level="WARNING"), "w", stream=out, env={})
    logging.getLogger("bridge.x").info("hidden")
    logging.getLogger("bridge.x").warning("shown")
    assert [json.loads(x)["msg"] for x in out.getvalue().splitlines()] == ["shown"]


def test_setup_replaces_earlier_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(LoggingConfig(format="json"), "w", stream=first, env={})
    setup_logging(LoggingConfig(format="json"), "w", stream=second, env={})
    logging.getLogger("bridge.x").warning("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1

"""A worker's side of the control channel (bridge/worker.py): every request is answered, a bad line or a
failing call included, and the channel goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bridge.config import load_config
from bridge.control.lines import Op, Request, format_request, parse_reply
from bridge.worker import Worker


class _Writer:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.lines.append(data)

    def is_closing(self) -> bool:
        return False


class _Call:
    call_id = "c@h"
    reason_max_length = 50
    ending = False

    def pause(self, by: str, reason: str | None = None) -> bool:
        raise RuntimeError("pipeline defect")

    def resume(self, by: str) -> bool:
        return False

    def snapshot(self) -> dict[str, Any]:
        return {"call_id": self.call_id}


async def test_bad_lines_and_failing_calls_get_an_answer(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"state": {"directory": str(tmp_path / "state")}, "sink": {"kind": "jsonl"}})
    )
    worker = Worker(load_config(path), 0)
    writer = _Writer()
    worker._control = writer  # type: ignore[assignment]
    worker.calls[1] = _Call()  # type: ignore[assignment]
    worker._control_request(b'call 7 {"op": "reboot"}\n')
    worker._control_request(b"call nonsense\n")  # no id to answer: logged only
    worker._control_request(format_request(Request(8, Op.PAUSE, "c@h", "api:desk", None)))
    worker._control_request(format_request(Request(9, Op.LIST)))
    replies = [parse_reply(line) for line in writer.lines]
    assert [(r.id, r.status) for r in replies] == [(7, 400), (8, 500), (9, 200)]
    assert replies[2].body == {"calls": [{"call_id": "c@h"}]}

"""A frame a call cannot take is counted every time and logged once per call, never a line per frame."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import metrics
from bridge.config import load_config
from bridge.worker import Worker


class _Failing:
    """A call whose audio() always fails, as a defect in the pipeline would."""

    def __init__(self) -> None:
        self.log = logging.getLogger("bridge.call")
        self.frames = 0

    def audio(self, stream: int, pcm: bytes | None, arrival: float) -> None:
        self.frames += 1
        raise RuntimeError("pipeline defect")


def _dropped() -> float:
    return metrics.AUDIO_FRAMES_DROPPED.labels("other")._value.get()  # type: ignore[attr-defined,no-any-return]


async def test_failing_frames_are_counted_each_and_logged_once_per_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"state": {"directory": str(tmp_path / "state")}, "sink": {"kind": "jsonl"}})
    )
    worker = Worker(load_config(path), 0)
    calls: dict[int, Any] = {1: _Failing(), 2: _Failing()}
    worker.calls.update(calls)
    before = _dropped()
    with caplog.at_level(logging.ERROR, logger="bridge.call"):
        for _ in range(50):
            for key in (1, 2):
                worker._frames.append((key, 0, b"\x00" * 1600, 0.0))
            worker._drain_frames()
    assert calls[1].frames == calls[2].frames == 50  # every frame was offered: the calls went on
    assert _dropped() - before == 100
    logged = [r for r in caplog.records if "audio frame not taken" in r.getMessage()]
    assert len(logged) == 2 and all(r.exc_info for r in logged)

"""FramePort's contract with pjmedia's clock thread: nothing raises into it, and a failure is counted."""

from __future__ import annotations

from types import SimpleNamespace

import pjsua2 as pj

from sip.media import FramePort


def test_a_failing_delivery_is_counted_not_raised() -> None:
    dropped: list[tuple[int, str]] = []

    def deliver(key: int, stream: int, pcm: bytes | None, arrival: float) -> None:
        raise RuntimeError("the loop is gone")

    port = FramePort(deliver, lambda frames, cause: dropped.append((frames, cause)))
    port.key = 7
    silent = SimpleNamespace(type=pj.PJMEDIA_FRAME_TYPE_NONE, size=0)
    for _ in range(3):
        port.onFrameReceived(silent)  # must not raise
    assert port.failures == 3
    assert dropped == [(1, "other")] * 3


def test_frames_of_a_port_not_lent_are_ignored() -> None:
    seen: list[int] = []
    port = FramePort(lambda key, *rest: seen.append(key))
    port.onFrameReceived(SimpleNamespace(type=pj.PJMEDIA_FRAME_TYPE_NONE, size=0))
    assert seen == []
    port.key = 3
    port.onFrameReceived(SimpleNamespace(type=pj.PJMEDIA_FRAME_TYPE_NONE, size=0))
    assert seen == [3]

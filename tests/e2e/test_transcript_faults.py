"""call.ended's transcript is the whole call when the engine stream was lost and re-established.

Real peers: a sipp caller playing espeak sentences, the bridge, the stand-in engine over a real
WebSocket. The engine is killed and restarted (after 3 s, and after 25 s), or made to drop the socket
every few seconds (`close_after`). Each time the transcript in call.ended must hold every utterance the
utterance events carried, in order, at the same call-timeline times, with no gap.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Standin, run_sipp, run_standin, speech
from tests.e2e.test_faults import set_faults

SENTENCES = [
    "the first line is here",
    "then comes the second",
    "a third one follows",
    "now the fourth sentence",
    "the fifth is short",
    "and this is the last",
]
TEXT = " | ".join(SENTENCES)
FAST_RECONNECT = {"reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 1.0}


def port_of(engine: Standin) -> int:
    return int(engine.url.rsplit(":", 1)[1].split("/")[0])


def vad_engine(port: int | None = None) -> Standin:
    args = ["--recognizer", "vad-only", "--max-streams", "16"]
    return run_standin(*args, *(["--port", str(port)] if port else []))


def wait_for_call(bridge: Any, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not bridge.calls():
        time.sleep(0.05)
    assert bridge.calls(), "the call never started"
    return time.monotonic()


def check_complete(events: list[dict[str, Any]], after: float) -> dict[str, Any]:
    """The transcript holds exactly the utterances the events carried, at their times; return call.ended."""
    ended = events[-1]["data"]
    assert events[-1]["kind"] == "call.ended" and ended["gaps"] == []
    live = [(e["data"]["start"], e["data"]["end"]) for e in events if e["kind"] == "utterance"]
    assert len(live) == len(SENTENCES), live  # one utterance per sentence, none lost, none twice
    assert live == sorted(live) and live[-1][1] > after  # speech after the fault arrived
    transcript = ended["transcript"]
    merged = [(u["start"], u["end"]) for u in transcript["utterances"]]
    assert len(merged) == len(live)
    for (s1, e1), (s2, e2) in zip(merged, live, strict=True):
        assert abs(s1 - s2) < 0.01 and abs(e1 - e2) < 0.01, (merged, live)
    assert transcript["complete"] is True and transcript["gaps"] == []
    assert abs(transcript["audiosecs"] - ended["audio_seconds"]) < 0.5
    assert len(transcript["engine_streams"]) >= 2
    (last_final,) = ended["engine_finals"]  # only the last stream reached its final
    assert last_final["offset"] > 0 and last_final["offset"] == transcript["engine_streams"][-1]["offset"]
    own = [u["end"] for u in last_final["transcript"]["utterances"]]
    if own:  # the engine's document stays on its stream's own clock; the merged one is on the call's
        assert abs(own[-1] + last_final["offset"] - merged[-1][1]) < 0.01
    return ended


def call_through_outage(
    make_bridge: Any,
    speech_dir: Path,
    tmp_path: Path,
    after: float,
    down: float,
    hold_ms: int,
    speech_after: float,
) -> dict[str, Any]:
    """A six-sentence call whose engine is killed `after` s into it and restarted on its port `down` s
    later; its call.ended, checked complete with speech ending after `speech_after` s."""
    engine = vad_engine()
    port = port_of(engine)
    restarted: list[Standin] = []
    try:
        bridge = make_bridge(engine.url, engine=FAST_RECONNECT)
        audio = speech(TEXT, speech_dir, "six-sentences")

        def outage() -> None:
            wait_for_call(bridge)
            time.sleep(after)
            engine.proc.send_signal(signal.SIGKILL)
            engine.proc.wait(5)
            time.sleep(down)
            restarted.append(vad_engine(port))

        fault = threading.Thread(target=outage)
        fault.start()
        result = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=hold_ms)
        fault.join(down + 15)
        assert result.returncode == 0, result.stdout
        (events,) = bridge.wait_ended(1).values()
        return check_complete(events, after=speech_after)
    finally:
        engine.stop()
        for extra in restarted:
            extra.stop()


def test_engine_killed_mid_call_and_restarted(make_bridge: Any, speech_dir: Path, tmp_path: Path) -> None:
    ended = call_through_outage(
        make_bridge, speech_dir, tmp_path, after=6.0, down=3.0, hold_ms=19000, speech_after=9.0
    )
    assert [s["ended"] for s in ended["transcript"]["engine_streams"]] == ["closed", "final"]


@pytest.mark.slow  # a 32 s call
def test_engine_down_25_seconds(make_bridge: Any, speech_dir: Path, tmp_path: Path) -> None:
    ended = call_through_outage(
        make_bridge, speech_dir, tmp_path, after=4.0, down=25.0, hold_ms=32000, speech_after=6.0
    )
    streams = ended["transcript"]["engine_streams"]
    assert streams[0]["ended"] == "closed" and streams[-1]["ended"] == "final"
    assert streams[-1]["offset"] < 6.0  # replayed from the last utterance before the outage


def test_three_forced_closes(make_bridge: Any, speech_dir: Path, tmp_path: Path) -> None:
    engine = vad_engine()
    try:
        bridge = make_bridge(engine.url, engine=FAST_RECONNECT)
        audio = speech(TEXT, speech_dir, "six-sentences")
        set_faults(engine, close_after=7.0)  # every stream drops its socket after 7 s of audio
        result = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=19000)
        assert result.returncode == 0, result.stdout
        (events,) = bridge.wait_ended(1).values()
        ended = check_complete(events, after=12.0)
        streams = ended["transcript"]["engine_streams"]
        assert [s["ended"] for s in streams[:-1]] == ["closed"] * (len(streams) - 1)
        assert len(streams) >= 4, streams  # three closes at least
        assert sum(s["utterances"] for s in streams) == len(SENTENCES)
    finally:
        engine.stop()

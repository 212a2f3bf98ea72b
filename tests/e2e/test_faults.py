"""Faults through the whole bridge: engine lost mid-call, engine refusing, a worker killed mid-call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bridge.demo import wait_for_sip
from tests.e2e.conftest import Standin, free_port_block, run_sipp, run_standin, speech
from tests.e2e.test_calls import kinds
from tests.fixtures import sipua

COUNT = "one two three four five six seven eight nine ten eleven twelve"


def set_faults(engine: Standin, **faults: Any) -> None:
    url = engine.url.replace("ws://", "http://").replace("/transcribe", "/_faults")
    request = urllib.request.Request(url, data=json.dumps(faults).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_engine_lost_mid_call_reconnects_as_the_same_call(
    standin_vad: Standin, make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    """The engine drops the socket after 3 s of audio: the bridge reconnects with the same requestid,
    replays from the last utterance, and the utterance times stay on the call's timeline."""
    bridge = make_bridge(standin_vad.url)
    audio = speech(COUNT, speech_dir, "count12")
    set_faults(standin_vad, close_after=3.0)  # a stream takes the switches when it starts

    def clear_once_started() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not bridge.calls():
            time.sleep(0.05)
        time.sleep(0.5)
        set_faults(standin_vad, close_after=None)  # the reconnected stream runs normally

    clearer = threading.Thread(target=clear_once_started)
    clearer.start()
    result = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=9000)
    clearer.join(15)
    assert result.returncode == 0, result.stdout
    (events,) = bridge.wait_ended(1).values()
    ended = events[-1]["data"]
    assert ended["transcript"] is not None
    assert ended["gaps"] == []  # everything lost was replayed
    utterances = [e["data"] for e in events if e["kind"] == "utterance"]
    assert utterances and utterances[-1]["end"] > 4.0  # speech after the loss arrived
    ends = [u["end"] for u in utterances]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)  # no duplicate after the replay
    log = bridge.log()
    assert "engine stream established" in log and "lost" in log.lower()


def test_engine_refusing_then_accepting_loses_nothing(
    standin_vad: Standin, make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    bridge = make_bridge(standin_vad.url)
    audio = speech(COUNT, speech_dir, "count12")
    set_faults(standin_vad, refuse=True)
    timer = threading.Timer(2.5, lambda: set_faults(standin_vad, refuse=False))
    timer.start()
    try:
        result = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=8000)
    finally:
        timer.cancel()
    assert result.returncode == 0, result.stdout
    (events,) = bridge.wait_ended(1).values()
    assert events[-1]["data"]["gaps"] == []
    assert events[-1]["data"]["transcript"] is not None
    assert kinds(events).count("utterance") >= 1


def worker_pid(config: Path, index: int) -> int:
    out = subprocess.run(
        ["pgrep", "-f", f"bridge worker --config {config} --index {index} "], capture_output=True, text=True
    )
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, out
    return pids[0]


def test_worker_killed_mid_call(
    standin_vad: Standin, make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL one worker during a call: it is back within a second, the other worker's call is
    untouched, and the lost call still gets its call.ended with reason worker_lost."""
    bridge = make_bridge(standin_vad.url, workers=2)
    audio = speech(COUNT, speech_dir, "count12")
    results: dict[int, Any] = {}
    callers = [
        threading.Thread(
            target=lambda i=i: results.__setitem__(
                i, run_sipp(bridge.sip_port + i, audio, tmp_path, hold_ms=8000)
            )
        )
        for i in (0, 1)
    ]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(bridge.calls()) < 2:
        time.sleep(0.1)
    time.sleep(2.0)  # mid-call, after the first utterances
    victim = worker_pid(bridge.config_path, 0)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for_sip(bridge.sip_port, timeout=5)
    assert time.monotonic() - killed_at < 2.0  # restarted and answering within about a second
    assert worker_pid(bridge.config_path, 0) != victim
    for caller in callers:
        caller.join(60)
    assert results[1].returncode == 0, results[1].stdout
    calls = bridge.wait_ended(2)
    by_worker = {events[0]["data"]["worker"]: events for events in calls.values()}
    survivor = by_worker[1][-1]["data"]
    assert survivor["reason"] == "remote_bye" and survivor["gaps"] == [] and survivor["transcript"]
    lost = by_worker[0]
    assert lost[-1]["kind"] == "call.ended"
    assert lost[-1]["data"]["reason"] == "worker_lost"
    assert lost[-1]["data"]["gaps"][0]["cause"] == "worker_lost"
    (gap,) = lost[-1]["data"]["gaps"]  # on the audio's timeline, which starts a moment after the answer
    assert 0.0 <= lost[-1]["data"]["duration"] - (gap["start"] + gap["duration"]) < 1.0, lost[-1]["data"]
    assert [e["seq"] for e in lost] == list(range(len(lost)))  # numbered on from what was sent
    assert bridge.proc is not None and bridge.proc.poll() is None
    assert "died" in bridge.log()


def test_engine_down_refuses_calls_when_configured_to(make_bridge: Any) -> None:
    """engine.on_unreachable: reject — a call arriving while the engine is down gets 503 + Retry-After;
    once the engine is back (the worker probes it every 2 s) calls are taken again."""
    port = free_port_block(1, low=28000, high=29000)
    bridge = make_bridge(f"ws://127.0.0.1:{port}/transcribe", engine={"on_unreachable": "reject"})
    time.sleep(1.0)  # the first probe
    refused = sipua.invite(bridge.sip_port)
    assert refused.status == 503 and refused.headers.get("retry-after") == "5"
    engine = run_standin("--recognizer", "vad-only", "--port", str(port))
    try:
        deadline = time.monotonic() + 10
        status = 503
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            status = sipua.invite(bridge.sip_port).status
        assert status == 200
    finally:
        engine.stop()

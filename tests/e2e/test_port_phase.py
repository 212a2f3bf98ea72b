"""A worker's calls are handed their frames in the same conference tick (sip.phase, sip/endpoint.py).

A real SipEndpoint (pjsua2) runs in a child process and records when each call's frames arrive; sipp
places four calls 1/7 s apart, so that connected as they come their ports would deliver in different
ticks of the 20 ms clock. With the connections timed by `sip.phase`, every call's frames come within
half a tick of the first call's, and each call still gets a frame every 100 ms from its start to its
end. The same run with the timing turned off (`connect_delay` always 0) shows the spread the test
would otherwise see.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.conftest import run_sipp, speech
from tests.fixtures.harness import free_port_block

ROOT = Path(__file__).resolve().parents[2]
FRAME = 0.1  # audio.port_frame_ms, the default
TICK = 0.02  # pjsua's audio frame ptime, the conference clock's tick
CALLS = 4

CHILD = r"""
import json, logging, os, sys, threading, time
sys.path.insert(0, sys.argv[1])
import sip.endpoint as endpoint
from bridge.config import parse_config
from bridge.sip_adapter import sip_settings, worker_readiness
from sip.events import CallEnded, CallStarted
from sip.settings import NullObserver

port, rtp, timing = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if timing == "off":
    endpoint.connect_delay = lambda *args: 0.0
lock = threading.Lock()
frames, started, ended, warnings, unconnected = {}, {}, {}, [], []

class Records(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(f"{record.name}: {record.getMessage()}")
        elif "ended before its audio was connected" in record.getMessage():
            unconnected.append(record.getMessage())

class Counts(NullObserver):
    def __init__(self):
        self.rtp, self.dropped = [0, 0, 0], 0
    def rtp_in(self, packets, lost, discarded):
        self.rtp = [self.rtp[0] + packets, self.rtp[1] + lost, self.rtp[2] + discarded]
    def frames_dropped(self, frames, cause):
        self.dropped += frames

counts = Counts()
logging.getLogger().addHandler(Records(logging.DEBUG))
logging.getLogger().setLevel(logging.DEBUG)

def on_event(event):
    with lock:
        if isinstance(event, CallStarted):
            started[event.key] = time.monotonic()
        elif isinstance(event, CallEnded):
            ended[event.key] = time.monotonic()

def on_audio(key, stream, pcm, arrival):
    with lock:
        frames.setdefault(key, []).append((arrival, pcm is not None))

config = parse_config(
    {"sip": {"first_port": port, "workers": 1, "transports": ["udp"]},
     "engine": {"url": "ws://127.0.0.1:9/transcribe"}}, "phase")
ep = endpoint.SipEndpoint(sip_settings(config), port, rtp, on_event, on_audio, worker_readiness, counts)
ep.start()
print("ready", flush=True)
sys.stdin.readline()
time.sleep(0.3)  # longer than any wait for a connection
with lock:
    print(json.dumps({"frames": frames, "started": started, "ended": ended, "warnings": warnings,
                      "unconnected": unconnected,
                      "rtp": counts.rtp, "dropped": counts.dropped,
                      "waiting": len(ep._connects), "thread_alive": ep._thread.is_alive()}), flush=True)
ep.stop()
os._exit(0)
"""


def run(
    timing: str, audio: Path, workdir: Path, place: Callable[[int], None] | None = None, calls: int = CALLS
) -> dict[str, Any]:
    """Start the child, place the calls (`place(port)`, or CALLS calls 1/7 s apart), return its record."""
    port = free_port_block(1, low=15000, high=26000)
    rtp = free_port_block(40, low=26000, high=50000)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ROOT), str(port), str(rtp), timing],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        if place is not None:
            place(port)
        else:
            result = run_sipp(port, audio, workdir, hold_ms=3000, calls=CALLS, concurrent=CALLS, rate=7)
            assert result.returncode == 0, result.stdout
        child.stdin.write("dump\n")
        child.stdin.flush()
        dumped: dict[str, Any] = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait(10)
    assert dumped["thread_alive"] and dumped["warnings"] == [], dumped["warnings"]
    assert len(dumped["started"]) == calls and len(dumped["ended"]) == calls, dumped["ended"]
    assert dumped["waiting"] == 0  # no connection left waiting after its call
    return dumped


def phases(dumped: dict[str, Any]) -> dict[str, float]:
    """Each call's median distance, within a frame, from the first call's ticks (seconds, 0 to 50 ms)."""
    audio = {key: [at for at, has_audio in frames if has_audio] for key, frames in dumped["frames"].items()}
    first = min(audio, key=lambda key: dumped["started"][key])
    reference = audio[first][0]
    found = {}
    for key, arrivals in audio.items():
        offsets = [(at - reference) % FRAME for at in arrivals[2:]]  # steady: past the first frames
        found[key] = statistics.median(min(offset, FRAME - offset) for offset in offsets)
    return found


def test_calls_connected_as_they_come_deliver_together_and_lose_no_frame(
    speech_dir: Path, tmp_path: Path
) -> None:
    audio = speech("one two three four five", speech_dir, "phase")
    dumped = run("on", audio, tmp_path)
    found = phases(dumped)
    assert len(found) == CALLS
    assert max(found.values()) < TICK / 2, found  # every call in the first call's tick
    packets, lost, discarded = dumped["rtp"]
    assert packets > CALLS * 100 and lost == 0 and discarded == 0, dumped["rtp"]  # pjmedia kept it all
    assert dumped["dropped"] == 0
    for key, frames in dumped["frames"].items():
        arrivals = [at for at, has_audio in frames if has_audio]
        # a frame every 100 ms from the first to the call's end: no frame skipped by the wait
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        assert max(gaps) < 1.5 * FRAME, (key, max(gaps))
        lasted = dumped["ended"][key] - dumped["started"][key]
        assert len(arrivals) >= (lasted - 2 * FRAME) / FRAME - 1, (key, len(arrivals), lasted)


def test_without_the_timing_the_same_calls_deliver_in_different_ticks(
    speech_dir: Path, tmp_path: Path
) -> None:
    audio = speech("one two three four five", speech_dir, "phase")
    found = phases(run("off", audio, tmp_path))
    assert max(found.values()) >= TICK / 2, found  # what the test above would see without sip.phase


def test_calls_that_end_before_their_port_is_connected_leave_nothing_behind(
    speech_dir: Path, tmp_path: Path
) -> None:
    """While a long call sets the beat, calls hung up at once (no pause after the ACK) end while their
    connection may still be waiting: the wait is dropped with the call, and a call after them is
    connected in the long call's tick and gets its frames."""
    audio = speech("one two three four five", speech_dir, "phase")
    failures: list[str] = []

    def place(port: int) -> None:
        def sipp(hold_ms: int, calls: int, rate: int, into: Path) -> None:
            into.mkdir(exist_ok=True)
            result = run_sipp(port, audio, into, hold_ms=hold_ms, calls=calls, concurrent=1, rate=rate)
            if result.returncode != 0:
                failures.append(result.stdout)

        long_call = threading.Thread(target=sipp, args=(5000, 1, 1, tmp_path / "long"))
        long_call.start()
        try:
            time.sleep(1.5)  # the long call is up and has frames
            sipp(0, 6, 7, tmp_path / "quick")  # six calls 1/7 s apart, each ended at once
            sipp(1500, 1, 1, tmp_path / "after")
        finally:
            long_call.join(60)

    dumped = run("on", audio, tmp_path, place, calls=8)
    assert failures == []
    # the quick calls ended while waiting (1/7 s apart, few come within a window of the beat)
    assert dumped["unconnected"], dumped["unconnected"]
    first = max(dumped["started"], key=lambda key: dumped["ended"][key] - dumped["started"][key])
    last = max(dumped["started"], key=lambda key: dumped["started"][key])
    found = phases({**dumped, "frames": {key: dumped["frames"][key] for key in (first, last)}})
    assert found[last] < TICK / 2, found  # the call after the quick ones, in the long call's tick
    assert len([has for _, has in dumped["frames"][last] if has]) >= 10

"""Operations with the real daemon: metrics scraped during a call, readiness, and the SIGTERM drain."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bridge.webhook.receiver import SECRET, Answer, Receiver
from tests.e2e.conftest import Standin, free_port_block, run_sipp, speech
from tests.e2e.test_bad_input import metric, scrape
from tests.e2e.test_webhook_call import ThreadedReceiver
from tests.fixtures import sipua
from tests.fixtures.harness import wait_until

HISTOGRAMS = (
    "vblaze_bridge_audio_to_socket_seconds",
    "vblaze_bridge_speech_end_to_utterance_seconds",
    "vblaze_bridge_utterance_to_webhook_sent_seconds",
    "vblaze_bridge_utterance_to_webhook_ack_seconds",
)
COUNT = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("VBLAZE_BRIDGE_WEBHOOK_SECRET", SECRET.decode())
    with ThreadedReceiver(lambda request: Answer()) as running:
        yield running


def status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_every_hop_histogram_moves_during_a_call_and_promtool_accepts_the_scrape(
    standin_vad: Standin, make_bridge: Any, receiver: Receiver, speech_dir: Path, tmp_path: Path
) -> None:
    port = free_port_block(1, low=29000, high=30000)
    bridge = make_bridge(
        standin_vad.url, metrics={"port": port}, sink={"kind": "webhook"}, webhook={"urls": [receiver.url]}
    )
    assert status(f"http://127.0.0.1:{port}/healthz")[0] == 200
    before = scrape(port)
    audio = speech(COUNT.replace(" six", " six |"), speech_dir, "count-split")
    results: list[Any] = []
    caller = threading.Thread(
        target=lambda: results.append(run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=9000))
    )
    caller.start()
    deadline = time.monotonic() + 20
    during = before
    while time.monotonic() < deadline:
        time.sleep(0.5)
        during = scrape(port)
        if metric(during, "vblaze_bridge_utterance_to_webhook_ack_seconds_count") > 0:
            break
    assert metric(during, "vblaze_bridge_calls_active") == 1  # scraped while the call is up
    for name in HISTOGRAMS:
        assert metric(during, f"{name}_count") > metric(before, f"{name}_count"), name
    caller.join(60)
    assert results and results[0].returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(e["type"] == "call.ended" for e in receiver.processed):
        time.sleep(0.2)
    time.sleep(1.0)
    after = scrape(port)
    assert metric(after, "vblaze_bridge_calls_total", 'result="completed",route="default"') == 1
    assert metric(after, "vblaze_bridge_audio_frames_total") >= 80
    assert metric(after, "vblaze_bridge_invite_responses_total", 'code="200"') == 1
    assert metric(after, "vblaze_bridge_rtp_packets_total") >= 300  # 20 ms packets for about 9 s
    assert metric(after, "vblaze_bridge_rtp_packets_lost_total") == 0
    checked = subprocess.run(["promtool", "check", "metrics"], input=after, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_readyz_turns_503_when_the_pool_is_full_and_when_draining(
    standin_vad: Standin, make_bridge: Any
) -> None:
    port = free_port_block(1, low=29000, high=30000)
    bridge = make_bridge(standin_vad.url, metrics={"port": port}, sip={"calls_per_worker": 1})
    url = f"http://127.0.0.1:{port}/readyz"
    # The worker answers SIP a moment before its "ready" reaches the supervisor over the control channel.
    wait_until(lambda: status(url) == (200, "ready\n"), 10, "/readyz 200")
    answer = sipua.invite(bridge.sip_port, hangup=False)
    assert answer.status == 200 and answer.dialog is not None
    time.sleep(0.5)
    assert status(url) == (503, "pool full\n")
    answer.dialog.bye()
    bridge.wait_ended(1)
    time.sleep(0.5)
    assert status(url)[0] == 200
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    code, body = status(url)
    assert (code, body) == (503, "draining\n") or bridge.proc.poll() is not None


def test_drain_timeout_hangs_up_and_flushes_then_a_second_signal_forces_exit(
    standin_vad: Standin, make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    bridge = make_bridge(standin_vad.url, drain={"timeout_seconds": 2})
    audio = speech(COUNT, speech_dir, "count12")
    caller = threading.Thread(target=lambda: run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=15000))
    caller.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not bridge.calls():
        time.sleep(0.1)
    time.sleep(2.0)
    assert bridge.proc is not None
    signalled = time.monotonic()
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.proc.wait(timeout=40) == 0
    took = time.monotonic() - signalled
    (events,) = bridge.calls().values()
    ended = events[-1]["data"]
    assert events[-1]["kind"] == "call.ended" and ended["reason"] == "local_hangup"
    assert ended["transcript"] is not None  # flushed: the final transcript came back before exit
    assert 2 <= took < 15
    caller.join(30)

    # A second signal does not wait for the drain.
    again = make_bridge(standin_vad.url, drain={"timeout_seconds": 60})
    answer = sipua.invite(again.sip_port, hangup=False)
    assert answer.status == 200
    assert again.proc is not None
    again.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    again.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    again.proc.wait(timeout=20)
    assert time.monotonic() - started < 10

"""The call monitor against a live bridge: the SSE feed with real calls, and the page in a real browser.

The feed test reads `/v1/events` while a sipp call speaks through the vad-only stand-in: every event the
webhook receiver gets arrives on the feed too, in the same per-call order. The browser test drives the
page in headless Chromium (Debian's `chromium`, driven by Playwright with `executable_path`, no browser
download) while a sipp call speaks real sentences to the whisper stand-in: the call's row appears, each
utterance's text shows within 3 s of its webhook delivery, Pause produces `call.paused` at the receiver
and the row says paused, Hang up ends the call. It saves a screenshot; with VBLAZE_MONITOR_SCREENSHOT=PATH
it is written there too (how docs/monitor.png was made).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bridge.webhook.receiver import SECRET, Answer, Receiver
from tests.e2e.conftest import Standin, run_sipp, speech
from tests.e2e.test_webhook_call import ThreadedReceiver
from tests.fixtures.control import call_api
from tests.fixtures.harness import free_port_block, wait_until

TOKEN = "monitor-desk-token-0123456789"
TOKEN_ENV = "VBLAZE_TEST_MONITOR_TOKEN"
CHROMIUM = shutil.which("chromium")
SENTENCES = (
    "Hello, I am calling about my order. | "
    "The parcel never arrived at my house. | "
    "Could you please send me a new one today?"
)
SHOW_WITHIN_SECONDS = 3.0


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("VBLAZE_BRIDGE_WEBHOOK_SECRET", SECRET.decode())
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with ThreadedReceiver(lambda request: Answer()) as running:
        yield running


def monitored_bridge(make_bridge: Any, engine: Standin, receiver: Receiver) -> tuple[Any, int]:
    port = free_port_block(1, low=28000, high=29000)
    bridge = make_bridge(
        engine.url,
        sink={"kind": "webhook"},
        webhook={"urls": [receiver.url]},
        control={"port": port, "tokens": [{"name": "desk", "env": TOKEN_ENV}]},
    )
    wait_until(lambda: call_api(port, "GET", "/v1/calls", TOKEN).status == 200, 20, "control API up")
    return bridge, port


class FeedReader(threading.Thread):
    """Reads /v1/events in a thread and keeps every message, up to the first call.ended."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/events", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        self.response = urllib.request.urlopen(request, timeout=60)
        self.messages: list[dict[str, Any]] = []

    def run(self) -> None:
        message: dict[str, Any] = {}
        for raw in self.response:
            line = raw.decode().rstrip("\n")
            if not line:
                if message:
                    self.messages.append(message)
                    if message.get("event") == "call.ended":
                        return
                message = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                message[field] = json.loads(value) if field == "data" else value


def test_the_feed_carries_every_event_the_receiver_gets_in_order(
    standin_vad: Standin, make_bridge: Any, receiver: Receiver, speech_dir: Path, tmp_path: Path
) -> None:
    bridge, port = monitored_bridge(make_bridge, standin_vad, receiver)
    feed = FeedReader(port)
    feed.start()
    follower = subprocess.Popen(  # the terminal view of the same feed
        [sys.executable, "-m", "bridge", "calls", "--follow", "--config", str(bridge.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "VBLAZE_CONTROL_TOKEN": TOKEN},
    )
    audio = speech("one two three four five | six seven eight nine ten", speech_dir, "feed-count")
    assert run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=8000).returncode == 0
    wait_until(lambda: any(e["type"] == "call.ended" for e in receiver.processed), 30, "call.ended delivered")
    wait_until(
        lambda: any(m.get("event") == "call.ended" for m in feed.messages), 10, "call.ended on the feed"
    )
    delivered = [(e["call_id"], e["seq"], e["type"]) for e in receiver.processed]
    fed = [(m["data"]["call_id"], m["data"]["seq"], m["event"]) for m in feed.messages]
    assert fed == delivered and len(fed) >= 4  # started, utterances, ended
    ids = [int(m["id"].rpartition(":")[2]) for m in feed.messages]
    assert ids == sorted(ids)
    ended = feed.messages[-1]["data"]["data"]
    assert ended["live_omitted"] == ["transcript", "engine_finals"] and "gaps" in ended
    feed.response.close()
    lines = _lines_until(follower, "call.ended")
    kinds = [line.split()[2] for line in lines]
    assert kinds == [kind for _, _, kind in delivered]  # one line per event, in order
    utterances = [e["data"]["text"] for e in receiver.processed if e["type"] == "utterance"]
    assert all(" ".join(text.split()) in line for text, line in zip(utterances, lines[1:], strict=False))
    assert lines[-1].split()[3] == "remote_bye,"


def _lines_until(follower: subprocess.Popen[str], last_kind: str) -> list[str]:
    """The follower's lines up to the first of `last_kind`; then it is stopped as Ctrl-C stops it."""
    assert follower.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            line = follower.stdout.readline().rstrip("\n")
            assert line, follower.stderr.read() if follower.stderr else "the follower ended"
            lines.append(line)
            if line.split()[2] == last_kind:
                return lines
        raise AssertionError(lines)
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_the_page_shows_a_live_call_pauses_it_and_hangs_it_up(
    standin_whisper: Standin, make_bridge: Any, receiver: Receiver, speech_dir: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    bridge, port = monitored_bridge(make_bridge, standin_whisper, receiver)
    audio = speech(SENTENCES, speech_dir, "monitor-sentences")
    caller = threading.Thread(
        target=lambda: run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=40000, timeout=90), daemon=True
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#login-form", state="visible")
            assert call_api(port, "GET", "/v1/calls").status == 401  # the page's API needs the token
            page.fill("#token", TOKEN)
            page.click("#login-form button")
            page.wait_for_selector("#monitor", state="visible")
            caller.start()
            page.wait_for_selector("#calls tbody tr[data-call]", timeout=20000)
            page.click("#calls tbody tr[data-call]")
            lags = _utterances_shown(page, receiver, count=2)
            assert all(lag <= SHOW_WITHIN_SECONDS for lag in lags), lags
            page.fill("#pause-reason", "card number")
            page.click("#pause")
            wait_until(lambda: _types(receiver).count("call.paused") == 1, 10, "call.paused delivered")
            paused = next(e for e in receiver.processed if e["type"] == "call.paused")
            assert paused["data"]["by"] == "api:desk" and paused["data"]["reason"] == "card number"
            page.wait_for_selector("#calls tr.paused", timeout=5000)
            page.wait_for_selector("#timeline li.paused", timeout=5000)
            # The pool's figures at the top: ready, and the first hop's p50 of the last minute.
            assert page.text_content("#ready") == "ready"
            first_hop = "#hops tbody tr:first-child td:nth-child(2)"
            page.wait_for_function(
                f"(document.querySelector('{first_hop}') || {{}}).textContent?.endsWith(' ms')", timeout=12000
            )
            screenshot = tmp_path / "monitor.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            if os.environ.get("VBLAZE_MONITOR_SCREENSHOT"):
                shutil.copy(screenshot, os.environ["VBLAZE_MONITOR_SCREENSHOT"])
            page.click("#hangup")
            wait_until(lambda: "call.ended" in _types(receiver), 30, "call.ended delivered")
            page.wait_for_selector("#timeline li.ended", timeout=10000)
            assert "ended" in (page.text_content("#calls tbody tr[data-call] td.state") or "")
        finally:
            browser.close()
    types = _types(receiver)
    assert types.index("call.paused") < types.index("call.ended") and types[-1] == "call.ended"
    caller.join(60)


def _types(receiver: Receiver) -> list[str]:
    return [e["type"] for e in receiver.processed]


def _utterances_shown(page: Any, receiver: Receiver, count: int) -> list[float]:
    """Seconds from each of the first `count` utterances' webhook delivery to its text on the page."""
    delivered: dict[int, float] = {}
    shown: dict[int, float] = {}
    deadline = time.monotonic() + 60
    while len(shown) < count and time.monotonic() < deadline:
        now = time.monotonic()
        texts = [e["data"]["text"] for e in receiver.processed if e["type"] == "utterance"]
        for index in range(len(texts)):
            delivered.setdefault(index, now)
        on_page = page.locator("#timeline li.utterance .text").all_text_contents()
        for index, text in enumerate(texts[:count]):
            if index not in shown and text.strip() and text.strip() in [t.strip() for t in on_page]:
                shown[index] = now
        time.sleep(0.1)
    assert len(shown) >= count, (list(delivered), page.content()[-2000:])
    return [shown[i] - delivered[i] for i in range(count)]

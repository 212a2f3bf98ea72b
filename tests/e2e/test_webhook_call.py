"""A full call from sipp through the stand-in engine to a real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.bridge.webhook.receiver import SECRET, Answer, Receiver, Request
from tests.e2e.conftest import Standin, run_sipp, speech
from tests.e2e.test_calls import SENTENCE, WORDS, words_of

SCHEMA = json.loads((Path(__file__).parents[2] / "bridge" / "webhook" / "schema.json").read_text())


class ThreadedReceiver:
    """The test receiver on its own event loop in a thread, so a synchronous test can drive sipp."""

    def __init__(self, answer: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.receiver = Receiver(answer=answer)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self.loop).result(10)
        return self.receiver

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()  # not left to the garbage collector, which warns from another test


def every_other_fails(request: Request) -> Answer:
    return Answer(status=500) if request.n % 2 == 0 else Answer()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("VBLAZE_BRIDGE_WEBHOOK_SECRET", SECRET.decode())
    with ThreadedReceiver(every_other_fails) as running:
        yield running


@pytest.mark.slow
def test_sipp_call_reaches_the_webhook_signed_ordered_and_valid(
    standin_whisper: Standin, make_bridge: Any, receiver: Receiver, speech_dir: Path, tmp_path: Path
) -> None:
    bridge = make_bridge(
        standin_whisper.url,
        sink={"kind": "webhook"},
        webhook={"urls": [receiver.url], "backoff_initial_seconds": 0.1, "backoff_max_seconds": 1.0},
    )
    audio = speech(SENTENCE, speech_dir, "sentence")
    seconds = audio.stat().st_size / 8000
    result = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=int(seconds * 1000) + 2000)
    assert result.returncode == 0, result.stdout
    deadline = time.monotonic() + 60

    def complete() -> bool:
        return any(env["type"] == "call.ended" for env in receiver.processed)

    while not complete() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert complete(), [r.envelope["type"] for r in receiver.requests]
    assert all(r.signature_ok for r in receiver.requests)
    assert any(r.status == 500 for r in receiver.requests)  # failures happened and were retried
    (seqs,) = receiver.deduplicated().values()
    assert seqs == list(range(len(seqs)))  # in order, nothing missing
    for envelope in receiver.processed:
        jsonschema.validate(envelope, SCHEMA)
    kinds = [env["type"] for env in receiver.processed]
    assert kinds[0] == "call.started" and kinds[-1] == "call.ended"
    text = " ".join(env["data"]["text"] for env in receiver.processed if env["type"] == "utterance")
    assert len(words_of(text) & WORDS) >= 0.6 * len(WORDS), text

"""PCI pause end to end: a caller says a sentence, the call is paused, a card number is read, the call is
resumed, a last sentence is said. Real calls (sipp; RFC 4733 DTMF from a SIP UA; a SIPREC recording
client with two streams), the stand-in (whisper) over a real WebSocket, recording what it heard per
second (``--record-energy``, docs/standin.md).

Checked each time: sentences 1 and 3 come back; no digit of the card number is in any utterance or the
final transcript; the engine heard digital silence (peak 0) on every channel of every stream for the
whole paused span, which covers the card number; call.ended has the `paused` gap; call.paused and
call.resumed arrive in order. The speech leaves 4 s of silence on each side of the card number, so the
pause and the resume (by the API, timed from the test) land well clear of any word.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Bridge, Standin, end_bridge, new_bridge, run_sipp, run_standin
from tests.e2e.test_siprec import events_of
from tests.fixtures import sipua
from tests.fixtures.audio import speech_wav
from tests.fixtures.control import call_api
from tests.fixtures.harness import free_port_block, wait_until
from tests.fixtures.siprec_caller import load_ulaw, run_siprec_call

TOKEN = "pause-desk-token-0123456789"
TOKEN_ENV = "VBLAZE_TEST_PAUSE_TOKEN"
FIRST = "Hello, I would like new payment details on my account."
CARD = "four five three nine, one four eight eight, seven two six zero, three one five seven."
THIRD = "Thank you very much, that is everything I needed today."
AGENT_CARD = "repeating, four five three nine, one four eight eight, seven two six zero."
AGENT_THIRD = "Right, your new payment details are saved, and the account is updated."
# tiny.en hears the agent's last sentence in many ways, the more so if its stand-in segments it under load
AGENT_WORDS = {"new", "payment", "payments", "details", "detail", "saved", "account", "updated"}
FIRST_WORDS = {"hello", "payment", "details", "account"}
THIRD_WORDS = {"thank", "much", "everything", "needed", "today"}
DIGIT_WORDS = {"zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
RATE = 8000  # µ-law bytes per second
LEAD, GAP, TAIL = 0.5, 4.0, 2.0
SILENCE = b"\xff"  # µ-law silence


@dataclass
class Script:
    """A caller's µ-law audio and where (seconds from its start) the card number lies."""

    audio: bytes
    card_start: float
    card_end: float
    first: bytes
    card: bytes
    third: bytes

    @property
    def pause_at(self) -> float:  # halfway through the silence before the card
        return self.card_start - GAP / 2

    @property
    def resume_at(self) -> float:
        return self.card_end + GAP / 2


def silence(seconds: float) -> bytes:
    return SILENCE * round(seconds * RATE)


def said(text: str, voice: str = "en-us") -> bytes:
    return load_ulaw(speech_wav(text, voice=voice, encoding="u-law"))


@pytest.fixture(scope="module")
def script() -> Script:
    first, card, third = said(FIRST), said(CARD), said(THIRD)
    card_start = LEAD + len(first) / RATE + GAP
    audio = silence(LEAD) + first + silence(GAP) + card + silence(GAP) + third + silence(TAIL)
    return Script(audio, card_start, card_start + len(card) / RATE, first, card, third)


@pytest.fixture(scope="module")
def engine() -> Iterator[Standin]:
    standin = run_standin("--max-streams", "8", "--record-energy")
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def bridge(engine: Standin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bridge, int, int]]:
    control, metrics = free_port_block(1, low=28000, high=29000), free_port_block(1, low=29000, high=30000)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TOKEN_ENV, TOKEN)
        started = new_bridge(
            tmp_path_factory.mktemp("pause"),
            0,
            engine.url,
            control={"port": control, "tokens": [{"name": "desk", "env": TOKEN_ENV}]},
            metrics={"port": metrics},
            siprec={"delivery": "streams", "agent_patterns": [r"@pbx\.callcentre\.example$"]},
            pause={"dtmf_pause": "*1", "dtmf_resume": "*2"},
        )
        try:
            wait_until(lambda: call_api(control, "GET", "/v1/calls", TOKEN).status == 200, 20, "control API")
            yield started, control, metrics
        finally:
            end_bridge(started)


# --- what every test checks ------------------------------------------------------------------------------


def texts(value: Any) -> Iterator[str]:
    """Every `text` and `word` string anywhere in a transcript document."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("text", "word") and isinstance(item, str):
                yield item
            else:
                yield from texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def no_digit_in(text: str) -> bool:
    return not re.search(r"\d", text) and not words(text) & DIGIT_WORDS


def energy(engine: Standin, requestid: str) -> list[list[int]]:
    """Per channel, the peak of each second the stand-in received on the one stream `requestid`."""
    with urllib.request.urlopen(
        engine.url.replace("ws://", "http://").replace("/transcribe", "/status")
    ) as r:
        status = json.loads(r.read())["status"]
    (stream,) = [s for s in status["stream.energy"] if s["requestid"] == requestid]
    peaks: list[list[int]] = stream["peaks"]
    return peaks


def check_call(
    events: list[dict[str, Any]], engine: Standin, script: Script, by: str, requestids: list[str]
) -> None:
    kinds = [e["kind"] for e in events]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert kinds[0] == "call.started" and kinds[-1] == "call.ended"
    assert [k for k in kinds if k.startswith("call.") and k not in ("call.started", "call.ended")] == [
        "call.paused",
        "call.resumed",
    ]
    paused = next(e["data"] for e in events if e["kind"] == "call.paused")
    resumed = next(e["data"] for e in events if e["kind"] == "call.resumed")
    assert paused["by"] == resumed["by"] == by
    assert paused["at"] < script.card_start - 0.5 and resumed["at"] > script.card_end + 0.5, (paused, resumed)
    utterances = [e["data"] for e in events if e["kind"] == "utterance"]
    heard = set().union(*(words(u["text"]) for u in utterances))
    assert len(heard & FIRST_WORDS) >= 2 and len(heard & THIRD_WORDS) >= 2, utterances
    for text in [u["text"] for u in utterances] + list(texts(events[-1]["data"]["transcript"])):
        assert no_digit_in(text), (text, utterances)
    assert not any(paused["at"] < u["start"] and u["end"] < resumed["at"] for u in utterances), utterances
    ended = events[-1]["data"]
    gaps = [g for g in ended["gaps"] if g["cause"] == "paused"]
    assert len(gaps) == len(requestids), ended["gaps"]
    for gap in gaps:
        assert abs(gap["start"] - paused["at"]) < 0.3, (gap, paused)
        assert abs(gap["start"] + gap["duration"] - resumed["at"]) < 0.3, (gap, resumed)
    for requestid in requestids:
        for channel in energy(engine, requestid):
            inside = range(math.ceil(paused["at"] + 0.2), math.floor(resumed["at"] - 0.2))
            assert len(inside) >= 8 and all(channel[k] == 0 for k in inside), (requestid, channel)
    first_seconds = range(math.ceil(LEAD), math.floor(LEAD + len(script.first) / RATE))
    assert max(energy(engine, requestids[0])[0][k] for k in first_seconds) > 1000  # speech did get through


def at_call_time(started: float, second: float) -> None:
    time.sleep(max(0.0, started + second - time.monotonic()))


def the_one_call(port: int) -> tuple[str, float]:
    """The Call-ID of the single active call, and (monotonic) when it was first listed."""
    found: list[str] = []

    def listed() -> bool:
        calls = call_api(port, "GET", "/v1/calls", TOKEN).body.get("calls", [])
        found[:] = [c["call_id"] for c in calls]
        return len(found) == 1

    wait_until(listed, 20, "one call listed", step=0.02)
    return found[0], time.monotonic()


# --- the calls ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_api_pause_keeps_a_card_number_from_the_engine(
    bridge: tuple[Bridge, int, int], engine: Standin, script: Script, tmp_path: Path
) -> None:
    sip, port, metrics_port = bridge[0], bridge[1], bridge[2]
    audio = tmp_path / "card.ul"
    audio.write_bytes(script.audio)
    hold_ms = round(len(script.audio) / RATE * 1000) + 500
    caller = threading.Thread(
        target=run_sipp, args=(sip.sip_port, audio, tmp_path), kwargs={"hold_ms": hold_ms}
    )
    caller.start()
    try:
        call_id, started = the_one_call(port)
        at_call_time(started, script.pause_at)
        answer = call_api(port, "POST", f"/v1/calls/{call_id}/pause", TOKEN, {"reason": "card number"})
        assert answer.status == 200 and answer.body["changed"] and answer.body["call"]["paused"]
        at_call_time(started, script.resume_at)
        assert call_api(port, "POST", f"/v1/calls/{call_id}/resume", TOKEN).status == 200
    finally:
        caller.join(timeout=120)
    events = events_of(sip, call_id, timeout=90.0)
    check_call(events, engine, script, "api:desk", [call_id])
    assert next(e["data"]["reason"] for e in events if e["kind"] == "call.paused") == "card number"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
        scrape = r.read().decode()
    (value,) = re.findall(r'^vblaze_bridge_audio_gap_seconds_total\{cause="paused"\} (\S+)$', scrape, re.M)
    assert float(value) >= script.card_end - script.card_start


@pytest.mark.slow
def test_dtmf_sequences_pause_and_resume(
    bridge: tuple[Bridge, int, int], engine: Standin, script: Script
) -> None:
    sip = bridge[0]
    answer = sipua.invite(sip.sip_port, hangup=False)
    assert answer.status == 200 and answer.dialog is not None
    dialog = answer.dialog
    match = re.search(r"Call-ID: (\S+)", dialog.common)
    assert match is not None
    call_id = match.group(1)
    pause_at, resume_at = round(script.pause_at * RATE), round(script.resume_at * RATE)
    dialog.send_audio(script.audio[:pause_at])
    dialog.send_dtmf("5*1")  # the 5 goes out as a dtmf event; *1 pauses (the timeline runs on meanwhile)
    dialog.send_audio(script.audio[pause_at:resume_at])
    dialog.send_dtmf("*2")
    dialog.send_audio(script.audio[resume_at:])
    dialog.bye()
    events = events_of(sip, call_id, timeout=90.0)
    check_call(events, engine, script, "dtmf", [call_id])
    assert [e["data"]["digit"] for e in events if e["kind"] == "dtmf"] == ["5"]


@pytest.mark.slow
def test_a_siprec_call_in_two_streams_is_silenced_on_both(
    bridge: tuple[Bridge, int, int], engine: Standin, script: Script
) -> None:
    sip, port = bridge[0], bridge[1]
    agent_card, agent_third = said(AGENT_CARD, "en-gb+f3"), said(AGENT_THIRD)
    third_start = round((script.card_end + GAP) * RATE)
    agent = silence(script.card_start) + agent_card
    agent = agent[:third_start].ljust(third_start, SILENCE) + agent_third
    agent = agent.ljust(len(script.audio), SILENCE)
    result: list[Any] = []
    caller = threading.Thread(
        target=lambda: result.append(
            run_siprec_call(sip.sip_port, script.audio, agent, metadata_style="rfc", lead_silence=0.0)
        )
    )
    caller.start()
    try:
        call_id, started = the_one_call(port)
        at_call_time(started, script.pause_at)
        assert call_api(port, "POST", f"/v1/calls/{call_id}/pause", TOKEN).status == 200
        at_call_time(started, script.resume_at)
        assert call_api(port, "POST", f"/v1/calls/{call_id}/resume", TOKEN).status == 200
    finally:
        caller.join(timeout=120)
    assert result and result[0].status == 200 and result[0].bye_status == 200
    events = events_of(sip, call_id, timeout=90.0)
    check_call(events, engine, script, "api:desk", [f"{call_id};stream=0", f"{call_id};stream=1"])
    agent = [u for u in (e["data"] for e in events if e["kind"] == "utterance") if u["role"] == "agent"]
    resumed = next(e["data"]["at"] for e in events if e["kind"] == "call.resumed")
    assert resumed < third_start / RATE - 0.5, (resumed, third_start / RATE)  # the resume was in time
    after = [u for u in agent if u["end"] > resumed]
    assert set().union(*(words(u["text"]) for u in after)) & AGENT_WORDS, agent  # the agent's last words

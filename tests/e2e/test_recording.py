"""Redaction and redacted recordings through the real daemon: sipp (or the SIPREC client) calls the
bridge, the bridge streams to the stand-in over a real WebSocket with scrubtext and scrubaudio, and
writes the scrubbed audio the engine sends back to a WAV file per call.

- A caller reads out a card number: no run of 4 digits in any utterance or transcript word in the
  events file, the digits come back as #, the recording's sha256 and size are call.ended's, it is
  silent over the digits' word times and not over the other words.
- A SIPREC call (stereo): one 2-channel file, the caller's digits silenced on the caller's channel.
- An engine without scrubaudio (the stand-in's refuse_scrubaudio switch): transcripts go on, no file,
  call.ended says why, the metric moved, the worker is the same process.
- The engine drops the socket mid-call: the recording is exactly the call's audio, the replay written
  once (the recording is the caller's audio, sample for sample, with vad-only nothing is scrubbed),
  and with no replay possible the lost span is silence and a gap.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.demo import wait_for_sip
from tests.e2e.conftest import Standin, free_port_block, run_sipp, speech
from tests.e2e.test_bad_input import metric, scrape
from tests.e2e.test_faults import set_faults
from tests.e2e.test_siprec import AGENT_TEXT, events_of, start_bridge, stop_bridge
from tests.e2e.test_transcript_faults import FAST_RECONNECT, SENTENCES, TEXT, vad_engine, wait_for_call
from tests.fixtures.audio import speech_wav
from tests.fixtures.siprec_caller import run_siprec_call

# Not "four one one one one ...": tiny.en is nondeterministic on a long run of one repeated digit
# (faster-whisper falls back to sampling and the words change from run to run), so the caller reads
# out the mixed 16-digit card of the stand-in's own recognition tests (tests/standin/test_recognition.py).
# Through G.711 tiny.en sometimes stops after the first digits of the one long sentence ("My card number
# is 45"), so the caller pauses around the number ("|": a pause, see bridge.demo.speech_file).
CARD = (
    "My card number is | four five three nine one four eight eight zero three four three six four six seven"
    " | thank you."
)
REDACTED = {"redaction": {"text": True, "audio": True}}
SILENT_RMS = 30.0  # 16-bit sample scale: a scrubbed span is digital silence (0), speech is in the 1000s
SPEECH_RMS = 100.0
DIGITS = re.compile(r"[0-9]{4,}")


def recorded(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {**REDACTED, "recording": {"enabled": True, "directory": str(tmp_path / "rec"), **extra}}


def spoken_strings(value: Any, key: str = "") -> list[str]:
    """Every string under a ``text`` or ``word`` key anywhere in an event: what the caller said."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in spoken_strings(v, k)]
    if isinstance(value, list):
        return [s for item in value for s in spoken_strings(item, key)]
    return [value] if isinstance(value, str) and key in ("text", "word") else []


def samples_of(path: str) -> tuple[np.ndarray[Any, Any], int]:
    with wave.open(path) as w:
        assert (w.getsampwidth(), w.getframerate()) == (2, 8000)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(float)
        return data.reshape(-1, w.getnchannels()), w.getnchannels()


def rms(samples: np.ndarray[Any, Any], start: float, end: float) -> float:
    span = samples[int(start * 8000) : int(end * 8000)]
    return float(np.sqrt(np.mean(span**2))) if len(span) else 0.0


def check_file(recording: dict[str, Any]) -> None:
    """A written recording's file (the top of `recording`, or one of its `streams`) is as it says."""
    assert recording.get("status", "written") == "written" and recording.get("redacted", True), recording
    path = Path(recording["path"])
    body = path.read_bytes()
    assert recording["bytes"] == len(body) and recording["sha256"] == hashlib.sha256(body).hexdigest()
    assert not Path(f"{path}.partial").exists()


def words_of(events: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [
        w
        for e in events
        if e["kind"] == "utterance" and all(e["data"].get(k) == v for k, v in match.items())
        for w in e["data"]["words"]
    ]


def check_silent_over_the_digits(
    samples: np.ndarray[Any, Any], words: list[dict[str, Any]], channel: int = 0
) -> None:
    hidden = [(w["start"], w["end"]) for w in words if "#" in w["word"]]
    shown = [(w["start"], w["end"]) for w in words if "#" not in w["word"] and w["end"] - w["start"] > 0.15]
    assert hidden and shown, words
    for start, end in hidden:
        assert rms(samples[:, channel], start, end) < SILENT_RMS, (start, end)
    loud = [rms(samples[:, channel], s, e) > SPEECH_RMS for s, e in shown]
    assert sum(loud) >= 0.7 * len(shown), (shown, loud)


def test_a_card_number_is_redacted_in_every_event_and_silent_in_the_recording(
    standin_whisper: Standin, make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    bridge = make_bridge(standin_whisper.url, **recorded(tmp_path))
    result = run_sipp(bridge.sip_port, speech(CARD, speech_dir, "card"), tmp_path, hold_ms=13000)
    assert result.returncode == 0, result.stdout
    (events,) = bridge.wait_ended(1).values()
    said = [s for e in events for s in spoken_strings(e["data"])]
    assert said and not [s for s in said if DIGITS.search(s)], said
    assert any(re.search(r"#{4,}", s) for s in said), said  # the number was heard, and redacted
    for line in bridge.events_path.read_text().splitlines():  # the file itself: no other copy anywhere
        assert not re.search(r'"(text|word)": "[^"]*[0-9]{4,}', line), line
    ended = events[-1]["data"]
    transcript_words = [w["word"] for u in ended["transcript"]["utterances"] for w in u["events"]]
    assert transcript_words and not [w for w in transcript_words if DIGITS.search(w)], transcript_words
    rec = ended["recording"]
    check_file(rec)
    samples, channels = samples_of(rec["path"])
    assert channels == 1 and abs(len(samples) / 8000 - ended["audio_seconds"]) < 0.01
    assert rec["seconds"] == pytest.approx(ended["audio_seconds"], abs=0.01) and rec["gaps"] == []
    check_silent_over_the_digits(samples, words_of(events))
    assert not re.search(r"4539\s?1488", bridge.log())  # the spoken number is in no log line


@pytest.mark.slow
@pytest.mark.parametrize("delivery", ["stereo", "streams"])
def test_a_siprec_call_records_both_streams_redacted(
    standin_whisper: Standin, tmp_path: Path, delivery: str
) -> None:
    """Stereo: one 2-channel file, channel 0 the caller; streams: one file per audio stream."""
    bridge = start_bridge(
        tmp_path / "siprec",
        standin_whisper.url,
        siprec={"agent_patterns": [r"@pbx\.callcentre\.example$"], "delivery": delivery},
        **recorded(tmp_path),
    )
    try:
        caller = speech_wav(CARD.replace(" |", ","), voice="en-us", encoding="u-law")
        agent = speech_wav(AGENT_TEXT, voice="en-gb+f3", encoding="u-law")
        result = run_siprec_call(bridge.sip_port, caller, agent, metadata_style="rfc")
        assert result.status == 200 and result.bye_status == 200, result.invite_response
        events = events_of(bridge, result.call_id)
    finally:
        stop_bridge(bridge)
    said = [s for e in events for s in spoken_strings(e["data"])]
    assert not [s for s in said if DIGITS.search(s)], said
    ended = events[-1]["data"]
    rec = ended["recording"]
    roles = {r["role"]: r["index"] for r in events[0]["data"]["siprec"]["roles"]}
    if delivery == "stereo":
        check_file(rec)
        samples, channels = samples_of(rec["path"])
        assert channels == 2 and abs(len(samples) / 8000 - ended["audio_seconds"]) < 0.01
        heard = {"caller": samples[:, :1], "agent": samples[:, 1:]}
    else:
        assert rec["status"] == "written" and "path" not in rec
        files = {f["stream"]: f for f in rec["streams"]}
        assert sorted(files) == [0, 1] and files[0]["path"] != files[1]["path"]
        heard = {}
        for role, index in roles.items():
            check_file(files[index])
            heard[role], channels = samples_of(files[index]["path"])
            assert channels == 1 and abs(len(heard[role]) / 8000 - ended["audio_seconds"]) < 0.2
    check_silent_over_the_digits(heard["caller"], words_of(events, role="caller"))
    agent_words = [
        (w["start"], w["end"]) for w in words_of(events, role="agent") if w["end"] - w["start"] > 0.15
    ]
    loud = [rms(heard["agent"][:, 0], s, e) > SPEECH_RMS for s, e in agent_words]
    assert agent_words and sum(loud) >= 0.7 * len(agent_words), (agent_words, loud)


def test_an_engine_without_scrubaudio_transcribes_on_and_records_nothing(
    make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    engine = vad_engine()
    try:
        set_faults(engine, refuse_scrubaudio=True)
        metrics_port = free_port_block(1, low=29000, high=30000)
        bridge = make_bridge(engine.url, metrics={"port": metrics_port}, **recorded(tmp_path))
        pid = bridge.worker_pid()
        result = run_sipp(bridge.sip_port, speech(TEXT, speech_dir, "six-sentences"), tmp_path, hold_ms=19000)
        assert result.returncode == 0, result.stdout
        (events,) = bridge.wait_ended(1).values()
        ended = events[-1]["data"]
        assert ended["recording"] == {
            "status": "failed",
            "redacted": True,
            "reason": "engine refused scrubaudio",
        }
        assert ended["utterances"] == len(SENTENCES) and ended["gaps"] == []  # transcripts went on
        assert not (tmp_path / "rec").exists() or list((tmp_path / "rec").iterdir()) == []
        text = scrape(metrics_port)
        assert metric(text, "vblaze_bridge_recordings_total", 'result="engine_refused"') == 1.0
        assert metric(text, "vblaze_bridge_recordings_total", 'result="written"') == 0.0
        assert bridge.log().count("going on without scrubbed audio") == 1
        assert bridge.worker_pid() == pid
        set_faults(engine, refuse_scrubaudio=False)  # and the same worker records the next call
        result = run_sipp(bridge.sip_port, speech(TEXT, speech_dir, "six-sentences"), tmp_path, hold_ms=19000)
        assert result.returncode == 0, result.stdout
        calls = bridge.wait_ended(2)
        (second,) = [c for call_id, c in calls.items() if call_id != events[0]["call_id"]]
        check_file(second[-1]["data"]["recording"])
        assert bridge.worker_pid() == pid
    finally:
        engine.stop()


def caller_audio(speech_path: Path) -> np.ndarray[Any, Any]:
    """The caller's audio as the bridge hears it: the G.711 sipp plays, decoded."""
    wav = speech_path.with_suffix(".check.wav")
    subprocess.run(
        [
            "sox",
            "-t",
            "ul",
            "-r",
            "8000",
            "-c",
            "1",
            str(speech_path),
            "-e",
            "signed-integer",
            "-b",
            "16",
            str(wav),
        ],
        check=True,
    )
    samples, _ = samples_of(str(wav))
    return samples[:, 0]


def test_a_reconnect_writes_the_replay_once(make_bridge: Any, speech_dir: Path, tmp_path: Path) -> None:
    """vad-only recognises no words, so nothing is scrubbed: the recording must be the caller's audio at
    one offset, sample for sample, across the reconnect (a replay written twice would shift the rest)."""
    engine = vad_engine()
    try:
        bridge = make_bridge(engine.url, engine=FAST_RECONNECT, **recorded(tmp_path))
        audio = speech(TEXT, speech_dir, "six-sentences")
        set_faults(engine, close_after=7.0)  # every stream drops its socket after 7 s of audio
        result = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=19000)
        assert result.returncode == 0, result.stdout
        (events,) = bridge.wait_ended(1).values()
    finally:
        engine.stop()
    ended = events[-1]["data"]
    assert len(ended["transcript"]["engine_streams"]) >= 3
    rec = ended["recording"]
    check_file(rec)
    samples, _ = samples_of(rec["path"])
    recording = samples[:, 0]
    assert abs(len(recording) / 8000 - ended["audio_seconds"]) < 0.01
    source = caller_audio(audio)
    lag = int(np.argmax(np.abs(recording) > 500)) - int(np.argmax(np.abs(source) > 500))  # speech starts
    assert lag >= 0
    matched, windows, missed = 0, 0, []
    silenced = [(g["start"] * 8000, (g["start"] + g["duration"]) * 8000) for g in rec["gaps"]]
    for at in range(0, min(len(source), len(recording) - lag) - 8800, 8000):  # 1 s windows
        want = source[at : at + 8000]
        if np.sqrt(np.mean(want**2)) < SPEECH_RMS or any(
            a < lag + at + 8000 and lag + at < b for a, b in silenced
        ):
            continue  # nothing said, or a span the recording has as silence (checked below)
        windows += 1
        # The jitter buffer may move the audio by a frame or two; a replay written twice moves it by seconds.
        near = [
            np.corrcoef(want, recording[lag + at + d : lag + at + d + 8000])[0, 1]
            for d in range(-800, 801, 8)
            if lag + at + d >= 0
        ]
        if max(near) > 0.9:
            matched += 1
        else:
            missed.append((round((lag + at) / 8000, 2), round(float(max(near)), 3)))
    # A replay written twice (or a hole) at a reconnect (7 s and 14 s into the call) moves every later
    # window by seconds, so the 4 or more after it would all miss. A window may miss alone when pjmedia's
    # jitter buffer drops or conceals frames of the caller's RTP under load (seen in full runs on the
    # shared 2-core machine: 12 of 13, and once 11 of 13 with every later window matched).
    assert windows >= 10 and len(missed) <= 2, (missed, windows, lag, rec["gaps"], ended["gaps"])
    unheard = [g for g in rec["gaps"] if g["duration"] > 0]
    for gap in unheard:  # a span no stream sent back is silence
        assert rms(samples[:, 0], gap["start"], gap["start"] + gap["duration"]) == 0.0


def test_a_span_never_replayed_is_silence_and_a_gap(
    make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    """No replay store (engine.replay_seconds 0): the audio the lost stream had not sent back scrubbed is
    gone; the recording has silence there, as long as the call's audio, and says so in its gaps."""
    engine = vad_engine()
    try:
        bridge = make_bridge(engine.url, engine={**FAST_RECONNECT, "replay_seconds": 0}, **recorded(tmp_path))
        audio = speech(TEXT, speech_dir, "six-sentences")
        set_faults(engine, close_after=6.0)
        result = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=19000)
        assert result.returncode == 0, result.stdout
        (events,) = bridge.wait_ended(1).values()
    finally:
        engine.stop()
    ended = events[-1]["data"]
    rec = ended["recording"]
    check_file(rec)
    samples, _ = samples_of(rec["path"])
    assert abs(len(samples) / 8000 - ended["audio_seconds"]) < 0.01
    assert rec["gaps"], (rec, ended["gaps"])
    for gap in rec["gaps"]:
        assert gap["start"] < ended["audio_seconds"]
        assert not samples[int(gap["start"] * 8000) : int((gap["start"] + gap["duration"]) * 8000)].any()
    assert any(g["cause"] == "replay_exceeded" for g in ended["gaps"]), ended["gaps"]
    assert rms(samples[:, 0], 0.0, ended["audio_seconds"]) > SPEECH_RMS / 2  # the rest is the call's audio


def test_a_worker_killed_mid_call_leaves_only_a_partial_recording(
    make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL the worker while it writes a call's recording: no NAME.wav ever appears, only the
    NAME.wav.partial (a streaming header: recognisably unfinished); the call ends worker_lost without
    a recording, and the new worker records the next call whole."""
    engine = vad_engine()
    try:
        bridge = make_bridge(engine.url, **recorded(tmp_path))
        audio = speech(TEXT, speech_dir, "six-sentences")
        caller = threading.Thread(
            target=run_sipp, args=(bridge.sip_port, audio, tmp_path), kwargs={"hold_ms": 8000}
        )
        caller.start()
        wait_for_call(bridge)
        directory = tmp_path / "rec"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (directory.exists() and list(directory.iterdir())):
            time.sleep(0.1)
        time.sleep(1.0)
        os.kill(bridge.worker_pid(), signal.SIGKILL)
        caller.join(60)
        (events,) = bridge.wait_ended(1).values()
        ended = events[-1]["data"]
        assert ended["reason"] == "worker_lost" and "recording" not in ended
        (partial,) = directory.iterdir()
        assert partial.name.endswith(".wav.partial")
        body = partial.read_bytes()
        assert body[:4] == b"RIFF" and int.from_bytes(body[40:44], "little") == 0xFFFFFFFF
        assert len(body) > 44  # what arrived before the kill is on disk
        wait_for_sip(bridge.sip_port, timeout=10)
        result = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=6000)
        assert result.returncode == 0, result.stdout
        calls = bridge.wait_ended(2)
        (second,) = [c for call_id, c in calls.items() if call_id != events[0]["call_id"]]
        check_file(second[-1]["data"]["recording"])
    finally:
        engine.stop()


def test_no_card_digit_reaches_the_spool(
    standin_whisper: Standin,
    make_bridge: Any,
    speech_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receiver answers 503, so every event of the card call stays in the webhook spool: no row holds
    a run of 4 digits in anything the caller said (utterances, words, the engine's own JSON, the
    transcript), the bridge adds no unredacted copy, and the number is there, as #."""
    import json
    import sqlite3

    from tests.bridge.webhook.receiver import SECRET, Answer
    from tests.e2e.test_webhook_call import ThreadedReceiver

    monkeypatch.setenv("VBLAZE_BRIDGE_WEBHOOK_SECRET", SECRET.decode())
    spool = tmp_path / "spool.sqlite3"
    with ThreadedReceiver(lambda request: Answer(status=503)) as receiver:
        bridge = make_bridge(
            standin_whisper.url,
            sink={"kind": "webhook"},
            webhook={"urls": [receiver.url], "spool_path": str(spool)},
            **REDACTED,
        )
        result = run_sipp(bridge.sip_port, speech(CARD, speech_dir, "card"), tmp_path, hold_ms=13000)
        assert result.returncode == 0, result.stdout

        def bodies() -> list[dict[str, Any]]:
            with sqlite3.connect(spool) as db:
                rows = db.execute("SELECT body FROM events ORDER BY seq").fetchall()
            return [json.loads(body) for (body,) in rows]

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(b["type"] == "call.ended" for b in bodies()):
            time.sleep(0.5)
        spooled = bodies()
        assert [b["type"] for b in spooled][-1] == "call.ended" and receiver.requests  # held, not lost
    said = [s for body in spooled for s in spoken_strings(body["data"])]
    assert said and not [s for s in said if DIGITS.search(s)], said
    assert any(re.search(r"#{4,}", s) for s in said), said

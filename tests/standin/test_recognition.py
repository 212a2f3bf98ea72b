"""Real recognition with faster-whisper tiny.en: espeak-ng speech at 8 kHz comes back as words."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import wave
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

from standin.recognizer import WhisperRecognizer
from standin.server import ServerOptions, StandinServer, running
from tests.fixtures.audio import silence, speech_wav, wav_bytes
from tests.standin.wsclient import TIMEOUT, collect, connect, pieces, transcribe

pytestmark = pytest.mark.slow

SENTENCE = "Please call me back tomorrow morning about the billing question on my account."
SECOND = "I would like to pay my bill with a credit card today."


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def recall(expected: str, got: str) -> float:
    heard = set(words(got))
    want = words(expected)
    return sum(w in heard for w in want) / len(want)


def samples(path: str) -> np.ndarray:
    with wave.open(path) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


@pytest.fixture
async def srv() -> AsyncIterator[StandinServer]:
    async with running(ServerOptions(port=0), WhisperRecognizer(workers=2)) as server:
        yield server


async def test_a_spoken_sentence_comes_back(srv: StandinServer) -> None:
    wav = speech_wav(SENTENCE, rate=8000).read_bytes()
    doc = (await transcribe(srv.url, pieces(wav, 3200))).final_json()
    events = [e for u in doc["utterances"] for e in u["events"]]
    assert recall(SENTENCE, " ".join(e["word"] for e in events)) >= 0.7, events
    for utt in doc["utterances"]:
        assert utt["confidence"] == pytest.approx(
            np.mean([e["confidence"] for e in utt["events"]]), abs=0.002
        )
        for e in utt["events"]:
            assert utt["start"] <= e["start"] <= e["end"] <= utt["end"] and 0 < e["confidence"] <= 1
    assert 0 < doc["confidence"] <= 1


async def test_realtime_utterances_arrive_while_audio_is_sent(srv: StandinServer) -> None:
    first = samples(str(speech_wav(SENTENCE, rate=8000)))
    second = samples(str(speech_wav(SECOND, rate=8000, voice="en-gb-x-rp")))
    signal = np.concatenate([silence(0.3), first, silence(2.0), second, silence(1.5)])
    wav = wav_bytes(signal)
    ws = await connect(srv.url, "realtime=true&vadtype=level&uttmaxsilence=500&uttpadding=250")
    received: list[tuple[float, str]] = []

    async def reader() -> None:
        async for message in ws:
            received.append((time.monotonic(), str(message)))

    task = asyncio.create_task(reader())
    status_latency = []
    async with asyncio.timeout(TIMEOUT * 2), aiohttp.ClientSession() as http:
        # 0.1 s per chunk, sent at twice real time: the first utterance (decoded while the rest is
        # sent) must come back before the last chunk, with room for a loaded machine (at 4x, a CI run
        # had it 0.12 s after the last chunk)
        for chunk in pieces(wav, 1600):
            await ws.send(chunk)
            await asyncio.sleep(0.05)
            if len(status_latency) < 20:
                t0 = time.monotonic()
                async with http.get(srv.http_url + "/status") as r:
                    assert r.status == 200
                status_latency.append(time.monotonic() - t0)
        sent_all = time.monotonic()
        await ws.send(b"")
        await task
    assert max(status_latency) < 0.5  # recognition never blocks the event loop
    texts = [m for _, m in received]
    assert texts[-2] == "" and len(texts) == 4, texts
    first_at, first_msg = received[0]
    assert first_at < sent_all  # streamed while audio was still arriving
    # tiny.en hears 9 of these 13 words (0.69: "billing question" as "million questions") with
    # faster-whisper 1.2.1 / ctranslate2 4.8.5 and espeak-ng 1.51, where it heard 10 before
    assert recall(SENTENCE, json.loads(first_msg)["text"]) >= 0.65
    assert recall(SECOND, json.loads(texts[1])["text"]) >= 0.5
    final = json.loads(texts[-1])
    assert [u["metadata"]["uttid"] for u in final["utterances"]] == [0, 1]
    s = await collect(ws)
    assert s.close_code == 1000


async def test_g711_speech_in_both_laws(srv: StandinServer) -> None:
    for encoding in ("u-law", "a-law"):
        wav = speech_wav(SENTENCE, rate=8000, encoding=encoding).read_bytes()
        s = await transcribe(srv.url, pieces(wav, 160), query="output=text")
        assert recall(SENTENCE, s.final) >= 0.7, s.final


# Not "four one one one ...": tiny.en's output for a long run of one digit is highly compressible, so
# faster-whisper falls back to sampling at higher temperatures and the words change from run to run.
CARD = (
    "My card number is four five three nine one four eight eight zero three four three six four six seven,"
    " thank you."
)


async def test_a_spoken_card_number_comes_back_as_digits_and_scrubbed(srv: StandinServer) -> None:
    wav = speech_wav(CARD, rate=8000).read_bytes()
    plain = (await transcribe(srv.url, pieces(wav, 3200))).final_json()
    plain_words = [e["word"] for u in plain["utterances"] for e in u["events"]]
    assert re.search(r"[0-9]{8,}", "".join(plain_words)), plain_words  # numtrans: on by default
    scrubbed = (await transcribe(srv.url, pieces(wav, 3200), "scrubtext=true")).final_json()
    words_ = [e["word"] for u in scrubbed["utterances"] for e in u["events"]]
    assert not re.search(r"[0-9]", " ".join(words_)), words_
    assert re.search(r"#{8,}", "".join(words_)), words_
    assert recall("my thank you", " ".join(words_)) >= 0.6, words_  # tiny.en mishears the rest
    spoken = (await transcribe(srv.url, pieces(wav, 3200), "numtrans=false")).final_json()
    said = " ".join(e["word"] for u in spoken["utterances"] for e in u["events"])
    assert "#" not in said, said


EXAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "vblaze_example.py"


async def test_the_vendor_example_client_gets_scrubbed_audio_silent_where_the_digits_were(
    srv: StandinServer, tmp_path: Path
) -> None:
    wav = tmp_path / "card.wav"
    wav.write_bytes(speech_wav(CARD, rate=8000).read_bytes())
    tags = ["Output=json", "Outstream=true", "Scrubaudio=true", "Scrubtext=true", "Scruboutfmt=wav"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), srv.url, str(wav), *tags, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(120):
        out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0 and out.rstrip().endswith("Closed successfully"), out
    assert "bytes of scrubbed audio" in out
    final = json.loads(out.split("Received transcript: ")[-1].split("\n")[0])
    words = [e for u in final["utterances"] for e in u["events"]]
    hidden = [(e["start"], e["end"]) for e in words if "#" in e["word"]]
    shown = [(e["start"], e["end"]) for e in words if "#" not in e["word"] and e["end"] - e["start"] > 0.15]
    assert hidden and shown, words
    sox = await asyncio.create_subprocess_exec(
        "sox", f"{wav}.scrubbed", "-n", "stat", stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        stat = (await sox.communicate())[1].decode()
    assert sox.returncode == 0 and "Length (seconds)" in stat, stat  # the appended pieces are one file
    original, redacted = samples(str(wav)), samples(f"{wav}.scrubbed")
    assert len(redacted) == len(original)
    for start, end in hidden:
        assert not redacted[int(start * 8000) : int(end * 8000)].any(), (start, end)
    level = [float(np.abs(redacted[int(s * 8000) : int(e * 8000)].astype(float)).mean()) for s, e in shown]
    assert sum(x > 100 for x in level) >= 0.8 * len(shown), (shown, level)  # the other words are there


async def test_the_vendor_example_client_gets_the_zipped_default_result(
    srv: StandinServer, tmp_path: Path
) -> None:
    """Default mode with scrubaudio: one binary message, a zip of the transcript and the mp3."""
    wav = tmp_path / "card.wav"
    wav.write_bytes(speech_wav(CARD, rate=8000).read_bytes())
    tags = ["Output=json", "Scrubaudio=true", "Scrubtext=true", "Requestid=card"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), srv.url, str(wav), *tags, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(120):
        out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0 and out.rstrip().endswith("Closed successfully"), out
    assert out.count("bytes of scrubbed audio") == 1 and "Received transcript" not in out, out
    with zipfile.ZipFile(f"{wav}.scrubbed") as archive:
        assert sorted(archive.namelist()) == ["card.json", "card.mp3"]
        doc = json.loads(archive.read("card.json"))
        (tmp_path / "card.mp3").write_bytes(archive.read("card.mp3"))
    words = [e["word"] for u in doc["utterances"] for e in u["events"]]
    assert any("#" in w for w in words) and not any(c.isdigit() for w in words for c in w), words
    with av.open(str(tmp_path / "card.mp3")) as container:
        stream = container.streams.audio[0]
        decoded = sum(frame.samples for frame in container.decode(stream)) / stream.rate
    assert abs(decoded - len(samples(str(wav))) / 8000) < 0.2, decoded

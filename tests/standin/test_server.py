"""The stand-in over real sockets on 127.0.0.1, with the VAD-only recognizer (no model needed)."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import pytest
import websockets
from aiohttp import web
from websockets.exceptions import ConnectionClosed, InvalidStatus

from standin.audio import ULAW_TABLE
from standin.faults import Faults
from standin.recognizer import VadOnlyRecognizer
from standin.server import ServerOptions, StandinServer, running
from tests.fixtures.audio import silence, tone, wav_bytes
from tests.standin.wsclient import TIMEOUT, collect, connect, pieces, transcribe

# Two utterances at 0.2-1.8 s and 3.2-4.8 s with the default VAD (see test_segmenter.py).
TWO = np.concatenate([silence(0.5), tone(1.0), silence(2.0), tone(1.0), silence(1.0)])
TWO_WAV = wav_bytes(TWO)


@pytest.fixture
async def srv() -> AsyncIterator[StandinServer]:
    async with running(ServerOptions(port=0, max_streams=2), VadOnlyRecognizer()) as server:
        yield server


@dataclass
class Receiver:
    url: str
    posts: list[tuple[str, str, bytes]] = field(default_factory=list)  # path, content type, body
    event: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver("")

    async def handle(request: web.Request) -> web.Response:
        rec.posts.append((request.path, request.content_type, await request.read()))
        rec.event.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}"
    yield rec
    await runner.cleanup()


async def http_get(url: str) -> tuple[int, Any]:
    async with asyncio.timeout(TIMEOUT), aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
        return r.status, json.loads(text) if r.content_type == "application/json" else text


async def refused(url: str, query: str = "") -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as err:
        ws = await connect(url, query)
        await ws.close()
    return err.value.response.status_code, err.value.response.body.decode()


def check_utterance(utt: dict[str, Any], uttid: int, start: float, end: float, channel: int = 0) -> None:
    assert (utt["start"], utt["end"]) == (start, end)
    assert utt["metadata"] == {
        "uttid": uttid,
        "channel": channel,
        "source": "stream",
        "model": "eng1:callcenter",
    }
    assert set(utt) >= {"confidence", "recvdate", "donedate", "events", "recvtz"}
    time.strptime(utt["recvdate"][:19], "%Y-%m-%d %H:%M:%S")


async def test_default_mode_is_one_final_json_message_then_close_1000(srv: StandinServer) -> None:
    s = await transcribe(srv.url, pieces(TWO_WAV, 3200), query="model=eng1:callcenter&metadata=abc")
    assert len(s.messages) == 1 and s.close_code == 1000
    doc = s.final_json()
    assert doc["asr"] == "standin-0.1" and doc["model"] == "eng1:callcenter" and doc["audiosecs"] == 5.5
    assert doc["streamtags"] == {"model": "eng1:callcenter", "metadata": "abc"}
    assert "warning" not in doc and "requestid" not in doc
    check_utterance(doc["utterances"][0], 0, 0.2, 1.8)
    check_utterance(doc["utterances"][1], 1, 3.2, 4.8)
    assert "text" not in doc["utterances"][0]


async def test_outstream_sends_utterances_then_empty_then_final(srv: StandinServer) -> None:
    s = await transcribe(srv.url, pieces(TWO_WAV, 1000), query="outstream=true&requestid=r-1")
    streamed = [json.loads(m) for m in s.streamed]
    assert len(s.messages) == 4 and s.close_code == 1000
    check_utterance(streamed[0], 0, 0.2, 1.8)
    assert streamed[0]["text"] == "" and streamed[1]["metadata"]["uttid"] == 1
    assert s.final_json()["requestid"] == "r-1" and len(s.final_json()["utterances"]) == 2


async def test_realtime_sends_each_utterance_while_audio_is_still_arriving(srv: StandinServer) -> None:
    ws = await connect(srv.url, "realtime=true")
    first_part = wav_bytes(TWO)[: 44 + 2 * 8000 * 3]  # header + 3 s: the first utterance is cut at 2.6 s
    async with asyncio.timeout(TIMEOUT):
        await ws.send(first_part)
        first = json.loads(await ws.recv())
        check_utterance(first, 0, 0.2, 1.8)
        await ws.send(wav_bytes(TWO)[len(first_part) :])
        await ws.send(b"")
    s = await collect(ws)
    assert len(s.messages) == 3 and s.messages[1] == "" and s.close_code == 1000


async def test_text_formats(srv: StandinServer) -> None:
    s = await transcribe(srv.url, [TWO_WAV], query="outstream=true&output=text&utterance_fmt=text")
    assert s.messages == ["", "", "", "\n"]
    s = await transcribe(srv.url, [TWO_WAV], headers={"X-Voci-Output": "text"})
    assert s.messages == ["\n"]


async def test_header_names_any_case_and_query_wins(srv: StandinServer) -> None:
    headers = {"x-VOCI-output": "text", "X-Voci-Outstream": "true", "X-VOCI-UTTERANCE-FMT": "text"}
    s = await transcribe(srv.url, [TWO_WAV], headers=headers)
    assert s.messages == ["", "", "", "\n"]
    s = await transcribe(srv.url, [TWO_WAV], query="output=json", headers={"X-Voci-Output": "text"})
    assert len(s.final_json()["utterances"]) == 2


async def test_split_writes_one_byte_at_a_time_through_the_header(srv: StandinServer) -> None:
    rng = np.random.default_rng(7)
    chunks = pieces(TWO_WAV[:60], 1)
    rest, i = TWO_WAV[60:], 0
    while i < len(rest):
        n = int(rng.integers(1, 5000))
        chunks.append(rest[i : i + n])
        i += n
    s = await transcribe(srv.url, chunks)
    assert [(u["start"], u["end"]) for u in s.final_json()["utterances"]] == [(0.2, 1.8), (3.2, 4.8)]


async def test_streaming_wav_sizes(srv: StandinServer) -> None:
    s = await transcribe(srv.url, pieces(wav_bytes(TWO, streaming=True), 777))
    assert len(s.final_json()["utterances"]) == 2


async def test_stereo_channels_are_segmented_on_their_own(srv: StandinServer) -> None:
    left = np.concatenate([silence(0.5), tone(1.0), silence(4.0)])
    right = np.concatenate([silence(3.0), tone(1.0), silence(1.5)])
    s = await transcribe(srv.url, pieces(wav_bytes(np.stack([left, right], axis=1)), 4001))
    utts = s.final_json()["utterances"]
    check_utterance(utts[0], 0, 0.2, 1.8, channel=0)
    check_utterance(utts[1], 1, 2.7, 4.3, channel=1)


@pytest.mark.parametrize("spelling", ["ULAW", "mu-law", "PCMU"])
async def test_headerless_ulaw(srv: StandinServer, spelling: str) -> None:
    ulaw = (
        np.abs(ULAW_TABLE[None, :].astype(np.int32) - TWO[:, None]).argmin(axis=1).astype(np.uint8).tobytes()
    )
    query = f"datahdr=NONE&encoding={spelling}&samprate=8000&sampwidth=1"
    s = await transcribe(srv.url, pieces(ulaw, 160), query=query)
    assert [(u["start"], u["end"]) for u in s.final_json()["utterances"]] == [(0.2, 1.8), (3.2, 4.8)]


async def test_headerless_big_endian_pcm(srv: StandinServer) -> None:
    query = (
        "datahdr=NONE&encoding=SPCM&samprate=16000&sampwidth=2&endian=BIG&uttmaxsilence=300&uttpadding=100"
    )
    doc = (await transcribe(srv.url, [TWO.astype(">i2").tobytes()], query=query)).final_json()
    assert doc["audiosecs"] == 2.75
    assert [(u["start"], u["end"]) for u in doc["utterances"]] == [(0.15, 0.85), (1.65, 2.35)]


async def test_undecodable_audio_gives_a_warning_not_a_crash(srv: StandinServer) -> None:
    doc = (await transcribe(srv.url, [TWO.tobytes()])).final_json()
    assert doc["warning"] == "missing data WAVE header" and doc["utterances"] == [] and "audiosecs" not in doc
    doc = (await transcribe(srv.url, [TWO.tobytes()], query="datahdr=NONE&samprate=8000")).final_json()
    assert "encoding" in doc["warning"] and doc["utterances"] == []
    doc = (await transcribe(srv.url, [TWO_WAV], query="samprate=16000")).final_json()
    assert "contradicts the WAVE header" in doc["warning"]
    doc = (await transcribe(srv.url, [])).final_json()
    assert doc["warning"] == "no audio received"
    body = (await http_get(srv.http_url + "/status"))[1]
    assert body["status"]["stream.warnings"] == 4 and body["status"]["lasterrormsg"] == "no audio received"


async def test_invalid_tag_is_400_naming_it_before_the_upgrade(srv: StandinServer) -> None:
    assert await refused(srv.url, "samprate=fast") == (
        400,
        "invalid tag value: samprate: must be an integer, not 'fast'\n",
    )
    status, body = await refused(srv.url, "vadtype=neural")
    assert status == 400 and "vadtype" in body
    status, body = await refused(srv.url, "scrubconf=" + quote('[{"regex": "(["}]'))
    assert status == 400 and body.startswith("invalid tag value: scrubconf: rule 0: bad regex"), body
    served = await transcribe(srv.url, [TWO_WAV])  # the server goes on taking streams
    assert served.close_code == 1000 and len(served.final_json()["utterances"]) == 2


async def test_capacity_503_maxstreamscheck_429_and_status(srv: StandinServer) -> None:
    a, b = await connect(srv.url), await connect(srv.url)
    status, body = await refused(srv.url)
    assert status == 503 and "busy" in body
    assert await http_get(srv.http_url + "/maxstreamscheck") == (429, {"#streams": 2, "maxstreams": 2})
    status, doc = await http_get(srv.http_url + "/status")
    st = doc["status"]
    assert (
        status == 200 and st["#streams"] == 2 and st["maxstreams"] == 2 and st["responses"]["http-503"] == 1
    )
    for ws in (a, b):
        await ws.send(TWO_WAV)
        await ws.send(b"")
        assert (await collect(ws)).close_code == 1000
    assert (await http_get(srv.http_url + "/maxstreamscheck")) == (200, {"#streams": 0, "maxstreams": 2})
    st = (await http_get(srv.http_url + "/status"))[1]["status"]
    assert st["#done"] == 2 and st["utt.count"] == 4 and st["stream.audiosecs"] == 11.0


async def test_utterance_callback_and_callback(srv: StandinServer, receiver: Receiver) -> None:
    query = f"realtime=true&utterance_callback={receiver.url}/utt&callback={receiver.url}/final"
    s = await transcribe(srv.url, [TWO_WAV], query=query)
    assert s.messages == [] and s.close_code == 1000 and s.close_reason == "result delivered to callback"
    assert [(p, ct) for p, ct, _ in receiver.posts] == [("/utt", "application/json")] * 2 + [
        ("/final", "application/json")
    ]
    utts = [json.loads(b) for _, _, b in receiver.posts[:2]]
    check_utterance(utts[0], 0, 0.2, 1.8)
    assert utts[1]["text"] == "" and len(json.loads(receiver.posts[2][2])["utterances"]) == 2


async def test_utterance_callback_with_final_on_socket_and_text_format(
    srv: StandinServer, receiver: Receiver
) -> None:
    query = f"outstream=true&utterance_fmt=text&utterance_callback={receiver.url}/u"
    s = await transcribe(srv.url, [TWO_WAV], query=query)
    assert len(s.messages) == 1 and len(s.final_json()["utterances"]) == 2
    assert [(p, ct, b) for p, ct, b in receiver.posts] == [("/u", "text/plain", b"")] * 2


async def test_callback_failure_is_logged_not_fatal(srv: StandinServer) -> None:
    s = await transcribe(srv.url, [TWO_WAV], query="callback=http://127.0.0.1:9/none")
    assert s.messages == [] and s.close_code == 1000


async def test_client_closing_first_never_crashes_the_server(srv: StandinServer) -> None:
    ws = await connect(srv.url, "realtime=true")
    await ws.send(TWO_WAV[:20000])
    await ws.close()
    ws = await connect(srv.url, "realtime=true")
    await ws.send(TWO_WAV)  # the first utterance comes back while we close without reading
    await asyncio.sleep(0.2)
    ws.transport.abort()
    s = await transcribe(srv.url, [TWO_WAV])
    assert len(s.final_json()["utterances"]) == 2
    for _ in range(200):  # the server notices the aborted socket on its own time
        if not (await http_get(srv.http_url + "/status"))[1]["status"]["#streams"]:
            break
        await asyncio.sleep(0.05)
    st = (await http_get(srv.http_url + "/status"))[1]["status"]
    assert st["responses"]["broken pipe"] == 2


async def test_frames_and_streams_are_bounded() -> None:
    options = ServerOptions(port=0, max_frame_bytes=10000, max_stream_secs=2.0)
    async with running(options, VadOnlyRecognizer()) as server:
        ws = await connect(server.url)
        await ws.send(b"\x00" * 20000)
        s = await collect(ws)
        assert s.close_code == 1009 and s.messages == []
        ws = await connect(server.url)
        async with asyncio.timeout(TIMEOUT):
            for chunk in pieces(TWO_WAV, 8000):
                try:
                    await ws.send(chunk)
                except ConnectionClosed:
                    break
        s = await collect(ws)
        assert "longer than 2 s" in s.final_json()["warning"] and s.final_json()["audiosecs"] < 2.5


async def test_idle_stream_times_out_with_a_warning() -> None:
    async with running(ServerOptions(port=0, idle_timeout=0.3), VadOnlyRecognizer()) as server:
        ws = await connect(server.url)
        await ws.send(TWO_WAV[:1000])
        assert "no audio for 0.3 s" in (await collect(ws)).final_json()["warning"]


async def test_fault_close_after_drops_the_connection_without_final() -> None:
    async with running(ServerOptions(port=0, faults=Faults(close_after=1.0)), VadOnlyRecognizer()) as server:
        ws = await connect(server.url, "realtime=true")
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ConnectionClosed):
                for chunk in pieces(TWO_WAV, 1600):
                    await ws.send(chunk)
                    await asyncio.sleep(0.01)
                await ws.send(b"")
                await ws.recv()
        s = await collect(ws)
        assert s.messages == [] and s.close_code == 1006
        body = (await http_get(server.http_url + "/status"))[1]
        assert body["status"]["responses"]["fault close"] == 1


async def test_fault_delay_holds_every_result() -> None:
    async with running(ServerOptions(port=0, faults=Faults(delay_ms=400)), VadOnlyRecognizer()) as server:
        ws = await connect(server.url, "outstream=true")
        await ws.send(TWO_WAV)
        started = time.monotonic()
        await ws.send(b"")
        s = await collect(ws)
        assert len(s.messages) == 4 and time.monotonic() - started >= 4 * 0.4


async def test_fault_refuse_and_runtime_switches(srv: StandinServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(TIMEOUT):
            r = await http.post(srv.http_url + "/_faults", json={"refuse": True, "delay_ms": 5})
            assert r.status == 200 and await r.json() == {
                "close_after": None,
                "delay_ms": 5,
                "refuse": True,
                "refuse_scrubaudio": False,
            }
            assert (await refused(srv.url))[0] == 503
            r = await http.post(srv.http_url + "/_faults", json={"refuse": False, "close_after": 0.5})
            assert r.status == 200
            r = await http.post(srv.http_url + "/_faults", json={"refuse": "yes"})
            assert r.status == 400 and "refuse" in await r.text()
    ws = await connect(srv.url)
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            await ws.send(TWO_WAV)
            await ws.send(b"")
            await ws.recv()
    assert srv.faults == Faults(close_after=0.5, delay_ms=5, refuse=False)


async def test_plain_get_on_transcribe_is_400(srv: StandinServer) -> None:
    status, body = await http_get(srv.http_url + "/transcribe")
    assert status == 400 and "WebSocket" in body


async def test_server_stops_with_streams_open() -> None:
    server = StandinServer(ServerOptions(port=0, shutdown_grace=0.2), VadOnlyRecognizer())
    await server.start()
    ws = await websockets.connect(server.url)
    await ws.send(TWO_WAV[:1000])
    async with asyncio.timeout(5):
        await server.stop()
    s = await collect(ws)
    assert s.close_code is not None and s.close_code != 1000


# --- scrubbed audio streaming ------------------------------------------------------------------------


def scrubbed(s: Any) -> bytes:
    return b"".join(m for m in s.messages if isinstance(m, bytes))


async def test_scrubbed_audio_streams_in_binary_messages_while_audio_arrives(srv: StandinServer) -> None:
    """VAD-only recognises no words, so nothing is scrubbed: the audio comes back as it went in."""
    ws = await connect(srv.url, "realtime=true&scrubaudio=true&scruboutfmt=wav")
    audio = wav_bytes(TWO)
    first_part = audio[: 44 + 2 * 8000 * 3]
    async with asyncio.timeout(TIMEOUT):
        await ws.send(first_part)
        early = [await ws.recv(), await ws.recv()]  # the first utterance and scrubbed audio, any order
        assert {type(m) for m in early} == {str, bytes}, early
        await ws.send(audio[len(first_part) :])
        await ws.send(b"")
    s = await collect(ws)
    s.messages[:0] = early
    texts = [m for m in s.messages if isinstance(m, str)]
    assert len(texts) == 4 and texts[2] == "" and s.close_code == 1000  # 2 utterances, "", final
    assert isinstance(s.messages[-1], str)
    out = scrubbed(s)
    assert out[:4] == b"RIFF" and out[44:] == audio[44:]


async def test_scrubsil_blanks_what_no_word_covers_and_g711_keeps_its_law(srv: StandinServer) -> None:
    codes = bytes([0x10, 0x90]) * 8000  # 2 s of loud µ-law
    query = "datahdr=NONE&encoding=ulaw&samprate=8000&outstream=true"
    query += "&scrubaudio=true&scrubsil=true&scruboutfmt=wav"
    s = await transcribe(srv.url, pieces(codes, 1600), query=query)
    out = scrubbed(s)
    assert out[20:22] == b"\x07\x00" and out[44:] == b"\xff" * len(codes)
    assert s.close_code == 1000 and s.final_json()["utterances"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("outzip=7z", "zip containers, not 7z"),
        ("notext=true", "needs scrubaudio=true"),
        ("outstream=true&scrubaudio=true&scruboutfmt=ogg", "scruboutfmt: must be one of"),
        ("outstream=true&scrubaudio=true&scrubmindist=-1", "scrubmindist: must be between"),
        ("outstream=true&scrubaudio=true&scruboffset=1e3", "scruboffset: must be a number"),
    ],
)
async def test_scrubbed_audio_tags_are_checked_before_the_upgrade(
    srv: StandinServer, query: str, message: str
) -> None:
    status, body = await refused(srv.url, query)
    assert status == 400 and message in body, body
    served = await transcribe(srv.url, [TWO_WAV])  # the server goes on taking streams
    assert served.close_code == 1000 and len(served.final_json()["utterances"]) == 2


async def test_scrubbed_mp3_is_the_default_format(srv: StandinServer) -> None:
    s = await transcribe(srv.url, pieces(TWO_WAV, 4000), query="outstream=true&scrubaudio=true")
    out = scrubbed(s)
    assert out[:3] == b"ID3" or (out[0] == 0xFF and out[1] & 0xE0 == 0xE0)
    seconds = (len(TWO_WAV) - 44) / 16000
    assert 0.8 * seconds * 2000 <= len(out) <= 1.2 * seconds * 2000 + 2000  # 16 kbit/s


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


async def test_scrubaudio_without_outstream_is_one_zip_of_transcript_and_audio(srv: StandinServer) -> None:
    query = "scrubaudio=true&scruboutfmt=wav&requestid=r-9"
    s = await transcribe(srv.url, pieces(TWO_WAV, 4000), query=query)
    assert len(s.messages) == 1 and isinstance(s.messages[0], bytes) and s.close_code == 1000
    members = unzip(s.messages[0])
    assert sorted(members) == ["r-9.json", "r-9.wav"]
    assert len(json.loads(members["r-9.json"])["utterances"]) == 2
    assert members["r-9.wav"][:4] == b"RIFF" and members["r-9.wav"][44:] == TWO_WAV[44:]


async def test_outzip_zips_the_transcript_and_notext_leaves_only_the_audio(srv: StandinServer) -> None:
    s = await transcribe(srv.url, [TWO_WAV], query="outzip=true&output=text")
    assert len(s.messages) == 1 and sorted(unzip(s.messages[0])) == ["stream.txt"]
    s = await transcribe(srv.url, [TWO_WAV], query="scrubaudio=true&notext=true")
    (only,) = unzip(s.messages[0]).items()
    assert only[0] == "stream.mp3" and len(only[1]) > 1000
    s = await transcribe(srv.url, pieces(TWO_WAV, 4000), query="realtime=true&scrubaudio=true&notext=true")
    assert s.messages and all(isinstance(m, bytes) for m in s.messages) and s.close_code == 1000


async def test_a_zipped_result_goes_to_the_callback_as_application_zip(
    srv: StandinServer, receiver: Receiver
) -> None:
    s = await transcribe(srv.url, [TWO_WAV], query=f"outzip=zip&callback={receiver.url}/final")
    assert s.messages == [] and s.close_code == 1000 and s.close_reason == "result delivered to callback"
    ((path, content_type, body),) = receiver.posts
    assert (path, content_type) == ("/final", "application/zip") and sorted(unzip(body)) == ["stream.json"]


async def test_status_lists_the_tags_of_recent_streams(srv: StandinServer) -> None:
    """A stand-in extension: `recent` names each accepted stream's requestid and the tags it was given
    (query string and X-Voci-* headers), oldest first, the last RECENT_STREAMS of them; a refused
    stream is not listed."""
    await refused(srv.url, "samprate=fast")
    await transcribe(srv.url, [TWO_WAV], query="requestid=call-1&model=eng1:sales")
    await transcribe(srv.url, [TWO_WAV], headers={"X-Voci-Model": "spa1:support", "X-Request-Id": "call-2"})
    recent = (await http_get(srv.http_url + "/status"))[1]["status"]["recent"]
    assert [(r["requestid"], r["tags"]["model"]) for r in recent] == [
        ("call-1", "eng1:sales"),
        ("call-2", "spa1:support"),
    ]
    assert recent[0]["tags"]["requestid"] == "call-1"


async def test_fault_refuse_scrubaudio_is_a_400_naming_it_and_other_streams_go_on(srv: StandinServer) -> None:
    srv.faults = Faults(refuse_scrubaudio=True)
    status, body = await refused(srv.url, "realtime=true&scrubaudio=true&scruboutfmt=wav")
    assert status == 400 and body.startswith("invalid tag value: scrubaudio:"), body
    async with asyncio.timeout(TIMEOUT):
        ws = await connect(srv.url, "realtime=true&scrubtext=true")
        await ws.send(wav_bytes(TWO))
        await ws.send(b"")
    s = await collect(ws)
    assert s.close_code == 1000 and isinstance(s.messages[-1], str)
    async with aiohttp.ClientSession() as http, asyncio.timeout(TIMEOUT):
        r = await http.post(srv.http_url + "/_faults", json={"refuse_scrubaudio": "yes"})
        assert r.status == 400 and "refuse_scrubaudio" in await r.text()
        r = await http.post(srv.http_url + "/_faults", json={"refuse_scrubaudio": False})
        assert r.status == 200 and (await r.json())["refuse_scrubaudio"] is False


async def test_a_client_gone_before_its_upgrade_is_answered_is_a_log_line_not_a_traceback(
    srv: StandinServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The upgrade request arrives whole, then the client closes before the 101 is written (a client
    whose connect timed out under load): the stand-in logs it, counts it, and serves the next stream."""
    host, port = srv.url.split("//")[1].split("/")[0].split(":")
    request = (
        f"GET /transcribe?realtime=true HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    for _ in range(5):
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        writer.close()  # in the same loop turn: the request and the end of the stream arrive together
        await writer.wait_closed()
    for _ in range(100):
        st = (await http_get(srv.http_url + "/status"))[1]["status"]
        if st["responses"].get("client-gone", 0) + st["responses"].get("http-101", 0) >= 5:
            break
        await asyncio.sleep(0.05)
    assert st["responses"].get("client-gone", 0) >= 1, st["responses"]
    assert "Error handling request" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    s = await transcribe(srv.url, [TWO_WAV])
    assert len(s.final_json()["utterances"]) == 2

"""A call's redacted recording through the real pipeline and engine client, against a scripted engine
over a real WebSocket: the redaction tags asked, the scrubbed audio written to one file per call (per
stream with siprec.delivery streams), a reconnect's replay written once, a lost span as silence and a
gap, the 400 naming scrubaudio, call.ended and the metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import wave
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import REGISTRY
from websockets.asyncio.server import ServerConnection

from bridge.call import CallPipeline
from bridge.config import Config
from bridge.ledger import CallLedger
from bridge.metrics import CallMetrics, EngineMetrics
from bridge.webhook import payload
from tests.bridge.test_call import CALLER_FIRST, VALIDATOR, frame, started
from tests.bridge.vblaze.vblaze_scripted import Conn, ScriptedEngine
from tests.fixtures.sinks import ListSink

FRAME_BYTES = 1600  # 100 ms of 8 kHz 16-bit mono
SCRUBBED = -7  # the scripted engine's "scrubbed" audio: every sample becomes this


def scrubbing_script(drop_after: int | None = None, header: bool = True) -> Any:
    """Echo each audio frame back as scrubbed audio (every sample SCRUBBED); at the end one utterance,
    separator, final. ``drop_after``: after that many frames, confirm them with an utterance, send back
    only the first half of them, and drop the connection."""

    async def script(ws: ServerConnection, conn: Conn) -> None:
        frames = 0
        first = header
        async for message in ws:
            assert isinstance(message, bytes)
            if not message:
                break
            conn.audio += message
            frames += 1
            if drop_after is not None and frames == drop_after:
                end = frames * 0.1
                await ws.send(utterance(0.0, end, conn.index))
                ws.transport.abort()
                return
            if drop_after is None or frames <= drop_after // 2:
                scrubbed = np.full(len(message) // 2, SCRUBBED, dtype="<i2").tobytes()
                riff = b"RIFF\xff\xff\xff\xffWAVEfmt " if first else b""
                first = False
                await ws.send(riff + fmt_and_data() + scrubbed if riff else scrubbed)
        await ws.send(utterance(0.0, 0.3, conn.index))
        await ws.send("")
        await ws.send(json.dumps({"utterances": [json.loads(utterance(0.0, 0.3, conn.index))]}))
        await ws.close()

    return script


def fmt_and_data(rate: int = 8000) -> bytes:
    return struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + b"\xff\xff\xff\xff"


def utterance(start: float, end: float, index: int) -> str:
    doc = {"start": start, "end": end, "text": f"number ### on {index}", "events": [], "metadata": {}}
    return json.dumps(doc)


def pipeline(url: str, tmp_path: Path, roles: Any = None, **config: Any) -> tuple[CallPipeline, ListSink]:
    cfg = Config.model_validate(
        {
            "engine": {"url": url, "final_timeout_seconds": 5, "reconnect_initial_seconds": 0.05},
            "state": {"directory": str(tmp_path / "state")},
            "redaction": {"text": True, "audio": True},
            "recording": {"enabled": True, "directory": str(tmp_path / "rec")},
            **config,
        }
    )
    sink = ListSink()
    call = CallPipeline(
        started(roles),
        cfg,
        sink,
        0,
        CallMetrics(),
        EngineMetrics(),
        CallLedger(str(tmp_path / "state"), 5080),
    )
    return call, sink


async def play(call: CallPipeline, frames: int, streams: int = 1) -> None:
    for _ in range(frames):
        now = asyncio.get_running_loop().time()
        for stream in range(streams):
            call.audio(stream, frame(1000 + stream), now)
        await asyncio.sleep(0.01)


def samples_of(path: str) -> np.ndarray[Any, Any]:
    with wave.open(path) as w:
        assert (w.getsampwidth(), w.getframerate()) == (2, 8000)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def check_file(recording: dict[str, Any]) -> bytes:
    body = Path(recording["path"]).read_bytes()
    assert recording["bytes"] == len(body) and recording["sha256"] == hashlib.sha256(body).hexdigest()
    assert not Path(recording["path"] + ".partial").exists()
    return body


def counted(result: str) -> float:
    value = REGISTRY.get_sample_value("vblaze_bridge_recordings_total", {"result": result})
    return value or 0.0


async def test_a_recorded_call_writes_the_scrubbed_audio_only(tmp_path: Path) -> None:
    before = counted("written")
    async with ScriptedEngine([scrubbing_script()]) as engine:
        call, sink = pipeline(engine.url, tmp_path)
        task = asyncio.create_task(call.run())
        await play(call, 20)
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    (conn,) = engine.conns
    assert conn.headers["x-voci-scrubtext"] == "true" and conn.headers["x-voci-scrubaudio"] == "true"
    assert conn.headers["x-voci-scruboutfmt"] == "wav"
    (end,) = sink.of("call.ended")
    VALIDATOR.validate(json.loads(payload.encode(sink.events[-1])))
    rec = end["recording"]
    assert rec["status"] == "written" and rec["redacted"] is True and rec["gaps"] == []
    assert rec["seconds"] == end["audio_seconds"] == 2.0 and rec["channels"] == 1
    check_file(rec)
    assert set(samples_of(rec["path"]).tolist()) == {SCRUBBED}  # not one sample of the call's own audio
    assert counted("written") == before + 1


async def test_a_reconnect_writes_the_replay_once_and_the_lost_span_as_silence(tmp_path: Path) -> None:
    async with ScriptedEngine([scrubbing_script(drop_after=10), scrubbing_script(header=False)]) as engine:
        call, sink = pipeline(engine.url, tmp_path)
        task = asyncio.create_task(call.run())
        await play(call, 30)
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    assert len(engine.conns) == 2
    (end,) = sink.of("call.ended")
    rec = end["recording"]
    check_file(rec)
    samples = samples_of(rec["path"])
    assert len(samples) == 30 * FRAME_BYTES // 2 and rec["seconds"] == end["audio_seconds"] == 3.0
    # The first stream sent back 0-0.5 s, confirmed 0-1.0 s and died; the second replays from 1.0 s.
    assert rec["gaps"] == [{"start": 0.5, "duration": 0.5}]
    assert set(samples[:4000].tolist()) == {SCRUBBED} and set(samples[4000:8000].tolist()) == {0}
    assert set(samples[8000:].tolist()) == {SCRUBBED}


async def test_an_engine_refusing_scrubaudio_transcribes_on_without_a_recording(tmp_path: Path) -> None:
    before = counted("engine_refused")
    refusal = (400, "invalid tag value: scrubaudio: not supported\n")
    async with ScriptedEngine([scrubbing_script()], reject=lambda i: refusal if i == 0 else None) as engine:
        call, sink = pipeline(engine.url, tmp_path)
        task = asyncio.create_task(call.run())
        await play(call, 10)
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    (conn,) = engine.conns  # the refused attempt never became a connection
    assert "x-voci-scrubaudio" not in conn.headers and conn.headers["x-voci-scrubtext"] == "true"
    (end,) = sink.of("call.ended")
    VALIDATOR.validate(json.loads(payload.encode(sink.events[-1])))
    assert end["recording"] == {"status": "failed", "redacted": True, "reason": "engine refused scrubaudio"}
    assert end["utterances"] == 1 and end["gaps"] == []
    assert not (tmp_path / "rec").exists() or list((tmp_path / "rec").iterdir()) == []
    assert counted("engine_refused") == before + 1


async def test_siprec_streams_delivery_records_each_stream(tmp_path: Path) -> None:
    async with ScriptedEngine([scrubbing_script()]) as engine:
        call, sink = pipeline(engine.url, tmp_path, CALLER_FIRST, siprec={"delivery": "streams"})
        task = asyncio.create_task(call.run())
        await play(call, 10, streams=2)
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    (end,) = sink.of("call.ended")
    VALIDATOR.validate(json.loads(payload.encode(sink.events[-1])))
    rec = end["recording"]
    assert rec["status"] == "written" and "path" not in rec
    assert [f["stream"] for f in rec["streams"]] == [0, 1]
    for f in rec["streams"]:
        check_file(f)
        assert f["seconds"] == 1.0 and set(samples_of(f["path"]).tolist()) == {SCRUBBED}
    assert rec["streams"][0]["path"] != rec["streams"][1]["path"]


async def test_a_failed_pipeline_still_finishes_the_recording(tmp_path: Path) -> None:
    async with ScriptedEngine([scrubbing_script()]) as engine:
        call, sink = pipeline(engine.url, tmp_path)
        task = asyncio.create_task(call.run())
        await play(call, 10)
        await asyncio.sleep(0.2)

        async def broken() -> Any:
            raise RuntimeError("a defect at hangup")

        call.stream.finish = broken  # type: ignore[method-assign]
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    (end,) = sink.of("call.ended")
    rec = end["recording"]
    check_file(rec)
    assert rec["seconds"] == end["audio_seconds"] == 1.0


async def test_a_cancelled_call_keeps_no_partial_recording(tmp_path: Path) -> None:
    before = counted("cancelled")
    async with ScriptedEngine([scrubbing_script()]) as engine:
        call, sink = pipeline(engine.url, tmp_path)
        task = asyncio.create_task(call.run())
        await play(call, 10)
        await asyncio.sleep(0.2)
        assert list((tmp_path / "rec").iterdir())  # the partial file, being written
        task.cancel()
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.CancelledError:
            pass
    (end,) = sink.of("call.ended")
    VALIDATOR.validate(json.loads(payload.encode(sink.events[-1])))
    assert end["recording"] == {"status": "failed", "redacted": True, "reason": "call cancelled"}
    assert list((tmp_path / "rec").iterdir()) == []
    assert counted("cancelled") == before + 1

"""A call paused for PCI (bridge/call.py + bridge/pause.py): silence on every engine stream, events in
order, the paused gap, DTMF sequences and auto-resume, against a scripted engine on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np

from bridge.call import CallPipeline
from bridge.config import Config
from bridge.ledger import CallLedger
from bridge.metrics import CallMetrics, EngineMetrics
from bridge.webhook import payload
from sip.siprec import StreamRole
from tests.bridge.test_call import CALLER_FIRST, VALIDATOR, answering_script, frame, started
from tests.bridge.vblaze.vblaze_scripted import ScriptedEngine
from tests.fixtures.sinks import ListSink

FRAME_BYTES = 1600


def make(
    url: str, tmp_path: Path, roles: tuple[StreamRole, ...] | None = None, **sections: dict[str, Any]
) -> tuple[CallPipeline, ListSink]:
    raw: dict[str, Any] = {
        "engine": {"url": url, "final_timeout_seconds": 5, "datahdr": "NONE"},
        "state": {"directory": str(tmp_path)},
    }
    raw.update(sections)
    sink = ListSink()
    call = CallPipeline(
        started(roles),
        Config.model_validate(raw),
        sink,
        0,
        CallMetrics(),
        EngineMetrics(),
        CallLedger(str(tmp_path), 5080),
    )
    return call, sink


async def play(call: CallPipeline, frames: int, streams: int = 1, value: int = 100) -> None:
    for _ in range(frames):
        now = asyncio.get_running_loop().time()
        for stream in range(streams):
            call.audio(stream, frame(value), now)
        await asyncio.sleep(0)


async def settle() -> None:
    """Let a frame's length pass, so the next frames began after the last pause change."""
    await asyncio.sleep(0.11)


def kinds(sink: ListSink) -> list[str]:
    return [event.kind for event in sink.events]


def values(audio: bytes | bytearray) -> list[int]:
    return np.frombuffer(bytes(audio), dtype="<i2").tolist()  # type: ignore[no-any-return]


async def test_paused_span_goes_out_as_silence_with_a_gap_and_events_in_order(tmp_path: Path) -> None:
    async with ScriptedEngine([answering_script([0])]) as engine:
        call, sink = make(engine.url, tmp_path)
        task = asyncio.create_task(call.run())
        await play(call, 5)
        assert call.pause("api:desk", "card number") is True
        assert call.pause("api:desk", "again") is False  # idempotent: no second event
        await play(call, 5)
        assert call.snapshot()["paused"] is True and call.snapshot()["paused_by"] == "api:desk"
        assert call.resume("api:desk") is True
        assert call.resume("api:desk") is False
        await settle()
        await play(call, 5)
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    (conn,) = engine.conns
    heard = values(conn.audio)
    assert len(heard) == 15 * 800
    assert set(heard[: 5 * 800]) == {100} and set(heard[5 * 800 : 10 * 800]) == {0}
    assert set(heard[10 * 800 :]) == {100}
    assert [k for k in kinds(sink) if k != "utterance"] == [
        "call.started",
        "call.paused",
        "call.resumed",
        "call.ended",
    ]
    assert [event.seq for event in sink.events] == list(range(len(sink.events)))
    for event in sink.events:
        VALIDATOR.validate(json.loads(payload.encode(event)))
    (paused,) = sink.of("call.paused")
    assert paused["by"] == "api:desk" and paused["reason"] == "card number"
    (resumed,) = sink.of("call.resumed")
    assert resumed["by"] == "api:desk" and resumed["at"] >= paused["at"]
    (end,) = sink.of("call.ended")
    (gap,) = [g for g in end["gaps"] if g["cause"] == "paused"]
    assert gap["start"] == 0.5 and gap["duration"] == 0.5


async def test_both_sides_of_a_stereo_call_and_both_streams_are_silenced(tmp_path: Path) -> None:
    for delivery in ("stereo", "streams"):
        async with ScriptedEngine([answering_script([0])]) as engine:
            call, sink = make(engine.url, tmp_path, CALLER_FIRST, siprec={"delivery": delivery})
            task = asyncio.create_task(call.run())
            await play(call, 4, streams=2)
            call.pause("dtmf")
            await play(call, 4, streams=2)
            call.ended("remote_bye")  # while paused: the span closes with the call
            await asyncio.wait_for(task, 10)
        for conn in engine.conns:
            audio = bytes(conn.audio[44:] if delivery == "stereo" else conn.audio)
            heard = values(audio)
            half = len(heard) // 2
            assert set(heard[half:]) == {0}, delivery  # every channel, every stream
            assert 0 not in heard[:half], delivery
        (end,) = sink.of("call.ended")
        paused = [g for g in end["gaps"] if g["cause"] == "paused"]
        assert len(paused) == (2 if delivery == "streams" else 1), end["gaps"]
        assert all(g["duration"] == 0.4 for g in paused)


async def test_dtmf_sequences_pause_and_resume_and_other_digits_pass(tmp_path: Path) -> None:
    pause = {"dtmf_pause": "*1", "dtmf_resume": "*2", "dtmf_hold_seconds": 0.2}
    async with ScriptedEngine([answering_script([0])]) as engine:
        call, sink = make(engine.url, tmp_path, pause=pause)
        task = asyncio.create_task(call.run())
        await play(call, 2)
        for digit in "5*1":
            call.dtmf(digit)
        await play(call, 2)
        for digit in "**2":
            call.dtmf(digit)
        call.dtmf("*")  # alone: released after the hold
        await asyncio.sleep(0.3)
        call.dtmf("#")
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    digits = [e.data["digit"] for e in sink.events if e.kind == "dtmf"]
    assert digits == ["5", "*", "*", "#"]
    order = [k for k in kinds(sink) if k not in ("utterance", "call.started")]
    assert order == ["dtmf", "call.paused", "dtmf", "call.resumed", "dtmf", "dtmf", "call.ended"]
    assert sink.of("call.paused")[0]["by"] == "dtmf" and sink.of("call.resumed")[0]["by"] == "dtmf"


async def test_auto_resume(tmp_path: Path) -> None:
    async with ScriptedEngine([answering_script([0])]) as engine:
        call, sink = make(engine.url, tmp_path, pause={"auto_resume_seconds": 0.2})
        task = asyncio.create_task(call.run())
        await play(call, 2)
        call.pause("api:desk")
        await asyncio.sleep(0.35)
        assert call.snapshot()["paused"] is False
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    (resumed,) = sink.of("call.resumed")
    assert resumed["by"] == "auto" and 0.15 <= resumed["duration"] <= 0.5


async def test_nothing_is_paused_once_the_call_ended(tmp_path: Path) -> None:
    async with ScriptedEngine([answering_script([0])]) as engine:
        call, sink = make(engine.url, tmp_path)
        task = asyncio.create_task(call.run())
        await play(call, 2)
        call.ended("remote_bye")
        assert call.ending and call.pause("api:desk") is False and call.resume("api:desk") is False
        await asyncio.wait_for(task, 10)
    assert "call.paused" not in kinds(sink)


async def test_a_reconnect_during_the_pause_replays_only_silence_for_it(tmp_path: Path) -> None:
    """The first stream drops in the paused span; the next one replays from the start (no utterance
    confirmed anything): the replay of the paused span is silence, like its first sending."""

    async def dropping(ws: Any, conn: Any) -> None:
        async for message in ws:
            conn.audio += message
            if len(conn.audio) >= 8 * FRAME_BYTES:
                await ws.close()
                return

    engine_cfg = {"final_timeout_seconds": 5, "datahdr": "NONE", "reconnect_initial_seconds": 0.05}
    async with ScriptedEngine([dropping, answering_script([0])]) as engine:
        call, sink = make(engine.url, tmp_path, engine={"url": engine.url, **engine_cfg})
        task = asyncio.create_task(call.run())
        await play(call, 5)
        call.pause("api:desk")
        await play(call, 5)
        await asyncio.sleep(0.4)  # the first stream is gone, the second took the replay, still paused
        call.resume("api:desk")
        await settle()
        await play(call, 5)
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    first, second = engine.conns
    assert set(values(first.audio)[5 * 800 :]) == {0}
    replayed = values(second.audio)
    assert len(replayed) == 15 * 800
    assert set(replayed[: 5 * 800]) == {100} and set(replayed[5 * 800 : 10 * 800]) == {0}
    assert set(replayed[10 * 800 :]) == {100}
    (end,) = sink.of("call.ended")
    assert [g for g in end["gaps"] if g["cause"] == "paused"] == [
        {"start": 0.5, "duration": 0.5, "cause": "paused"}
    ]


async def test_a_frame_queued_before_the_pause_but_handled_after_it_is_silenced(tmp_path: Path) -> None:
    """Fail closed: what is handled while paused goes out silent, whenever it was captured."""
    async with ScriptedEngine([answering_script([0])]) as engine:
        call, _ = make(engine.url, tmp_path)
        task = asyncio.create_task(call.run())
        captured = asyncio.get_running_loop().time()
        await play(call, 2)
        call.pause("api:desk")
        call.audio(0, frame(100), captured)  # captured before the pause, still in the worker's queue
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    (conn,) = engine.conns
    assert set(values(conn.audio)[2 * 800 :]) == {0}

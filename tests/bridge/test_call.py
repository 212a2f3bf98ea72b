"""The call pipeline's SIPREC paths: stereo pairing, roles on utterances, remapping, streams delivery.

The pipeline runs against a scripted engine on 127.0.0.1 that records what it receives and answers
one utterance per connection on a channel the test chooses; every event is checked against the
webhook schema.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection

from bridge import metrics
from bridge.call import MAX_LAG_FRAMES, CallPipeline, StereoPairer, delivery_of, mapping_change
from bridge.config import Config
from bridge.events import BridgeEvent
from bridge.ledger import CallLedger
from bridge.metrics import CallMetrics, EngineMetrics
from bridge.webhook import payload
from sip.events import CallStarted, SiprecSession
from sip.siprec import Participant, StreamRole
from tests.bridge.vblaze.vblaze_scripted import Conn, ScriptedEngine, bursts, segmenting_script
from tests.fixtures.sinks import ListSink

VALIDATOR = jsonschema.Draft202012Validator(json.loads(payload.SCHEMA_PATH.read_text()))
FRAME_SAMPLES = 800  # 100 ms at 8 kHz
CALLER = Participant("p-caller", aor="sip:+15551230001@carrier.example.net", name="Customer")
AGENT = Participant("p-agent", aor="sip:2001@pbx.callcentre.example", name="Agent 2001")


def frame(value: int, samples: int = FRAME_SAMPLES) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


def channels_of(stereo: bytes) -> tuple[set[int], set[int]]:
    samples = np.frombuffer(stereo, dtype="<i2")
    return set(samples[0::2].tolist()), set(samples[1::2].tolist())


# --- StereoPairer ---------------------------------------------------------------------------------


def test_frames_of_both_streams_are_interleaved_in_step() -> None:
    pairer = StereoPairer((0, 1))
    assert pairer.push(0, frame(100), 1.0) == []
    ((out, arrival),) = pairer.push(1, frame(-200), 1.01)
    assert channels_of(out) == ({100}, {-200})
    assert len(out) == 4 * FRAME_SAMPLES and arrival == 1.0  # the older half's arrival


def test_channels_follow_the_roles() -> None:
    pairer = StereoPairer((1, 0))  # stream 0 is the agent: channel 1
    pairer.push(0, frame(100), 1.0)
    ((out, _),) = pairer.push(1, frame(-200), 1.0)
    assert channels_of(out) == ({-200}, {100})
    pairer.set_channels((0, 1))
    pairer.push(1, frame(7), 1.1)
    ((out, _),) = pairer.push(0, frame(8), 1.1)
    assert channels_of(out) == ({8}, {7})


def test_a_lagging_side_is_padded_with_silence() -> None:
    pairer = StereoPairer()
    out = []
    for i in range(MAX_LAG_FRAMES + 3):
        out += pairer.push(0, frame(i + 1), float(i))
    assert len(out) == 3  # each frame waited MAX_LAG_FRAMES frames for its partner
    assert [channels_of(f) for f, _ in out] == [({1}, {0}), ({2}, {0}), ({3}, {0})]
    assert pairer.padded == 3
    rest = pairer.flush()
    assert [channels_of(f) for f, _ in rest] == [({i + 4}, {0}) for i in range(MAX_LAG_FRAMES)]
    assert pairer.flush() == []


def test_alternating_delivery_never_pads() -> None:
    pairer = StereoPairer()
    out = []
    for i in range(50):
        out += pairer.push(i % 2, frame(i), float(i))
    assert len(out) == 25 and pairer.padded == 0


def test_frames_of_different_lengths_pad_the_shorter() -> None:
    pairer = StereoPairer()
    pairer.push(0, frame(5, 10), 0.0)
    ((out, _),) = pairer.push(1, frame(6, 4), 0.0)
    samples = np.frombuffer(out, dtype="<i2")
    assert samples[0::2].tolist() == [5] * 10 and samples[1::2].tolist() == [6] * 4 + [0] * 6


def test_colliding_channels_fall_back_to_stream_order() -> None:
    assert StereoPairer((0, 0)).channels == (0, 1)


# --- roles ------------------------------------------------------------------------------------------


def role(index: int, name: str, participant: Participant | None = None, reason: str = "test") -> StreamRole:
    channel = {"caller": 0, "agent": 1}.get(name, index)
    return StreamRole(
        index=index,
        label=str(index + 1),
        direction="sendonly",
        role=name,  # type: ignore[arg-type]
        channel=channel,
        reason=reason,
        participants=(participant,) if participant else (),
    )


CALLER_FIRST = (role(0, "caller", CALLER), role(1, "agent", AGENT))
AGENT_FIRST = (role(0, "agent", AGENT), role(1, "caller", CALLER))


def test_mapping_change() -> None:
    assert mapping_change(CALLER_FIRST, CALLER_FIRST) is None
    assert mapping_change(CALLER_FIRST, (role(0, "caller", CALLER, "other reason"), CALLER_FIRST[1])) is None
    assert mapping_change(CALLER_FIRST, AGENT_FIRST) == "roles"
    renamed = Participant("p-x", aor="sip:3001@pbx.callcentre.example")
    assert mapping_change(CALLER_FIRST, (CALLER_FIRST[0], role(1, "agent", renamed))) == "participants"


def started(roles: tuple[StreamRole, ...] | None, call_id: str = "call-1@test") -> CallStarted:
    session = None
    if roles is not None:
        session = SiprecSession(
            evidence=("multipart body with rs-metadata",),
            roles=roles,
            session_ids=("s1",),
            group_id="g1",
        )
    return CallStarted(
        key=1,
        call_id=call_id,
        from_uri="<sip:src@127.0.0.1>",
        to_uri="<sip:srs@127.0.0.1>",
        remote="127.0.0.1:5060",
        headers=(),
        codecs=("PCMU",),
        siprec=session,
    )


@pytest.mark.parametrize(
    ("roles", "configured", "expected"),
    [
        (None, "stereo", "mono"),
        ((role(0, "mixed"),), "stereo", "mono"),
        ((role(0, "mixed"),), "streams", "mono"),
        (CALLER_FIRST, "stereo", "stereo"),
        (CALLER_FIRST, "streams", "streams"),
    ],
)
def test_delivery_of(roles: tuple[StreamRole, ...] | None, configured: str, expected: str) -> None:
    assert delivery_of(started(roles), configured) == expected


# --- the pipeline against a scripted engine -----------------------------------------------------------


def answering_script(channel_by_conn: list[int]) -> Any:
    """Record the audio; at its end answer one utterance on the connection's channel, separator, final."""

    async def script(ws: ServerConnection, conn: Conn) -> None:
        async for message in ws:
            assert isinstance(message, bytes)
            if not message:
                break
            conn.audio += message
        channel = channel_by_conn[min(conn.index, len(channel_by_conn) - 1)]
        utterance = {
            "start": 0.1,
            "end": 0.5,
            "confidence": 0.9,
            "text": f"words on {conn.index}",
            "events": [],
            "metadata": {"uttid": 0, "channel": channel},
        }
        await ws.send(json.dumps(utterance))
        await ws.send("")
        await ws.send(json.dumps({"utterances": [utterance]}))
        await ws.close()

    return script


def pipeline(
    engine_url: str, roles: tuple[StreamRole, ...] | None, tmp_path: Path, **siprec: Any
) -> tuple[CallPipeline, ListSink]:
    config = Config.model_validate(
        {
            "engine": {"url": engine_url, "final_timeout_seconds": 5, "datahdr": "NONE"},
            "siprec": siprec,
            "state": {"directory": str(tmp_path)},
        }
    )
    sink = ListSink()
    call = CallPipeline(
        started(roles),
        config,
        sink,
        0,
        CallMetrics(),
        EngineMetrics(),
        CallLedger(str(tmp_path), 5080),
    )
    return call, sink


async def play(call: CallPipeline, frames: int, values: tuple[int, int] = (100, -200)) -> None:
    for i in range(frames):
        now = asyncio.get_running_loop().time()
        for stream, value in enumerate(values):
            call.audio(stream, frame(value), now)
        if i % 5 == 0:
            await asyncio.sleep(0)


def wav_channels(header: bytes) -> int:
    assert header[:4] == b"RIFF" and header[8:12] == b"WAVE"
    channels: int = struct.unpack("<H", header[22:24])[0]
    return channels


async def test_stereo_call_roles_channels_and_remap(tmp_path: Path) -> None:
    async with ScriptedEngine([answering_script([1])]) as engine:
        call, sink = pipeline(engine.url, AGENT_FIRST, tmp_path)
        task = asyncio.create_task(call.run())
        await play(call, 10)  # stream 0 (agent) says 100, stream 1 (caller) -200
        call.streams_changed(AGENT_FIRST, "re-INVITE")  # same mapping: nothing changes
        call.streams_changed(CALLER_FIRST, "UPDATE")  # now stream 0 is the caller
        await play(call, 10)
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    (conn,) = engine.conns
    assert conn.headers["x-voci-datahdr"] == "WAVE"  # stereo forces WAVE over datahdr NONE
    assert "x-voci-encoding" not in conn.headers
    assert conn.headers["x-voci-requestid"] == "call-1@test"
    assert wav_channels(bytes(conn.audio[:44])) == 2
    samples = np.frombuffer(bytes(conn.audio[44:]), dtype="<i2")
    assert len(samples) == 2 * 20 * FRAME_SAMPLES
    half = len(samples) // 2
    assert set(samples[0:half:2].tolist()) == {-200} and set(samples[1:half:2].tolist()) == {100}
    assert set(samples[half::2].tolist()) == {100} and set(samples[half + 1 :: 2].tolist()) == {-200}

    for event in sink.events:
        VALIDATOR.validate(json.loads(payload.encode(event)))
    (start,) = sink.of("call.started")
    assert start["siprec"]["delivery"] == "stereo"
    assert [r["role"] for r in start["siprec"]["roles"]] == ["agent", "caller"]
    (utt,) = sink.of("utterance")
    assert (utt["channel"], utt["role"], utt["stream"]) == (1, "agent", 1)  # channel 1 after the remap
    assert utt["participant"]["aor"] == AGENT.aor
    (end,) = sink.of("call.ended")
    assert end["remaps"] == 1
    assert [r["role"] for r in end["streams"]] == ["caller", "agent"]
    assert end["audio_seconds"] == pytest.approx(2.0)


async def test_streams_delivery_one_engine_stream_each(tmp_path: Path) -> None:
    async with ScriptedEngine([answering_script([0])]) as engine:
        call, sink = pipeline(engine.url, CALLER_FIRST, tmp_path, delivery="streams")
        task = asyncio.create_task(call.run())
        await play(call, 5)
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    by_request = {c.headers["x-voci-requestid"]: c for c in engine.conns}
    assert set(by_request) == {"call-1@test;stream=0", "call-1@test;stream=1"}
    for index, value in enumerate((100, -200)):
        conn = by_request[f"call-1@test;stream={index}"]
        assert conn.headers["x-voci-datahdr"] == "NONE"  # mono streams keep the configured datahdr
        assert set(np.frombuffer(bytes(conn.audio), dtype="<i2").tolist()) == {value}
    for event in sink.events:
        VALIDATOR.validate(json.loads(payload.encode(event)))
    roles = sorted(
        (u["stream"], u["role"], u["channel"], u["participant"]["aor"]) for u in sink.of("utterance")
    )
    assert roles == [(0, "caller", 0, CALLER.aor), (1, "agent", 1, AGENT.aor)]
    (end,) = sink.of("call.ended")
    streams = end["transcript"]["streams"]
    assert [(s["stream"], s["role"]) for s in streams] == [(0, "caller"), (1, "agent")]
    assert all(s["transcript"]["utterances"] for s in streams)


async def test_plain_call_events_carry_no_roles(tmp_path: Path) -> None:
    async with ScriptedEngine([answering_script([0])]) as engine:
        call, sink = pipeline(engine.url, None, tmp_path)
        task = asyncio.create_task(call.run())
        for _ in range(5):
            call.audio(0, frame(100), asyncio.get_running_loop().time())
        call.audio(1, frame(100), 0.0)  # a plain call has no stream 1: ignored
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    (conn,) = engine.conns
    assert set(np.frombuffer(bytes(conn.audio), dtype="<i2").tolist()) == {100}
    assert len(conn.audio) == 5 * 2 * FRAME_SAMPLES
    assert sink.of("call.started")[0]["siprec"] is None
    (utt,) = sink.of("utterance")
    assert not {"role", "participant", "stream"} & set(utt)
    assert not {"streams", "remaps"} & set(sink.of("call.ended")[0])


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("utterance", {"role": "boss"}),
        ("utterance", {"participant": {"aor": "x"}}),
        ("call.started", {"siprec": {"evidence": [], "roles": [], "delivery": "quad"}}),
        ("call.ended", {"streams": [{"index": 0}]}),
    ],
)
def test_schema_checks_the_siprec_fields(kind: str, data: dict[str, Any]) -> None:
    base: dict[str, dict[str, Any]] = {
        "utterance": {
            "text": "",
            "words": [],
            "start": 0,
            "end": 1,
            "confidence": None,
            "channel": 0,
            "engine": {},
        },
        "call.started": {
            "from": "a",
            "to": "b",
            "headers": {},
            "started_at": "2026-01-01T00:00:00Z",
            "worker": 0,
            "route": "default",
        },
        "call.ended": {
            "reason": "remote_bye",
            "duration": 1,
            "utterances": 0,
            "transcript": None,
            "gaps": [],
        },
    }
    good = BridgeEvent(kind=kind, call_id="c", seq=0, time=0.0, data=base[kind])  # type: ignore[arg-type]
    VALIDATOR.validate(json.loads(payload.encode(good)))
    bad = BridgeEvent(kind=kind, call_id="c", seq=0, time=0.0, data={**base[kind], **data})  # type: ignore[arg-type]
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(json.loads(payload.encode(bad)))


# --- a failing pipeline, the complete transcript ---------------------------------------------------


class GapRecorder(EngineMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.gaps: list[tuple[float, str]] = []

    def gap(self, seconds: float, cause: str) -> None:
        self.gaps.append((seconds, cause))
        super().gap(seconds, cause)


async def test_a_failed_pipeline_gaps_only_the_audio_not_transcribed(tmp_path: Path) -> None:
    """The pipeline fails at hangup: the gap `pipeline_error` starts where the last utterance ended (not
    at 0), is counted in the gap metrics under its own label, and the transcript keeps what was heard."""
    recorder = GapRecorder()
    async with ScriptedEngine([segmenting_script()]) as engine:
        config = Config.model_validate(
            {"engine": {"url": engine.url, "final_timeout_seconds": 5}, "state": {"directory": str(tmp_path)}}
        )
        sink = ListSink()
        call = CallPipeline(
            started(None), config, sink, 0, CallMetrics(), recorder, CallLedger(str(tmp_path), 5080)
        )
        task = asyncio.create_task(call.run())
        audio = bursts(2)  # tones at 0-1 s and 2.5-3.5 s, 5 s in all
        for i in range(0, len(audio), 2 * FRAME_SAMPLES):
            call.audio(0, audio[i : i + 2 * FRAME_SAMPLES], asyncio.get_running_loop().time())
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)  # the engine answers each burst after 0.5 s of silence
        assert len(sink.of("utterance")) == 2

        async def broken() -> Any:
            raise RuntimeError("a defect at hangup")

        call.stream.finish = broken  # type: ignore[method-assign]
        call.ended("remote_bye")
        await asyncio.wait_for(task, 10)
    (end,) = sink.of("call.ended")
    VALIDATOR.validate(json.loads(payload.encode(sink.events[-1])))
    assert end["gaps"] == [{"start": 3.5, "duration": 1.5, "cause": "pipeline_error"}]
    assert recorder.gaps == [(1.5, "pipeline_error")]
    assert metrics.bounded("pipeline_error", metrics.GAP_CAUSES) == "pipeline_error"
    assert [(u["start"], u["end"]) for u in end["transcript"]["utterances"]] == [(0.0, 1.0), (2.5, 3.5)]
    assert end["transcript"]["complete"] is False

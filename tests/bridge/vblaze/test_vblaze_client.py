"""The asyncio V-Blaze client against scripted engines on 127.0.0.1 (real sockets, precise faults)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from typing import Any

import pytest
from vblaze_scripted import (
    BPS,
    ScriptedEngine,
    bursts,
    feed,
    segmenting_script,
    silence,
    tone,
    utterance_json,
)
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.http11 import Response

from bridge.config import AudioConfig, EngineConfig
from bridge.errors import EngineRejected, EngineUnavailable, is_retryable
from bridge.vblaze.client import EngineStream, StreamResult, classify_connect_error
from bridge.vblaze.protocol import Gap, InvalidState, Utterance
from bridge.vblaze.transcript import merge

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """An observer that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.seen: dict[str, asyncio.Event] = {}

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append((name, args))
            self._event(name).set()

        return record

    def _event(self, name: str) -> asyncio.Event:
        return self.seen.setdefault(name, asyncio.Event())

    async def wait(self, name: str) -> None:
        async with asyncio.timeout(5):
            await self._event(name).wait()

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]


def engine_config(url: str, **overrides: Any) -> EngineConfig:
    values: dict[str, Any] = {
        "url": url,
        "connect_timeout_seconds": 1.0,
        "send_timeout_seconds": 1.0,
        "final_timeout_seconds": 5.0,
        "reconnect_initial_seconds": 0.05,
        "reconnect_max_seconds": 0.2,
    }
    values.update(overrides)
    return EngineConfig(**values)


class Call:
    """An EngineStream with its run() task, as the call pipeline holds it."""

    def __init__(self, engine: EngineConfig, call_id: str = "call-1@test") -> None:
        self.utterances: list[Utterance] = []
        self.observer = Recorder()
        self.stream = EngineStream(
            engine, AudioConfig(), call_id, self.utterances.append, self.observer, rng=random.Random(7)
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Call:
        self.task = asyncio.create_task(self.stream.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        if not self.task.done():
            self.task.cancel()
        await asyncio.wait([self.task])

    async def finish(self) -> StreamResult:
        result = await self.stream.finish()
        assert self.task is not None
        await asyncio.wait_for(self.task, 2)  # run() returns once finish() is complete
        return result


def spans(utterances: list[Utterance] | tuple[Utterance, ...]) -> list[tuple[float, float]]:
    return [(round(u.start, 2), round(u.end, 2)) for u in utterances]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- connection errors, classified without sockets -----------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "cause"),
    [
        (
            InvalidStatus(Response(503, "Service Unavailable", Headers(), b"busy")),
            EngineUnavailable,
            "unavailable",
        ),
        (InvalidStatus(Response(500, "Server Error", Headers(), b"")), EngineUnavailable, "unavailable"),
        (InvalidStatus(Response(429, "Too Many Requests", Headers(), b"")), EngineUnavailable, "unavailable"),
        (InvalidStatus(Response(400, "Bad Request", Headers(), b"bad tag")), EngineRejected, "rejected"),
        (InvalidStatus(Response(404, "Not Found", Headers(), b"")), EngineRejected, "rejected"),
        (ConnectionRefusedError(111, "refused"), EngineUnavailable, "refused"),
        (TimeoutError(), EngineUnavailable, "timeout"),
        (ConnectionResetError(104, "reset"), EngineUnavailable, "error"),
        (InvalidMessage("did not receive a valid HTTP response"), EngineUnavailable, "error"),
    ],
)
def test_classify_connect_error(exc: BaseException, kind: type[Exception], cause: str) -> None:
    error, label = classify_connect_error(exc)
    assert type(error) is kind and label == cause
    assert is_retryable(error) is (kind is EngineUnavailable)
    if isinstance(error, EngineRejected):
        assert error.status in (400, 404)


# -- happy path -----------------------------------------------------------------------------------


async def test_utterances_stream_back_while_audio_is_still_sent() -> None:
    audio = bursts(3)  # tones at 0-1, 2.5-3.5, 5-6 s; 7.5 s in all
    async with ScriptedEngine([segmenting_script()]) as engine, Call(engine_config(engine.url)) as call:
        await feed(call.stream, audio[: 5 * BPS])
        await asyncio.sleep(0.2)
        assert spans(call.utterances) == [(0.0, 1.0), (2.5, 3.5)]  # before the end of the audio
        await feed(call.stream, audio[5 * BPS :])
        result = await call.finish()

    assert spans(call.utterances) == [(0.0, 1.0), (2.5, 3.5), (5.0, 6.0)]
    assert result.reason is None and result.gaps == ()
    assert isinstance(result.final, dict) and len(result.final["utterances"]) == 3
    assert result.final["requestid"] == "call-1@test"
    assert result.audio_seconds == 7.5
    assert result.utterances == tuple(call.utterances)
    conn = engine.conns[0]
    assert bytes(conn.audio) == audio and conn.ended
    assert conn.headers["x-voci-requestid"] == "call-1@test"
    assert conn.headers["x-voci-realtime"] == "true"
    assert conn.headers["x-voci-utterance_fmt"] == "json"
    assert conn.headers["x-voci-vadtype"] == "level"
    assert result.stats.connects == 1 and result.stats.failures == 0 and result.stats.reconnects == 0
    sent = call.observer.named("frame_sent")
    assert len(sent) == 75 and all(n == 1600 and 0 <= lat < 1 for n, lat in sent)
    assert len(call.observer.named("utterance")) == 3
    assert call.observer.named("connected") == [()]


async def test_wave_header_precedes_the_audio() -> None:
    async with ScriptedEngine([segmenting_script()]) as engine:
        async with Call(engine_config(engine.url, datahdr="WAVE")) as call:
            await feed(call.stream, bursts(1))
            result = await call.finish()
    assert spans(result.utterances) == [(0.0, 1.0)]
    assert engine.conns[0].headers["x-voci-datahdr"] == "WAVE"
    assert len(engine.conns[0].audio) == len(bursts(1))  # the script strips and checks the header


async def test_finish_collects_the_utterance_spoken_just_before_hangup() -> None:
    audio = silence(0.5) + tone(1.0)  # the caller hangs up mid-word: no silence to end the utterance
    script = segmenting_script(reply_delay=0.3)
    async with ScriptedEngine([script]) as engine, Call(engine_config(engine.url)) as call:
        await feed(call.stream, audio)
        started = time.monotonic()
        result = await call.finish()
    assert spans(result.utterances) == [(0.5, 1.5)]
    assert time.monotonic() - started < 2
    assert result.reason is None and result.final is not None


async def test_partial_last_chunk_is_flushed_at_finish() -> None:
    async with ScriptedEngine([segmenting_script()]) as engine, Call(engine_config(engine.url)) as call:
        await feed(call.stream, silence(0.25), frame=800)  # 250 ms: two chunks and a half
        await call.finish()
    assert len(engine.conns[0].audio) == 4000


async def test_engine_closes_after_final_and_we_do_not_close_first() -> None:
    # The engine keeps the socket open after the final: the client waits send_timeout, then closes.
    script = segmenting_script(close_after_final=False)
    async with ScriptedEngine([script]) as engine:
        async with Call(engine_config(engine.url, send_timeout_seconds=0.5)) as call:
            await feed(call.stream, bursts(1))
            started = time.monotonic()
            result = await call.finish()
    assert result.reason is None
    assert 0.4 < time.monotonic() - started < 2


# -- engine unreachable at call start -------------------------------------------------------------


async def test_engine_down_at_start_then_up_delivers_buffered_audio_without_gap() -> None:
    port = free_port()
    audio = bursts(2)
    async with Call(engine_config(f"ws://127.0.0.1:{port}/transcribe")) as call:
        await feed(call.stream, audio[: 2 * BPS])  # engine down for the first 2 s
        assert call.stream.stats.failures >= 1 and call.stream.stats.connects == 0
        async with ScriptedEngine([segmenting_script()], port=port) as engine:
            await feed(call.stream, audio[2 * BPS :])
            result = await call.finish()
    assert bytes(engine.conns[0].audio) == audio
    assert result.gaps == ()
    assert spans(result.utterances) == [(0.0, 1.0), (2.5, 3.5)]
    assert {args for args in call.observer.named("connect_failed")} == {("refused",)}
    assert call.observer.named("connected") == [()]
    assert result.stats.connects == 1 and result.stats.reconnects == 0


async def test_engine_down_longer_than_the_buffer_drops_the_oldest_audio() -> None:
    port = free_port()
    audio = bursts(2)  # 5 s
    engine_cfg = engine_config(f"ws://127.0.0.1:{port}/transcribe", buffer_seconds=1.0)
    async with Call(engine_cfg) as call:
        await feed(call.stream, audio[: 3 * BPS])
        async with ScriptedEngine([segmenting_script()], port=port) as engine:
            await call.observer.wait("frame_sent")  # the backlog is going out
            await feed(call.stream, audio[3 * BPS :])
            result = await call.finish()
    assert result.gaps == (Gap(0.0, 2.0, "buffer_overflow"),)
    assert bytes(engine.conns[0].audio) == audio[2 * BPS :]
    assert spans(result.utterances) == [(2.5, 3.5)]  # times on the call's timeline, not the stream's
    assert sum(args[0] for args in call.observer.named("gap")) == pytest.approx(2.0)


async def test_503_at_the_upgrade_is_retried_with_backoff() -> None:
    def reject(i: int) -> tuple[int, str] | None:
        return (503, "all streams busy") if i < 3 else None

    async with ScriptedEngine([segmenting_script()], reject=reject) as engine:
        engine_cfg = engine_config(engine.url, reconnect_initial_seconds=0.1, reconnect_max_seconds=0.4)
        async with Call(engine_cfg) as call:
            await feed(call.stream, bursts(1), pace=0.03)
            result = await call.finish()
    assert result.stats.failures == 3 and result.stats.connects == 1
    assert call.observer.named("connect_failed") == [("unavailable",)] * 3
    waits = [b - a for a, b in zip(engine.attempts, engine.attempts[1:], strict=False)]
    # Equal jitter: attempt n waits between half and all of min(0.4, 0.1 * 2**n).
    for n, wait in enumerate(waits):
        ceiling = min(0.4, 0.1 * 2**n)
        assert ceiling / 2 - 0.02 <= wait <= ceiling + 0.15
    assert result.gaps == () and spans(result.utterances) == [(0.0, 1.0)]


async def test_400_at_the_upgrade_is_not_retried() -> None:
    async with ScriptedEngine([segmenting_script()], reject=lambda i: (400, "bad tag: vadtype")) as engine:
        async with Call(engine_config(engine.url)) as call:
            await feed(call.stream, silence(1.0))
            await asyncio.sleep(0.3)  # several backoff periods
            await feed(call.stream, silence(1.0))
            result = await call.finish()
    assert len(engine.attempts) == 1
    assert result.reason == "engine_rejected" and result.final is None
    assert result.gaps == (Gap(0.0, 2.0, "engine_rejected"),)
    assert call.observer.named("connect_failed") == [("rejected",)]
    assert result.stats.connects == 0 and result.stats.failures == 1


# -- engine lost mid-call -------------------------------------------------------------------------


async def test_engine_closes_mid_call_reconnect_replay_and_map_times() -> None:
    audio = bursts(4)  # tones at 0, 2.5, 5, 7.5 s
    # The engine sends the 2.5-3.5 s utterance once it has 0.5 s of silence after it, then dies at 4.5 s.
    scripts = [segmenting_script(close_after_seconds=4.5), segmenting_script()]
    async with ScriptedEngine(scripts) as engine, Call(engine_config(engine.url)) as call:
        await feed(call.stream, audio)
        result = await call.finish()

    assert spans(result.utterances) == [(0.0, 1.0), (2.5, 3.5), (5.0, 6.0), (7.5, 8.5)]
    assert result.gaps == () and result.reason is None
    first, second = engine.conns
    assert first.headers["x-voci-requestid"] == second.headers["x-voci-requestid"] == "call-1@test"
    assert bytes(second.audio) == audio[int(3.5 * BPS) :]  # replayed from the end of the last utterance
    assert result.final_offset == 3.5
    assert result.stats.losses == 1 and result.stats.reconnects == 1 and result.stats.connects == 2
    assert result.stats.duplicates == 0 and result.stats.bytes_replayed > 0
    assert call.observer.named("reconnected") == [()]
    assert call.observer.named("connection_lost") == [("closed",)]
    # One record per connection: the first lost without a final, the second with its own on its clock.
    lost, kept = result.streams
    assert lost.final is None and lost.ended == "closed" and spans(lost.live) == [(0.0, 1.0), (2.5, 3.5)]
    assert lost.covered == ((0.0, 3.5),)
    assert kept.ended is None and kept.offset == 3.5 and kept.covered == ((3.5, 10.0),)
    assert isinstance(kept.final, dict) and [u["start"] for u in kept.final["utterances"]] == [1.5, 4.0]
    doc = merge(result.streams, result.audio_seconds, result.gaps)
    assert doc is not None
    assert [(u["start"], u["end"]) for u in doc["utterances"]] == spans(result.utterances)
    assert doc["audiosecs"] == 10.0 and doc["gaps"] == [] and doc["complete"] is True
    assert [s["source"] for s in doc["engine_streams"]] == ["live", "final"]


async def test_engine_reset_mid_call_is_a_loss_too() -> None:
    audio = bursts(3)
    scripts = [segmenting_script(reset_after_seconds=3.0), segmenting_script()]
    async with ScriptedEngine(scripts) as engine, Call(engine_config(engine.url)) as call:
        await feed(call.stream, audio)
        result = await call.finish()
    assert spans(result.utterances) == [(0.0, 1.0), (2.5, 3.5), (5.0, 6.0)]
    assert result.gaps == () and len(engine.conns) == 2
    assert bytes(engine.conns[1].audio) == audio[int(1.0 * BPS) :]


async def test_replay_buffer_too_short_becomes_a_gap() -> None:
    audio = silence(3.0) + bursts(1)  # no utterance at all before the loss
    scripts = [segmenting_script(close_after_seconds=3.0), segmenting_script()]
    async with ScriptedEngine(scripts) as engine:
        async with Call(engine_config(engine.url, replay_seconds=1.0)) as call:
            await feed(call.stream, audio)
            result = await call.finish()
    assert len(result.gaps) == 1
    gap = result.gaps[0]
    assert gap.start == 0.0 and gap.cause == "replay_exceeded" and 1.9 <= gap.duration <= 2.5
    replay_from = round(gap.duration * BPS)
    assert bytes(engine.conns[1].audio) == audio[replay_from:]  # no hole, no overlap
    assert spans(result.utterances) == [(3.0, 4.0)]


async def test_utterance_resent_by_the_new_stream_is_dropped() -> None:
    audio = bursts(2)
    # The second stream starts at 3.5 s; its engine first repeats an utterance that ends there.
    scripts = [
        segmenting_script(close_after_seconds=4.5),
        segmenting_script(before=[utterance_json(-1.0, 0.0)]),
    ]
    async with ScriptedEngine(scripts) as engine, Call(engine_config(engine.url)) as call:
        await feed(call.stream, audio)
        result = await call.finish()
    assert len(engine.conns) == 2
    assert spans(result.utterances) == [(0.0, 1.0), (2.5, 3.5)]
    assert result.stats.duplicates == 1


async def test_reset_in_the_middle_of_a_message_is_a_loss() -> None:
    async def torn(ws: ServerConnection, conn: Any) -> None:
        async for message in ws:
            conn.audio += message
            if len(conn.audio) >= 2 * BPS:
                ws.transport.write(b"\x81\x64" + b'{"start": 0.0, ')  # announces 100 bytes, sends 15
                ws.transport.abort()
                return

    audio = bursts(2)
    async with ScriptedEngine([torn, segmenting_script()]) as engine, Call(engine_config(engine.url)) as call:
        await feed(call.stream, audio)
        result = await call.finish()
    assert result.stats.losses == 1 and result.reason is None and result.gaps == ()
    assert spans(result.utterances) == [(0.0, 1.0), (2.5, 3.5)]
    assert bytes(engine.conns[1].audio) == audio  # nothing was acknowledged before the loss


async def test_engine_lost_while_draining_reconnects_and_still_gets_the_final() -> None:
    async def close_at_end(ws: ServerConnection, conn: Any) -> None:
        async for message in ws:
            if message == b"":
                await ws.close()  # hung up on us just as the audio ended
                return
            conn.audio += message

    audio = bursts(1) + tone(0.5)
    async with ScriptedEngine([close_at_end, segmenting_script()]) as engine:
        async with Call(engine_config(engine.url)) as call:
            await feed(call.stream, audio)
            result = await call.finish()
    assert result.reason is None and result.final is not None
    assert spans(result.utterances) == [(0.0, 1.0), (2.5, 3.0)]
    assert bytes(engine.conns[1].audio) == audio  # nothing acknowledged: all of it again


# -- bounds and garbage ---------------------------------------------------------------------------


async def test_final_timeout_is_bounded_and_unconfirmed_audio_is_a_gap() -> None:
    script = segmenting_script(send_final=False, send_separator=False, close_after_final=False)
    async with ScriptedEngine([script]) as engine:
        async with Call(engine_config(engine.url, final_timeout_seconds=0.5)) as call:
            await feed(call.stream, bursts(1) + tone(1.0))
            started = time.monotonic()
            result = await call.finish()
            elapsed = time.monotonic() - started
    assert 0.45 < elapsed < 1.0
    assert result.reason == "final_timeout" and result.final is None
    assert spans(result.utterances) == [(0.0, 1.0), (2.5, 3.5)]
    # The last utterance came at end of audio (flushed by the engine) and was delivered: no gap.
    assert engine.conns[0].ended


async def test_final_timeout_with_silent_engine_records_a_gap() -> None:
    async def mute(ws: ServerConnection, conn: Any) -> None:
        async for message in ws:
            conn.audio += message
        await ws.wait_closed()

    async with ScriptedEngine([mute]) as engine:
        async with Call(engine_config(engine.url, final_timeout_seconds=0.5)) as call:
            await feed(call.stream, bursts(1))
            result = await call.finish()
    assert result.reason == "final_timeout"
    assert result.gaps == (Gap(0.0, 2.5, "final_timeout"),)


async def test_final_timeout_while_engine_unreachable() -> None:
    engine_cfg = engine_config(f"ws://127.0.0.1:{free_port()}/transcribe", final_timeout_seconds=0.4)
    async with Call(engine_cfg) as call:
        await feed(call.stream, silence(1.0))
        started = time.monotonic()
        result = await call.finish()
    assert time.monotonic() - started < 1.0
    assert result.reason == "engine_unavailable"
    assert result.gaps == (Gap(0.0, 1.0, "engine_unavailable"),)


async def test_garbage_messages_are_skipped() -> None:
    before = ["{not json", json.dumps([1, 2]), json.dumps({"text": "no times"})]
    async with ScriptedEngine([segmenting_script(before=before)]) as engine:
        async with Call(engine_config(engine.url)) as call:
            await feed(call.stream, bursts(1))
            result = await call.finish()
    assert result.stats.protocol_errors == 3
    assert spans(result.utterances) == [(0.0, 1.0)] and result.reason is None


async def test_callback_errors_do_not_stop_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Utterance] = []

    def broken(utt: Utterance) -> None:
        seen.append(utt)
        raise RuntimeError("pipeline bug")

    async with ScriptedEngine([segmenting_script()]) as engine:
        stream = EngineStream(engine_config(engine.url), AudioConfig(), "c", broken)
        task = asyncio.create_task(stream.run())
        await feed(stream, bursts(2))
        result = await stream.finish()
        await asyncio.wait_for(task, 2)
    assert len(seen) == 2 and result.reason is None
    assert "on_utterance callback failed" in caplog.text
    # Received and transcribed (no replay, in the transcript), but not counted as delivered.
    assert result.stats.utterances == 0 and result.stats.delivery_failures == 2
    assert result.utterances == () and len(result.streams[0].live) == 2
    assert result.gaps == ()


async def test_a_failed_delivery_is_not_reported_as_an_utterance() -> None:
    calls = 0

    def flaky(utt: Utterance) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("sink full")

    observer = Recorder()
    async with ScriptedEngine([segmenting_script()]) as engine:
        stream = EngineStream(engine_config(engine.url), AudioConfig(), "c", flaky, observer)
        task = asyncio.create_task(stream.run())
        await feed(stream, bursts(2))
        result = await stream.finish()
        await asyncio.wait_for(task, 2)
    assert result.stats.utterances == 1 and result.stats.delivery_failures == 1
    assert spans(result.utterances) == [(2.5, 3.5)]
    assert len(observer.named("utterance")) == 1  # the metric counts deliveries only


async def test_observer_errors_and_late_audio() -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any) -> None:
                raise RuntimeError(name)

            return fail

    async with ScriptedEngine([segmenting_script()]) as engine:
        stream = EngineStream(engine_config(engine.url), AudioConfig(), "c", lambda u: None, Broken())
        task = asyncio.create_task(stream.run())
        await feed(stream, bursts(1))
        result = await stream.finish()
        await asyncio.wait_for(task, 2)
    assert result.reason is None and len(result.utterances) == 1
    with pytest.raises(InvalidState):
        stream.push_audio(b"\x00\x00", time.monotonic())


async def test_cancelling_run_aborts_the_socket_and_finish_still_answers() -> None:
    async def mute(ws: ServerConnection, conn: Any) -> None:
        async for message in ws:
            conn.audio += message

    async with ScriptedEngine([mute]) as engine:
        stream = EngineStream(engine_config(engine.url), AudioConfig(), "c", lambda u: None)
        task = asyncio.create_task(stream.run())
        await feed(stream, silence(0.5))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await asyncio.wait_for(stream.finish(), 1)
    assert result.reason == "cancelled"
    assert result.gaps == (Gap(0.0, 0.5, "cancelled"),)

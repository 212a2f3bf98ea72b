"""The V-Blaze client end to end against the stand-in engine (`python -m standin`, vad-only) on 127.0.0.1.

Each test starts its own stand-in process and stops it afterwards; faults are switched at runtime
through the stand-in's `POST /_faults`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from vblaze_scripted import BPS, bursts, feed, tone

from bridge.config import AudioConfig, EngineConfig
from bridge.vblaze.client import EngineStream, StreamResult
from bridge.vblaze.protocol import Utterance

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Standin:
    url: str
    process: asyncio.subprocess.Process

    @property
    def http(self) -> str:
        return self.url.replace("ws://", "http://").removesuffix("/transcribe")

    async def faults(self, **values: Any) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.post(f"{self.http}/_faults", json=values) as response:
                assert response.status == 200, await response.text()


@pytest.fixture
async def standin() -> AsyncIterator[Standin]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "standin",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--recognizer",
        "vad-only",
        "--log-level",
        "WARNING",
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("standin ready "), line
        yield Standin(line.split()[-1], process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


def engine_config(url: str, **overrides: Any) -> EngineConfig:
    values: dict[str, Any] = {
        "url": url,
        "connect_timeout_seconds": 2.0,
        "final_timeout_seconds": 10.0,
        "reconnect_initial_seconds": 0.05,
        "reconnect_max_seconds": 0.3,
    }
    values.update(overrides)
    return EngineConfig(**values)


async def transcribe(
    engine: EngineConfig, audio: bytes, call_id: str = "standin-call", during: Any = None
) -> tuple[StreamResult, list[Utterance], list[int]]:
    """Stream `audio` at ten times real time; `during(stream, position)` runs before each second."""
    received: list[Utterance] = []
    pushed_when_received: list[int] = []
    pushed = 0

    def on_utterance(utt: Utterance) -> None:
        received.append(utt)
        pushed_when_received.append(pushed)

    stream = EngineStream(engine, AudioConfig(), call_id, on_utterance, rng=random.Random(3))
    task = asyncio.create_task(stream.run())
    try:
        for second in range(0, len(audio), BPS):
            if during is not None:
                await during(stream, second // BPS)
            await feed(stream, audio[second : second + BPS])
            pushed = second + BPS
        result = await stream.finish()
        await asyncio.wait_for(task, 2)
    finally:
        task.cancel()
        await asyncio.wait([task])
    return result, received, pushed_when_received


def centres(utterances: tuple[Utterance, ...] | list[Utterance]) -> list[float]:
    return [round((u.start + u.end) / 2, 1) for u in utterances]


async def test_utterances_stream_back_during_the_call(standin: Standin) -> None:
    audio = bursts(4)  # tones centred at 0.5, 3.0, 5.5, 8.0 s
    result, received, pushed_when = await transcribe(engine_config(standin.url), audio)
    assert result.reason is None and result.gaps == ()
    assert all(abs(c - want) < 0.3 for c, want in zip(centres(received), [0.5, 3.0, 5.5, 8.0], strict=True))
    assert pushed_when[0] < len(audio)  # the first utterance came back while audio was still going out
    assert isinstance(result.final, dict)
    assert result.final.get("requestid") == "standin-call"
    assert len(result.final["utterances"]) == 4


async def test_last_utterance_before_hangup_arrives(standin: Standin) -> None:
    await standin.faults(delay_ms=300)
    audio = bursts(1) + tone(0.8)  # hang up while the caller still speaks
    result, received, _ = await transcribe(engine_config(standin.url), audio)
    assert result.reason is None
    assert len(received) == 2 and received[-1].end > 2.5


async def test_dropped_stream_is_resumed_with_times_on_the_call_timeline(standin: Standin) -> None:
    audio = bursts(4)
    reference, _, _ = await transcribe(engine_config(standin.url), audio, call_id="reference")

    async def drop_once(stream: EngineStream, second: int) -> None:
        if second == 0:
            await standin.faults(close_after=4.5)
        if second == 6:
            await standin.faults(close_after=None)

    result, received, _ = await transcribe(engine_config(standin.url), audio, during=drop_once)
    assert result.stats.losses >= 1 and result.stats.reconnects >= 1
    assert result.reason is None and result.gaps == ()
    assert len(received) == len(reference.utterances) == 4  # none lost, none twice
    for got, want in zip(received, reference.utterances, strict=True):
        assert abs(got.start - want.start) < 0.15 and abs(got.end - want.end) < 0.15
    assert isinstance(result.final, dict) and result.final.get("requestid") == "standin-call"
    assert result.final_offset > 0


async def test_refusing_engine_is_retried_and_audio_is_kept(standin: Standin) -> None:
    await standin.faults(refuse=True)

    async def let_in(stream: EngineStream, second: int) -> None:
        if second == 2:
            assert stream.stats.failures >= 1 and stream.stats.connects == 0
            await standin.faults(refuse=False)

    result, received, _ = await transcribe(engine_config(standin.url), bursts(2), during=let_in)
    assert result.reason is None and result.gaps == ()
    assert result.stats.connects == 1 and result.stats.failures >= 1
    assert len(received) == 2 and abs(received[0].start - 0.0) < 0.35

"""The readiness rule, the engine probe, and the health app over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bridge import health, metrics
from bridge.health import Decision, Readiness, decide

REPO = Path(__file__).resolve().parents[2]
READY = Readiness(workers_alive=2, workers_total=2, calls_active=3, capacity=8, engine_reachable=True)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (READY, Decision(True, "ready")),
        (replace(READY, engine_reachable=None), Decision(True, "ready")),
        (replace(READY, draining=True), Decision(False, "draining")),
        (replace(READY, draining=True, calls_active=8), Decision(False, "draining")),
        (replace(READY, workers_alive=0, capacity=0), Decision(False, "no workers")),
        (Readiness(), Decision(False, "no workers")),
        (replace(READY, calls_active=8), Decision(False, "pool full")),
        (replace(READY, calls_active=8, engine_reachable=False), Decision(False, "pool full")),
        (replace(READY, engine_reachable=False), Decision(False, "engine unreachable")),
        (replace(READY, engine_full=True), Decision(False, "engine full")),
        (replace(READY, workers_alive=1, capacity=4), Decision(False, "workers down")),
        (replace(READY, workers_alive=1, capacity=4, draining=True), Decision(False, "draining")),
        (replace(READY, workers_alive=1, capacity=4, calls_active=4), Decision(False, "workers down")),
        (replace(READY, workers_total=1), Decision(True, "ready")),
    ],
)
def test_decide(state: Readiness, expected: Decision) -> None:
    assert decide(state) == expected


def test_maxstreams_url() -> None:
    assert health.maxstreams_url("ws://10.1.2.3:17171/transcribe") == "http://10.1.2.3:17171/maxstreamscheck"
    assert health.maxstreams_url("ws://engine/transcribe?x=1") == "http://engine/maxstreamscheck"
    with pytest.raises(ValueError):
        health.maxstreams_url("ftp://x/")


class FakeEngine:
    """Serves /maxstreamscheck as V-Blaze does: 200 with counts, 429 when full."""

    def __init__(self) -> None:
        self.streams, self.maxstreams, self.delay = 0, 2, 0.0
        self.delays: list[float] = []  # the next answers' delays, before `delay` applies again

    async def handle(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delays.pop(0) if self.delays else self.delay)
        if self.streams >= self.maxstreams:
            return web.json_response({"#streams": self.streams, "maxstreams": self.maxstreams}, status=429)
        return web.json_response({"#streams": self.streams, "maxstreams": self.maxstreams})


@pytest.fixture
async def engine() -> AsyncIterator[tuple[FakeEngine, str]]:
    fake = FakeEngine()
    app = web.Application()
    app.router.add_get("/maxstreamscheck", fake.handle)
    server = await health.serve(app, "127.0.0.1", 0)
    yield fake, f"ws://127.0.0.1:{server.port}/transcribe"
    await server.close()


async def test_probe_reachable_and_full(engine: tuple[FakeEngine, str]) -> None:
    fake, url = engine
    probe = await health.probe_engine(url)
    assert probe == health.EngineProbe(True, full=False, streams=0, maxstreams=2)
    fake.streams = 2
    probe = await health.probe_engine(url)
    assert probe.reachable and probe.full


async def test_probe_timeout(engine: tuple[FakeEngine, str]) -> None:
    fake, url = engine
    fake.delay = 1.0
    async with asyncio.timeout(2):
        probe = await health.probe_engine(url, limit_seconds=0.1)
    assert not probe.reachable and probe.slow
    assert probe.error is not None and "0.1" in probe.error


async def test_probe_refused() -> None:
    probe = await health.probe_engine("ws://127.0.0.1:1/transcribe", limit_seconds=1)
    assert not probe.reachable and not probe.slow


UP, FULL = health.EngineProbe(True), health.EngineProbe(True, full=True)
SLOW = health.EngineProbe(False, error="no answer within 2 s", slow=True)
REFUSED = health.EngineProbe(False, error="ClientConnectorError: refused")


@pytest.mark.parametrize(
    ("results", "counted"),
    [
        ([UP, SLOW, UP], [UP, None, UP]),
        ([UP, SLOW, SLOW, SLOW, UP], [UP, None, SLOW, SLOW, UP]),
        ([SLOW, SLOW], [None, SLOW]),
        ([UP, REFUSED, UP], [UP, REFUSED, UP]),
        ([SLOW, REFUSED, SLOW, FULL], [None, REFUSED, None, FULL]),
        ([SLOW, UP, SLOW, UP], [None, UP, None, UP]),
    ],
)
def test_a_slow_probe_counts_only_as_the_second_in_a_row(
    results: list[health.EngineProbe], counted: list[health.EngineProbe | None]
) -> None:
    judge = health.ProbeJudge()
    assert [judge.judge(result) for result in results] == counted


async def probe_results(url: str, count: int, limit_seconds: float = 0.5) -> list[health.EngineProbe]:
    """The first `count` results `run_engine_probe` hands on, probing every 0.02 s."""
    results: list[health.EngineProbe] = []
    enough = asyncio.Event()

    def on_result(probe: health.EngineProbe) -> None:
        results.append(probe)
        if len(results) >= count:
            enough.set()

    task = asyncio.create_task(
        health.run_engine_probe(url, on_result, interval=0.02, limit_seconds=limit_seconds)
    )
    try:
        async with asyncio.timeout(10):
            await enough.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return results[:count]


async def test_one_slow_answer_does_not_mark_the_engine_unreachable(
    engine: tuple[FakeEngine, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = engine
    fake.delays = [0.0, 1.5, 0.0, 0.0, 1.5, 0.0]  # the second and fifth probes get no answer in time
    caplog.set_level("INFO", logger="bridge.health")
    results = await probe_results(url, 4)
    assert all(r.reachable for r in results), results
    slow = [r.getMessage() for r in caplog.records if "such probes in a row" in r.getMessage()]
    assert len(slow) == 2 and "no answer within 0.5 s (1 of 2" in slow[0], slow


async def test_two_slow_answers_in_a_row_mark_the_engine_unreachable(engine: tuple[FakeEngine, str]) -> None:
    fake, url = engine
    fake.delays = [0.0, 1.5, 1.5, 0.0]
    results = await probe_results(url, 3)
    assert [r.reachable for r in results] == [True, False, True], results
    assert results[1].slow


async def test_run_engine_probe_reports_each_result(engine: tuple[FakeEngine, str]) -> None:
    _, url = engine
    assert all(r.reachable for r in await probe_results(url, 3, limit_seconds=1.0))


@pytest.fixture
def multiproc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    directory = metrics.setup_multiprocess_dir(tmp_path / "prom")
    script = "from bridge import metrics as m; m.WorkerMetrics().started(4); m.CallMetrics().call_answered()"
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(directory), PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    return directory


async def test_app_over_http(multiproc: Path) -> None:
    state = {"now": READY}
    sup = metrics.SupervisorMetrics()
    app = health.make_app(lambda: state["now"], multiproc, sup)
    server = await health.serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(base + "/healthz") as r:
                assert (r.status, await r.text()) == (200, "ok\n")
            async with http.get(base + "/readyz") as r:
                assert (r.status, await r.text()) == (200, "ready\n")
            async with http.get(base + "/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
            assert "vblaze_bridge_calls_active 1.0" in text
            assert "vblaze_bridge_capacity_calls 4.0" in text
            assert "vblaze_bridge_ready 1.0" in text

            state["now"] = replace(READY, draining=True)
            async with http.get(base + "/readyz") as r:
                assert (r.status, await r.text()) == (503, "draining\n")
            async with http.get(base + "/metrics") as r:
                text = await r.text()
            assert "vblaze_bridge_ready 0.0" in text
            assert "vblaze_bridge_draining 1.0" in text

            state["now"] = replace(READY, calls_active=8)
            async with http.get(base + "/readyz") as r:
                assert (r.status, await r.text()) == (503, "pool full\n")
            state["now"] = replace(READY, engine_reachable=False)
            async with http.get(base + "/readyz") as r:
                assert (r.status, await r.text()) == (503, "engine unreachable\n")
            async with http.get(base + "/nope") as r:
                assert r.status == 404
    finally:
        await server.close()


async def test_serve_refuses_a_taken_port(multiproc: Path) -> None:
    app1 = health.make_app(lambda: READY, multiproc)
    first = await health.serve(app1, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            await health.serve(health.make_app(lambda: READY, multiproc), "127.0.0.1", first.port)
    finally:
        await first.close()

"""Health, readiness and metrics over HTTP, served by the supervisor on ``metrics.host:metrics.port``.

- ``GET /metrics``: the whole worker pool in Prometheus text format (see :mod:`bridge.metrics`).
- ``GET /healthz``: ``200 ok`` as long as the supervisor's event loop answers.
- ``GET /readyz``: ``200 ready`` when a new call would be taken, else ``503`` with the reason as plain
  text: ``draining``, ``no workers``, ``workers down``, ``pool full``, ``engine unreachable`` or
  ``engine full``. ``workers down``: some worker is not serving (starting, failing to start, hung, being
  replaced); the others still take calls on their ports, but the pool is not what was configured.

The readiness rule is :func:`bridge.readiness.decide` over a :class:`Readiness` snapshot that the app
asks for at each request through a callable (`make_app`'s `readiness`): the supervisor's
`Supervisor.readiness` builds it then from the slots that serve, the workers' calls-active gauges and
the last engine probe. Each worker answers SIP OPTIONS by the same rule over its own figures (its
calls, its slots, the engine state the supervisor last sent it), from its SIP thread (`sip.gate`).

Engine reachability comes from :func:`probe_engine` (V-Blaze's ``GET /maxstreamscheck``: 200 with
``#streams``/``maxstreams`` when a stream is free, 429 when full), which the supervisor runs every
`bridge.supervision.ENGINE_PROBE_SECONDS` through :func:`run_engine_probe`. A probe that gets no answer
within its limit counts only when the one before it got none either (:class:`ProbeJudge`): one slow
answer from a busy engine must not mark every worker down at once. A refused connection or an HTTP
error counts at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge import metrics
from bridge.readiness import Decision, Readiness, decide

__all__ = ["Decision", "Readiness", "decide"]  # the readiness rule, where /readyz uses it

logger = logging.getLogger(__name__)

DEFAULT_PROBE_TIMEOUT = 2.0
SLOW_PROBES_TO_UNREACHABLE = 2  # probes in a row with no answer within the limit
SCRAPE_TIMEOUT = 10.0
BIND_TIMEOUT = 5.0


# --- engine probe -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineProbe:
    reachable: bool
    full: bool = False
    streams: int | None = None
    maxstreams: int | None = None
    error: str | None = None  # why not reachable, for logs
    slow: bool = False  # no answer within the limit: the engine may be up and busy


class ProbeJudge:
    """Which probe results count, in order. No I/O.

    A slow probe (no answer within its limit) counts only as the `slow_in_a_row`-th in a row; before
    that, `judge` returns None and what was last counted stands. Every other result counts at once.
    """

    def __init__(self, slow_in_a_row: int = SLOW_PROBES_TO_UNREACHABLE) -> None:
        self.slow_in_a_row = slow_in_a_row
        self.slow = 0  # slow probes in a row so far

    def judge(self, result: EngineProbe) -> EngineProbe | None:
        self.slow = self.slow + 1 if result.slow else 0
        if 0 < self.slow < self.slow_in_a_row:
            return None
        return result


def maxstreams_url(ws_url: str) -> str:
    """``ws://host:port/transcribe`` -> ``http://host:port/maxstreamscheck``."""
    parts = urlsplit(ws_url)
    if parts.scheme not in ("ws", "http"):
        raise ValueError(f"not a ws:// URL: {ws_url!r}")
    return urlunsplit(("http", parts.netloc, "/maxstreamscheck", "", ""))


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def probe_engine(
    ws_url: str, limit_seconds: float = DEFAULT_PROBE_TIMEOUT, session: aiohttp.ClientSession | None = None
) -> EngineProbe:
    """Ask the engine whether it is up and has a free stream. Never raises for network trouble."""
    url = maxstreams_url(ws_url)
    own = session is None
    client = aiohttp.ClientSession() if session is None else session
    try:
        async with asyncio.timeout(limit_seconds):
            async with client.get(url, allow_redirects=False) as resp:
                body = await resp.read()
                if resp.status == 429:
                    return EngineProbe(True, full=True)
                if resp.status != 200:
                    return EngineProbe(False, error=f"HTTP {resp.status}")
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = None
                if not isinstance(doc, dict):
                    return EngineProbe(True)
                streams, maxstreams = _int_or_none(doc.get("#streams")), _int_or_none(doc.get("maxstreams"))
                full = streams is not None and maxstreams is not None and streams >= maxstreams
                return EngineProbe(True, full=full, streams=streams, maxstreams=maxstreams)
    except TimeoutError:
        return EngineProbe(False, error=f"no answer within {limit_seconds:g} s", slow=True)
    except aiohttp.ClientError as exc:
        return EngineProbe(False, error=f"{type(exc).__name__}: {exc}")
    finally:
        if own:
            await client.close()


async def run_engine_probe(
    ws_url: str,
    on_result: Callable[[EngineProbe], None],
    interval: float,
    limit_seconds: float = DEFAULT_PROBE_TIMEOUT,
) -> None:
    """Probe the engine every `interval` seconds and hand each result that counts (:class:`ProbeJudge`)
    to `on_result`, until cancelled.

    Logs on a change of state and on a slow probe that does not count yet, never per probe.
    """
    last: tuple[bool, bool] | None = None
    judge = ProbeJudge()
    async with aiohttp.ClientSession() as session:
        while True:
            probed = await probe_engine(ws_url, limit_seconds, session)
            result = judge.judge(probed)
            if result is None:
                logger.info(
                    "engine at %s: %s (%d of %d such probes in a row before it counts as unreachable)",
                    maxstreams_url(ws_url),
                    probed.error,
                    judge.slow,
                    judge.slow_in_a_row,
                )
            else:
                now = (result.reachable, result.full)
                if now != last:
                    if not result.reachable:
                        logger.warning("engine unreachable at %s: %s", maxstreams_url(ws_url), result.error)
                    elif result.full:
                        logger.warning("engine at %s has no free stream", maxstreams_url(ws_url))
                    else:
                        logger.info("engine reachable at %s", maxstreams_url(ws_url))
                    last = now
                on_result(result)
            await asyncio.sleep(interval)


# --- the HTTP app -----------------------------------------------------------------------------------

READINESS_KEY: web.AppKey[Callable[[], Readiness]] = web.AppKey("readiness", Callable[[], Readiness])  # type: ignore[arg-type]
MULTIPROC_KEY: web.AppKey[Path] = web.AppKey("multiproc_dir", Path)
SUPERVISOR_KEY: web.AppKey[metrics.SupervisorMetrics] = web.AppKey(
    "supervisor_metrics", metrics.SupervisorMetrics
)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    decision = decide(request.app[READINESS_KEY]())
    return web.Response(status=200 if decision.ready else 503, text=decision.reason + "\n")


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[READINESS_KEY]()
    supervisor = request.app[SUPERVISOR_KEY]
    supervisor.set_state(
        ready=decide(state).ready,
        draining=state.draining,
        engine_reachable=state.engine_reachable,
        engine_full=state.engine_full,
    )
    registry = metrics.registry_for_scrape(request.app[MULTIPROC_KEY], supervisor)
    async with asyncio.timeout(SCRAPE_TIMEOUT):
        body = await asyncio.to_thread(generate_latest, registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(
    readiness: Callable[[], Readiness],
    multiproc_dir: str | Path,
    supervisor: metrics.SupervisorMetrics | None = None,
) -> web.Application:
    """The health/metrics app. `readiness` is called at each request for the current snapshot."""
    app = web.Application()
    app[READINESS_KEY] = readiness
    app[MULTIPROC_KEY] = Path(multiproc_dir)
    app[SUPERVISOR_KEY] = supervisor if supervisor is not None else metrics.SUPERVISOR
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


@dataclass
class HealthServer:
    runner: web.AppRunner
    port: int  # the bound port (useful when asked for port 0)

    async def close(self, limit_seconds: float = 5.0) -> None:
        async with asyncio.timeout(limit_seconds):
            await self.runner.cleanup()


async def serve(
    app: web.Application, host: str, port: int, limit_seconds: float = BIND_TIMEOUT
) -> HealthServer:
    """Bind and start serving `app`; `port` 0 picks a free port. Raises OSError if the port is taken."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    async with asyncio.timeout(limit_seconds):
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    logger.info("health and metrics on http://%s:%d/", host, bound)
    return HealthServer(runner, bound)

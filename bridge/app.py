"""The supervisor: starts the worker pool, restarts a worker that dies, drains on SIGTERM.

Lifecycle, in order:
- startup(): every worker is spawned (`python -m bridge worker --index i`) on SIP port
  `sip.first_port + i` and reports readiness through a pipe; the supervisor is ready when all are.
- main_loop(): a worker that exits unexpectedly is logged, counted and started again at once (within
  a second; a worker that keeps dying is restarted with a growing delay, capped at 5 s). Its calls are
  lost; the others go on.
- shutdown(): SIGTERM is passed to every worker, which refuses new calls with 503 and lets its calls
  run for `drain.timeout_seconds`, then hangs them up and flushes their transcripts. A worker that
  has not left by then (+ the engine's final timeout + grace) is killed. A second SIGTERM or SIGINT
  kills the workers at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import metrics, sdnotify
from bridge.config import Config
from bridge.health import EngineProbe, HealthServer, Readiness, make_app, run_engine_probe, serve

logger = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 30.0
RESTART_MAX_DELAY_SECONDS = 5.0
STOP_GRACE_SECONDS = 10.0


@dataclass
class WorkerSlot:
    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    ready: bool = False
    watcher: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(self, config: Config, config_path: Path) -> None:
        self.cfg = config
        self.config_path = config_path
        self.slots = [WorkerSlot(i) for i in range(config.sip.workers)]
        self._stopping = False
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._engine: EngineProbe | None = None
        self._health: HealthServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._child_env: dict[str, str] = {}  # set in startup(), once the metrics directory is exported

    # --- workers -------------------------------------------------------------------------------------------

    async def _spawn(self, slot: WorkerSlot) -> None:
        read_fd, write_fd = os.pipe()
        os.set_inheritable(write_fd, True)
        cmd = [
            sys.executable,
            "-m",
            "bridge",
            "worker",
            "--config",
            str(self.config_path),
            "--index",
            str(slot.index),
            "--ready-fd",
            str(write_fd),
        ]
        try:
            slot.process = await asyncio.create_subprocess_exec(
                *cmd, pass_fds=(write_fd,), env=self._child_env
            )
        finally:
            os.close(write_fd)
        slot.started_at = time.monotonic()
        slot.ready = False
        logger.info(
            "worker %d started (pid %d, SIP port %d)", slot.index, slot.process.pid, self.port_of(slot)
        )
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
        )
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                line = await reader.readline()
            slot.ready = line.strip() == b"ready"
        except TimeoutError:
            logger.error("worker %d not ready after %.0f s", slot.index, READY_TIMEOUT_SECONDS)
        finally:
            transport.close()
        if not slot.ready:
            logger.error("worker %d failed to start", slot.index)

    def port_of(self, slot: WorkerSlot) -> int:
        return self.cfg.sip.first_port + slot.index

    async def _watch(self, slot: WorkerSlot) -> None:
        """Wait for the worker to exit; restart it unless we are stopping."""
        while True:
            process = slot.process
            assert process is not None
            code = await process.wait()
            slot.ready = False
            calls_lost = metrics.retire_process(process.pid)
            if self._stopping:
                logger.info("worker %d exited with %d", slot.index, code)
                return
            lived = time.monotonic() - slot.started_at
            slot.quick_deaths = slot.quick_deaths + 1 if lived < 5 else 0
            delay = min(
                RESTART_MAX_DELAY_SECONDS, 0.0 if slot.quick_deaths <= 1 else 0.5 * 2**slot.quick_deaths
            )
            logger.error(
                "worker %d (pid %d) died with %d after %.1f s; its calls are lost; restarting in %.1f s",
                slot.index,
                process.pid,
                code,
                lived,
                delay,
            )
            metrics.SUPERVISOR.worker_restarted("signal" if code < 0 else "exit", calls_lost=calls_lost)
            if delay:
                try:
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                    return
                except TimeoutError:
                    pass
            await self._spawn(slot)

    # --- life ---------------------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """The pool's state for /readyz, from the workers' live gauges and the engine probe."""
        pool = metrics.read_pool_gauges()
        alive = sum(
            1 for slot in self.slots if slot.ready and slot.process and slot.process.returncode is None
        )
        return Readiness(
            draining=self._stopping or self._stop.is_set(),
            workers_alive=alive,
            workers_total=len(self.slots),
            calls_active=pool.calls_active,
            capacity=alive * self.cfg.sip.calls_per_worker,
            engine_reachable=None if self._engine is None else self._engine.reachable,
            engine_full=False if self._engine is None else self._engine.full,
        )

    def _engine_probed(self, result: EngineProbe) -> None:
        self._engine = result

    async def startup(self) -> bool:
        metrics.setup_multiprocess_dir(_metrics_dir())
        self._child_env = sdnotify.clean_child_env(os.environ)
        if self.cfg.metrics.port:
            app = make_app(self.readiness, metrics.multiprocess_dir() or _metrics_dir())
            self._health = await serve(app, self.cfg.metrics.host, self.cfg.metrics.port)
        self._tasks.append(asyncio.create_task(run_engine_probe(self.cfg.engine.url, self._engine_probed)))
        await asyncio.gather(*(self._spawn(slot) for slot in self.slots))
        for slot in self.slots:
            slot.watcher = asyncio.create_task(self._watch(slot), name=f"watch-worker-{slot.index}")
        ok = all(slot.ready for slot in self.slots)
        if ok:
            logger.info(
                "all %d workers ready on SIP ports %d-%d",
                len(self.slots),
                self.cfg.sip.first_port,
                self.cfg.sip.first_port + len(self.slots) - 1,
            )
        return ok

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        if self._stop.is_set() or signum == signal.SIGINT:
            self._force.set()
        self._stop.set()

    async def main_loop(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        self._stopping = True
        force = self._force.is_set()
        logger.info("stopping %d workers (%s)", len(self.slots), "now" if force else "draining")
        for slot in self.slots:
            self._signal(slot, signal.SIGKILL if force else signal.SIGTERM)
        bound = self.cfg.drain.timeout_seconds + self.cfg.engine.final_timeout_seconds + STOP_GRACE_SECONDS
        watchers = [slot.watcher for slot in self.slots if slot.watcher is not None]
        forced: asyncio.Future[Any] = asyncio.ensure_future(self._force.wait())
        done_all: asyncio.Future[Any] = asyncio.gather(*watchers, return_exceptions=True)
        await asyncio.wait([done_all, forced], timeout=bound, return_when=asyncio.FIRST_COMPLETED)
        if not done_all.done():
            logger.warning("workers still running; killing them")
            for slot in self.slots:
                self._signal(slot, signal.SIGKILL)
            try:
                async with asyncio.timeout(STOP_GRACE_SECONDS):
                    await done_all
            except TimeoutError:
                logger.error("workers did not exit after SIGKILL")
        forced.cancel()
        for task in self._tasks:
            task.cancel()
        if self._health is not None:
            await self._health.close()

    def _signal(self, slot: WorkerSlot, signum: int) -> None:
        process = slot.process
        if process is not None and process.returncode is None:
            try:
                process.send_signal(signum)
            except ProcessLookupError:
                pass

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self.request_stop, signal.SIGINT)
        ok = await self.startup()
        if not ok:
            self._force.set()
            await self.shutdown()
            return 1
        sdnotify.notify("READY=1")
        self._tasks.append(asyncio.create_task(sdnotify.run_watchdog(healthy=self._healthy)))
        await self.main_loop()
        await self.shutdown()
        return 0

    def _healthy(self) -> bool:
        """The watchdog pings only while at least one worker is up (a wedged pool gets restarted)."""
        return any(slot.process is not None and slot.process.returncode is None for slot in self.slots)


def _metrics_dir() -> Path:
    """Where workers write their metric files: systemd's RuntimeDirectory, else a private temp dir."""
    existing = metrics.multiprocess_dir()
    if existing is not None:
        return existing
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "metrics"
    return Path(tempfile.mkdtemp(prefix="vblaze-bridge-metrics-"))

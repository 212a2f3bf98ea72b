"""The supervisor: starts the worker pool, replaces a worker that dies or hangs, drains on a signal.

This module drives processes, sockets and clocks; the rules it follows (restart delays, the hung
rule, state bounds, restart reasons) are pure functions in :mod:`bridge.supervision`.

Lifecycle, in order:

- startup(): with ``sip.spawn: fork`` (the default) it starts the zygote (`bridge.zygote`: a warm parent
  that has imported everything a worker needs, kept running by its own task) and makes the supervisor
  the workers' child subreaper. Every worker slot gets a task (`_run_slot`) that starts worker i on SIP
  port `sip.first_port + i` (`_spawn`: forked by the zygote, or with ``exec`` a fresh
  `python -m bridge worker --index i`) and supervises it; either way the worker is the supervisor's
  child, watched and reaped the same way. startup() returns once every slot's first start is over
  (ready, or failed); run() then sends READY=1 as soon as at least one worker serves. shutdown() stops
  the zygote last.
- main_loop(): waits for a signal. Meanwhile each slot's task replaces its worker whenever it exits,
  hangs or fails to start, with the delay of :func:`restart_delay` (none for a worker that lived a
  while, growing to 5 s for one that keeps failing). Its calls are lost; the others go on.
- shutdown(): the first SIGTERM or SIGINT drains: it is passed on to every worker as SIGTERM, which
  refuses new calls with 503, lets its calls run for `drain.timeout_seconds`, then hangs them up and
  flushes their transcripts. A worker still there after that (+ the engine's final timeout + grace)
  is killed. A second signal (SIGTERM or SIGINT) forces: the workers get a second SIGTERM (they hang
  up at once and flush), and whatever is left after FORCE_GRACE_SECONDS is killed.

The control channel. Each worker gets one end of a socketpair (`--control-fd`); lines of ASCII:

- worker -> supervisor: ``ready`` once its SIP port is bound; ``pong N`` for ``ping N``;
  ``draining`` when it starts to drain (the supervisor then stops pinging it); ``event JSON``, a copy
  of each event the worker hands its sinks, for the live feed (`bridge.control.feed`);
- supervisor -> worker: ``ping N`` every PING_INTERVAL_SECONDS while the worker serves; ``engine R F``
  (R: 1 reachable, 0 not, ? never probed; F: 1 full) when the engine probe's answer changes and when a
  worker starts serving, so that its OPTIONS answers and `engine.on_unreachable: reject` follow it;
  ``reload`` after a SIGHUP whose config file is valid: the worker re-reads the file and takes its
  routes for new calls (`reload()` below; docs/operations.md);
- the control API (`bridge/control/`, served here on ``control.host:control.port``): ``call ID JSON``
  to each serving worker, answered ``reply ID JSON`` (`bridge.control.lines`), awaited for at most
  ``control.timeout_seconds`` (`bridge.control.link`; a silent worker makes the API answer 503).

The worker's asyncio loop reads the ping and hands it to its pjsua thread (`SipEndpoint.ping`), which
answers once it has drained its command queue, back through the loop: a pong proves that both run.
A worker whose channel closes (its supervisor is gone) drains and exits.

Hung workers. When HUNG_AFTER_MISSES pings in a row have gone unanswered for PING_TIMEOUT_SECONDS
(:class:`PingMonitor`), the worker is SIGKILLed and replaced at once, counted as
``worker_restarts_total{reason="hung"}``: a stopped or deadlocked worker is killed 2.5-3 s after its
last answer, and its lost calls end (``worker_lost``, with their gaps) from the call ledger
(:mod:`bridge.ledger`) once the replacement starts, as for a worker that died.

Start failures. A worker that cannot be spawned, exits before it is ready, or is not ready within
READY_TIMEOUT_SECONDS (it is then killed) is counted as ``worker_restarts_total{reason="start_failed"}``
and started again after :func:`restart_delay`, for as long as the supervisor runs. Nothing else is
stopped for it: the workers that serve keep their calls. While a worker does not serve, ``/readyz``
answers 503 ``workers down`` (``no workers`` if none serves). At start-up, READY=1 waits until at least
one worker serves, so a pool that can never start is left to systemd's TimeoutStartSec.

The watchdog. WATCHDOG=1 is sent from this event loop (so it stops if the loop stalls) and only while
:func:`checks_pass`: every slot still has its task, and none has stayed in one state longer than that
state allows (:func:`state_bound`), i.e. every worker either answers its pings or is being replaced,
started or drained within its bound. A worker that keeps failing to start does not stop the watchdog
(a restart of the unit would cost the serving workers their calls); it shows in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import metrics, sdnotify
from bridge.config import Config, load_config
from bridge.control import feed
from bridge.control.hub import EventHub
from bridge.control.lines import Op, Reply, Request
from bridge.control.link import ControlLink
from bridge.control.live import LivePool
from bridge.control.server import ControlServer
from bridge.errors import ConfigError
from bridge.health import EngineProbe, HealthServer, Readiness, make_app, run_engine_probe, serve
from bridge.route_sinks import RouteSinks
from bridge.supervision import (
    ENGINE_PROBE_SECONDS,
    FORCE_GRACE_SECONDS,
    PING_INTERVAL_SECONDS,
    READY_TIMEOUT_SECONDS,
    STOP_GRACE_SECONDS,
    PingMonitor,
    RestartReason,
    SlotState,
    SlotView,
    checks_pass,
    failures_after,
    restart_delay,
    restart_reason,
)
from bridge.zygote import ForkedProcess, PreForked, ZygoteLink, become_subreaper
from sip.throttle import Throttle

logger = logging.getLogger(__name__)

WorkerProcess = asyncio.subprocess.Process | ForkedProcess  # exec'd, or forked by the zygote

# --- the supervisor ---------------------------------------------------------------------------------


@dataclass
class WorkerSlot:
    index: int
    process: WorkerProcess | None = None
    state: SlotState = SlotState.STARTING
    since: float = 0.0
    served_at: float | None = None  # when the current worker became ready
    failures: int = 0  # quick failures in a row
    task: asyncio.Task[None] | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    def enter(self, state: SlotState) -> None:
        self.state = state
        self.since = time.monotonic()

    @property
    def serving(self) -> bool:
        return (
            self.state is SlotState.SERVING and self.process is not None and self.process.returncode is None
        )


class Supervisor:
    def __init__(
        self,
        config: Config,
        config_path: Path,
        metrics_dir: Path | None = None,
        control_tokens: dict[str, str] | None = None,
        preforked: PreForked | None = None,
    ) -> None:
        self.cfg = config
        self._preforked = preforked  # the first zygote, forked before the supervisor imported the rest
        self.config_path = config_path
        self._metrics_dir = metrics_dir  # the workers' metric files; None: RuntimeDirectory or a temp dir
        self.slots = [WorkerSlot(i) for i in range(config.sip.workers)]
        self._stopping = False
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._serving = asyncio.Event()  # set when any worker becomes ready
        self._engine: EngineProbe | None = None
        self._health: HealthServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._child_env: dict[str, str] = {}  # set in startup(), once the metrics directory is exported
        self._zygote: ZygoteLink | None = None  # set in startup() with sip.spawn: fork
        self._zygote_task: asyncio.Task[None] | None = None
        # --- the control API (bridge/control/) ---
        self._control_tokens = control_tokens or {}
        self._control_link = ControlLink(config.control.timeout_seconds)
        self._control_api: ControlServer | None = None
        self.hub = EventHub()  # the live feed: every event of every worker's calls (bridge/control/hub.py)
        self._feed_errors = Throttle()  # one log line per worker every 10 s for bad feed lines

    def port_of(self, slot: WorkerSlot) -> int:
        return self.cfg.sip.first_port + slot.index

    def worker_command(self, index: int, control_fd: int) -> list[str]:
        """The command line of worker `index`, whose end of the control channel is `control_fd`."""
        return [
            sys.executable, "-m", "bridge", "worker", "--config", str(self.config_path),
            "--index", str(index), "--control-fd", str(control_fd),
        ]  # fmt: skip

    def zygote_command(self, channel_fd: int) -> list[str]:
        """The command line of the zygote (bridge/zygote.py), whose end of its channel is `channel_fd`."""
        return [
            sys.executable, "-m", "bridge", "zygote", "--config", str(self.config_path),
            "--channel-fd", str(channel_fd),
        ]  # fmt: skip

    def _drain_bound(self) -> float:
        return self.cfg.drain.timeout_seconds + self.cfg.engine.final_timeout_seconds + STOP_GRACE_SECONDS

    # --- one slot -----------------------------------------------------------------------------------

    async def _run_slot(self, slot: WorkerSlot, first_done: asyncio.Event) -> None:
        """Start the slot's worker, supervise it, and start it again when it goes, until stopping."""
        while not self._stopping:
            reason, served = RestartReason.OTHER, None
            try:
                if await self._start(slot):
                    first_done.set()
                    served = 0.0
                    reason = await self._supervise(slot)
                    served = time.monotonic() - (slot.served_at or time.monotonic())
                else:
                    first_done.set()
                    reason = RestartReason.START_FAILED
            except Exception:
                logger.exception("supervising worker %d failed; starting it again", slot.index)
                first_done.set()
                self._signal(slot, signal.SIGKILL)
            calls_lost = await self._reap(slot)
            if self._stopping:
                break
            slot.failures = failures_after(slot.failures, served)
            delay = restart_delay(slot.failures)
            metrics.SUPERVISOR.worker_restarted(reason, calls_lost=calls_lost)
            logger.error(
                "worker %d %s; %d calls lost; starting it again in %.1f s",
                slot.index,
                reason.text,
                calls_lost,
                delay,
            )
            slot.enter(SlotState.BACKOFF)
            if delay and await self._stopped_within(delay):
                break
        slot.enter(SlotState.STOPPED)

    async def _start(self, slot: WorkerSlot) -> bool:
        """Spawn the slot's worker and wait until it is ready. Never leaves an fd open on failure."""
        slot.enter(SlotState.STARTING)
        slot.served_at = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spawned = time.monotonic()
        try:
            try:
                slot.process = await self._spawn(slot.index, theirs.fileno())
            finally:
                theirs.close()
            slot.reader, slot.writer = await asyncio.open_unix_connection(sock=ours)
        except OSError:
            logger.exception("worker %d could not be started", slot.index)
            ours.close()
            self._signal(slot, signal.SIGKILL)
            return False
        except BaseException:
            ours.close()
            self._signal(slot, signal.SIGKILL)
            raise
        if self._stopping:  # shutdown() signalled the pool while this one was being spawned
            self._signal(slot, signal.SIGTERM)
        logger.info(
            "worker %d started (pid %d, SIP port %d)", slot.index, slot.process.pid, self.port_of(slot)
        )
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                line = await slot.reader.readline()
        except TimeoutError:
            logger.error("worker %d not ready after %g s; killing it", slot.index, READY_TIMEOUT_SECONDS)
            slot.enter(SlotState.KILLING)
            self._signal(slot, signal.SIGKILL)
            return False
        if line.strip() != b"ready":
            logger.error("worker %d (pid %d) ended before it was ready", slot.index, slot.process.pid)
            return False
        slot.served_at = time.monotonic()
        logger.info(
            "worker %d ready in %.3f s (pid %d)", slot.index, slot.served_at - spawned, slot.process.pid
        )
        slot.enter(SlotState.SERVING)
        self._serving.set()
        slot.writer.write(self._engine_line())
        return True

    async def _spawn(self, index: int, control_fd: int) -> WorkerProcess:
        """Start worker `index`: forked by the zygote (``sip.spawn: fork``), or a fresh interpreter."""
        if self._zygote is not None:
            return await self._zygote.spawn(index, control_fd)
        # Its own session: a Ctrl-C on the terminal reaches the supervisor alone, which
        # decides what the workers get (as KillMode=mixed does under systemd).
        return await asyncio.create_subprocess_exec(
            *self.worker_command(index, control_fd),
            pass_fds=(control_fd,),
            env=self._child_env,
            start_new_session=True,
        )

    async def _supervise(self, slot: WorkerSlot) -> RestartReason:
        """Ping a ready worker until it exits or hangs; return the restart reason."""
        process, reader, writer = slot.process, slot.reader, slot.writer
        assert process is not None and reader is not None and writer is not None
        monitor = PingMonitor()
        exited = asyncio.ensure_future(process.wait())
        listener = asyncio.create_task(self._listen(slot, reader, monitor), name=f"listen-{slot.index}")
        try:
            while not exited.done():
                if self._stopping:
                    slot.enter(SlotState.DRAINING)
                    await exited  # shutdown() bounds this
                    break
                if slot.state is SlotState.DRAINING:
                    try:
                        async with asyncio.timeout(self._drain_bound() - (time.monotonic() - slot.since)):
                            await asyncio.shield(exited)
                        break
                    except TimeoutError:
                        logger.error("worker %d still draining after %.0f s", slot.index, self._drain_bound())
                        return self._kill_hung(slot)
                if monitor.hung(time.monotonic()):
                    logger.error(
                        "worker %d (pid %d) did not answer %d pings within %.1f s: hung",
                        slot.index,
                        process.pid,
                        monitor.misses,
                        monitor.timeout,
                    )
                    return self._kill_hung(slot)
                if not listener.done():  # the channel is open
                    writer.write(b"ping %d\n" % monitor.sent(time.monotonic()))
                await asyncio.wait({exited}, timeout=PING_INTERVAL_SECONDS)
        finally:
            listener.cancel()
        code = exited.result()
        if not self._stopping:
            logger.error("worker %d (pid %d) died with %d", slot.index, process.pid, code)
        return restart_reason(code)

    async def _listen(self, slot: WorkerSlot, reader: asyncio.StreamReader, monitor: PingMonitor) -> None:
        """Read the worker's lines until its end closes: pongs, and its notice that it drains."""
        try:
            while line := await reader.readline():
                self._heard(slot, line, monitor)
        except OSError as exc:  # the worker's end went away: its exit is seen by _supervise()
            logger.warning("control channel of worker %d: %s", slot.index, exc)

    def _heard(self, slot: WorkerSlot, line: bytes, monitor: PingMonitor) -> None:
        word, _, arg = line.strip().partition(b" ")
        if word == b"pong" and arg.isdigit():
            if monitor.answered(int(arg)) and slot.state is SlotState.SERVING:
                slot.since = time.monotonic()
        elif word == b"reply":
            self._control_link.heard(slot.index, line)
        elif word == b"event":
            self._feed_line(slot, arg)
        elif word == b"draining" and slot.state is SlotState.SERVING:
            if not self._stopping:
                logger.warning("worker %d drains on its own; it is replaced once it exits", slot.index)
            slot.enter(SlotState.DRAINING)

    def _feed_line(self, slot: WorkerSlot, rest: bytes) -> None:
        """A worker's copy of an event, for the live feed (`bridge/control/feed.py`)."""
        try:
            self.hub.publish(feed.parse_line(rest))
        except feed.FeedError as exc:
            held_back = self._feed_errors.allow(str(slot.index), time.monotonic())
            if held_back is not None:
                logger.error(
                    "worker %d sent a live feed line that is no event: %s (%d more held back)",
                    slot.index,
                    exc,
                    held_back,
                )

    def _kill_hung(self, slot: WorkerSlot) -> RestartReason:
        slot.enter(SlotState.KILLING)
        self._signal(slot, signal.SIGKILL)
        return RestartReason.HUNG

    async def _reap(self, slot: WorkerSlot) -> int:
        """Wait for the slot's worker to be gone (bounded), close its channel; the calls it had up."""
        process = slot.process
        calls_lost = 0
        if process is not None:
            if process.returncode is None:
                try:
                    async with asyncio.timeout(STOP_GRACE_SECONDS):
                        await process.wait()
                except TimeoutError:
                    logger.error("worker %d (pid %d) is still there; killing it", slot.index, process.pid)
                    slot.enter(SlotState.KILLING)
                    self._signal(slot, signal.SIGKILL)
                    # No bound here: a process that outlives SIGKILL is beyond our reach, and a slot
                    # that stays KILLING past its bound stops the watchdog (checks_pass).
                    await process.wait()
            calls_lost = metrics.retire_process(process.pid)
        if slot.writer is not None:
            slot.writer.close()
        slot.process = slot.reader = slot.writer = None
        return calls_lost

    async def _stopped_within(self, delay: float) -> bool:
        try:
            async with asyncio.timeout(delay):
                await self._stop.wait()
            return True
        except TimeoutError:
            return False

    # --- life ---------------------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """The pool's state for /readyz, from the workers' live gauges and the engine probe."""
        pool = metrics.read_pool_gauges()
        alive = sum(1 for slot in self.slots if slot.serving)
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
        changed = self._engine is None or (self._engine.reachable, self._engine.full) != (
            result.reachable,
            result.full,
        )
        self._engine = result
        if changed:
            for slot in self.slots:
                if (
                    slot.state is SlotState.SERVING
                    and slot.writer is not None
                    and not slot.writer.is_closing()
                ):
                    slot.writer.write(self._engine_line())

    def _engine_line(self) -> bytes:
        """The ``engine R F`` line of the control channel for the latest probe."""
        if self._engine is None:
            return b"engine ? 0\n"
        return b"engine %d %d\n" % (self._engine.reachable, self._engine.full)

    async def startup(self) -> bool:
        """Start every slot; return once each first start is over: True if every worker is ready."""
        metrics_dir = metrics.setup_multiprocess_dir(self._metrics_dir or _metrics_dir())
        self._child_env = sdnotify.clean_child_env(os.environ)
        effective = [self.cfg, *(self.cfg.for_route(route.name) for route in self.cfg.routes)]
        if any(config.sink.destinations for config in effective):  # webhooks or NATS, on any route
            from bridge.webhook import spool  # here: only spooled sinks need it

            spool.prepare(self.cfg.webhook.spool_path)  # WAL and schema once, before any worker opens it
        if self.cfg.metrics.port:
            app = make_app(self.readiness, metrics_dir)
            self._health = await serve(app, self.cfg.metrics.host, self.cfg.metrics.port)
        await self._start_control_api(metrics_dir)
        if self.cfg.sip.spawn == "fork":
            self._start_zygote()
        self._tasks.append(
            asyncio.create_task(
                run_engine_probe(self.cfg.engine.url, self._engine_probed, interval=ENGINE_PROBE_SECONDS)
            )
        )
        firsts = []
        for slot in self.slots:
            first = asyncio.Event()
            firsts.append(first)
            slot.enter(SlotState.STARTING)
            slot.task = asyncio.create_task(self._run_slot(slot, first), name=f"worker-{slot.index}")
        self._tasks.append(asyncio.create_task(sdnotify.run_watchdog(healthy=self._healthy)))
        await asyncio.gather(*(first.wait() for first in firsts))
        serving = [slot.index for slot in self.slots if slot.serving]
        if len(serving) == len(self.slots):
            logger.info(
                "all %d workers ready on SIP ports %d-%d",
                len(self.slots),
                self.cfg.sip.first_port,
                self.cfg.sip.first_port + len(self.slots) - 1,
            )
            return True
        logger.error(
            "%d of %d workers ready; the others are being started again", len(serving), len(self.slots)
        )
        return False

    def _start_zygote(self) -> None:
        """The warm parent the workers are forked from, kept running by its own task (bridge/zygote.py).
        The supervisor becomes the workers' subreaper: they are its children once forked."""
        if not become_subreaper():
            logger.warning("PR_SET_CHILD_SUBREAPER failed: forked workers' exit codes are not known")
        self._zygote = ZygoteLink(self.zygote_command, self._child_env, self._preforked)
        self._preforked = None
        self._zygote_task = asyncio.create_task(self._zygote.run(), name="zygote")

    # --- routes: SIGHUP ------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the config file; if it is valid, tell every serving worker to take its routes
        (each re-reads the file itself). A broken file is refused, logged with its dotted key, and
        nobody changes. Sections other than `routes` are not applied: a changed one is logged."""
        try:
            fresh = load_config(self.config_path)
            RouteSinks.check_credentials(fresh, os.environ)  # the workers' environment is the supervisor's
        except ConfigError as exc:
            logger.error("SIGHUP: config refused, the workers keep their routes:\n%s", exc)
            return
        old = self.cfg.model_dump(exclude={"routes"})
        new = fresh.model_dump(exclude={"routes"})
        changed = sorted(name for name in new if new[name] != old.get(name))
        if changed:
            logger.warning(
                "SIGHUP: only routes are reloaded; changes to %s are ignored until a restart",
                ", ".join(changed),
            )
        sent = 0
        for slot in self.slots:
            if slot.serving and slot.writer is not None and not slot.writer.is_closing():
                slot.writer.write(b"reload\n")
                sent += 1
        logger.info(
            "SIGHUP: %d route(s) in %s, sent to %d worker(s)", len(fresh.routes), self.config_path, sent
        )

    def request_stop(self) -> None:
        """A signal: the first asks for a drain, the second forces."""
        if self._stop.is_set():
            logger.warning("second signal: forcing exit")
            self._force.set()
        self._stop.set()

    async def main_loop(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        self._stopping = True
        logger.info(
            "stopping %d workers (%s)", len(self.slots), "now" if self._force.is_set() else "draining"
        )
        for slot in self.slots:
            self._signal(slot, signal.SIGTERM)
        tasks = [slot.task for slot in self.slots if slot.task is not None]
        done_all: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
        forced: asyncio.Future[Any] = asyncio.ensure_future(self._force.wait())
        try:
            if not self._force.is_set():
                await asyncio.wait(
                    [done_all, forced], timeout=self._drain_bound(), return_when=asyncio.FIRST_COMPLETED
                )
            if not done_all.done() and self._force.is_set():
                for slot in self.slots:
                    self._signal(slot, signal.SIGTERM)  # a worker's second signal: hang up now, flush
                await asyncio.wait([done_all], timeout=FORCE_GRACE_SECONDS)
            if not done_all.done():
                logger.warning("workers still running; killing them")
                for slot in self.slots:
                    self._signal(slot, signal.SIGKILL)
                try:
                    async with asyncio.timeout(STOP_GRACE_SECONDS * 2):
                        await done_all
                except TimeoutError:
                    logger.error("workers did not exit after SIGKILL")
        finally:
            forced.cancel()
            for task in self._tasks:
                task.cancel()
            if self._health is not None:
                await self._health.close()
            if self._control_api is not None:
                await self._control_api.close()
            await self._stop_zygote()

    async def _stop_zygote(self) -> None:
        if self._zygote_task is not None:
            self._zygote_task.cancel()
        if self._zygote is not None:
            await self._zygote.stop()

    # --- the control API (bridge/control/) --------------------------------------------------------------

    async def _start_control_api(self, metrics_dir: Path) -> None:
        if self.cfg.control.port:
            actors = {token.name for token in self.cfg.control.tokens if token.act}
            pool = LivePool(self.readiness, metrics_dir)
            self._control_api = ControlServer(
                self._control_tokens, self.control_ask, actors=actors, hub=self.hub, pool=pool
            )
            await self._control_api.start(self.cfg.control.host, self.cfg.control.port)

    async def control_ask(
        self, op: Op, call_id: str | None, by: str | None, reason: str | None
    ) -> list[Reply | None]:
        """One control request to every worker with calls (serving or draining: a draining worker's calls
        go on and may still be paused); their replies (None: no answer in time)."""
        slots = [s for s in self.slots if self._reachable(s)]

        def ask(slot: WorkerSlot) -> Awaitable[Reply | None]:
            writer = slot.writer
            assert writer is not None
            return self._control_link.ask(
                slot.index, writer.write, lambda line_id: Request(line_id, op, call_id, by, reason)
            )

        return list(await asyncio.gather(*(ask(slot) for slot in slots)))

    @staticmethod
    def _reachable(slot: WorkerSlot) -> bool:
        alive = slot.process is not None and slot.process.returncode is None
        open_ = slot.writer is not None and not slot.writer.is_closing()
        return alive and open_ and slot.state in (SlotState.SERVING, SlotState.DRAINING)

    # --- end of the control API ---------------------------------------------------------------------------

    def _signal(self, slot: WorkerSlot, signum: int) -> None:
        process = slot.process
        if process is not None and process.returncode is None:
            try:
                process.send_signal(signum)
            except ProcessLookupError:
                pass

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)  # routes: re-read routes
        await self.startup()
        if not self._serving.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            serving = asyncio.ensure_future(self._serving.wait())
            await asyncio.wait({stop, serving}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            serving.cancel()
        if not self._stop.is_set():
            sdnotify.notify("READY=1")
            await self.main_loop()
        await self.shutdown()
        return 0

    def _healthy(self) -> bool:
        """The watchdog rule (:func:`checks_pass`) over the slots as they are now."""
        views = [
            SlotView(slot.state, slot.since, slot.task is not None and not slot.task.done())
            for slot in self.slots
        ]
        return checks_pass(views, time.monotonic(), self._drain_bound())


def _metrics_dir() -> Path:
    """Where workers write their metric files: systemd's RuntimeDirectory, else a private temp dir."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "metrics"
    return Path(tempfile.mkdtemp(prefix="vblaze-bridge-metrics-"))

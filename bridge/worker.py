"""A worker process: one pjsua2 endpoint on its own SIP port and the pipelines of its calls.

The SIP thread (`sip.endpoint`) reports calls, DTMF and audio; this module moves them onto the
worker's asyncio loop with `call_soon_threadsafe` and gives each call a `CallPipeline`. SIGTERM
drains: new INVITEs are answered 503, active calls may go on for `drain.timeout_seconds`, then are
hung up and flushed; a second SIGTERM or SIGINT hangs everything up at once.

The supervisor's control channel (see `bridge.app`): the worker says ``ready`` once its SIP port is
bound, answers each ``ping N`` with ``pong N`` only after its pjsua thread has drained its command
queue and its loop has run the reply (so a pong proves both alive), says ``draining`` when it starts
to drain, and drains if the channel closes (its supervisor is gone). ``engine R F`` lines carry the
supervisor's engine probe, the one source of the engine's state in the pool (workers do not probe).
``call ID JSON`` lines are the control API's requests (`bridge.control.lines`): the worker carries
each out on its loop (`bridge.control.commands`) and answers ``reply ID JSON`` at once, so a pause is
in force before its reply leaves.
A ``reload`` line (the supervisor had SIGHUP and found the file valid) makes the worker re-read its
config file and take its routes (`_reload`): new calls get the new routes, calls in progress keep the
effective config and sink they started with; a file it cannot load keeps the old routes, logged.

Routes: each call gets its route's effective config (`Config.for_route`, by the route name the SIP
thread put on `CallStarted`) and its route's sink (`bridge.route_sinks.RouteSinks`).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import signal
import socket
import sys
import time

import uvloop

from bridge import metrics
from bridge.call import CallPipeline
from bridge.config import Config, load_config
from bridge.control import commands
from bridge.control.feed import FeedTap
from bridge.control.lines import LineError, Reply, format_reply, parse_request
from bridge.errors import ConfigError
from bridge.events import EventSink
from bridge.ledger import CallLedger, end_lost_calls
from bridge.logs import setup_logging
from bridge.memory_merge import mark_and_log
from bridge.route_sinks import RouteSinks
from bridge.sip_adapter import route_table, sip_settings, worker_readiness
from bridge.vblaze.buffer import GapCause
from sip.admission import CallResult
from sip.endpoint import SipEndpoint
from sip.events import CallDtmf, CallEnded, CallMedia, CallStarted, CallStreams, InviteRejected, SipEvent
from sip.limits import PJSUA_MAX_CALLS, RTP_PORTS_PER_WORKER
from sip.routing import NO_ROUTE

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0


class Worker:
    def __init__(self, config: Config, index: int, config_path: str | None = None) -> None:
        self.cfg = config  # the current config: its routes change on reload, the rest never
        self.config_path = config_path  # re-read on a ``reload`` line (None: run by hand, no reloads)
        self.index = index
        self.port = config.sip.first_port + index
        self.rtp_port = config.sip.rtp_first_port + index * RTP_PORTS_PER_WORKER
        self.calls: dict[int, CallPipeline] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop = asyncio.get_running_loop()
        self._frames: collections.deque[tuple[int, int, bytes | None, float]] = collections.deque()
        self._drain_pending = False
        self._frame_errors: set[int] = set()  # calls whose failing frame was logged already
        self._control: asyncio.StreamWriter | None = None  # the supervisor's channel, once open
        self.sinks = RouteSinks(config)
        self.sink: EventSink = self.sinks
        self._route_names = set(route_table(config).names)  # the route label's values (grow on reload)
        # Route name -> effective config, kept across reloads: an INVITE admitted by the old routes just
        # before the SIP thread took the new ones still finds its route's config.
        self._effective = {name: config.for_route(name) for name in self._route_names}
        self._reload_lock = asyncio.Lock()  # one reload at a time, in the order the lines came
        self._reloads: set[asyncio.Task[None]] = set()
        self.ledger = CallLedger(config.state.directory, self.port)
        self.call_metrics = metrics.CallMetrics()
        self.engine_metrics = metrics.EngineMetrics()
        self.worker_metrics = metrics.WorkerMetrics()
        metrics.preinit_routes(self._route_names)
        self.endpoint = SipEndpoint(
            sip_settings(config),
            self.port,
            self.rtp_port,
            self._from_sip,
            self._audio_from_sip,
            worker_readiness,
            self.call_metrics,
        )

    # --- from the SIP threads -------------------------------------------------------------------------

    def _from_sip(self, event: SipEvent) -> None:
        self._loop.call_soon_threadsafe(self._on_sip_event, event)

    def _audio_from_sip(self, key: int, stream: int, pcm: bytes | None, arrival: float) -> None:
        """From pjmedia's clock thread: queue the frame; wake the loop only if no drain is pending, so
        frames of several calls arriving together cost one wake-up, not one each."""
        self._frames.append((key, stream, pcm, arrival))
        if not self._drain_pending:
            self._drain_pending = True
            self._loop.call_soon_threadsafe(self._drain_frames)

    # --- on the loop --------------------------------------------------------------------------------------

    def _drain_frames(self) -> None:
        self._drain_pending = False  # first: a frame queued from now on schedules another drain
        frames = self._frames
        while frames:
            key, stream, pcm, arrival = frames.popleft()
            call = self.calls.get(key)
            if call is None:
                continue
            try:
                call.audio(stream, pcm, arrival)
            except Exception:
                # Counted each time, logged (with the traceback) once per call: never a line per frame.
                self.call_metrics.frames_dropped(1, "other")
                if key not in self._frame_errors:
                    self._frame_errors.add(key)
                    call.log.exception(
                        "audio frame not taken (further failures only counted); the call goes on"
                    )

    def _on_sip_event(self, event: SipEvent) -> None:
        if isinstance(event, CallStarted):
            self.call_metrics.invite_response(200)
            self.call_metrics.call_answered()
            effective = self._effective.get(event.route) or self.cfg.for_route(event.route)
            call = CallPipeline(
                event,
                effective,
                # The route's sink, and a copy of each event to the supervisor's live feed (control/feed.py).
                FeedTap(
                    self.sinks.sink_for(effective, event.route),
                    lambda: self._control,
                    metrics.live_event_dropped,
                ),
                self.index,
                self.call_metrics,
                self.engine_metrics,
                self.ledger,
            )
            self.calls[event.key] = call
            self._idle.clear()
            task = asyncio.create_task(call.run(), name=f"call-{call.call_id}")
            self.tasks[event.key] = task
            task.add_done_callback(functools.partial(self._call_done, event.key))
        elif isinstance(event, InviteRejected):
            self.call_metrics.invite_response(event.status)
            # sip.endpoint logs it, throttled per source
            self.call_metrics.call_rejected(event.result, self._route_label(event.route))
        else:
            self._on_call_event(event)

    def _on_call_event(self, event: CallEnded | CallDtmf | CallMedia | CallStreams) -> None:
        found = self.calls.get(event.key)
        if found is None:
            return
        if isinstance(event, CallEnded):
            found.ended(event.reason)
        elif isinstance(event, CallDtmf):
            found.dtmf(event.digit)
        elif isinstance(event, CallStreams):
            found.streams_changed(event.roles, event.reason)
        elif found.info.siprec is not None:
            found.log.info(
                "media stream %d %s, %s (%s)",
                event.stream,
                event.status,
                "receiving" if event.direction == "decoding" else "not receiving",
                event.codec or "no codec",
            )
        else:
            found.log.info("media %s (%s)", event.status, event.codec or "no codec")

    def _route_label(self, route: str) -> str:
        """`route` as a label value: a name of the config's routes (or "none"), else "other"."""
        return route if route in self._route_names or route == NO_ROUTE else metrics.OTHER

    def _call_done(self, key: int, task: asyncio.Task[None]) -> None:
        call = self.calls.get(key)
        route = self._route_label(call.info.route) if call is not None else NO_ROUTE
        self.calls.pop(key, None)
        self._frame_errors.discard(key)
        self.tasks.pop(key, None)
        failed = task.cancelled() or task.exception() is not None
        if not task.cancelled() and task.exception() is not None:
            logger.error("call task failed", exc_info=task.exception())
        self.call_metrics.call_ended(CallResult.FAILED if failed else CallResult.COMPLETED, route)
        if not self.calls:
            self._idle.set()

    # --- life -----------------------------------------------------------------------------------------------

    def _end_lost_calls(self) -> None:
        """End the calls a previous worker of this index left behind when it died (`bridge.ledger`:
        their call.ended goes out after whatever of them is still spooled, whichever worker holds it).
        The supervisor that saw the death counted them; after a whole-pool restart, none did: here."""
        for lost, data in end_lost_calls(self.ledger, self.sink, time.time()):
            logger.error("call %s was lost with the previous worker %d", lost.entry.call_id, self.index)
            self.engine_metrics.gap(data["gaps"][0]["duration"], GapCause.WORKER_LOST)
            if not lost.same_supervisor:
                metrics.CALLS.labels(CallResult.WORKER_LOST.value, NO_ROUTE).inc()  # as the supervisor

    def request_stop(self) -> None:
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    # --- the supervisor's control channel ---------------------------------------------------------------

    async def _serve_control(self, control: socket.socket) -> None:
        """Say ``ready``, then answer pings until the supervisor's end closes (then drain)."""
        reader, writer = await asyncio.open_unix_connection(sock=control)
        self._control = writer
        writer.write(b"ready\n")
        try:
            while line := await reader.readline():
                word, _, arg = line.strip().partition(b" ")
                if word == b"ping" and arg.isdigit():
                    self.endpoint.ping(functools.partial(self._pinged, int(arg)))
                elif word == b"call":
                    self._control_request(line)
                elif word == b"reload":  # off the channel's loop: pings go on meanwhile
                    self._reloads.add(task := asyncio.create_task(self._reload(), name="reload"))
                    task.add_done_callback(self._reload_done)
                elif word == b"engine":
                    reachable, _, full = arg.partition(b" ")
                    self.endpoint.set_engine_state(
                        None if reachable == b"?" else reachable == b"1", full.strip() == b"1"
                    )
        except OSError as exc:
            logger.warning("control channel: %s", exc)
        if not self._stop.is_set():
            logger.warning("the supervisor is gone; draining")
            self.request_stop()

    # --- control API requests (bridge/control/) -----------------------------------------------------------

    def _control_request(self, line: bytes) -> None:
        """Carry out one ``call`` line and answer it before anything else runs on the loop."""
        try:
            request = parse_request(line)
        except LineError as exc:
            logger.warning("control request not understood: %s", exc)
            if exc.id is not None:
                self._control_write(Reply(exc.id, 400, {"error": str(exc)}))
            return
        calls = list(self.calls.values())
        keys = {id(call): key for key, call in self.calls.items()}
        try:
            reply = commands.execute(request, calls, lambda call: self.endpoint.hangup(keys[id(call)]))
        except Exception:  # a failing request must not take the control channel (and its pings) down
            logger.exception("control request %d (%s) failed", request.id, request.op)
            reply = Reply(request.id, 500, {"error": "the worker failed to carry the request out"})
        self._control_write(reply)

    def _control_write(self, reply: Reply) -> None:
        try:
            line = format_reply(reply)
        except LineError as exc:
            logger.error("control reply %d too large: %s", reply.id, exc)
            line = format_reply(Reply(reply.id, 500, {"error": "the reply is too large"}))
        if self._control is not None and not self._control.is_closing():
            self._control.write(line)

    # --- end of control API requests ------------------------------------------------------------------------
    # --- routes: reload ---------------------------------------------------------------------------------

    async def _reload(self) -> None:
        """Re-read the config file and take its routes for new calls (the rest of the file is not
        applied: see docs/operations.md). A file that does not load keeps the old routes, logged."""
        if self.config_path is None:
            logger.warning("reload: this worker was started without a config file; nothing to re-read")
            return
        async with self._reload_lock:
            await self._reload_from(self.config_path)

    def _reload_done(self, task: asyncio.Task[None]) -> None:
        self._reloads.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("reload failed; the old routes stay", exc_info=task.exception())

    async def _reload_from(self, path: str) -> None:
        try:
            fresh = await self._loop.run_in_executor(None, load_config, path)
            updated = self.cfg.with_routes(fresh.routes)
            await self.sinks.update(updated)
        except ConfigError as exc:
            logger.error("reload refused, the old routes stay:\n%s", exc)
            return
        table = route_table(updated)
        self.cfg = updated
        self._route_names |= set(table.names)
        self._effective.update({name: updated.for_route(name) for name in table.names})
        metrics.preinit_routes(table.names)
        self.endpoint.set_routes(table)
        logger.info("reload: routes now %s", ", ".join(table.names))

    def _pinged(self, seq: int) -> None:
        """From the pjsua thread, once it has drained its queue: answer from the loop."""
        try:
            self._loop.call_soon_threadsafe(self._pong, seq)
        except RuntimeError:  # the loop is closed: the worker is leaving and owes no answer
            logger.debug("ping %d not answered: the loop is closed", seq)

    def _pong(self, seq: int) -> None:
        if self._control is not None and not self._control.is_closing():
            self._control.write(b"pong %d\n" % seq)

    async def run(self, control: socket.socket | None = None) -> None:
        await self.sink.start()
        self._end_lost_calls()
        await self._loop.run_in_executor(None, self.endpoint.start)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.request_stop)
        self.worker_metrics.started(min(self.cfg.sip.calls_per_worker, PJSUA_MAX_CALLS))
        channel = None
        if control is not None:
            channel = asyncio.create_task(self._serve_control(control), name="control")
        await self._stop.wait()
        if self._control is not None and not self._control.is_closing():
            self._control.write(b"draining\n")
        self.worker_metrics.stopping()
        logger.info(
            "draining: %d calls active, up to %.0f s", len(self.calls), self.cfg.drain.timeout_seconds
        )
        self.endpoint.set_draining(True)
        await self._wait_idle(self.cfg.drain.timeout_seconds)
        for key in list(self.calls):
            self.endpoint.hangup(key)
        await self._wait_idle(self.cfg.engine.final_timeout_seconds + SHUTDOWN_GRACE_SECONDS)
        for task in list(self.tasks.values()):
            task.cancel()
        await self._loop.run_in_executor(None, self.endpoint.stop)
        await self.sink.aclose(SHUTDOWN_GRACE_SECONDS)
        if channel is not None:
            channel.cancel()

    async def _wait_idle(self, limit: float) -> None:
        idle = asyncio.ensure_future(self._idle.wait())
        force = asyncio.ensure_future(self._force.wait())
        try:
            await asyncio.wait({idle, force}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            force.cancel()


def report_late_imports(forked_with: frozenset[str]) -> None:
    """Log the modules a forked worker imported after the fork. Each one is built in this
    worker's own memory rather than shared with the zygote and the other workers: a name here belongs
    in `bridge.zygote.WARM_MODULES`."""
    late = sorted(set(sys.modules) - forked_with)
    if late:
        logger.warning(
            "%d modules imported after the fork, each held by this worker alone: %s",
            len(late),
            ", ".join(late),
        )
    else:
        logger.info("no module imported after the fork")


def main(
    config: Config,
    index: int,
    control_fd: int | None,
    config_path: str | None = None,
    forked_with: frozenset[str] | None = None,
) -> None:
    """Run one worker until it is told to stop, then leave with os._exit (see sip.endpoint).

    `control_fd`: the worker's end of the supervisor's socketpair (None when run by hand).
    `forked_with`: the modules the zygote had imported when it forked this worker (None when exec'd);
    the ones imported since are logged when the worker stops (`report_late_imports`)."""
    setup_logging(config.logging, f"worker-{index}")
    if forked_with is None and config.sip.memory_merge:  # forked: the zygote marked it already
        mark_and_log(logger, f"worker {index}")

    async def run() -> None:
        worker = Worker(config, index, config_path)
        await worker.run(None if control_fd is None else socket.socket(fileno=control_fd))

    code = 0
    try:
        uvloop.run(run())
    except BaseException:
        logger.exception("worker %d failed", index)
        code = 1
    finally:
        if forked_with is not None:
            report_late_imports(forked_with)
        logging.shutdown()
    os._exit(code)

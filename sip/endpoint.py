"""The pjsua2 thread: one thread creates the Endpoint, handles its events and owns every pjsua2 object.

Other threads talk to it only through `SipEndpoint`'s methods, which put commands on a queue the
thread drains between `libHandleEvents` polls (the endpoint runs with `threadCnt = 0`, so every SIP
callback runs on this thread too). What happens to calls goes out as the frozen events of
`sip.events` through `on_event`; audio goes out through `on_audio` straight from pjmedia's clock
thread (see `sip.media`). Both callbacks must be thread-safe and must not block: the worker wraps
them in `loop.call_soon_threadsafe`.

Facts of the pjsua2-python wheel this relies on (measured, see the call pipeline issue):
- at most 4 calls a process (`sip.limits.PJSUA_MAX_CALLS`); when 4 calls exist pjsua answers a 5th
  INVITE with 486 itself, before `onIncomingCall`. With `sip.calls_per_worker` below 4 a slot stays
  free and the bridge answers 503 with Retry-After instead.
- the null sound device drives the conference clock (`setNoDev()` delivers no frames). It runs only
  while a call holds a frame port or the conference a call's port (`_clock`): between calls an idle
  worker's clock thread would otherwise wake 50 times a second for nothing. pjmedia frees a removed
  port's slot only inside a clock tick (its first comes 20 ms after the device opens), so a clock
  stopped with the call would keep the slots of calls shorter than that, and with `maxMediaPorts`
  used up every further call's media fails (pjsua answers 488) for as long as the worker lives;
- calls offered `a=sendonly` report REMOTE_HOLD, not ACTIVE: audio is connected for both;
- `maxMediaPorts` must be at least 2 × calls + 1 (plus our own ports): `sip.limits.MAX_MEDIA_PORTS`.

SIPREC (RFC 7866; the decisions are `sip.siprec`'s, measured facts of the wheel here):
- pjsua finds the SDP inside a multipart body itself and answers `a=recvonly` to `a=sendonly`; with
  `CallOpParam(True)` and `opt.audioCount = 2` it answers both audio m-lines, each reporting
  REMOTE_HOLD with direction DECODING, and `getAudioMedia(0/1)` deliver the two streams apart. A
  SIPREC call takes one FramePort per stream (at most two): 4 calls × 2 streams + 8 ports + the
  master port fit in `maxMediaPorts` = 24.
- a multipart body without its close delimiter hides the SDP from pjsip (it would answer with its own
  sendrecv offer and no media would flow): refused with 488.
- `Require: siprec` is answered 420 before `onIncomingCall` unless "siprec" is in the endpoint's
  Supported capabilities; pjsua2 has no API for that, so `siprec.accept_require` adds it through
  the library's C symbols (`_add_supported_siprec`). Every response then lists it in Supported.
- mid-call metadata: a re-INVITE reaches `onCallRxReinvite` (`rdata.wholeMsg`), an UPDATE only
  `onCallTsxState` (RX_MSG event of the UPDATE transaction). Hold by `a=inactive` leaves both
  streams REMOTE_HOLD with direction NONE; `onCallMediaState` fires after each, so connecting the
  ports is idempotent.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pjsua2 as pj

from sip.admission import CallResult, RateLimiter
from sip.errors import SipError
from sip.events import (
    CallDtmf,
    CallEnded,
    CallMedia,
    CallStarted,
    CallStreams,
    InviteRejected,
    SipEvent,
    SiprecSession,
)
from sip.gate import Answer, Gate, Incoming, pjsua_calls, set_transaction_timeout
from sip.limits import FRAME_PORTS, MAX_MEDIA_PORTS, PJSUA_MAX_CALLS, RTP_PORTS_PER_WORKER
from sip.media import AudioDeliver, FramePort, PortPool
from sip.message import parse_request
from sip.midcall import remap
from sip.pjlog import dropped_reason
from sip.reclaim import Reclaim, ReclaimCause, RtpWatch, unacked
from sip.routing import RouteTable
from sip.screening import (
    ANSWER_FAILED_STATUS,
    SCREEN_FAILED,
    UNSCREENED_STATUS,
    Admitted,
    Refused,
    WorkerState,
    screen,
)
from sip.sdp import Offer
from sip.settings import CallObserver, NullObserver, ReadinessRule, ReadyVerdict, SipSettings, WorkerLoad
from sip.siprec import SiprecRules
from sip.sockets import SOCKETS_PER_STREAM, SocketLedger, fits
from sip.throttle import Throttle

logger = logging.getLogger(__name__)

POLL_MS = 10  # libHandleEvents' wait when nothing can wake it (no UDP transport), and the gate's rounds
IDLE_POLL_MS = 100  # the longest wait with a UDP transport: a command wakes the thread at once (`_wake`)
# Under the 32 bytes pjsip's UDP transport takes as a message: read and dropped without a log line or a
# callback (tests/sip/test_wake.py; 40 bytes would be logged and counted as a malformed message).
WAKE_DATAGRAM = b"\0"
REFUSAL_LOG_SECONDS = 10.0  # refusals are counted each, logged once per source and cause in this time
LOAD_HEADER = "X-VBlaze-Calls"  # on a 503 to OPTIONS: calls held / slots, for a dispatcher to read
CALIBRATION_POLLS = 200  # libHandleEvents(POLL_MS) rounds to wait for the gate's probe
RTP_CHECK_SECONDS = 1.0
CODEC_IDS = {"PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1", "G722": "G722/16000/1"}
MEDIA_STATUS = {
    pj.PJSUA_CALL_MEDIA_NONE: "none",
    pj.PJSUA_CALL_MEDIA_ACTIVE: "active",
    pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "local_hold",
    pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "remote_hold",
    pj.PJSUA_CALL_MEDIA_ERROR: "error",
}


@dataclass
class _Entry:
    key: int
    call: _Call
    ports: dict[int, FramePort] = field(default_factory=dict)  # stream index -> port lent to it
    source_ip: str = ""
    hangup_requested: bool = False
    end_reason: str | None = None
    confirmed: bool = False
    answered: float = field(default_factory=time.monotonic)
    media_indexes: tuple[int, ...] = ()  # pjsua media index of each audio stream connected
    rtp: RtpWatch = field(default_factory=lambda: RtpWatch(changed=time.monotonic()))
    headers: dict[str, str] = field(default_factory=dict)
    call_id: str = ""
    siprec_offer: Offer | None = None  # the audio m-lines answered, for a SIPREC call
    rules: SiprecRules | None = None  # the SIPREC rules of the call's route (mid-call remaps)
    streams: int = 1  # audio streams the bridge answered and connects


def _call_log(call_id: str) -> logging.LoggerAdapter[logging.Logger]:
    """This module's logger for one call: every line carries `call_id` (the record attribute the
    bridge's log formatters print, see `bridge.logs`)."""
    return logging.LoggerAdapter(logger, {"call_id": call_id})


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_long)]


def _add_supported_siprec() -> None:
    """Add "siprec" to the endpoint's Supported capabilities, so `Require: siprec` is not refused 420.

    pjsua2 does not wrap `pjsip_endpt_add_capability`; the extension module exports it (and
    `pjsua_get_pjsip_endpt`), and dlopen of the already loaded module returns the same library.
    Must run on the pjsua thread after libStart. pjsip copies the tag string.
    """
    lib = ctypes.CDLL(pj._pjsua2.__file__)
    lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
    lib.pjsua_get_pjsip_endpt.argtypes = []
    add = lib.pjsip_endpt_add_capability
    add.restype = ctypes.c_int
    add.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.POINTER(_PjStr),
    ]
    endpt = lib.pjsua_get_pjsip_endpt()
    if not endpt:
        raise SipError("pjsua has no SIP endpoint yet")
    tag = _PjStr(b"siprec", len(b"siprec"))
    status = add(endpt, None, pj.PJSIP_H_SUPPORTED, None, 1, ctypes.byref(tag))
    if status != 0:
        raise SipError(f"pjsip_endpt_add_capability(Supported: siprec) failed with status {status}")


def _local_udp_socket(host: str) -> socket.socket:
    """A UDP socket bound to an ephemeral port on `host`, to send to our own SIP port from."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


class _LogWriter(pj.LogWriter):  # type: ignore[misc]
    """pjsua's log lines into Python logging (they come from several pjsua threads); messages pjsip
    dropped before any callback saw them are counted."""

    def __init__(self, metrics: CallObserver) -> None:
        super().__init__()
        self._metrics = metrics

    def write(self, entry: Any) -> None:
        msg = str(entry.msg)
        level = logging.WARNING if entry.level <= 2 else logging.DEBUG
        if entry.level <= 1:
            level = logging.ERROR
        reason = dropped_reason(msg) if entry.level <= 3 else None
        if reason is not None:
            self._metrics.sip_dropped(reason)
            level = logging.WARNING
            msg = msg.split("\n", 1)[0]  # not the whole packet
        logging.getLogger("pjsua").log(level, "%s", msg.rstrip())


class _Call(pj.Call):  # type: ignore[misc]
    def __init__(self, owner: SipEndpoint, account: pj.Account, call_id: int) -> None:
        super().__init__(account, call_id)
        self._owner = owner

    def onCallState(self, prm: Any) -> None:
        self._owner._on_call_state(self)

    def onCallMediaState(self, prm: Any) -> None:
        self._owner._on_media_state(self)

    def onDtmfDigit(self, prm: Any) -> None:
        self._owner._on_dtmf(self, str(prm.digit))

    def onCallRxReinvite(self, prm: Any) -> None:
        self._owner._on_midcall(self, str(prm.rdata.wholeMsg), "re-INVITE")

    def onCallTsxState(self, prm: Any) -> None:
        event = prm.e
        if event.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        state = event.body.tsxState
        if state.type != pj.PJSIP_EVENT_RX_MSG or str(state.tsx.method) != "UPDATE":
            return
        if state.tsx.role != pj.PJSIP_ROLE_UAS:
            return
        self._owner._on_midcall(self, str(state.src.rdata.wholeMsg), "UPDATE")


class _Account(pj.Account):  # type: ignore[misc]
    def __init__(self, owner: SipEndpoint) -> None:
        super().__init__()
        self._owner = owner

    def onIncomingCall(self, prm: Any) -> None:
        self._owner._on_incoming(self, prm)


class SipEndpoint:
    """A pjsua2 endpoint on one SIP port, run by its own thread.

    `readiness` is the rule OPTIONS are answered by (the bridge gives its `/readyz` rule); `metrics`
    gets the thread's figures (none are kept without one)."""

    def __init__(
        self,
        settings: SipSettings,
        port: int,
        rtp_port: int,
        on_event: Callable[[SipEvent], None],
        on_audio: AudioDeliver,
        readiness: ReadinessRule,
        metrics: CallObserver | None = None,
    ) -> None:
        self._cfg = settings
        self._metrics: CallObserver = metrics if metrics is not None else NullObserver()
        self._readiness_rule = readiness
        self._limiter = RateLimiter(settings.invite_rate_per_source, settings.invite_burst_per_source)
        self._next_rtp_check = 0.0
        self._refusal_log = Throttle(REFUSAL_LOG_SECONDS)
        self.port = port
        self._rtp_port = rtp_port
        self._on_event = on_event
        self._on_audio = on_audio
        self._policy = settings.policy()
        self._rules = settings.siprec_rules
        self._routes = settings.route_table()  # replaced by set_routes (SIGHUP), on the pjsua thread
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"pjsua-{port}", daemon=True)
        self._keys = itertools.count(1)
        # Owned by the pjsua thread only:
        self._entries: dict[int, _Entry] = {}
        self._rejected: list[_Call] = []  # calls pjsua made of INVITEs the gate never saw, being ended
        # Call-ID -> the gate's admission, for onIncomingCall, which pjsua calls from inside the same
        # dispatch; still here at the next INVITE means pjsua answered that one itself.
        self._admitted: dict[str, Admitted] = {}
        # Ended calls, kept until pjsua holds no call in their slot: pjsua2's Call destructor hangs up
        # whatever call has its id then, so dropping one whose id was reused kills another call.
        self._graveyard: list[_Call] = []
        self._draining = False
        self._engine_reachable: bool | None = None
        self._engine_full = False
        self._probe_socket: socket.socket | None = None
        self._stopping = False
        self._wake_socket: socket.socket | None = None  # from start() until stop(): see _wake
        self._wake_failures = Throttle(REFUSAL_LOG_SECONDS)
        self._clock_on = False  # the null sound device is open (see _clock)
        self._idle_ports = 0  # conference ports with no call: the master and the FramePorts
        self._closed_sockets = SocketLedger()  # ended calls' sockets, until pjlib frees their keys

    # --- called from other threads -------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Start the thread and wait until every transport is bound; raise SipError if not."""
        if "udp" in self._cfg.transports:
            self._wake_socket = _local_udp_socket(self._cfg.host)
            self._wake_socket.setblocking(False)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SipError(f"SIP endpoint on port {self.port} did not start within {timeout} s")
        if self._start_error is not None:
            if self._wake_socket is not None:
                self._wake_socket.close()
            raise SipError(f"SIP endpoint on port {self.port} failed to start: {self._start_error}")

    def hangup(self, key: int) -> None:
        self._command_now("hangup", key)

    def set_draining(self, draining: bool) -> None:
        self._command_now("draining", draining)

    def ping(self, reply: Callable[[], None]) -> None:
        """Call `reply` from the pjsua thread once it has drained its queue: proof that it still polls.

        `reply` must be thread-safe and must not block (the worker wraps it in call_soon_threadsafe)."""
        self._command_now("ping", reply)

    def set_engine_state(self, reachable: bool | None, full: bool) -> None:
        """The supervisor's latest engine probe (None: never probed): OPTIONS answers follow it, and so
        do INVITEs when engine.on_unreachable is reject."""
        self._command_now("engine", (reachable, full))

    def set_routes(self, routes: RouteTable) -> None:
        """New INVITEs take `routes` from now on (a reload); calls in progress keep theirs."""
        self._command_now("routes", routes)

    def stop(self, timeout: float = 5.0) -> None:
        """Hang up every call, shut pjsua down and wait for the thread (bounded)."""
        if not self._thread.is_alive():
            return
        self._command_now("stop", None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("pjsua thread did not stop within %.1f s", timeout)
        elif self._wake_socket is not None:
            self._wake_socket.close()

    def _command_now(self, command: str, arg: Any) -> None:
        """Queue a command for the pjsua thread and wake it, so that it runs now, not after the poll."""
        self._commands.put((command, arg))
        self._wake()

    def _wake(self) -> None:
        """End the pjsua thread's wait in libHandleEvents: a datagram to our own UDP transport, which
        pjsip reads and drops for being too short to be SIP (`WAKE_DATAGRAM`). Without it the thread
        would have to poll every few milliseconds to run commands promptly, and each of those wake-ups
        costs CPU (docs/benchmarks.md, "Wake-ups"). If the datagram cannot be sent, the command runs
        at the end of the wait, IDLE_POLL_MS at the latest; that is logged."""
        sock = self._wake_socket
        if sock is None or not self._thread.is_alive():
            return  # not started (the loop drains the queue first), or over
        try:
            sock.sendto(WAKE_DATAGRAM, (self._cfg.host, self.port))
        except OSError as exc:
            suppressed = self._wake_failures.allow("wake", time.monotonic())
            if suppressed is not None:
                logger.warning(
                    "could not wake the pjsua thread (%s): commands wait up to %d ms (%d more since)",
                    exc, IDLE_POLL_MS, suppressed,
                )  # fmt: skip

    # --- the pjsua thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._setup()
        except BaseException as exc:  # reported to start(), which raises SipError
            self._start_error = exc
            self._ready.set()
            self._teardown()
            return
        self._ready.set()
        try:
            self._loop()
        except BaseException:
            logger.exception("pjsua thread failed")
            raise
        finally:
            self._teardown()

    def _setup(self) -> None:
        cfg = self._cfg
        self._ep = ep = pj.Endpoint()
        # pjlib prints its first lines to stdout before any log config applies; stdout may carry the
        # JSON-lines sink, so those lines go to stderr instead.
        saved = os.dup(1)
        try:
            os.dup2(2, 1)
            ep.libCreate()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        ep.libInit(self._ep_config())
        set_transaction_timeout(cfg.transaction_timeout_seconds)
        for name in cfg.transports:
            tcfg = pj.TransportConfig()
            tcfg.port = self.port
            tcfg.boundAddress = cfg.host
            kind = pj.PJSIP_TRANSPORT_UDP if name == "udp" else pj.PJSIP_TRANSPORT_TCP
            ep.transportCreate(kind, tcfg)
        ep.libStart()
        self._gate = Gate(self._on_request, self._screen_failed)
        self._gate.register()
        try:
            self._gate.calibrate(self._send_probe, lambda: ep.libHandleEvents(POLL_MS), CALIBRATION_POLLS)
        finally:
            if self._probe_socket is not None:
                self._probe_socket.close()
        if cfg.accept_require_siprec:
            _add_supported_siprec()
        ep.audDevManager().setNoDev()  # no clock until a call holds a port (_clock)
        self._set_codecs()
        self._create_account()
        logger.info("SIP endpoint listening on %s:%d (%s)", cfg.host, self.port, "/".join(cfg.transports))

    def _ep_config(self) -> pj.EpConfig:
        ep_cfg = pj.EpConfig()
        ep_cfg.uaConfig.maxCalls = PJSUA_MAX_CALLS
        ep_cfg.uaConfig.threadCnt = 0
        ep_cfg.uaConfig.mainThreadOnly = False
        ep_cfg.uaConfig.userAgent = "vblaze-bridge"
        self._log_writer = _LogWriter(self._metrics)
        ep_cfg.logConfig.writer = self._log_writer
        ep_cfg.logConfig.level = 3
        ep_cfg.logConfig.consoleLevel = 3
        ep_cfg.logConfig.msgLogging = 0
        ep_cfg.logConfig.decor = 0
        rate = self._cfg.sample_rate
        ep_cfg.medConfig.clockRate = rate
        ep_cfg.medConfig.sndClockRate = rate
        ep_cfg.medConfig.channelCount = 1
        ep_cfg.medConfig.noVad = True
        ep_cfg.medConfig.maxMediaPorts = MAX_MEDIA_PORTS
        return ep_cfg

    def _create_account(self) -> None:
        """The one account that takes every incoming call, and the FramePorts lent to its calls."""
        cfg = self._cfg
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:bridge@{cfg.host}:{self.port}"
        acfg.mediaConfig.transportConfig.port = self._rtp_port
        acfg.mediaConfig.transportConfig.portRange = RTP_PORTS_PER_WORKER
        acfg.mediaConfig.transportConfig.boundAddress = cfg.host
        self._account = _Account(self)
        self._account.create(acfg, True)
        self._pool = PortPool(
            FRAME_PORTS, cfg.sample_rate, cfg.port_frame_ms, self._on_audio, self._metrics.frames_dropped
        )
        self._idle_ports = int(self._ep.mediaActivePorts())

    def _send_probe(self, probe: bytes) -> int:
        """Send the gate's calibration probe to our own SIP port; return the port it came from."""
        host = self._cfg.host
        if "udp" in self._cfg.transports:
            with _local_udp_socket(host) as sock:
                sock.sendto(probe, (host, self.port))
                port: int = sock.getsockname()[1]
                return port
        sock = socket.create_connection((host, self.port), timeout=2)
        self._probe_socket = sock  # kept open until pjsip has read it
        sock.sendall(probe)
        port = sock.getsockname()[1]
        return port

    def _set_codecs(self) -> None:
        wanted = {CODEC_IDS[name]: 255 - i for i, name in enumerate(self._cfg.codecs)}
        for info in self._ep.codecEnum2():
            codec_id = str(info.codecId)
            self._ep.codecSetPriority(codec_id, wanted.get(codec_id, 0))

    def _loop(self) -> None:
        wait_ms = IDLE_POLL_MS if self._wake_socket is not None else POLL_MS
        while True:
            self._ep.libHandleEvents(wait_ms)
            if self._graveyard:
                self._graveyard = [call for call in self._graveyard if call.isActive()]
            if self._clock_on and not self._pool.lent:
                self._clock(False)
            now = time.monotonic()
            if now >= self._next_rtp_check:
                self._next_rtp_check = now + RTP_CHECK_SECONDS
                self._check_rtp(now)
            while True:
                try:
                    command, arg = self._commands.get_nowait()
                except queue.Empty:
                    break
                self._command(command, arg)
            if self._stopping and not self._entries and not self._rejected:
                return

    def _command(self, command: str, arg: Any) -> None:
        if command == "hangup":
            entry = self._entries.get(arg)
            if entry is not None:
                # Before hangup(): pjsua may report DISCONNECTED from inside that call.
                entry.hangup_requested = True
                self._hangup(entry.call, 200 if entry.confirmed else 487)
        elif command == "draining":
            self._draining = bool(arg)
        elif command == "engine":
            self._engine_reachable, self._engine_full = arg
        elif command == "ping":
            arg()
        elif command == "routes":
            self._routes = arg
        elif command == "stop":
            self._stopping = True
            self._draining = True
            for entry in list(self._entries.values()):
                entry.hangup_requested = True
                self._hangup(entry.call, 200 if entry.confirmed else 503)

    def _check_rtp(self, now: float) -> None:
        """Count RTP received and lost (as pjmedia's stream statistics see it), and give back the slots
        of calls that hold one for nothing, by the rules of `sip.reclaim`."""
        cfg = self._cfg
        for entry in list(self._entries.values()):
            if entry.hangup_requested:
                continue
            if not entry.confirmed:
                reclaim = unacked(entry.answered, now, cfg.ack_timeout_seconds)
                if reclaim is not None:
                    self._reclaim(entry, reclaim)
                continue
            if not entry.media_indexes:
                continue
            try:
                stats = [entry.call.getStreamStat(index).rtcp.rxStat for index in entry.media_indexes]
            except pj.Error:
                continue
            packets, lost, reclaim = entry.rtp.update(
                sum(int(stat.pkt) for stat in stats),
                sum(int(stat.loss) for stat in stats),
                now,
                cfg.first_rtp_timeout_seconds,
                cfg.rtp_timeout_seconds,
            )
            discarded = entry.rtp.discards(sum(int(stat.discard) for stat in stats))
            self._metrics.rtp_in(packets, lost, discarded)
            if reclaim is not None:
                if reclaim.cause is ReclaimCause.RTP_TIMEOUT:
                    self._metrics.rtp_timeout()
                self._reclaim(entry, reclaim)

    def _reclaim(self, entry: _Entry, reclaim: Reclaim) -> None:
        _call_log(entry.call_id).warning(
            "%s for %.1f s: hanging up to free the slot", reclaim.cause, reclaim.idle
        )
        self._metrics.call_reclaimed(reclaim.cause)
        entry.hangup_requested = True
        entry.end_reason = reclaim.cause.value
        self._hangup(entry.call, reclaim.status)

    def _hangup(self, call: _Call, status: int) -> None:
        op = pj.CallOpParam()
        op.statusCode = status
        try:
            call.hangup(op)
        except pj.Error as exc:
            logger.warning("hangup failed: %s", exc.info())

    def _teardown(self) -> None:
        """Destroy the library on its own thread. The FramePorts stay referenced: destroying them after
        the library is gone asserts inside pjmedia, so a worker leaves with `os._exit` after this."""
        if not hasattr(self, "_ep"):
            return
        if hasattr(self, "_gate"):
            self._gate.unregister()
        try:
            self._ep.libDestroy()
        except pj.Error as exc:
            logger.warning("libDestroy failed: %s", exc.info())
        logger.info("SIP endpoint on port %d stopped", self.port)

    def _entry_of(self, call: _Call) -> _Entry | None:
        for entry in self._entries.values():
            if entry.call is call:
                return entry
        return None

    def _readiness(self) -> ReadyVerdict:
        """This worker's answer to "would you take a call?", by the rule it was given (/readyz's)."""
        return self._readiness_rule(
            WorkerLoad(
                draining=self._draining,
                calls_held=self._calls_held(),
                capacity=self._policy.capacity,
                engine_reachable=self._engine_reachable,
                engine_full=self._engine_full,
            )
        )

    def _calls_held(self) -> int:
        # pjsua keeps ended calls' slots until their transactions are over: count what it counts
        return max(len(self._entries) + len(self._admitted), pjsua_calls())

    def _open_sockets(self) -> int:
        """Sockets pjsua holds open for calls: each stream's, and one stream's of the calls it made
        of INVITEs the gate refused or never saw."""
        streams = sum(entry.streams for entry in self._entries.values()) + len(self._rejected)
        return SOCKETS_PER_STREAM * (streams + len(self._admitted))

    def _on_request(self, incoming: Incoming) -> Answer | None:
        """The gate's handler: OPTIONS tell readiness, new INVITEs are screened."""
        if incoming.method == "OPTIONS":
            return self._options()
        return self._screen(incoming)

    def _options(self) -> Answer | None:
        """200 (pjsua's own, with its Allow and Accept) when a call would be taken; else 503 with
        Retry-After and the reason, as `/readyz` words it, in a Reason header (RFC 3326)."""
        decision = self._readiness()
        if decision.ready:
            return None
        headers = [("Reason", f'SIP;cause=503;text="{decision.reason}"'), *self._load_header()]
        if self._policy.retry_after:
            headers.insert(0, ("Retry-After", str(self._policy.retry_after)))
        return Answer(503, "Service Unavailable", tuple(headers))

    def _load_header(self) -> tuple[tuple[str, str], ...]:
        return ((LOAD_HEADER, f"{self._calls_held()}/{self._policy.capacity}"),)

    def _screen(self, incoming: Incoming) -> Answer | None:
        """Screen a new INVITE; answer a refusal, or keep the admission for pjsua's `onIncomingCall`,
        which pjsua calls next, from inside this same dispatch."""
        now = time.monotonic()
        for stale in self._admitted:  # pjsua refused it itself (e.g. 400 without Contact, 420)
            logger.info("INVITE %s admitted, then answered by pjsua itself", stale)
        self._admitted.clear()
        source = f"{incoming.source_ip}:{incoming.source_port}"
        state = WorkerState(
            active_calls=self._calls_held(),
            draining=self._draining,
            within_rate=self._limiter.allow(incoming.source_ip, now),
            engine_refuses=self._cfg.refuse_without_engine
            and (self._engine_reachable is False or self._engine_full),
            source_calls=sum(1 for e in self._entries.values() if e.source_ip == incoming.source_ip),
            sockets_fit=fits(self._open_sockets(), self._closed_sockets.held(now)),
        )
        verdict = screen(
            incoming.raw,
            incoming.source_ip,
            state,
            self._policy,
            self._rules,
            self._cfg.calls_per_source,
            self._routes,
        )
        if isinstance(verdict, Refused):
            reject = verdict.reject
            suppressed = self._refusal_log.allow(f"{incoming.source_ip} {reject.result}", now)
            if suppressed is not None:  # one line per source and cause every few seconds, whatever the rate
                log = logger.warning if reject.result is CallResult.REJECTED_INVALID else logger.info
                more = f"; {suppressed} more like it since the last line" if suppressed else ""
                log(
                    "INVITE from %s refused: %d %s (%s)%s",
                    source,
                    reject.status,
                    reject.reason,
                    verdict.detail,
                    more,
                )
            self._on_event(
                InviteRejected(status=reject.status, result=reject.result, source=source, route=verdict.route)
            )
            return Answer(reject.status, reject.reason, reject.headers)
        call_id = verdict.request.header("call-id") or ""
        self._admitted[call_id] = verdict
        return None

    def _screen_failed(self) -> None:
        self._on_event(InviteRejected(status=SCREEN_FAILED.status, result=SCREEN_FAILED.result, source="?"))

    def _on_incoming(self, account: _Account, prm: Any) -> None:
        """pjsua made a call of an INVITE: answer it as the gate's admission says (`sip.screening`)."""
        call = _Call(self, account, prm.callId)
        source = str(prm.rdata.srcAddress)
        call_id = str(call.getInfo().callIdString)
        admitted = self._admitted.pop(call_id, None)
        if admitted is None:  # the gate saw every INVITE first: a defect if it happens
            logger.error("INVITE %s from %s reached pjsua without being screened", call_id, source)
            self._rejected.append(call)
            self._hangup(call, UNSCREENED_STATUS)
            return
        key = next(self._keys)
        entry = _Entry(key=key, call=call, call_id=call_id, source_ip=source.rsplit(":", 1)[0].strip("[]"))
        self._entries[key] = entry
        session = admitted.session
        if session is not None:
            entry.siprec_offer = admitted.offer
            entry.rules = admitted.route.siprec_rules
            entry.streams = len(admitted.roles)
            _log_session(call_id, source, session)
        try:
            call.answer(_answer_param(admitted))
        except pj.Error as exc:
            logger.warning("answer failed for %s: %s", call_id, exc.info())
            entry.hangup_requested = True
            entry.end_reason = "failed"
            self._hangup(call, ANSWER_FAILED_STATUS)
            return
        self._on_event(
            CallStarted(
                key=key,
                call_id=call_id,
                from_uri=admitted.request.header("from") or "",
                to_uri=admitted.request.header("to") or "",
                remote=source,
                headers=admitted.copied_headers(admitted.route.headers),
                codecs=admitted.accept.encodings,
                siprec=session,
                route=admitted.route.name,
            )
        )

    def _on_midcall(self, call: _Call, message: str, how: str) -> None:
        """A re-INVITE or UPDATE of a SIPREC call: remap the streams if it carries rs-metadata."""
        entry = self._entry_of(call)
        if entry is None or entry.siprec_offer is None:
            return
        try:
            roles = remap(parse_request(message), entry.siprec_offer, entry.rules or self._rules)
        except Exception:  # untrusted input must not escape a pjsua2 callback
            _call_log(entry.call_id).exception("%s could not be read", how)
            return
        if roles is None:
            return
        _call_log(entry.call_id).debug("%s carries rs-metadata", how)
        self._on_event(CallStreams(key=entry.key, roles=roles, reason=how))

    def _on_call_state(self, call: _Call) -> None:
        info = call.getInfo()
        entry = self._entry_of(call)
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and entry is not None:
            entry.confirmed = True
        if info.state != pj.PJSIP_INV_STATE_DISCONNECTED:
            return
        if call in self._rejected:
            self._rejected.remove(call)
            self._closed_sockets.closed(time.monotonic(), SOCKETS_PER_STREAM)
            self._graveyard.append(call)
            return
        if entry is None:
            return
        del self._entries[entry.key]
        self._closed_sockets.closed(time.monotonic(), SOCKETS_PER_STREAM * entry.streams)
        for port in entry.ports.values():
            self._pool.give_back(port)
        entry.ports.clear()
        self._clock(self._pool.lent > 0)  # on until the conference freed this call's ports
        if entry.end_reason is not None:
            reason = entry.end_reason
        elif entry.hangup_requested:
            reason = "local_hangup"
        elif entry.confirmed:
            reason = "remote_bye"
        else:
            reason = "failed"
        self._graveyard.append(call)
        self._on_event(
            CallEnded(
                key=entry.key, status=int(info.lastStatusCode), reason=reason, detail=str(info.lastReason)
            )
        )

    def _on_media_state(self, call: _Call) -> None:
        entry = self._entry_of(call)
        if entry is None:
            return
        info = call.getInfo()
        # The n-th audio entry of CallInfo.media is the n-th audio m-line: stream n.
        audio = [media for media in info.media if media.type == pj.PJMEDIA_TYPE_AUDIO][: entry.streams]
        indexes: list[int] = []
        expect_rtp = False
        for stream, media in enumerate(audio):
            status = MEDIA_STATUS.get(media.status, "unknown")
            codec = ""
            indexes.append(media.index)
            flowing = media.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD)
            expect_rtp = expect_rtp or (bool(media.dir & pj.PJMEDIA_DIR_DECODING) and flowing)
            if flowing:
                port = entry.ports.get(stream)
                if port is None:
                    port = entry.ports[stream] = self._pool.lend(entry.key, stream)
                    self._clock(True)
                try:
                    call.getAudioMedia(media.index).startTransmit(port)  # idempotent
                    codec = str(call.getStreamInfo(media.index).codecName)
                except pj.Error as exc:
                    logger.warning("connecting audio failed: %s", exc.info())
            direction = "decoding" if media.dir & pj.PJMEDIA_DIR_DECODING else "none"
            self._on_event(
                CallMedia(key=entry.key, codec=codec, status=status, stream=stream, direction=direction)
            )
        entry.media_indexes = tuple(indexes)
        entry.rtp.expected = expect_rtp

    def _clock(self, on: bool) -> None:
        """Run pjmedia's conference clock (the null sound device, a thread ticking every 20 ms) while a
        call holds a frame port, and stop it once none does and the conference has freed every port of
        the calls (the loop asks again until it has): it frees them only in a tick. A call's ports
        held with no clock running (a call whose media never flowed, so it lent no frame port) start
        it too, here or from the loop. Closing the device joins the clock thread; pjsua2's wrapper
        lets go of the GIL meanwhile, so a frame callback in flight ends."""
        if not on:
            on = self._ep.mediaActivePorts() > self._idle_ports
        if on == self._clock_on:
            return
        try:
            if on:
                self._ep.audDevManager().setNullDev()
            else:
                self._ep.audDevManager().setNoDev()
        except pj.Error as exc:  # with no clock, no frame reaches the calls: their gaps will say so
            logger.error("%s the conference clock failed: %s", "starting" if on else "stopping", exc.info())
            return
        self._clock_on = on
        logger.debug("conference clock %s", "started" if on else "stopped")

    def _on_dtmf(self, call: _Call, digit: str) -> None:
        entry = self._entry_of(call)
        if entry is not None:
            self._on_event(CallDtmf(key=entry.key, digit=digit))


def _log_session(call_id: str, source: str, session: SiprecSession) -> None:
    log = _call_log(call_id)
    log.info("SIPREC session from %s (%s)", source, "; ".join(session.evidence))
    for role in session.roles:
        log.info(
            "SIPREC stream %d (label %r) -> %s on channel %d: %s",
            role.index,
            role.label,
            role.role,
            role.channel,
            role.reason,
        )
    for problem in (*session.problems, *session.framing):
        log.warning("SIPREC body: %s", problem)


def _answer_param(admitted: Admitted) -> pj.CallOpParam:
    """200 with pjsua's defaults for a plain call; a SIPREC call's audio streams answered each."""
    count = admitted.audio_count
    if count is None:
        op = pj.CallOpParam()
    else:
        op = pj.CallOpParam(True)  # True: `opt` starts from pjsua's defaults (see module docstring)
        op.opt.audioCount = count
    op.statusCode = 200
    return op

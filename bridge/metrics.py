"""Every Prometheus metric of the bridge, in one module.

Names are ``vblaze_bridge_<noun>_<unit>`` in base units (seconds, bytes); counters end in ``_total``.
Label values come from the short fixed tuples below; anything else is mapped to ``"other"`` (or, for
SIP codes, to the code's class such as ``"4xx"``), so no call id, number or free text ever becomes a
label.

Multiprocess model
------------------
Workers record into ``prometheus_client``'s multiprocess files. The supervisor:

1. calls :func:`setup_multiprocess_dir` before it spawns any worker (the variable it sets is inherited
   by the workers, whose ``import bridge.metrics`` then writes to that directory);
2. calls :func:`retire_process` (or :func:`mark_process_dead`) with a worker's pid after reaping it:
   it drops the worker's ``live*`` gauges and returns the calls that were still up on it;
3. records what only it knows (worker restarts, calls lost with a worker, readiness) on
   :data:`SUPERVISOR`, an in-memory object that :func:`registry_for_scrape` merges into the same
   metric families, so one scrape of the supervisor's port covers the whole pool.

The supervisor itself does not need to be in multiprocess mode, and may import this module before
or after calling :func:`setup_multiprocess_dir`.

Workers use the observers: :class:`WorkerMetrics` once at start, :class:`CallMetrics` from the SIP
and call code, :class:`EngineMetrics` from the V-Blaze client and :class:`WebhookMetrics` from webhook
delivery. Observer methods never raise and never block.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _mark_process_dead
from prometheus_client.samples import Sample

from bridge.config import METRICS_DIR_ENV
from bridge.errors import MetricsDirInUse
from bridge.nats.policy import Outcome as NatsOutcome
from bridge.recording import RecordingResult
from bridge.supervision import RestartReason
from bridge.vblaze.buffer import GapCause
from bridge.vblaze.session import ConnectCause, LostCause
from bridge.webhook.policy import Outcome
from bridge.webhook.queue import DropReason
from sip.admission import CallResult
from sip.pjlog import SipDropReason
from sip.reclaim import ReclaimCause
from sip.routing import DEFAULT_ROUTE, NO_ROUTE, REJECT_STATUSES

MULTIPROC_ENV = METRICS_DIR_ENV
PREFIX = "vblaze_bridge"

# --- bounded label values ---------------------------------------------------------------------------

OTHER = "other"  # every label's catch-all: a value outside its list is counted here (`bounded`)

# How a call ended or was refused; each value is documented at its member of sip.admission.CallResult.
CALL_RESULTS = tuple(result.value for result in CallResult)
# SIP status codes the workers count as sent to an initial INVITE: 200 (pjsua's answer to an admitted
# call), and the refusals of the gate (sip.screening, sip.admission: 400 for what cannot be read, 403,
# 488, 503; 500 when screening fails). Other codes are reported by class ("4xx"); answers pjsua gives
# itself (100 Trying, 486 with every slot taken, 420 for an unknown Require) are never seen.
INVITE_CODES = tuple(
    sorted({"200", "400", "403", "488", "500", "503"} | {str(code) for code in REJECT_STATUSES})
)  # and the statuses a route may reject with (sip.routing.REJECT_STATUSES)
# --- routes: the `route` label of calls_total -------------------------------------------------------
# Route names come from the config (`routes:`, at most 32 characters each), so the label is bounded by
# the config: a worker counts a call under its route's name ("default": the top-level settings) and
# "none" for an INVITE refused before a route was chosen, or a call lost with its worker (the
# supervisor does not know the route); a name outside the worker's routes is counted as "other".
# --- end of routes ----------------------------------------------------------------------------------
# Frames dropped before the engine: only a frame the worker could not hand to its call is counted
# ("other": sip/media.py's FramePort, bridge/worker.py's drain; each logs the first failure of a call).
DROP_CAUSES = ("other",)
# Engine causes: each tuple is its enum's values plus "other"; the enums (with what each value means) are
# the one list the producers use: bridge/vblaze/session.py (ConnectCause, LostCause) and
# bridge/vblaze/buffer.py (GapCause).
CONNECT_FAILURE_CAUSES = (*(cause.value for cause in ConnectCause), OTHER)
STREAM_LOST_CAUSES = (*(cause.value for cause in LostCause), OTHER)
GAP_CAUSES = (*(cause.value for cause in GapCause), OTHER)
# SIP messages pjsip dropped before any call saw them (sip.pjlog.SipDropReason documents each).
SIP_DROP_REASONS = tuple(reason.value for reason in SipDropReason)
# Why an answered call was hung up to free its slot (sip.reclaim.ReclaimCause documents each).
RECLAIM_CAUSES = tuple(cause.value for cause in ReclaimCause)
# Defined, with a comment per value, where they are produced: bridge/webhook/policy.py, queue.py.
WEBHOOK_OUTCOMES = tuple(o.value for o in Outcome)  # Outcome.OTHER ("other") is one of them
WEBHOOK_DROP_REASONS = (*(r.value for r in DropReason), OTHER)
# NATS publishes: bridge/nats/policy.py's Outcome documents each (its OTHER is "other"); drops as webhooks'.
NATS_OUTCOMES = tuple(o.value for o in NatsOutcome)
NATS_DROP_REASONS = WEBHOOK_DROP_REASONS
# Why a worker was restarted: the supervisor's `RestartReason` (bridge/supervision.py) is the one list.
RESTART_REASONS = tuple(reason.value for reason in RestartReason)
# How a call's recording ended: bridge/recording.py's RecordingResult documents each.
RECORDING_RESULTS = (*(result.value for result in RecordingResult), OTHER)


def bounded(value: str, allowed: Iterable[str]) -> str:
    """Return `value` if it is one of `allowed`, else ``"other"``."""
    return value if value in allowed else OTHER


def sip_code_label(code: int) -> str:
    """A bounded label for a SIP status code: known codes as themselves, others by class."""
    text = str(code)
    if text in INVITE_CODES:
        return text
    if 100 <= code <= 699:
        return f"{code // 100}xx"
    return OTHER


# --- calls and SIP ----------------------------------------------------------------------------------

CALLS_ACTIVE = Gauge(
    f"{PREFIX}_calls_active",
    "Calls answered and not yet ended, over live workers.",
    multiprocess_mode="livesum",
)
CALLS = Counter(
    f"{PREFIX}_calls_total", "Calls by how they ended or were refused, and their route.", ["result", "route"]
)
INVITE_RESPONSES = Counter(
    f"{PREFIX}_invite_responses_total", "Responses sent to initial INVITEs, by status code.", ["code"]
)
SIP_MESSAGES_DROPPED = Counter(
    f"{PREFIX}_sip_messages_dropped_total",
    "SIP messages pjsip dropped before the bridge saw them, by reason.",
    ["reason"],
)
RTP_PACKETS = Counter(
    f"{PREFIX}_rtp_packets_total", "RTP packets received, as pjmedia's stream statistics count."
)
RTP_PACKETS_LOST = Counter(
    f"{PREFIX}_rtp_packets_lost_total", "RTP packets lost before the bridge (sequence gaps seen by pjmedia)."
)
RTP_PACKETS_DISCARDED = Counter(
    f"{PREFIX}_rtp_packets_discarded_total",
    "RTP packets that arrived and pjmedia threw away (its stream statistics: late, duplicate, bad).",
)
RTP_TIMEOUTS = Counter(
    f"{PREFIX}_rtp_timeouts_total", "Calls hung up after sip.rtp_timeout_seconds without RTP."
)
CALLS_RECLAIMED = Counter(
    f"{PREFIX}_calls_reclaimed_total",
    "Answered calls the bridge hung up to give their slot back, by cause (no ACK, no RTP ever, RTP stopped).",
    ["cause"],
)
CAPACITY = Gauge(
    f"{PREFIX}_capacity_calls",
    "Calls the live workers can hold at once (sip.calls_per_worker per live worker).",
    multiprocess_mode="livesum",
)
WORKERS_UP = Gauge(
    f"{PREFIX}_workers_up",
    "Worker processes that have bound their SIP port and are taking calls.",
    multiprocess_mode="livesum",
)

# --- audio in ---------------------------------------------------------------------------------------

AUDIO_FRAMES = Counter(f"{PREFIX}_audio_frames_total", "Audio frames received from pjsua2.")
AUDIO_SECONDS = Counter(f"{PREFIX}_audio_seconds_total", "Seconds of call audio received from pjsua2.")
AUDIO_FRAMES_DROPPED = Counter(
    f"{PREFIX}_audio_frames_dropped_total", "Audio frames that never reached the engine, by cause.", ["cause"]
)
AUDIO_GAPS = Counter(f"{PREFIX}_audio_gaps_total", "Gaps in the audio the engine heard, by cause.", ["cause"])
AUDIO_GAP_SECONDS = Counter(
    f"{PREFIX}_audio_gap_seconds_total", "Seconds of call audio the engine never heard, by cause.", ["cause"]
)

# --- engine -----------------------------------------------------------------------------------------

ENGINE_CONNECTS = Counter(f"{PREFIX}_engine_connects_total", "WebSocket streams opened to the engine.")
ENGINE_CONNECT_FAILURES = Counter(
    f"{PREFIX}_engine_connect_failures_total", "Failed attempts to open an engine stream.", ["cause"]
)
ENGINE_STREAMS_LOST = Counter(
    f"{PREFIX}_engine_streams_lost_total", "Engine streams that ended before the final transcript.", ["cause"]
)
ENGINE_RECONNECTS = Counter(
    f"{PREFIX}_engine_reconnects_total", "Engine streams reopened mid-call after a lost socket."
)
ENGINE_SENT_BYTES = Counter(f"{PREFIX}_engine_sent_bytes_total", "Audio bytes written to engine sockets.")
UTTERANCES = Counter(f"{PREFIX}_utterances_total", "Utterances received from the engine.")

# --- webhooks ---------------------------------------------------------------------------------------

WEBHOOK_ATTEMPTS = Counter(
    f"{PREFIX}_webhook_attempts_total", "Webhook delivery attempts, by outcome.", ["outcome"]
)
WEBHOOK_REJECTED = Counter(
    f"{PREFIX}_webhook_events_rejected_total",
    "Events a receiver refused with a final status (4xx other than 408/429); never retried.",
)
WEBHOOK_DROPPED = Counter(
    f"{PREFIX}_webhook_events_dropped_total",
    "Events refused before any attempt, by reason (spool_full: webhook.spool_max_bytes reached).",
    ["reason"],
)
SPOOL_EVENTS = Gauge(
    f"{PREFIX}_webhook_spool_events",
    "Events waiting for webhook delivery (queued or spooled to disk), summed over live processes.",
    multiprocess_mode="livesum",
)
# The spool is one file the workers share: each reports the same figures, so the pool's is their max.
SPOOL_BYTES = Gauge(
    f"{PREFIX}_webhook_spool_bytes",
    "Bytes the webhook spool uses (its database's used pages), as last seen by a live process.",
    multiprocess_mode="livemax",
)
SPOOL_LIMIT_BYTES = Gauge(
    f"{PREFIX}_webhook_spool_limit_bytes",
    "webhook.spool_max_bytes: new events are refused once the spool uses this much.",
    multiprocess_mode="livemax",
)

# --- NATS JetStream (bridge/nats/): the same spool as the webhooks (its gauges above count both) ---

NATS_ATTEMPTS = Counter(
    f"{PREFIX}_nats_publish_attempts_total", "JetStream publish attempts, by outcome.", ["outcome"]
)
NATS_DUPLICATES = Counter(
    f"{PREFIX}_nats_duplicates_total",
    "Publishes JetStream acked as duplicates (the event_id was stored already: stored once).",
)
NATS_REJECTED = Counter(
    f"{PREFIX}_nats_events_rejected_total", "Events that can never be published (larger than max_payload)."
)
NATS_DROPPED = Counter(
    f"{PREFIX}_nats_events_dropped_total",
    "NATS events refused before any attempt, by reason (spool_full: webhook.spool_max_bytes reached).",
    ["reason"],
)
NATS_CONNECTED = Gauge(
    f"{PREFIX}_nats_connected",
    "Worker processes connected to a NATS server, summed over live processes.",
    multiprocess_mode="livesum",
)

# --- the live feed (bridge/control/feed.py) ---------------------------------------------------------

LIVE_EVENTS_DROPPED = Counter(
    f"{PREFIX}_live_events_dropped_total",
    "Copies of events the live feed dropped because the supervisor was not reading (sinks got them all).",
)


def live_event_dropped() -> None:
    LIVE_EVENTS_DROPPED.inc()


# --- recordings (bridge/recording.py) ---------------------------------------------------------------

RECORDINGS = Counter(
    f"{PREFIX}_recordings_total",
    "Redacted call recordings (one per file), by how they ended (bridge.recording.RecordingResult).",
    ["result"],
)
RECORDING_BYTES = Counter(f"{PREFIX}_recording_bytes_total", "Bytes of redacted recording files written.")

# --- latency histograms, one per hop ----------------------------------------------------------------

# Frame arrival in pjsua2's media thread -> its bytes written to the engine socket. The normal path is
# a thread hop plus a send: 0.1-2 ms. 5-50 ms means a busy event loop; audio.chunk_ms (100 ms by
# default) appears when frames wait to fill a chunk; replayed audio after a reconnect lands at 1-2.5 s
# and beyond (+Inf).
AUDIO_TO_SOCKET = Histogram(
    f"{PREFIX}_audio_to_socket_seconds",
    "Audio frame arrival from pjsua2 to its bytes written to the engine socket.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
# End of an utterance on the call's audio timeline -> the utterance received from the engine. V-Blaze
# documents 0.2-1x the utterance length, after uttmaxsilence (0.8 s) of silence has ended it;
# utterances are at most uttmaxtime (15 s). So 0.5-3 s is typical, 15 s is a maximal utterance
# decoded at 1x, and 20-30 s means the engine is overloaded.
SPEECH_END_TO_UTTERANCE = Histogram(
    f"{PREFIX}_speech_end_to_utterance_seconds",
    "End of an utterance on the call's audio timeline to the utterance received from the engine.",
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0),
)
# Utterance received -> webhook request sent: building the payload and waiting in the per-call queue.
# Milliseconds normally; seconds when an earlier event of the same call is being retried (delivery
# keeps order per call); 5 s is webhook.timeout_seconds by default.
UTTERANCE_TO_WEBHOOK_SENT = Histogram(
    f"{PREFIX}_utterance_to_webhook_sent_seconds",
    "Utterance received from the engine to its webhook request sent.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
# Utterance received -> webhook 2xx: the receiver's round trip (5-250 ms on a LAN or a region), then
# retries with backoff from 0.5 s (webhook.backoff_initial_seconds) up to 60 s; anything beyond is a
# receiver outage served from the spool (+Inf).
UTTERANCE_TO_WEBHOOK_ACK = Histogram(
    f"{PREFIX}_utterance_to_webhook_ack_seconds",
    "Utterance received from the engine to the 2xx answer to its webhook.",
    # fine below 25 ms: the spool's fsync and one local POST are what a healthy receiver costs
    buckets=(
        0.0025,
        0.005,
        0.0075,
        0.01,
        0.015,
        0.02,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
        60.0,
    ),
)
# Utterance received -> JetStream ack: a publish round trip (a millisecond on a LAN, R=3 included);
# seconds when the stream lost its leader (an election) or every server is down (the spool holds it).
UTTERANCE_TO_NATS_ACK = Histogram(
    f"{PREFIX}_utterance_to_nats_ack_seconds",
    "Utterance received from the engine to JetStream's ack of its publish.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
# One publish attempt, to its ack or failure; bounded by nats.publish_timeout_seconds (5 s default).
NATS_PUBLISH = Histogram(
    f"{PREFIX}_nats_publish_seconds",
    "Duration of one JetStream publish attempt, whatever its outcome.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
# One webhook attempt, request to answer or failure; bounded by webhook.timeout_seconds (5 s default).
WEBHOOK_ATTEMPT = Histogram(
    f"{PREFIX}_webhook_attempt_seconds",
    "Duration of one webhook attempt, whatever its outcome.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def preinit_routes(routes: Iterable[str]) -> None:
    """Create calls_total's series of these routes (and "none") at zero; a worker calls it with its
    config's route names (`sip.routing.RouteTable.names`)."""
    for route in (*routes, NO_ROUTE):
        for result in CALL_RESULTS:
            CALLS.labels(result, route)


def _preinit() -> None:
    """Create every labelled series at zero so rate() and absent() work before the first event."""
    preinit_routes((DEFAULT_ROUTE,))
    for code in INVITE_CODES:
        INVITE_RESPONSES.labels(code)
    for cause in DROP_CAUSES:
        AUDIO_FRAMES_DROPPED.labels(cause)
    for reason in SIP_DROP_REASONS:
        SIP_MESSAGES_DROPPED.labels(reason)
    for cause in RECLAIM_CAUSES:
        CALLS_RECLAIMED.labels(cause)
    for cause in GAP_CAUSES:
        AUDIO_GAPS.labels(cause)
        AUDIO_GAP_SECONDS.labels(cause)
    for cause in CONNECT_FAILURE_CAUSES:
        ENGINE_CONNECT_FAILURES.labels(cause)
    for cause in STREAM_LOST_CAUSES:
        ENGINE_STREAMS_LOST.labels(cause)
    for outcome in WEBHOOK_OUTCOMES:
        WEBHOOK_ATTEMPTS.labels(outcome)
    for reason in WEBHOOK_DROP_REASONS:
        WEBHOOK_DROPPED.labels(reason)
    for outcome in NATS_OUTCOMES:
        NATS_ATTEMPTS.labels(outcome)
    for reason in NATS_DROP_REASONS:
        NATS_DROPPED.labels(reason)
    for result in RECORDING_RESULTS:
        RECORDINGS.labels(result)


_preinit()


# --- observers the other modules are given ----------------------------------------------------------


class WorkerMetrics:
    """Called by a worker process once its SIP port is bound, and never again."""

    def started(self, capacity: int) -> None:
        WORKERS_UP.set(1)
        CAPACITY.set(capacity)

    def stopping(self) -> None:
        """The worker takes no more calls (drain); its capacity no longer counts."""
        CAPACITY.set(0)


class CallMetrics:
    """Calls, INVITE answers and incoming audio; used by sip/ and bridge/call.py."""

    def invite_response(self, code: int) -> None:
        INVITE_RESPONSES.labels(sip_code_label(code)).inc()

    def call_rejected(self, result: str, route: str = NO_ROUTE) -> None:
        """A call refused before answering (`result` is one of the ``rejected_*`` values; `route` the
        route chosen: a route name or "none", see the `route` label above)."""
        CALLS.labels(bounded(result, CALL_RESULTS), route).inc()

    def call_answered(self) -> None:
        CALLS_ACTIVE.inc()

    def call_ended(self, result: str, route: str = DEFAULT_ROUTE) -> None:
        """An answered call ended; `result` is ``completed`` or ``failed``. Call exactly once per answer."""
        CALLS_ACTIVE.dec()
        CALLS.labels(bounded(result, CALL_RESULTS), route).inc()

    def audio_in(self, frames: int, seconds: float) -> None:
        """Frames received from pjsua2; call per batch, not necessarily per frame."""
        AUDIO_FRAMES.inc(frames)
        AUDIO_SECONDS.inc(seconds)

    def sip_dropped(self, reason: str) -> None:
        """pjsip dropped a message (called from the pjsua thread)."""
        SIP_MESSAGES_DROPPED.labels(bounded(reason, SIP_DROP_REASONS)).inc()

    def rtp_in(self, packets: int, lost: int, discarded: int) -> None:
        """RTP counted by pjmedia since the last call (the pjsua thread polls once a second)."""
        if packets:
            RTP_PACKETS.inc(packets)
        if lost:
            RTP_PACKETS_LOST.inc(lost)
        if discarded:
            RTP_PACKETS_DISCARDED.inc(discarded)

    def rtp_timeout(self) -> None:
        RTP_TIMEOUTS.inc()

    def call_reclaimed(self, cause: str) -> None:
        """An answered call hung up to give its slot back (`cause` one of RECLAIM_CAUSES)."""
        CALLS_RECLAIMED.labels(bounded(cause, RECLAIM_CAUSES)).inc()

    def frames_dropped(self, frames: int, cause: str) -> None:
        AUDIO_FRAMES_DROPPED.labels(bounded(cause, DROP_CAUSES)).inc(frames)


class EngineMetrics:
    """Observer for the V-Blaze client."""

    def connected(self) -> None:
        ENGINE_CONNECTS.inc()

    def connect_failed(self, cause: str) -> None:
        ENGINE_CONNECT_FAILURES.labels(bounded(cause, CONNECT_FAILURE_CAUSES)).inc()

    def reconnected(self) -> None:
        ENGINE_RECONNECTS.inc()

    def connection_lost(self, cause: str) -> None:
        """An established stream ended early: closed, send_timeout or ended_early."""
        ENGINE_STREAMS_LOST.labels(bounded(cause, STREAM_LOST_CAUSES)).inc()

    def frame_sent(self, nbytes: int, latency_seconds: float) -> None:
        """`latency_seconds`: arrival of the oldest frame in the write -> write done."""
        ENGINE_SENT_BYTES.inc(nbytes)
        AUDIO_TO_SOCKET.observe(max(0.0, latency_seconds))

    def utterance(self, latency_seconds: float) -> None:
        """`latency_seconds`: utterance end on the audio timeline -> utterance received."""
        UTTERANCES.inc()
        SPEECH_END_TO_UTTERANCE.observe(max(0.0, latency_seconds))

    def gap(self, seconds: float, cause: str) -> None:
        label = bounded(cause, GAP_CAUSES)
        AUDIO_GAPS.labels(label).inc()
        AUDIO_GAP_SECONDS.labels(label).inc(max(0.0, seconds))


# --- recordings --------------------------------------------------------------------------------------


class RecordingMetrics:
    """Observer for the call pipeline's recordings."""

    def recorded(self, result: str, nbytes: int) -> None:
        """One recording ended with `result` (a `RecordingResult`); `nbytes` the file's size, if written."""
        RECORDINGS.labels(bounded(result, RECORDING_RESULTS)).inc()
        if nbytes:
            RECORDING_BYTES.inc(nbytes)


class WebhookMetrics:
    """Observer for webhook delivery."""

    def attempt(self, outcome: str, seconds: float) -> None:
        WEBHOOK_ATTEMPTS.labels(bounded(outcome, WEBHOOK_OUTCOMES)).inc()
        WEBHOOK_ATTEMPT.observe(max(0.0, seconds))

    def sent(self, latency_seconds: float) -> None:
        """Utterance received -> first webhook request for it sent."""
        UTTERANCE_TO_WEBHOOK_SENT.observe(max(0.0, latency_seconds))

    def delivered(self, latency_seconds: float) -> None:
        """Utterance received -> 2xx from the receiver."""
        UTTERANCE_TO_WEBHOOK_ACK.observe(max(0.0, latency_seconds))

    def spool_depth(self, n: int) -> None:
        """Events this process has waiting, queued in memory and spooled."""
        SPOOL_EVENTS.set(max(0, n))

    def spool_size(self, used: int, limit: int) -> None:
        """The spool's size after a write or a claim, and its limit."""
        SPOOL_BYTES.set(max(0, used))
        SPOOL_LIMIT_BYTES.set(limit)

    def rejected(self, status: int) -> None:
        """An event got a final refusal (`status`, counted by its attempt's outcome too)."""
        WEBHOOK_REJECTED.inc()

    def dropped(self, reason: str) -> None:
        WEBHOOK_DROPPED.labels(bounded(reason, WEBHOOK_DROP_REASONS)).inc()


class NatsMetrics:
    """Observer for JetStream publishing (`bridge.nats.transport.NatsObserver`)."""

    def attempt(self, outcome: NatsOutcome, seconds: float) -> None:
        NATS_ATTEMPTS.labels(bounded(outcome, NATS_OUTCOMES)).inc()
        NATS_PUBLISH.observe(max(0.0, seconds))
        if outcome is NatsOutcome.DUPLICATE:
            NATS_DUPLICATES.inc()

    def sent(self, latency_seconds: float) -> None:
        """Utterance received -> first publish: the ack histogram covers it (a publish waits for its ack)."""

    def delivered(self, latency_seconds: float) -> None:
        """Utterance received -> JetStream ack."""
        UTTERANCE_TO_NATS_ACK.observe(max(0.0, latency_seconds))

    def rejected(self, status: int) -> None:
        NATS_REJECTED.inc()

    def dropped(self, reason: str) -> None:
        NATS_DROPPED.labels(bounded(reason, NATS_DROP_REASONS)).inc()

    def connected(self, up: bool) -> None:
        NATS_CONNECTED.set(1 if up else 0)


# --- the supervisor's own figures -------------------------------------------------------------------


class SupervisorMetrics:
    """What only the supervisor knows, kept in memory and merged into the scrape.

    Thread-safe; the supervisor calls these from its loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._restarts = dict.fromkeys(RESTART_REASONS, 0)
        self._calls_lost = 0
        self.ready = False
        self.draining = False
        self.engine_reachable: bool | None = None  # the supervisor's engine probe; None: not probed yet
        self.engine_full = False

    def worker_restarted(self, reason: str, calls_lost: int = 0) -> None:
        """A worker died and is being replaced; `calls_lost` calls were up on it."""
        with self._lock:
            self._restarts[bounded(reason, RESTART_REASONS)] += 1
            self._calls_lost += max(0, calls_lost)

    def set_state(
        self, *, ready: bool, draining: bool, engine_reachable: bool | None = None, engine_full: bool = False
    ) -> None:
        with self._lock:
            self.ready = ready
            self.draining = draining
            self.engine_reachable = engine_reachable
            self.engine_full = engine_full

    def snapshot(self) -> tuple[dict[str, int], int, bool, bool]:
        with self._lock:
            return dict(self._restarts), self._calls_lost, self.ready, self.draining

    def engine(self) -> tuple[bool | None, bool]:
        """The engine probe's last answer: reachable (None before the first probe), full."""
        with self._lock:
            return self.engine_reachable, self.engine_full


SUPERVISOR = SupervisorMetrics()


# --- multiprocess plumbing --------------------------------------------------------------------------


def setup_multiprocess_dir(path: str | Path) -> Path:
    """Own, empty and export the directory for the workers' metric files.

    Call in the supervisor before spawning workers. The supervisor holds an exclusive ``flock`` on
    ``<dir>/.owner`` for as long as it lives (the kernel drops it when the process dies), so a second
    bridge pointed at the same directory, say through an inherited ``PROMETHEUS_MULTIPROC_DIR``, gets
    :class:`MetricsDirInUse` instead of deleting the first one's live counters. Files left by an earlier
    run are removed, since counters must restart at zero with a new process tree.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    _own(directory)
    for entry in directory.iterdir():
        if entry.is_file() and entry.suffix == ".db":
            entry.unlink(missing_ok=True)
        elif entry.is_dir():
            shutil.rmtree(entry)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


_OWNED: dict[Path, int] = {}  # directory -> the open descriptor holding its lock, for the process's life


def _own(directory: Path) -> None:
    key = directory.resolve()
    if key in _OWNED:
        return
    fd = os.open(key / ".owner", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise MetricsDirInUse(
            f"metrics directory {key} belongs to another running bridge (pid {holder}); "
            f"give each bridge its own {MULTIPROC_ENV} or RuntimeDirectory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _OWNED[key] = fd


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def mark_process_dead(pid: int, path: str | Path | None = None) -> None:
    """Forget a dead worker's ``live*`` gauges (calls active, capacity, spool depth).

    Its counters and histograms stay, so totals never go backwards.
    """
    directory = Path(path) if path is not None else multiprocess_dir()
    if directory is None:
        return
    _mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def retire_process(pid: int, path: str | Path | None = None) -> int:
    """For a worker that exited: return the calls it still had up, then :func:`mark_process_dead` it.

    Pass the result to ``SUPERVISOR.worker_restarted(reason, calls_lost=...)`` when the worker died
    unexpectedly, so those calls count as ``worker_lost``.
    """
    directory = Path(path) if path is not None else multiprocess_dir()
    if directory is None:
        return 0
    files = [str(p) for p in directory.glob(f"gauge_livesum_{pid}.db")]
    calls = 0.0
    for metric in MultiProcessCollector.merge(files, accumulate=False):  # type: ignore[no-untyped-call]
        if metric.name == f"{PREFIX}_calls_active":
            calls = sum(s.value for s in metric.samples)
    mark_process_dead(pid, directory)
    return max(0, round(calls))


class _PoolCollector:
    """Workers' multiprocess files plus the supervisor's in-memory figures, as one set of families."""

    def __init__(self, path: Path, supervisor: SupervisorMetrics) -> None:
        self._files = MultiProcessCollector(None, str(path))  # type: ignore[no-untyped-call]
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        restarts, calls_lost, ready, draining = self._supervisor.snapshot()
        for metric in self._files.collect():  # type: ignore[no-untyped-call]
            if metric.name == f"{PREFIX}_calls" and calls_lost:
                metric.samples = _add_to_sample(
                    metric.samples,
                    f"{PREFIX}_calls_total",
                    {"result": CallResult.WORKER_LOST.value, "route": NO_ROUTE},
                    calls_lost,
                )
            yield metric
        # Families of the supervisor alone.
        restart_family = Metric(
            f"{PREFIX}_worker_restarts", "Worker processes restarted after dying, by reason.", "counter"
        )
        for reason, count in restarts.items():
            restart_family.add_sample(f"{PREFIX}_worker_restarts_total", {"reason": reason}, float(count))
        yield restart_family
        ready_family = Metric(
            f"{PREFIX}_ready", "1 when /readyz answers 200: not draining, a slot free, engine up.", "gauge"
        )
        ready_family.add_sample(f"{PREFIX}_ready", {}, 1.0 if ready else 0.0)
        yield ready_family
        draining_family = Metric(f"{PREFIX}_draining", "1 after SIGTERM, while calls finish.", "gauge")
        draining_family.add_sample(f"{PREFIX}_draining", {}, 1.0 if draining else 0.0)
        yield draining_family
        reachable, full = self._supervisor.engine()
        if reachable is not None:  # no sample before the first probe: absent, not a false 0
            up_family = Metric(
                f"{PREFIX}_engine_up", "1 when the supervisor's engine probe reached the engine.", "gauge"
            )
            up_family.add_sample(f"{PREFIX}_engine_up", {}, 1.0 if reachable else 0.0)
            yield up_family
            full_family = Metric(
                f"{PREFIX}_engine_full", "1 when the engine answered its stream check 429 (full).", "gauge"
            )
            full_family.add_sample(f"{PREFIX}_engine_full", {}, 1.0 if full else 0.0)
            yield full_family


def _add_to_sample(samples: list[Sample], name: str, labels: dict[str, str], amount: int) -> list[Sample]:
    out: list[Sample] = []
    found = False
    for sample in samples:
        if sample.name == name and sample.labels == labels:
            sample = sample._replace(value=sample.value + amount)
            found = True
        out.append(sample)
    if not found:
        out.append(Sample(name, labels, float(amount), None, None))
    return out


def registry_for_scrape(
    path: str | Path | None = None, supervisor: SupervisorMetrics | None = None
) -> CollectorRegistry:
    """A registry rendering the whole pool: every worker's files plus the supervisor's figures.

    Build one per scrape or keep one; both are cheap. `path` defaults to the exported directory.
    """
    directory = Path(path) if path is not None else multiprocess_dir()
    if directory is None:
        raise RuntimeError(f"{MULTIPROC_ENV} is not set; call setup_multiprocess_dir() first")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PoolCollector(directory, supervisor if supervisor is not None else SUPERVISOR))
    return registry


@dataclass(frozen=True)
class PoolGauges:
    """The pool's live gauges as the workers last wrote them."""

    calls_active: int
    capacity: int
    workers_up: int


def read_pool_gauges(path: str | Path | None = None) -> PoolGauges:
    """Read calls active, capacity and live workers from the multiprocess files (for readiness)."""
    directory = Path(path) if path is not None else multiprocess_dir()
    if directory is None:
        return PoolGauges(0, 0, 0)
    wanted = {f"{PREFIX}_calls_active": 0.0, f"{PREFIX}_capacity_calls": 0.0, f"{PREFIX}_workers_up": 0.0}
    files = [str(p) for p in directory.glob("gauge_live*.db")]
    for metric in MultiProcessCollector.merge(files, accumulate=False):  # type: ignore[no-untyped-call]
        if metric.name in wanted:
            wanted[metric.name] = sum(s.value for s in metric.samples)
    return PoolGauges(
        calls_active=round(wanted[f"{PREFIX}_calls_active"]),
        capacity=round(wanted[f"{PREFIX}_capacity_calls"]),
        workers_up=round(wanted[f"{PREFIX}_workers_up"]),
    )


def read_histograms(
    names: Iterable[str], path: str | Path | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Cumulative buckets `(le, count)` of the pool's histograms `vblaze_bridge_<name>_seconds`.

    Summed over every worker's files, ascending by bound with +Inf last (`bridge/control/latency.py`).
    """
    directory = Path(path) if path is not None else multiprocess_dir()
    wanted = {f"{PREFIX}_{name}_seconds": name for name in names}
    out: dict[str, dict[float, float]] = {name: {} for name in wanted.values()}
    if directory is None:
        return {name: [] for name in out}
    for metric in MultiProcessCollector(None, str(directory)).collect():  # type: ignore[no-untyped-call]
        name = wanted.get(metric.name)
        if name is None:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                out[name][bound] = out[name].get(bound, 0.0) + sample.value
    return {name: sorted(buckets.items()) for name, buckets in out.items()}

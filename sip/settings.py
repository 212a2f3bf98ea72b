"""What the layer above gives a SIP endpoint: its settings, an observer for its figures and the rule
that says whether the worker would take a call (no I/O, no pjsua2).

sip/ imports nothing of bridge/: `bridge.sip_adapter` builds `SipSettings` from the bridge's config and
passes `bridge.metrics.CallMetrics` as the `CallObserver` and the pool's readiness rule as the
`ReadinessRule`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sip.admission import Policy
from sip.limits import PJSUA_MAX_CALLS
from sip.pjlog import SipDropReason
from sip.reclaim import ReclaimCause
from sip.routing import DEFAULT_ROUTE, Route, RouteTable
from sip.siprec import SiprecRules


@dataclass(frozen=True)
class SipSettings:
    """One worker's SIP settings (the config keys of the same names, see `config.yaml`)."""

    host: str  # sip.host
    transports: tuple[str, ...]  # sip.transports: "udp", "tcp"
    codecs: tuple[str, ...]  # sip.codecs, in order of preference
    calls_per_worker: int  # sip.calls_per_worker
    calls_per_source: int  # sip.calls_per_source; 0 = no cap
    retry_after_seconds: int  # sip.retry_after_seconds; 0 = no Retry-After
    allow_from: tuple[str, ...]  # sip.allow_from; empty = everyone
    invite_rate_per_source: float  # sip.invite_rate_per_source; 0 = no limit
    invite_burst_per_source: int  # sip.invite_burst_per_source
    headers: tuple[str, ...]  # sip.headers copied into call.started
    ack_timeout_seconds: float  # sip.ack_timeout_seconds
    first_rtp_timeout_seconds: float  # sip.first_rtp_timeout_seconds
    rtp_timeout_seconds: float  # sip.rtp_timeout_seconds
    transaction_timeout_seconds: float  # sip.transaction_timeout_seconds
    sample_rate: int  # audio.sample_rate: pjmedia's clock and the FramePorts' rate
    port_frame_ms: int  # audio.port_frame_ms
    siprec_rules: SiprecRules  # the siprec: section's role-mapping rules
    accept_require_siprec: bool  # siprec.accept_require
    refuse_without_engine: bool  # engine.on_unreachable = reject
    routes: RouteTable | None = None  # routes: (None: none, every call on the settings above)

    def route_table(self) -> RouteTable:
        """The routes the gate chooses from (`sip.routing`); without `routes:`, one catch-all of the
        top-level settings."""
        if self.routes is not None:
            return self.routes
        return RouteTable(fallback=Route(DEFAULT_ROUTE, headers=self.headers, siprec_rules=self.siprec_rules))

    @property
    def capacity(self) -> int:
        """Calls this worker takes: sip.calls_per_worker, never more than pjsua can hold."""
        return min(self.calls_per_worker, PJSUA_MAX_CALLS)

    def policy(self) -> Policy:
        """The admission policy of `sip.admission.decide`."""
        return Policy(
            capacity=self.capacity,
            codecs=self.codecs,
            retry_after=self.retry_after_seconds,
            allow_from=self.allow_from,
        )


class CallObserver(Protocol):
    """The SIP thread's figures (`bridge.metrics.CallMetrics` is one). Methods never raise nor block;
    `sip_dropped` is called from pjsua's log threads, `frames_dropped` from pjmedia's clock thread."""

    def sip_dropped(self, reason: SipDropReason) -> None: ...

    def rtp_in(self, packets: int, lost: int, discarded: int) -> None: ...

    def rtp_timeout(self) -> None: ...

    def call_reclaimed(self, cause: ReclaimCause) -> None: ...

    def frames_dropped(self, frames: int, cause: str) -> None: ...


class NullObserver:
    """A `CallObserver` that counts nothing (benchmarks of the bare SIP stack)."""

    def sip_dropped(self, reason: SipDropReason) -> None:
        pass

    def rtp_in(self, packets: int, lost: int, discarded: int) -> None:
        pass

    def rtp_timeout(self) -> None:
        pass

    def call_reclaimed(self, cause: ReclaimCause) -> None:
        pass

    def frames_dropped(self, frames: int, cause: str) -> None:
        pass


@dataclass(frozen=True)
class WorkerLoad:
    """What one worker knows when it is asked whether it would take a call (SIP OPTIONS)."""

    draining: bool
    calls_held: int
    capacity: int
    engine_reachable: bool | None  # the supervisor's latest engine probe; None: never probed
    engine_full: bool


@dataclass(frozen=True)
class ReadyVerdict:
    """The answer: `ready`, or why not in the words `/readyz` uses."""

    ready: bool
    reason: str


ReadinessRule = Callable[[WorkerLoad], ReadyVerdict]

"""Whether to take an incoming INVITE, and how to refuse it (no I/O).

Checked in this order, so the cheapest and most specific answer wins:
1. source outside the allow-list → 403
2. the source sends INVITEs faster than its rate (a flood) → 503 with Retry-After
3. the worker is draining → 503 with Retry-After
4. the worker is full, or a call's sockets would not fit beside those of its calls and of the calls
   that just ended (`sip.sockets`) → 503 with Retry-After
5. the engine is unreachable and `engine.on_unreachable` is reject → 503 with Retry-After
6. no SDP offer → 488; an SDP offer that `parse_offer` refuses (`SdpError`) → 400; no audio codec
   in common → 488

`decide` raises nothing, whatever the request's bytes: every refusal is a `Reject` with a
`CallResult`, so its caller answers and counts it. `CallResult` is the one list of how a call ends or
is refused: `bridge.metrics.CALL_RESULTS` (the `result` label) is derived from it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from sip.message import SipRequest
from sip.sdp import SdpError, parse_offer


class CallResult(StrEnum):
    """How a call ended or was refused: the `result` label of `vblaze_bridge_calls_total`."""

    COMPLETED = "completed"  # answered and ended normally (BYE from either side, RTP timeout, drain hang-up)
    REJECTED_FULL = "rejected_full"  # 503: every slot of the worker is taken
    REJECTED_DRAINING = "rejected_draining"  # 503: the bridge is draining after SIGTERM
    REJECTED_CODEC = "rejected_codec"  # 488: no codec in common
    REJECTED_ACL = "rejected_acl"  # 403 or dropped: source not in sip.allow_from
    REJECTED_ENGINE = "rejected_engine"  # 503: engine unreachable and engine.on_unreachable = reject
    FAILED = "failed"  # answered, then ended by an error of ours
    REJECTED_RATE = "rejected_rate"  # 503: the source sent INVITEs faster than sip.invite_rate_per_source
    REJECTED_INVALID = "rejected_invalid"  # 400: an INVITE the bridge could not parse
    REJECTED_SOURCE = "rejected_source"  # 503: the source holds sip.calls_per_source of the worker's calls
    # 500: screening the INVITE failed inside the bridge (a defect, logged with traceback)
    REJECTED_ERROR = "rejected_error"
    WORKER_LOST = "worker_lost"  # the worker process died with the call up (counted by the supervisor)
    REJECTED_ROUTE = "rejected_route"  # the status of the call's route (`reject:`, sip.routing)
    OTHER = "other"  # what `bridge.metrics.bounded` maps anything else to; never produced


@dataclass(frozen=True)
class Accept:
    encodings: tuple[str, ...]  # codecs in common, in the caller's order


@dataclass(frozen=True)
class Reject:
    status: int
    reason: str
    result: CallResult  # one of the REJECTED_* members
    headers: tuple[tuple[str, str], ...] = field(default=())


Decision = Accept | Reject


@dataclass(frozen=True)
class Policy:
    capacity: int
    codecs: tuple[str, ...]
    retry_after: int
    allow_from: tuple[str, ...] = ()


def source_allowed(source_ip: str, allow_from: Sequence[str]) -> bool:
    if not allow_from:
        return True
    try:
        addr = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(net, strict=False) for net in allow_from)


class RateLimiter:
    """A token bucket per source address: `rate` INVITEs a second, `burst` at once; 0 = no limit."""

    def __init__(self, rate: float, burst: int, max_sources: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self._max_sources = max_sources
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)

    def allow(self, source: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        tokens, at = self._buckets.get(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= self._max_sources and source not in self._buckets:
            self._forget_full(now)
        self._buckets[source] = (tokens, now)
        return allowed

    def _forget_full(self, now: float) -> None:
        """Drop the sources whose buckets have refilled: they carry no information."""
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[key]


def decide(
    request: SipRequest,
    source_ip: str,
    active_calls: int,
    draining: bool,
    policy: Policy,
    within_rate: bool = True,
    engine_refuses: bool = False,
    sockets_fit: bool = True,
) -> Decision:
    """Decide on one INVITE given the worker's state (`within_rate`: the source's RateLimiter said yes;
    `engine_refuses`: the engine is unreachable and the config says to refuse calls then;
    `sockets_fit`: `sip.sockets.fits` said yes)."""
    if not source_allowed(source_ip, policy.allow_from):
        return Reject(403, "Forbidden", CallResult.REJECTED_ACL)
    retry = (("Retry-After", str(policy.retry_after)),) if policy.retry_after else ()
    if not within_rate:
        return Reject(503, "Too Many Calls From This Source", CallResult.REJECTED_RATE, retry)
    if draining:
        return Reject(503, "Draining", CallResult.REJECTED_DRAINING, retry)
    if active_calls >= policy.capacity:
        return Reject(503, "Busy, Try Another Worker", CallResult.REJECTED_FULL, retry)
    if not sockets_fit:
        return Reject(503, "Busy, Sockets Of Ended Calls Not Free Yet", CallResult.REJECTED_FULL, retry)
    if engine_refuses:
        return Reject(503, "Transcription Engine Unavailable", CallResult.REJECTED_ENGINE, retry)
    if "application/sdp" not in request.content_type() and "multipart" not in request.content_type():
        return Reject(488, "SDP Offer Required", CallResult.REJECTED_CODEC)
    try:
        offer = parse_offer(request.body)
    except SdpError:
        return Reject(400, "Malformed SDP Offer", CallResult.REJECTED_INVALID)
    offered = offer.encodings()
    common = tuple(codec for codec in policy.codecs if codec in offered)
    if not offer.audio or not common:
        return Reject(488, "No Common Codec", CallResult.REJECTED_CODEC)
    return Accept(common)

"""Whether to take an incoming INVITE, and how to refuse it (no I/O).

Checked in this order, so the cheapest and most specific answer wins:
1. source outside the allow-list → 403
2. the source sends INVITEs faster than its rate (a flood) → 503 with Retry-After
3. the worker is draining → 503 with Retry-After
4. the worker is full → 503 with Retry-After
5. the engine is unreachable and `engine.on_unreachable` is reject → 503 with Retry-After
6. no SDP offer → 488; an SDP offer that `parse_offer` refuses (`SdpError`) → 400; no audio codec
   in common → 488

`decide` raises nothing, whatever the request's bytes: every refusal is a `Reject` with a
`result` from the fixed list in `bridge.metrics`, so its caller answers and counts it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from sip.message import SipRequest
from sip.sdp import SdpError, parse_offer


@dataclass(frozen=True)
class Accept:
    encodings: tuple[str, ...]  # codecs in common, in the caller's order
    audio_count: int


@dataclass(frozen=True)
class Reject:
    status: int
    reason: str
    result: str  # metrics label: rejected_acl, _rate, _draining, _full, _engine, _codec, _invalid
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
) -> Decision:
    """Decide on one INVITE given the worker's state (`within_rate`: the source's RateLimiter said yes;
    `engine_refuses`: the engine is unreachable and the config says to refuse calls then)."""
    if not source_allowed(source_ip, policy.allow_from):
        return Reject(403, "Forbidden", "rejected_acl")
    retry = (("Retry-After", str(policy.retry_after)),) if policy.retry_after else ()
    if not within_rate:
        return Reject(503, "Too Many Calls From This Source", "rejected_rate", retry)
    if draining:
        return Reject(503, "Draining", "rejected_draining", retry)
    if active_calls >= policy.capacity:
        return Reject(503, "Busy, Try Another Worker", "rejected_full", retry)
    if engine_refuses:
        return Reject(503, "Transcription Engine Unavailable", "rejected_engine", retry)
    if "application/sdp" not in request.content_type() and "multipart" not in request.content_type():
        return Reject(488, "SDP Offer Required", "rejected_codec")
    try:
        offer = parse_offer(request.body)
    except SdpError:
        return Reject(400, "Malformed SDP Offer", "rejected_invalid")
    offered = offer.encodings()
    common = tuple(codec for codec in policy.codecs if codec in offered)
    if not offer.audio or not common:
        return Reject(488, "No Common Codec", "rejected_codec")
    return Accept(common, len(offer.audio))

"""Every new INVITE is screened here, from the bytes that arrived, before pjsua makes a call of it (no I/O).

This is the bridge's one admission point (the pjsip module of `sip.gate` calls `screen` for each
out-of-dialog INVITE). In order, so the cheapest and most specific answer wins:
1. bytes that are not a SIP request, a header that may appear once appearing twice (RFC 4475 3.1.2.x:
   pjsip would take the last Call-ID where the bridge reads the first), or a Content-Length promising
   more body than arrived (RFC 3261 18.3: such a datagram must not become a call) → 400
2. source outside `sip.allow_from` → 403
3. a SIPREC INVITE (RFC 7866) whose body cannot be read, or that says `Require: siprec` and carries
   rs-metadata that cannot be read (the SRC insists on a recording session the SRS cannot follow) → 400;
   one whose multipart body hides the SDP from pjsip (no close delimiter) → 488. Without
   `Require: siprec`, unreadable metadata is tolerated: the call goes on, the problem is in call.started
3b. the route the INVITE takes (`sip.routing`: on its To/From/R-URI users, source, headers and SIPREC
   participants, so after rule 3) rejects → the route's status (`reject:`); a SIPREC body's streams are
   mapped with the route's rules
4. the source holds `sip.calls_per_source` of this worker's calls already → 503 with Retry-After
5. `sip.admission.decide`: flood, draining, full, engine down → 503; no offer, no codec in common → 488

Untrusted bytes only ever raise ValueError out of the parsers (their documented error); `screen` maps it
to a 400 and says why in `Reject.reason`'s log detail. Anything else that escapes is a defect: the
caller logs it with its traceback and refuses the INVITE with 500 (`SCREEN_FAILED`).

What follows an admission is decided here too, and `sip.endpoint` only carries it out: how to answer
(`Admitted.audio_count`), what `call.started` carries (`Admitted.session`, `Admitted.copied_headers`),
and the 500 hang-ups of a call pjsua made of an INVITE the gate never screened, or could not answer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sip.admission import Accept, CallResult, Policy, Reject, decide, source_allowed
from sip.events import SiprecSession
from sip.limits import MAX_SIPREC_STREAMS  # further audio m-lines are answered with port 0
from sip.message import SipRequest, parse_request
from sip.routing import DEFAULT_ROUTE, NO_ROUTE, Route, RouteTable, facts_of
from sip.sdp import Offer, parse_offer
from sip.siprec import (
    SiprecBody,
    SiprecRules,
    StreamRole,
    map_streams,
    parse_body,
    requires_siprec,
    siprec_evidence,
)

NO_OFFER = Offer(())
NO_ROUTES = Route(DEFAULT_ROUTE)  # an admission's route when the worker has no routes
# Refusals and hang-ups decided after the rules above, by the SIP thread that carries them out:
SCREEN_FAILED = Reject(500, "Server Internal Error", CallResult.REJECTED_ERROR)  # screening raised: a defect
UNSCREENED_STATUS = 500  # pjsua made a call of an INVITE the gate never screened (a defect): hung up
ANSWER_FAILED_STATUS = 500  # pjsua could not answer an admitted INVITE: hung up, the call ends "failed"
# Headers RFC 3261 allows once in a request (section 20; compact forms are expanded by parse_request).
SINGLE_HEADERS = ("call-id", "from", "to", "cseq", "max-forwards", "content-length", "content-type")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class WorkerState:
    """What the worker knows when an INVITE arrives."""

    active_calls: int
    draining: bool
    within_rate: bool  # the source's RateLimiter said yes
    engine_refuses: bool  # engine unreachable and engine.on_unreachable = reject
    source_calls: int = 0  # calls this source holds on this worker now
    sockets_fit: bool = True  # a call's sockets fit in pjlib's ioqueue now (`sip.sockets.fits`)


@dataclass(frozen=True)
class Admitted:
    """An INVITE to answer 200: the parsed request, the codecs in common and, for SIPREC, its streams.

    It also says how to answer: `audio_count` audio streams (None: pjsua's defaults, one stream) and
    what `call.started` carries (`session`, `copied_headers`)."""

    request: SipRequest
    accept: Accept
    evidence: tuple[str, ...] = ()  # why it is a SIPREC session; empty for a plain call
    body: SiprecBody | None = None
    offer: Offer = NO_OFFER  # the audio m-lines answered, for a SIPREC call
    roles: tuple[StreamRole, ...] = ()
    route: Route = NO_ROUTES  # the route the call took (its headers and SIPREC rules)

    @property
    def audio_count(self) -> int | None:
        """Audio streams to answer: one per role of a SIPREC call; None for a plain call."""
        return None if self.body is None else len(self.roles)

    @property
    def session(self) -> SiprecSession | None:
        """What `call.started` says of a SIPREC session; None for a plain call."""
        if self.body is None:
            return None
        metadata = self.body.metadata
        return SiprecSession(
            evidence=self.evidence,
            roles=self.roles,
            session_ids=metadata.session_ids if metadata else (),
            group_id=metadata.group_id if metadata else None,
            problems=self.body.problems,
            framing=self.body.framing,
        )

    def copied_headers(self, wanted: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """The request's headers named in `wanted` (`sip.headers`), for `call.started`."""
        names = {name.lower() for name in wanted}
        return tuple((name, value) for name, value in self.request.headers if name in names)


@dataclass(frozen=True)
class Refused:
    """An INVITE refused, with the answer and the line to log."""

    reject: Reject
    detail: str
    route: str = NO_ROUTE  # the route chosen, if the INVITE got that far


def screen(
    raw: bytes,
    source_ip: str,
    state: WorkerState,
    policy: Policy,
    rules: SiprecRules,
    calls_per_source: int = 0,
    routes: RouteTable | None = None,
) -> Admitted | Refused:
    """Decide on one INVITE as it arrived (`raw`: the whole message; `calls_per_source`: 0 = no cap;
    `routes`: None = no routes, every call on the top-level settings with `rules`)."""
    request = _well_formed(raw)
    if isinstance(request, Refused):
        return request
    if not source_allowed(source_ip, policy.allow_from):
        return Refused(Reject(403, "Forbidden", CallResult.REJECTED_ACL), "source not in sip.allow_from")
    evidence = siprec_evidence(request)
    body = _read_body(request) if evidence else None
    if isinstance(body, Refused):
        return body
    table = routes if routes is not None else RouteTable(fallback=Route(DEFAULT_ROUTE, siprec_rules=rules))
    route = table.choose(facts_of(request, source_ip, body.metadata if body is not None else None))
    refusal = route.refusal()
    if refusal is not None:
        if refusal.status == 503 and policy.retry_after:  # as every other 503 of the gate
            refusal = dataclasses.replace(refusal, headers=(("Retry-After", str(policy.retry_after)),))
        return Refused(refusal, f"route {route.name} rejects", route.name)
    verdict = _admit(request, source_ip, state, policy, calls_per_source, evidence, body, route)
    if isinstance(verdict, Refused):
        return dataclasses.replace(verdict, route=route.name)
    return verdict


def _admit(
    request: SipRequest,
    source_ip: str,
    state: WorkerState,
    policy: Policy,
    calls_per_source: int,
    evidence: tuple[str, ...],
    body: SiprecBody | None,
    route: Route,
) -> Admitted | Refused:
    """Rules 3 (the streams' roles), 4 and 5, for an INVITE on `route`."""
    recording = _siprec(request, body, route.siprec_rules) if body is not None else None
    if isinstance(recording, Refused):
        return recording
    if calls_per_source and state.source_calls >= calls_per_source:
        retry = (("Retry-After", str(policy.retry_after)),) if policy.retry_after else ()
        return Refused(
            Reject(503, "Too Many Calls From This Source", CallResult.REJECTED_SOURCE, retry),
            f"the source holds {state.source_calls} calls (sip.calls_per_source)",
        )
    # admission reads the SDP part only
    offered = request if recording is None else dataclasses.replace(request, body=recording.body.sdp)
    try:
        decision = decide(
            offered,
            source_ip,
            state.active_calls,
            state.draining,
            policy,
            state.within_rate,
            engine_refuses=state.engine_refuses,
            sockets_fit=state.sockets_fit,
        )
    except ValueError as exc:
        return _invalid(f"SDP offer could not be read: {exc}")
    if isinstance(decision, Reject):
        return Refused(decision, decision.reason)
    if recording is None:
        return Admitted(request, decision, route=route)
    return Admitted(request, decision, evidence, recording.body, recording.offer, recording.roles, route)


@dataclass(frozen=True)
class _Recording:
    """What a SIPREC INVITE's body says: its parts, the audio m-lines answered and their roles."""

    body: SiprecBody
    offer: Offer
    roles: tuple[StreamRole, ...]


def _well_formed(raw: bytes) -> SipRequest | Refused:
    """Rule 1: the request, or a 400 for bytes that must not become a call."""
    try:
        request = parse_request(raw.decode("utf-8", errors="replace"))
        declared = _content_length(request)
    except ValueError as exc:
        return _invalid(f"unparseable INVITE: {exc}")
    repeated = [name for name in SINGLE_HEADERS if sum(1 for key, _ in request.headers if key == name) > 1]
    if repeated:
        return _invalid(f"more than one {', '.join(repeated)} header")
    body_bytes = len(raw.split(b"\r\n\r\n", 1)[1]) if b"\r\n\r\n" in raw else 0
    if declared is not None and declared > body_bytes:
        return _invalid(f"Content-Length {declared} but {body_bytes} bytes of body arrived")
    return request


def _read_body(request: SipRequest) -> SiprecBody | Refused:
    """Rule 3, first half: a SIPREC INVITE's parts (its metadata may choose the route)."""
    try:
        return parse_body(request)
    except ValueError as exc:
        return _invalid(f"SIPREC body could not be read: {exc}")


def _siprec(request: SipRequest, body: SiprecBody, rules: SiprecRules) -> _Recording | Refused:
    """Rule 3: a SIPREC INVITE's streams mapped by the route's `rules`, or why it is refused."""
    try:
        offer = Offer(parse_offer(body.sdp).audio[:MAX_SIPREC_STREAMS])
        roles = tuple(map_streams(offer, body.metadata, rules))
    except ValueError as exc:
        return _invalid(f"SIPREC body could not be read: {exc}")
    if body.offer_hidden_from_pjsip:
        return Refused(
            Reject(488, "Multipart Body Without Close Delimiter", CallResult.REJECTED_CODEC),
            "multipart body without close delimiter hides the SDP from pjsip",
        )
    if body.metadata is None and body.metadata_xml is not None and requires_siprec(request):
        return _invalid(f"Require: siprec with unreadable rs-metadata: {'; '.join(body.problems)}")
    return _Recording(body, offer, roles)


def _content_length(request: SipRequest) -> int | None:
    value = request.header("content-length")
    if value is None:
        return None
    value = value.strip()
    if not _CONTENT_LENGTH.fullmatch(value):
        raise ValueError(f"Content-Length is not a number: {value[:20]!r}")
    return int(value)


def _invalid(detail: str) -> Refused:
    return Refused(Reject(400, "Bad Request", CallResult.REJECTED_INVALID), detail)

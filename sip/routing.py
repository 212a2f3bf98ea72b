"""Per-line routes: which route a new INVITE takes, from the facts of the request (no I/O, no pjsua2).

The config's `routes:` list becomes a `RouteTable` (built by `bridge.sip_adapter`); `sip.screening`
asks it for each INVITE that passed rules 1-3 (well formed, source allowed, SIPREC body readable):

- the routes are tried in their order; the first whose every given condition holds wins. A route
  named `default`, or one with no condition at all, catches everything (config validation keeps it
  last); when nothing matched, the table's `fallback` (the top-level settings, named `default`) does.
- conditions, all optional: `to`, `from_`, `ruri` (regexes, `re.fullmatch`, on the user part of the To,
  From and Request-URI: "1001" does not match 10011), `source` (CIDR networks; any of them),
  `header` (a header name and a regex `re.search`ed in each of its values; any value), `participant`
  (a regex `re.fullmatch`ed on each SIPREC participant AOR of the rs-metadata; any of them).
- a route may `reject` with one of `REJECT_STATUSES`: the gate answers that status (statefully, as
  its other refusals); otherwise it names what the call gets: the SIP headers copied into
  `call.started` and the SIPREC role-mapping rules here; the bridge picks the rest (engine, sinks) by
  the route's name.

`Route.matches` and `RouteTable.choose` never raise on any facts (hypothesis-tested); a bad regex or
CIDR raises ValueError naming the condition when the `Match` is built.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from sip.admission import CallResult, Reject
from sip.message import SipRequest
from sip.siprec import Metadata, SiprecRules

DEFAULT_ROUTE = "default"  # the catch-all route's name, and the top-level settings' when there is none
NO_ROUTE = "none"  # the route label of an INVITE refused before any route was chosen
# The statuses a route may reject with, and their reason phrases (RFC 3261 section 21).
REJECT_STATUSES: dict[int, str] = {
    403: "Forbidden",
    404: "Not Found",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    503: "Service Unavailable",
    603: "Decline",
}
_URI = re.compile(r"<([^>]*)>")


@dataclass(frozen=True)
class RequestFacts:
    """What a route can match on, taken from one INVITE (`facts_of`)."""

    to_user: str = ""
    from_user: str = ""
    ruri_user: str = ""
    source_ip: str = ""
    headers: tuple[tuple[str, str], ...] = ()  # lower-case names, as `SipRequest.headers`
    participant_aors: tuple[str, ...] = ()


def user_part(value: str) -> str:
    """The user of the sip:/sips:/tel: URI in a header value or Request-URI ("" if none)."""
    found = _URI.search(value)
    uri = (found.group(1) if found else value).strip()
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips", "tel"):
        return ""
    if scheme.lower() == "tel":
        return rest.split(";", 1)[0]
    user, at, _ = rest.partition("@")
    return user.split(";", 1)[0] if at else ""


def facts_of(request: SipRequest, source_ip: str, metadata: Metadata | None = None) -> RequestFacts:
    """The facts of an INVITE; `metadata`: its SIPREC rs-metadata, if any."""
    aors = tuple(p.aor for p in metadata.participants if p.aor) if metadata is not None else ()
    return RequestFacts(
        to_user=user_part(request.header("to") or ""),
        from_user=user_part(request.header("from") or ""),
        ruri_user=user_part(request.uri),
        source_ip=source_ip,
        headers=request.headers,
        participant_aors=aors,
    )


def _compile(key: str, pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{key}: {pattern!r} is not a regex: {exc}") from exc


@dataclass(frozen=True)
class Match:
    """A route's conditions (None or empty: not checked). All given conditions must hold."""

    to: str | None = None
    from_: str | None = None
    ruri: str | None = None
    source: tuple[str, ...] = ()
    header: tuple[str, str] | None = None  # (name, regex)
    participant: str | None = None
    _compiled: tuple[re.Pattern[str] | None, ...] = field(init=False, repr=False, compare=False)
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        compiled = (
            _compile("to", self.to),
            _compile("from", self.from_),
            _compile("ruri", self.ruri),
            _compile("header", self.header[1] if self.header else None),
            _compile("participant", self.participant),
        )
        networks = []
        for cidr in self.source:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError as exc:
                raise ValueError(f"source: {cidr!r} is not a CIDR network") from exc
        object.__setattr__(self, "_compiled", compiled)
        object.__setattr__(self, "_networks", tuple(networks))

    @property
    def catch_all(self) -> bool:
        """No condition: every request matches."""
        return not self.source and all(pattern is None for pattern in self._compiled)

    def matches(self, facts: RequestFacts) -> bool:
        to, from_, ruri, header, participant = self._compiled
        users = ((to, facts.to_user), (from_, facts.from_user), (ruri, facts.ruri_user))
        if any(pattern is not None and not pattern.fullmatch(value) for pattern, value in users):
            return False
        if self._networks and not self._source_in(facts.source_ip):
            return False
        if header is not None and self.header is not None:
            name = self.header[0].lower()
            if not any(key == name and header.search(value) for key, value in facts.headers):
                return False
        if participant is not None and not any(participant.fullmatch(a) for a in facts.participant_aors):
            return False
        return True

    def _source_in(self, source_ip: str) -> bool:
        try:
            address = ipaddress.ip_address(source_ip.strip("[]"))
        except ValueError:
            return False
        return any(address in network for network in self._networks)


@dataclass(frozen=True)
class Route:
    """One route: its conditions and what a call on it gets (or the status it is refused with)."""

    name: str
    match: Match = field(default_factory=Match)
    reject: int | None = None  # one of REJECT_STATUSES
    headers: tuple[str, ...] = ()  # the route's sip.headers, copied into call.started
    siprec_rules: SiprecRules = field(default_factory=SiprecRules)

    def __post_init__(self) -> None:
        if self.reject is not None and self.reject not in REJECT_STATUSES:
            raise ValueError(f"reject: {self.reject} is not one of {', '.join(map(str, REJECT_STATUSES))}")

    @property
    def catch_all(self) -> bool:
        return self.name == DEFAULT_ROUTE or self.match.catch_all

    def refusal(self) -> Reject | None:
        """The answer to an INVITE on this route, if the route rejects."""
        if self.reject is None:
            return None
        return Reject(self.reject, REJECT_STATUSES[self.reject], CallResult.REJECTED_ROUTE)


@dataclass(frozen=True)
class RouteTable:
    """The routes in order, and what takes the calls none of them matched."""

    routes: tuple[Route, ...] = ()
    fallback: Route = field(default_factory=lambda: Route(DEFAULT_ROUTE))

    @property
    def names(self) -> tuple[str, ...]:
        """Every route name a call can get (the `route` label's values, `NO_ROUTE` aside)."""
        names = [route.name for route in self.routes]
        return tuple(names if names and self.routes[-1].catch_all else [*names, self.fallback.name])

    def choose(self, facts: RequestFacts) -> Route:
        """The first route that matches, else the fallback. Never raises."""
        for route in self.routes:
            if route.catch_all or route.match.matches(facts):
                return route
        return self.fallback

"""sip.routing, the per-line route matcher, and the gate's screening with routes: each condition, first
match wins, the catch-alls, a route's reject status, its headers and SIPREC rules; attacked with random
facts and mutated INVITEs (only a route, or a verdict, ever comes back)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.metrics import CALL_RESULTS, INVITE_CODES
from sip.admission import CallResult, Policy
from sip.message import parse_request
from sip.routing import (
    DEFAULT_ROUTE,
    NO_ROUTE,
    REJECT_STATUSES,
    Match,
    RequestFacts,
    Route,
    RouteTable,
    facts_of,
    user_part,
)
from sip.screening import Admitted, Refused, WorkerState, screen
from sip.siprec import SiprecRules, parse_body
from tests.fixtures.fuzz import FUZZ, mutated
from tests.fixtures.siprec_caller import AGENT_AOR, CALLER_AOR, metadata_xml, multipart_body, offer_sdp

POLICY = Policy(capacity=4, codecs=("PCMU", "PCMA"), retry_after=5, allow_from=())
RULES = SiprecRules()
IDLE = WorkerState(active_calls=0, draining=False, within_rate=True, engine_refuses=False)
SDP = "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def invite(
    to: str = "1001", caller: str = "alice", ruri: str | None = None, extra: str = "", body: str = SDP
) -> bytes:
    ctype = "Content-Type: application/sdp\r\n" if "multipart" not in extra else ""
    return (
        f"INVITE sip:{ruri or to}@127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n"
        f'From: "Alice" <sip:{caller}@127.0.0.1>;tag=1\r\nTo: <sip:{to}@127.0.0.1>\r\nCall-ID: c1@h\r\n'
        f"CSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5062>\r\n{extra}{ctype}"
        f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
    ).encode()


def siprec_invite(caller_aor: str = CALLER_AOR) -> bytes:
    ctype, body = multipart_body(
        offer_sdp([4000, 4002], ["1", "2"]), metadata_xml("rfc", caller=caller_aor), "rfc"
    )
    return invite("srs", extra=f"Require: siprec\r\nContent-Type: {ctype}\r\n", body=body)


SALES = Route("sales", Match(to="1001"), headers=("x-queue",))
SUPPORT = Route("support", Match(to="2002|2003", header=("X-Queue", "^support")))
LOCAL = Route("local", Match(source=("10.0.0.0/8", "::1/128")))
VIP = Route("vip", Match(from_=r"\+1555.*", ruri="vip"))
RECORDER = Route("recorder", Match(participant=r"sip:\+1555.*"), siprec_rules=SiprecRules(order=("mline",)))
TABLE = RouteTable((SALES, SUPPORT, LOCAL, VIP, RECORDER, Route("unknown", reject=404)))


def choose(raw: bytes, source: str = "127.0.0.1", table: RouteTable = TABLE) -> str:
    request = parse_request(raw.decode())
    return table.choose(facts_of(request, source, parse_body(request).metadata)).name


def test_user_parts() -> None:
    assert user_part('"Alice" <sip:1001@host:5060;transport=udp>;tag=x') == "1001"
    assert user_part("sip:1001;phone-context=x@host") == "1001"
    assert user_part("<tel:+15551234;ext=2>") == "+15551234"
    assert user_part("sips:bob@example.com") == "bob"
    assert user_part("sip:host.only") == ""
    assert user_part("<mailto:x@y>") == ""
    assert user_part("") == ""


def test_each_condition_and_first_match_wins() -> None:
    assert choose(invite("1001")) == "sales"
    assert choose(invite("10011")) == "unknown"  # fullmatch: a DID is not a prefix
    assert choose(invite("2002", extra="X-Queue: support-es\r\n")) == "support"
    assert choose(invite("2003", extra="X-Queue: sales\r\n")) == "unknown"  # both conditions must hold
    assert choose(invite("2002")) == "unknown"
    assert choose(invite("3003"), source="10.1.2.3") == "local"
    assert choose(invite("3003"), source="::1") == "local"
    assert choose(invite("1001"), source="10.1.2.3") == "sales"  # an earlier route wins
    assert choose(invite("3003", caller="+15559876", ruri="vip")) == "vip"
    assert choose(invite("3003", caller="+15559876")) == "unknown"


def test_participant_aors_of_the_rs_metadata() -> None:
    assert choose(siprec_invite()) == "recorder"
    assert choose(siprec_invite("sip:+4930123@carrier.example.net")) == "unknown"
    assert choose(siprec_invite(AGENT_AOR)) == "unknown"


def test_the_catch_alls_and_the_fallback() -> None:
    fallback = RouteTable((SALES,))
    assert choose(invite("9999"), table=fallback) == DEFAULT_ROUTE
    assert fallback.names == ("sales", DEFAULT_ROUTE)
    named = RouteTable((SALES, Route(DEFAULT_ROUTE)))
    assert choose(invite("9999"), table=named) == DEFAULT_ROUTE and named.names == ("sales", DEFAULT_ROUTE)
    empty_match = RouteTable((SALES, Route("rest")))
    assert choose(invite("9999"), table=empty_match) == "rest" and empty_match.names == ("sales", "rest")
    assert RouteTable().names == (DEFAULT_ROUTE,)


def test_bad_rules_raise_value_error_naming_the_condition() -> None:
    with pytest.raises(ValueError, match="to: '\\(' is not a regex"):
        Match(to="(")
    with pytest.raises(ValueError, match="source: 'x' is not a CIDR"):
        Match(source=("x",))
    with pytest.raises(ValueError, match="reject: 400"):
        Route("r", reject=400)


def test_screening_refuses_with_the_routes_status_and_names_the_route() -> None:
    verdict = screen(invite("9999"), "127.0.0.1", IDLE, POLICY, RULES, routes=TABLE)
    assert isinstance(verdict, Refused)
    assert (verdict.reject.status, verdict.reject.reason) == (404, "Not Found")
    assert verdict.reject.result is CallResult.REJECTED_ROUTE and verdict.route == "unknown"
    # the route's status comes before the worker's state: a 404 is the answer, not a 503
    full = WorkerState(active_calls=4, draining=False, within_rate=True, engine_refuses=False)
    verdict = screen(invite("9999"), "127.0.0.1", full, POLICY, RULES, routes=TABLE)
    assert isinstance(verdict, Refused) and verdict.reject.status == 404
    # a refusal after the route was chosen names it; one before it, none
    verdict = screen(invite("1001"), "127.0.0.1", full, POLICY, RULES, routes=TABLE)
    assert isinstance(verdict, Refused) and verdict.reject.status == 503 and verdict.route == "sales"
    acl = Policy(capacity=4, codecs=("PCMU",), retry_after=5, allow_from=("10.0.0.0/8",))
    verdict = screen(invite("1001"), "127.0.0.1", IDLE, acl, RULES, routes=TABLE)
    assert isinstance(verdict, Refused) and verdict.reject.status == 403 and verdict.route == NO_ROUTE


def test_a_routes_503_carries_retry_after_as_the_gates_others() -> None:
    table = RouteTable((Route("closed", reject=503),))
    verdict = screen(invite(), "127.0.0.1", IDLE, POLICY, RULES, routes=table)
    assert isinstance(verdict, Refused) and verdict.reject.headers == (("Retry-After", "5"),)
    verdict = screen(invite(), "127.0.0.1", IDLE, POLICY, RULES, routes=RouteTable((Route("x", reject=404),)))
    assert isinstance(verdict, Refused) and verdict.reject.headers == ()


def test_an_admission_carries_its_route_headers_and_siprec_rules() -> None:
    verdict = screen(invite("1001", extra="X-Queue: q7\r\n"), "127.0.0.1", IDLE, POLICY, RULES, routes=TABLE)
    assert isinstance(verdict, Admitted) and verdict.route is SALES
    assert verdict.copied_headers(verdict.route.headers) == (("x-queue", "q7"),)
    verdict = screen(siprec_invite(), "127.0.0.1", IDLE, POLICY, RULES, routes=TABLE)
    assert isinstance(verdict, Admitted) and verdict.route is RECORDER
    assert {role.reason for role in verdict.roles} != {"metadata"}  # mapped by the route's rules (mline)
    assert all("m-line" in role.reason or "mline" in role.reason for role in verdict.roles), verdict.roles
    plain = screen(siprec_invite(), "127.0.0.1", IDLE, POLICY, RULES)
    assert isinstance(plain, Admitted) and plain.route.name == DEFAULT_ROUTE


def test_every_reject_status_is_a_counted_code() -> None:
    for status in REJECT_STATUSES:
        assert str(status) in INVITE_CODES
        refusal = Route("r", reject=status).refusal()
        assert refusal is not None and refusal.result.value in CALL_RESULTS


HEADERS = st.lists(
    st.tuples(st.sampled_from(["x-queue", "from", "to", "x-q", "X-Queue", ""]), st.text(max_size=40)),
    max_size=6,
)
FACTS = st.builds(
    RequestFacts,
    to_user=st.text(max_size=30),
    from_user=st.text(max_size=30),
    ruri_user=st.text(max_size=30),
    source_ip=st.one_of(st.ip_addresses().map(str), st.text(max_size=45)),
    headers=HEADERS.map(tuple),
    participant_aors=st.lists(st.text(max_size=40), max_size=4).map(tuple),
)


@FUZZ
@given(FACTS)
def test_random_facts_give_a_route(facts: RequestFacts) -> None:
    route = TABLE.choose(facts)
    assert route in TABLE.routes or route is TABLE.fallback
    assert route.name in TABLE.names


@FUZZ
@given(
    mutated(
        [
            invite("1001").decode(),
            invite("2002", extra="X-Queue: support\r\n").decode(),
            siprec_invite().decode(),
        ]
    )
)
def test_mutated_invites_give_a_route_or_a_verdict(text: str) -> None:
    raw = text.encode(errors="surrogatepass")
    try:
        request = parse_request(raw.decode("utf-8", errors="replace"))
    except ValueError:
        request = None
    if request is not None:
        assert TABLE.choose(facts_of(request, "127.0.0.1")).name in TABLE.names
    verdict = screen(raw, "127.0.0.1", IDLE, POLICY, RULES, routes=TABLE)
    if isinstance(verdict, Refused):
        assert verdict.reject.result in CALL_RESULTS and verdict.route in (*TABLE.names, NO_ROUTE)
    else:
        assert isinstance(verdict, Admitted) and verdict.route.name in TABLE.names

"""What the SIP thread decides for mid-call SIPREC requests (`sip.midcall.remap`): no sockets, no pjsua2."""

from __future__ import annotations

from sip.message import parse_request
from sip.midcall import remap
from sip.sdp import Offer, parse_offer
from sip.siprec import SiprecRules
from tests.fixtures.siprec_caller import AGENT_AOR, CALLER_AOR, metadata_xml, multipart_body, offer_sdp

RULES = SiprecRules(agent_patterns=(r"@pbx\.callcentre\.example$",))
ANSWERED = Offer(parse_offer(offer_sdp([4000, 4002], ["1", "2"])).audio)


def request(content_type: str, body: str, method: str = "INVITE") -> str:
    return (
        f"{method} sip:srs@127.0.0.1 SIP/2.0\r\nCall-ID: c1\r\nCSeq: 2 {method}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )


def test_new_metadata_swapping_participants_remaps() -> None:
    swapped = metadata_xml("rfc", caller=AGENT_AOR, agent=CALLER_AOR)
    ctype, body = multipart_body(offer_sdp([4000, 4002], ["1", "2"], "inactive", version=2), swapped, "rfc")
    roles = remap(parse_request(request(ctype, body)), ANSWERED, RULES)
    assert roles is not None
    assert [(r.role, r.channel, r.direction) for r in roles] == [
        ("agent", 1, "inactive"),
        ("caller", 0, "inactive"),
    ]
    assert roles[0].participant is not None and roles[0].participant.aor == AGENT_AOR


def test_metadata_only_update_keeps_the_answered_mlines() -> None:
    text = request("application/rs-metadata+xml", metadata_xml("cisco"), "UPDATE")
    roles = remap(parse_request(text), ANSWERED, RULES)
    assert roles is not None
    assert [(r.index, r.label, r.role) for r in roles] == [(0, "1", "caller"), (1, "2", "agent")]


def test_fewer_mlines_than_answered_keep_the_answered_ones() -> None:
    ctype, body = multipart_body(offer_sdp([4000], ["1"]), metadata_xml("rfc"), "rfc")
    roles = remap(parse_request(request(ctype, body)), ANSWERED, RULES)
    assert roles is not None and [r.role for r in roles] == ["caller", "agent"]


def test_requests_without_metadata_change_nothing() -> None:
    plain = request("application/sdp", offer_sdp([4000, 4002], ["1", "2"], "inactive"))
    assert remap(parse_request(plain), ANSWERED, RULES) is None
    ctype, body = multipart_body(offer_sdp([4000, 4002], ["1", "2"]), None, "rfc")
    assert remap(parse_request(request(ctype, body)), ANSWERED, RULES) is None
    broken = request("application/rs-metadata+xml", "<recording><unclosed>", "UPDATE")
    assert remap(parse_request(broken), ANSWERED, RULES) is None

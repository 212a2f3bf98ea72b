"""SIP decisions without sockets: request parsing, SDP offers, admission."""

from __future__ import annotations

import pytest

from sip.admission import Accept, Policy, RateLimiter, Reject, decide, source_allowed
from sip.message import parse_request
from sip.sdp import parse_offer

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP {pts} 101\r\n{maps}a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
)


def invite(
    pts: str = "0 8", maps: str = "", direction: str = "sendrecv", content_type: str = "application/sdp"
) -> str:
    body = SDP.format(pts=pts, maps=maps, direction=direction)
    return (
        "INVITE sip:svc@127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK1\r\n"
        'f: "Alice" <sip:alice@example.com>;tag=1\r\n'
        "To: <sip:svc@127.0.0.1>\r\n"
        "i: abc@host\r\n"
        "X-Customer: 42\r\n"
        "Subject: a folded\r\n  header\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )


POLICY = Policy(capacity=2, codecs=("PCMU", "PCMA", "G722"), retry_after=7)


def test_parse_request_headers_compact_and_folded() -> None:
    req = parse_request(invite())
    assert req.method == "INVITE"
    assert req.header("Call-ID") == "abc@host"
    assert req.header("from") == '"Alice" <sip:alice@example.com>;tag=1'
    assert req.header("x-customer") == "42"
    assert req.header("subject") == "a folded header"
    assert req.content_type() == "application/sdp"
    assert req.body.startswith("v=0")


def test_parse_request_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_request("hello world\r\n\r\n")


def test_offer_static_and_dynamic_payloads() -> None:
    offer = parse_offer(SDP.format(pts="9 0 96", maps="a=rtpmap:96 opus/48000/2\r\n", direction="sendonly"))
    assert offer.audio[0].encodings == ("G722", "PCMU", "OPUS", "TELEPHONE-EVENT")
    assert offer.audio[0].direction == "sendonly"
    assert offer.audio[0].port == 4000


def test_offer_two_streams_with_labels() -> None:
    body = (
        "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=sendonly\r\n"
        "m=audio 4000 RTP/AVP 0\r\na=label:caller\r\n"
        "m=video 4002 RTP/AVP 96\r\n"
        "m=audio 4004 RTP/AVP 8\r\na=label:agent\r\na=recvonly\r\n"
    )
    offer = parse_offer(body)
    assert [(a.label, a.direction, a.encodings) for a in offer.audio] == [
        ("caller", "sendonly", ("PCMU",)),
        ("agent", "recvonly", ("PCMA",)),
    ]


def test_admission_accepts_common_codec_in_our_order() -> None:
    decision = decide(parse_request(invite(pts="8 0")), "127.0.0.1", 0, False, POLICY)
    assert decision == Accept(("PCMU", "PCMA"))


@pytest.mark.parametrize(
    ("active", "draining", "status", "result"),
    [(2, False, 503, "rejected_full"), (0, True, 503, "rejected_draining")],
)
def test_admission_503_with_retry_after(active: int, draining: bool, status: int, result: str) -> None:
    decision = decide(parse_request(invite()), "127.0.0.1", active, draining, POLICY)
    assert isinstance(decision, Reject)
    assert (decision.status, decision.result) == (status, result)
    assert ("Retry-After", "7") in decision.headers


def test_admission_488_without_common_codec_or_sdp() -> None:
    no_common = decide(parse_request(invite(pts="18", maps="")), "127.0.0.1", 0, False, POLICY)
    assert isinstance(no_common, Reject) and no_common.status == 488
    no_sdp = parse_request(invite(content_type="text/plain"))
    decision = decide(no_sdp, "127.0.0.1", 0, False, POLICY)
    assert isinstance(decision, Reject) and decision.status == 488


def test_admission_acl_comes_first() -> None:
    policy = Policy(capacity=2, codecs=("PCMU",), retry_after=1, allow_from=("10.0.0.0/8", "127.0.0.1/32"))
    assert source_allowed("127.0.0.1", policy.allow_from)
    assert not source_allowed("192.0.2.1", policy.allow_from)
    assert not source_allowed("not-an-ip", policy.allow_from)
    decision = decide(parse_request(invite()), "192.0.2.1", 5, True, policy)
    assert isinstance(decision, Reject) and decision.status == 403


def test_rate_limiter_is_a_token_bucket_per_source() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0.0)  # other sources have their own bucket
    assert not limiter.allow("a", 0.1)
    assert limiter.allow("a", 0.6)  # 1.2 tokens refilled after 0.6 s at 2/s
    assert RateLimiter(rate=0, burst=1).allow("a", 0.0)


def test_rate_limiter_forgets_idle_sources_when_full() -> None:
    limiter = RateLimiter(rate=10.0, burst=1, max_sources=2)
    limiter.allow("a", 0.0)
    limiter.allow("b", 0.0)
    limiter.allow("c", 10.0)  # a and b refilled long ago: forgotten
    assert set(limiter._buckets) == {"c"}


def test_admission_flood_gets_503() -> None:
    decision = decide(parse_request(invite()), "127.0.0.1", 0, False, POLICY, within_rate=False)
    assert isinstance(decision, Reject) and (decision.status, decision.result) == (503, "rejected_rate")
    assert ("Retry-After", "7") in decision.headers


def test_admission_refuses_without_an_engine_only_when_told() -> None:
    request = parse_request(invite())
    decision = decide(request, "127.0.0.1", 0, False, POLICY, engine_refuses=True)
    assert isinstance(decision, Reject) and (decision.status, decision.result) == (503, "rejected_engine")
    assert isinstance(decide(request, "127.0.0.1", 0, False, POLICY), Accept)

"""The SIP parsers of untrusted bytes, attacked: random and mutated input, and only the documented error.

sdp.parse_offer → SdpError; multipart → nothing; siprec.parse_metadata → MetadataError;
siprec.parse_body and the detection functions → nothing; message.parse_request → ValueError;
admission.decide → nothing (a Reject with a known metrics label). The samples are the valid inputs
of the other sip tests; tests/fixtures/fuzz.py makes them hostile. Each defect these tests found
has its own example below, so it stays fixed even if the random search stops reaching it.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.metrics import CALL_RESULTS
from sip.admission import Accept, Policy, Reject, decide
from sip.message import SipRequest, parse_request
from sip.multipart import Part, find_part, framing_issues, is_multipart, split_multipart
from sip.sdp import MAX_MEDIA_LINES, MAX_PORT, MAX_PT, SdpError, parse_offer
from sip.siprec import (
    MetadataError,
    SiprecBody,
    parse_body,
    parse_metadata,
    requires_siprec,
    siprec_evidence,
)
from tests.fixtures.fuzz import FUZZ, mutated, random_text
from tests.fixtures.siprec_caller import METADATA_STYLES, metadata_xml, multipart_body, offer_sdp

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 9 0 96 101\r\na=rtpmap:96 opus/48000/2\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendonly\r\n"
)
SIPREC_SDP = offer_sdp([4000, 4002], ["1", "2"])
TWO_STREAMS = (
    "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=sendonly\r\n"
    "m=audio 4000/2 RTP/AVP 0\r\na=label:caller\r\n"
    "m=video 0 RTP/AVP 31\r\na=rtpmap:31 H261/90000\r\n"
    "m=audio 4004 RTP/SAVP 8\r\na=label:agent\r\na=recvonly\r\n"
)
SDPS = [SDP, SIPREC_SDP, TWO_STREAMS]
METADATA = [metadata_xml(style) for style in METADATA_STYLES]
MULTIPARTS = [
    multipart_body(SIPREC_SDP, metadata_xml(s), s, close) for s in METADATA_STYLES for close in (True, False)
]


def invite(content_type: str, body: str, extra: str = "Supported: siprec\r\n") -> str:
    return (
        "INVITE sip:srs@127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
        'f: "Alice" <sip:alice@example.com>;tag=1\r\nTo: <sip:srs@127.0.0.1>\r\n'
        "i: abc@host\r\nCSeq: 1 INVITE\r\nContact: <sip:src@10.0.0.1>;+sip.src\r\n"
        f"Subject: a folded\r\n  header\r\n{extra}"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )


INVITES = [invite("application/sdp", SDP, ""), *(invite(ctype, body) for ctype, body in MULTIPARTS[:4])]
POLICY = Policy(capacity=4, codecs=("PCMU", "PCMA", "G722"), retry_after=5, allow_from=("127.0.0.0/8",))


# --- SDP ------------------------------------------------------------------------------------------


def offer_or_error(text: str) -> None:
    """parse_offer raises SdpError or gives an offer within the documented bounds."""
    try:
        offer = parse_offer(text)
    except SdpError:
        return
    assert len(offer.audio) <= MAX_MEDIA_LINES
    for audio in offer.audio:
        assert 0 <= audio.port <= MAX_PORT
        assert all(enc and enc == enc.upper() for enc in audio.encodings)
        assert all(
            not enc.startswith("PT") or 0 <= int(enc[2:]) <= MAX_PT
            for enc in audio.encodings
            if enc[2:].isascii() and enc[2:].isdigit()
        )


@FUZZ
@given(random_text())
def test_sdp_random_text(text: str) -> None:
    offer_or_error(text)


@FUZZ
@given(mutated(SDPS))
def test_sdp_mutated_offers(text: str) -> None:
    offer_or_error(text)


@pytest.mark.parametrize(
    "sdp",
    [
        "m=audio ² RTP/AVP 0\r\n",  # isdigit() says yes, int() says no
        "m=audio 4000 RTP/AVP ٣\r\n",  # int() reads it as 3
        "m=audio 4000/² RTP/AVP 0\r\n",
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/0\r\n",  # clock rate 0
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/²\r\n",
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",  # no clock rate
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:٠ PCMU/8000\r\n",
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 /8000\r\n",
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:\r\n",
        "m=audio 70000 RTP/AVP 0\r\n",
        "m=audio 99999999999999999999999 RTP/AVP 0\r\n",
        "m=audio 4000 RTP/AVP 0 128\r\n",
        "m=audio 4000 RTP/AVP\r\n",
        "m=audio 4000 RTP/AVP 0\r\n" * (MAX_MEDIA_LINES + 1),
        "m=audio 4000 RTP/AVP 0\r\n" + "m=video 0 RTP/AVP 31\r\n" * MAX_MEDIA_LINES,
    ],
)
def test_sdp_refused(sdp: str) -> None:
    with pytest.raises(SdpError):
        parse_offer(sdp)


def test_sdp_at_the_bounds_is_an_offer() -> None:
    offer = parse_offer("m=audio 65535 RTP/AVP 0 127\r\na=rtpmap:127 L16/4294967295\r\n" * MAX_MEDIA_LINES)
    assert len(offer.audio) == MAX_MEDIA_LINES and offer.audio[0].encodings == ("PCMU", "L16")
    assert parse_offer("m=audio 0 RTP/AVP 0\r\n").audio[0].port == 0  # a disabled stream is fine
    assert parse_offer("m=video x y\r\na=rtpmap:² foo\r\n").audio == ()  # not audio: not judged


# --- multipart ------------------------------------------------------------------------------------


def split_everything(content_type: str, body: str) -> list[Part]:
    """Everything multipart offers, on any text; nothing may raise."""
    parts = split_multipart(content_type, body)
    assert all(isinstance(part, Part) and part.content_type == part.content_type.lower() for part in parts)
    for part in parts:
        assert part.disposition is None or isinstance(part.disposition, str)
        assert part.handling is None or isinstance(part.handling, str)
    find_part(parts, "application/sdp")
    assert all(isinstance(issue, str) for issue in framing_issues(content_type, body))
    is_multipart(content_type)
    return parts


@FUZZ
@given(random_text(200), random_text())
def test_multipart_random_text(content_type: str, body: str) -> None:
    split_everything(content_type, body)


@FUZZ
@given(
    mutated([ctype for ctype, _ in MULTIPARTS] + ["multipart/mixed", 'multipart/mixed;boundary=""']),
    mutated([body for _, body in MULTIPARTS]),
)
def test_multipart_mutated_bodies(content_type: str, body: str) -> None:
    split_everything(content_type, body)


def test_multipart_nested_beyond_the_depth_bound() -> None:
    body = ""
    for depth in range(50):
        inner = f"Content-Type: multipart/mixed;boundary=b{depth + 1}\r\n\r\n{body}"
        body = f"--b{depth}\r\n{inner}\r\n--b{depth}--\r\n"
    assert split_everything("multipart/mixed;boundary=b0", body) is not None


# --- SIPREC metadata and body ---------------------------------------------------------------------


def metadata_or_error(xml: str | bytes) -> None:
    try:
        parse_metadata(xml)
    except MetadataError:
        pass


@FUZZ
@given(random_text() | st.binary(max_size=2000))
def test_metadata_random_input(xml: str | bytes) -> None:
    metadata_or_error(xml)


@FUZZ
@given(mutated(METADATA))
def test_metadata_mutated(xml: str) -> None:
    metadata_or_error(xml)
    metadata_or_error(xml.encode("utf-8", "surrogatepass"))


ENTITY_UTF16 = (
    '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY a "b">]><recording>&a;</recording>'
)


@pytest.mark.parametrize(
    "xml",
    [
        ENTITY_UTF16.encode("utf-16"),  # the byte search for <!DOCTYPE does not see it
        ENTITY_UTF16.encode("utf-16-be"),
        '<?xml version="1.0" encoding="bogus"?><recording/>',  # LookupError from expat
        '<?xml version="1.0" encoding="euc-jp"?><recording/>',  # ValueError: multi-byte encodings
        "<recording>\ud800</recording>",  # UnicodeEncodeError
        b"\xff\xfe<\x00",
        "",
    ],
)
def test_metadata_refused(xml: str | bytes) -> None:
    with pytest.raises(MetadataError):
        parse_metadata(xml)


def test_metadata_deeply_nested_within_the_size_bound() -> None:
    depth = 30_000
    parse_metadata("<recording>" + "<a>" * depth + "</a>" * depth + "</recording>")


@pytest.mark.parametrize("same_id", [False, True])
def test_metadata_at_the_size_bound_parses_in_linear_time(same_id: bool) -> None:
    """Thousands of participants and streams: each participant's streams were resolved against every
    stream (3.7 s for 250 kB, on the pjsua thread that serves every call of the worker)."""
    n = 2500
    pids = ["p"] * n if same_id else [f"p{i}" for i in range(n)]
    parts = "".join(f'<participant id="{pid}"><send>{i}</send></participant>' for i, pid in enumerate(pids))
    streams = "".join(f'<stream id="s{i}"><label>{i}</label></stream>' for i in range(n))
    started = time.monotonic()
    metadata = parse_metadata(f"<recording>{parts}{streams}</recording>")
    assert time.monotonic() - started < 1.5
    assert len(metadata.participants) == n and len(metadata.streams) == n
    assert metadata.participants[7].send == (tuple(f"s{i}" for i in range(n)) if same_id else ("s7",))


def body_in_bounds(request: SipRequest) -> None:
    """parse_body and the detection functions never raise; an SDP part they find is parsed or refused."""
    body = parse_body(request)
    assert isinstance(body, SiprecBody) and all(isinstance(p, str) for p in body.problems)
    assert isinstance(body.offer_hidden_from_pjsip, bool)
    offer_or_error(body.sdp)
    assert all(isinstance(e, str) for e in siprec_evidence(request))
    assert isinstance(requires_siprec(request), bool)


@FUZZ
@given(mutated([body for _, body in MULTIPARTS]), mutated([ctype for ctype, _ in MULTIPARTS]))
def test_siprec_body_mutated(body: str, content_type: str) -> None:
    body_in_bounds(SipRequest("INVITE", "sip:srs@h", (("content-type", content_type),), body))


# --- the SIP message and admission ---------------------------------------------------------------


def request_or_error(text: str) -> SipRequest | None:
    try:
        request = parse_request(text)
    except ValueError:
        return None
    assert request.method and request.uri
    assert all(name == name.lower() for name, _ in request.headers)
    request.header("call-id")
    request.content_type()
    return request


def decided(request: SipRequest, source_ip: str = "127.0.0.1") -> Accept | Reject:
    decision = decide(request, source_ip, 0, False, POLICY)
    if isinstance(decision, Reject):
        assert decision.result in CALL_RESULTS
        assert 400 <= decision.status <= 699
    else:
        assert decision.encodings and set(decision.encodings) <= set(POLICY.codecs)
    return decision


@FUZZ
@given(random_text(), random_text(60))
def test_request_and_admission_random_text(text: str, source_ip: str) -> None:
    request = request_or_error("INVITE sip:a@b SIP/2.0\r\n" + text)
    assert request is not None  # a valid request line, then anything: still a request
    body_in_bounds(request)
    decided(request, source_ip)
    request_or_error(text)


@FUZZ
@given(mutated(INVITES))
def test_request_and_admission_mutated(text: str) -> None:
    request = request_or_error(text)
    if request is None:
        return
    body_in_bounds(request)
    decided(request)
    siprec = parse_body(request)
    decided(dataclasses.replace(request, body=siprec.sdp))  # what the endpoint admits for SIPREC


@pytest.mark.parametrize(
    "line", ["INVITE  SIP/2.0", " sip:a@b SIP/2.0", "INV²TE sip:a@b SIP/2.0", "INVITE sip:a@b HTTP/1.1", ""]
)
def test_request_line_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_request(f"{line}\r\nCall-ID: x\r\n\r\n")


@pytest.mark.parametrize(
    "sdp",
    [
        "m=audio ² RTP/AVP 0\r\n",
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/0\r\n",
        "m=audio 1 RTP/AVP 0\r\n" * 200,
    ],
)
def test_admission_refuses_a_malformed_offer_with_400(sdp: str) -> None:
    decision = decided(parse_request(invite("application/sdp", sdp, "")))
    assert decision == Reject(400, "Malformed SDP Offer", "rejected_invalid")


def test_the_samples_are_valid() -> None:
    """The mutations start from inputs every parser accepts, so a refusal is the mutation's doing."""
    assert all(parse_offer(sdp).audio for sdp in SDPS)
    assert all(parse_metadata(xml).participants for xml in METADATA)
    for content_type, body in MULTIPARTS:
        assert find_part(split_multipart(content_type, body), "application/sdp") is not None
    for text in INVITES:
        request = parse_request(text)
        assert isinstance(decided(dataclasses.replace(request, body=parse_body(request).sdp)), Accept)

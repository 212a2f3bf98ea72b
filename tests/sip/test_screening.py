"""sip.screening, the one admission point for new INVITEs: each rule, in order, and attacked with random
and mutated bytes (only a verdict ever comes back: Admitted, or Refused with a known metrics label)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.metrics import CALL_RESULTS
from sip.admission import Policy
from sip.screening import Admitted, Refused, WorkerState, screen
from sip.siprec import SiprecRules
from tests.fixtures.fuzz import FUZZ, mutated
from tests.fixtures.siprec_caller import metadata_xml, multipart_body, offer_sdp

POLICY = Policy(capacity=4, codecs=("PCMU", "PCMA"), retry_after=5, allow_from=("127.0.0.0/8",))
RULES = SiprecRules()
IDLE = WorkerState(active_calls=0, draining=False, within_rate=True, engine_refuses=False)
SDP = (
    "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
)


def invite(
    body: str = SDP, ctype: str | None = "application/sdp", extra: str = "", length: int | None = None
) -> bytes:
    size = len(body.encode()) if length is None else length
    content_type = f"Content-Type: {ctype}\r\n" if ctype else ""
    return (
        "INVITE sip:svc@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n"
        "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:svc@127.0.0.1>\r\nCall-ID: c1@h\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:a@127.0.0.1:5062>\r\n{extra}{content_type}Content-Length: {size}\r\n\r\n{body}"
    ).encode()


def siprec(metadata: str, close: bool = True, option: str = "Require") -> bytes:
    ctype, body = multipart_body(offer_sdp([4000, 4002], ["1", "2"]), metadata, "rfc", close=close)
    return invite(body, ctype, f"{option}: siprec\r\n")


def refused(
    raw: bytes, source: str = "127.0.0.1", state: WorkerState = IDLE, per_source: int = 0
) -> tuple[int, str]:
    verdict = screen(raw, source, state, POLICY, RULES, per_source)
    assert isinstance(verdict, Refused), verdict
    return verdict.reject.status, verdict.reject.result


def test_a_plain_offer_is_admitted_with_the_codecs_in_common() -> None:
    verdict = screen(invite(), "127.0.0.1", IDLE, POLICY, RULES)
    assert isinstance(verdict, Admitted) and verdict.accept.encodings == ("PCMU",) and verdict.body is None


def test_a_siprec_offer_is_admitted_with_its_two_streams() -> None:
    verdict = screen(siprec(metadata_xml("rfc")), "127.0.0.1", IDLE, POLICY, RULES)
    assert isinstance(verdict, Admitted) and len(verdict.roles) == 2 and verdict.evidence


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"INVITE nonsense\r\n\r\n", (400, "rejected_invalid")),
        (invite(length=len(SDP) + 1), (400, "rejected_invalid")),  # Content-Length beyond the body
        (invite(length=-1), (400, "rejected_invalid")),
        (invite(body="", ctype=None), (488, "rejected_codec")),  # no offer
        # RFC 4475 multi01: pjsip takes the last Call-ID, the bridge would have read the first
        (invite(extra="Call-ID: another@h\r\n"), (400, "rejected_invalid")),
        (invite(extra="i: compact@h\r\n"), (400, "rejected_invalid")),
        (invite(extra="CSeq: 2 INVITE\r\n"), (400, "rejected_invalid")),
        (invite(SDP.replace("0 101", "18 101")), (488, "rejected_codec")),  # no codec in common
        (invite(SDP.replace("4000", "²")), (400, "rejected_invalid")),  # not ASCII digits
        (siprec("<recording><session"), (400, "rejected_invalid")),  # Require: siprec, unreadable metadata
        (siprec(metadata_xml("rfc"), close=False), (488, "rejected_codec")),  # SDP hidden from pjsip
    ],
)
def test_each_refusal(raw: bytes, expected: tuple[int, str]) -> None:
    assert refused(raw) == expected


def test_unreadable_metadata_without_require_is_tolerated() -> None:
    verdict = screen(siprec("<recording><session", option="Supported"), "127.0.0.1", IDLE, POLICY, RULES)
    assert isinstance(verdict, Admitted) and verdict.body is not None and verdict.body.problems


def test_state_refusals_in_order() -> None:
    assert refused(invite(), source="10.1.2.3") == (403, "rejected_acl")
    assert refused(invite(), state=WorkerState(0, False, False, False)) == (503, "rejected_rate")
    assert refused(invite(), state=WorkerState(0, True, True, False)) == (503, "rejected_draining")
    assert refused(invite(), state=WorkerState(4, False, True, False)) == (503, "rejected_full")
    assert refused(invite(), state=WorkerState(0, False, True, True)) == (503, "rejected_engine")
    held_two = WorkerState(2, False, True, False, source_calls=2)
    assert refused(invite(), state=held_two, per_source=2) == (503, "rejected_source")
    assert isinstance(screen(invite(), "127.0.0.1", held_two, POLICY, RULES, 3), Admitted)
    # the ACL answers before anything of the body is read
    assert refused(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n", source="10.1.2.3")[0] == 403


def test_503s_carry_retry_after() -> None:
    verdict = screen(invite(), "127.0.0.1", WorkerState(4, False, True, False), POLICY, RULES)
    assert isinstance(verdict, Refused) and ("Retry-After", "5") in verdict.reject.headers


def _verdict_is_known(raw: bytes) -> None:
    verdict = screen(raw, "127.0.0.1", IDLE, POLICY, RULES)
    if isinstance(verdict, Refused):
        assert verdict.reject.result in CALL_RESULTS and 400 <= verdict.reject.status < 600
    else:
        assert isinstance(verdict, Admitted) and verdict.accept.encodings


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_give_a_verdict(raw: bytes) -> None:
    _verdict_is_known(raw)


@FUZZ
@given(
    mutated([invite().decode(), siprec(metadata_xml("rfc")).decode(), siprec(metadata_xml("cisco")).decode()])
)
def test_mutated_invites_give_a_verdict(text: str) -> None:
    _verdict_is_known(text.encode(errors="surrogatepass"))

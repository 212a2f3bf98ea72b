"""Multipart bodies as SIPREC clients frame them, split without sockets."""

from __future__ import annotations

import pytest

from sip.multipart import find_part, framing_issues, parse_header_value, split_multipart

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
XML = "<?xml version='1.0'?>\r\n<recording xmlns='urn:ietf:params:xml:ns:recording:1'/>"


def body(nl: str = "\r\n", boundary: str = "b1", close: bool = True, pad: str = "") -> str:
    sdp = SDP.replace("\r\n", nl)
    xml = XML.replace("\r\n", nl)
    end = f"--{boundary}--{nl}" if close else ""
    return (
        f"preamble{nl}--{boundary}{pad}{nl}Content-Type: application/sdp{nl}{nl}{sdp}{nl}"
        f"--{boundary}{pad}{nl}Content-Type: application/rs-metadata+xml{nl}"
        f"Content-Disposition: recording-session; handling=required{nl}{nl}{xml}{nl}{end}epilogue{nl}"
    )


def test_rfc_7866_framing() -> None:
    parts = split_multipart('multipart/mixed;boundary="b1"', body())
    assert [p.content_type for p in parts] == ["application/sdp", "application/rs-metadata+xml"]
    assert parts[0].body == SDP  # the CRLF before the delimiter is not part of the body
    assert parts[1].body == XML
    assert parts[1].disposition == "recording-session"
    assert parts[1].handling == "required"
    assert parts[0].disposition is None
    assert framing_issues('multipart/mixed;boundary="b1"', body()) == ()


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/mixed;boundary=b1",
        'multipart/mixed; boundary="b1"',
        'Multipart/Mixed;Boundary="b1"',
        "multipart/mixed ; BOUNDARY = b1 ; charset=utf-8",
        "multipart/related;type=application/sdp;boundary=b1",
        "multipart/mixed",  # no boundary: taken from the body
        "multipart/mixed;boundary=wrong",  # declared one never used: taken from the body
    ],
)
def test_boundary_parameter_variants(content_type: str) -> None:
    parts = split_multipart(content_type, body())
    assert find_part(parts, "application/sdp") is not None
    assert find_part(parts, "application/rs-metadata+xml") is not None


def test_lf_padding_and_no_close_delimiter() -> None:
    text = body(nl="\n", close=False, pad=" \t ")
    parts = split_multipart('multipart/mixed;boundary="b1"', text)
    sdp = find_part(parts, "application/sdp")
    meta = find_part(parts, "application/rs-metadata+xml")
    assert sdp is not None and sdp.body == SDP.replace("\r\n", "\n")
    assert meta is not None and meta.body.startswith("<?xml")
    assert "epilogue" in meta.body  # without a close delimiter the last part runs to the end
    assert framing_issues('multipart/mixed;boundary="b1"', text) == (
        "no close delimiter",
        "LF line endings",
        "padding after a delimiter",
    )


def test_boundary_that_looks_like_a_close_prefix() -> None:
    # a boundary ending in "--" must not be mistaken for the close delimiter of a shorter one
    text = body(boundary="abc--")
    parts = split_multipart("multipart/mixed;boundary=abc--", text)
    assert len(parts) == 2


def test_part_headers_case_folding_and_compact() -> None:
    text = (
        "--x\r\nCONTENT-TYPE:   Application/SDP ; charset=x\r\nX-Vendor: a\r\n  folded\r\n\r\nv=0\r\n"
        "--x\r\nc: application/rs-metadata+xml\r\n\r\n<recording/>\r\n--x--\r\n"
    )
    parts = split_multipart("multipart/mixed;boundary=x", text)
    assert parts[0].content_type == "application/sdp"
    assert parts[0].header("x-vendor") == "a folded"
    assert parts[1].content_type == "application/rs-metadata+xml"


def test_part_without_headers_is_sniffed() -> None:
    text = "--x\r\n\r\nv=0\r\nm=audio 1 RTP/AVP 0\r\n--x\r\n<recording/>\r\n--x--\r\n"
    parts = split_multipart("multipart/mixed;boundary=x", text)
    assert [p.content_type for p in parts] == ["application/sdp", "application/rs-metadata+xml"]
    assert parts[1].body == "<recording/>"


def test_headers_without_blank_line_before_body() -> None:
    text = "--x\r\nContent-Type: application/sdp\r\nv=0\r\nm=audio 1 RTP/AVP 0\r\n--x--\r\n"
    (part,) = split_multipart("multipart/mixed;boundary=x", text)
    assert part.content_type == "application/sdp"
    assert part.body.startswith("v=0")


def test_nested_alternative_is_flattened() -> None:
    inner = (
        "--in\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n"
        "--in\r\nContent-Type: text/plain\r\n\r\nhi\r\n--in--"
    )
    text = (
        f"--out\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n{inner}\r\n"
        "--out\r\nContent-Type: application/rs-metadata+xml\r\n\r\n<recording/>\r\n--out--\r\n"
    )
    parts = split_multipart("multipart/mixed;boundary=out", text)
    assert [p.content_type for p in parts] == ["application/sdp", "text/plain", "application/rs-metadata+xml"]


def test_not_multipart_is_one_part_and_garbage_is_none() -> None:
    assert split_multipart("application/sdp", SDP)[0].body == SDP
    assert split_multipart("multipart/mixed;boundary=x", "no delimiters here") == []
    assert framing_issues("application/sdp", SDP) == ()


def test_header_value_quoted_semicolon() -> None:
    value = parse_header_value('multipart/mixed; boundary="a;b"; X=1')
    assert value.value == "multipart/mixed"
    assert value.param("boundary") == "a;b"
    assert value.param("x") == "1"

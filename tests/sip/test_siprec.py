"""SIPREC without sockets: detection, rs-metadata in several SBC styles, streams mapped to roles."""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time

import pytest

from sip.message import SipRequest, parse_request
from sip.sdp import parse_offer
from sip.siprec import (
    MetadataError,
    Participant,
    SiprecRules,
    map_streams,
    number_form,
    parse_body,
    parse_metadata,
    requires_siprec,
    siprec_evidence,
)
from tests.fixtures.siprec_caller import (
    AGENT_AOR,
    CALLER_AOR,
    METADATA_STYLES,
    metadata_xml,
    multipart_body,
    offer_sdp,
    run_siprec_call,
    style_labels,
)

AGENTS = SiprecRules(agent_patterns=(r"^sip:2\d{3}@", r"\b2\d{3}\b"))


def request(
    style: str | None = "rfc",
    *,
    labels: tuple[str | None, ...] | None = None,
    direction: str = "sendonly",
    headers: str = "Supported: siprec\r\n",
    contact: str = "<sip:src@10.0.0.1>;+sip.src",
    close: bool = True,
    meta: str | None = None,
) -> SipRequest:
    own = style_labels(style or "rfc")
    labels = labels if labels is not None else own
    sdp = offer_sdp([4000 + 2 * i for i in range(len(labels))], list(labels), direction)
    metadata = meta if meta is not None else (metadata_xml(style, own) if style else None)
    ctype, body = multipart_body(sdp, metadata, style or "rfc", close)
    return parse_request(
        "INVITE sip:srs@127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:src@10.0.0.1>;tag=1\r\n"
        f"To: <sip:srs@127.0.0.1>\r\nCall-ID: x@y\r\nCSeq: 1 INVITE\r\nContact: {contact}\r\n{headers}"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )


def roles(req: SipRequest, rules: SiprecRules = AGENTS) -> list[tuple[str | None, str, int]]:
    parsed = parse_body(req)
    return [
        (r.label, r.role, r.channel) for r in map_streams(parse_offer(parsed.sdp), parsed.metadata, rules)
    ]


# --- detection -------------------------------------------------------------------------------------


def test_evidence_of_siprec() -> None:
    assert siprec_evidence(request(headers="Require: siprec\r\n")) == (
        "Require: siprec",
        "multipart body with rs-metadata",
        "Contact +sip.src",
    )
    assert siprec_evidence(request(None, headers="Supported: timer, SIPREC\r\n", contact="<sip:a@b>")) == (
        "Supported: siprec",
    )
    assert requires_siprec(request(headers="Require: timer,siprec\r\n"))
    assert not requires_siprec(request())


def test_plain_call_is_not_siprec() -> None:
    plain = parse_request(
        "INVITE sip:svc@h SIP/2.0\r\nContact: <sip:a@b;transport=udp>\r\nSupported: timer, 100rel\r\n"
        "Content-Type: application/sdp\r\n\r\n" + offer_sdp([4000], [None], "sendrecv")
    )
    assert not siprec_evidence(plain)
    body = parse_body(plain)
    assert body.metadata is None and body.problems == () and body.sdp.startswith("v=0")
    (only,) = map_streams(parse_offer(body.sdp), None, AGENTS)
    assert (only.role, only.channel) == ("mixed", 0)


# --- metadata in SBC styles ------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["rfc", "cisco", "oracle", "avaya"])
def test_metadata_styles_name_who_sends_what(style: str) -> None:
    meta = parse_metadata(metadata_xml(style))
    assert len(meta.participants) == 2  # vendor elements named <participant> are not counted
    l0, l1 = style_labels(style)
    for label, who in ((l0, CALLER_AOR), (l1, AGENT_AOR)):
        stream = meta.stream_for_label(label)
        assert stream is not None
        (sender,) = meta.senders(stream.stream_id)
        assert who in (sender.aor, sender.name)


def test_rfc_metadata_ids() -> None:
    meta = parse_metadata(METADATA_STYLES["rfc"].format(l0="1", l1="2", caller="sip:a@x", agent="sip:b@x"))
    assert meta.datamode == "complete"
    assert meta.group_id == "7+OTCyoxTmqmqyA/1weDAg=="
    assert meta.session_ids == ("hVpd7YQgRW2nD22h7q60JQ==",)
    assert meta.sip_session_ids[0].startswith("ab30317f")
    assert meta.participants[0].name == "Customer"
    assert meta.participants[0].recv == ("i1Pz3to5hGk8fuXl+PbwCw==",)


def test_metaswitch_single_stream_has_two_senders() -> None:
    meta = parse_metadata(metadata_xml("metaswitch"))
    stream = meta.stream_for_label("1")
    assert stream is not None
    assert [p.aor for p in meta.senders(stream.stream_id)] == [CALLER_AOR, AGENT_AOR]


def test_metadata_missing_pieces_and_bytes() -> None:
    meta = parse_metadata(b"<recording xmlns='urn:ietf:params:xml:ns:recording:1'><participant/></recording>")
    assert meta.participants[0].participant_id == "#0"
    assert meta.participants[0].aor is None and meta.streams == ()
    wrapped = parse_metadata(
        "<envelope><x:recording xmlns:x='urn:ietf:params:xml:ns:recording:1'/></envelope>"
    )
    assert wrapped.participants == ()


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ('<!DOCTYPE r [<!ENTITY a "aaaa">]><recording>&a;</recording>', "DTD"),
        ("<recording><participant></recording>", "well-formed"),
        ("<other/>", "not <recording>"),
        ("<recording>" + "x" * 300_000 + "</recording>", "bytes"),
    ],
)
def test_metadata_refused(xml: str, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        parse_metadata(xml)


def test_bad_metadata_still_gives_the_sdp() -> None:
    body = parse_body(request(meta="<recording><oops></recording>"))
    assert body.metadata is None
    assert body.sdp.startswith("v=0")
    assert any("well-formed" in p for p in body.problems)


def test_framing_quirks_reported() -> None:
    oracle = parse_body(request("oracle"))
    assert oracle.metadata is not None and oracle.sdp.startswith("v=0")
    assert "LF line endings" in oracle.framing and "padding after a delimiter" in oracle.framing
    assert not oracle.offer_hidden_from_pjsip
    unclosed = parse_body(request("cisco", close=False))
    assert unclosed.metadata is not None
    assert unclosed.offer_hidden_from_pjsip


# --- roles -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["rfc", "cisco", "oracle", "avaya"])
def test_metadata_and_agent_pattern_decide(style: str) -> None:
    l0, l1 = style_labels(style)
    assert roles(request(style)) == [(l0, "caller", 0), (l1, "agent", 1)]
    # the agent's stream first in the SDP: metadata still puts each on the right channel
    assert roles(request(style, labels=(l1, l0))) == [(l1, "agent", 1), (l0, "caller", 0)]


def test_reason_names_participant_and_rule() -> None:
    parsed = parse_body(request("rfc"))
    caller, agent = map_streams(parse_offer(parsed.sdp), parsed.metadata, AGENTS)
    assert agent.reason == (
        f"metadata: participant Agent 2001 <{AGENT_AOR}> sends stream label '2'; "
        "agent by rule 'agent_patterns' ('^sip:2\\\\d{3}@')"
    )
    assert caller.reason.startswith(f"metadata: participant Customer <{CALLER_AOR}> sends stream label '1'")
    assert caller.reason.endswith("caller by its address form (E.164 number +15551230001)")
    assert caller.participant is not None and caller.participant.aor == CALLER_AOR
    assert caller.stream_id == "UAAMm5GRQKSCMVvLyl4rFw=="
    json.dumps([caller.as_dict(), agent.as_dict()])


def test_caller_pattern_alone_decides() -> None:
    rules = SiprecRules(caller_patterns=(r"^sip:\+1555",))
    assert roles(request("cisco", labels=("2", "1")), rules) == [("2", "agent", 1), ("1", "caller", 0)]


def test_no_metadata_decision_falls_back_to_label_then_mline_when_configured() -> None:
    forms_off = SiprecRules(number_forms=False)
    by_label = SiprecRules(agent_labels=("1",), number_forms=False)
    assert roles(request("rfc"), by_label) == [("1", "agent", 1), ("2", "caller", 0)]
    parsed = parse_body(request("rfc", labels=("2", "1")))
    guessing = SiprecRules(order=("metadata", "label", "mline"), number_forms=False)
    first, _ = map_streams(parse_offer(parsed.sdp), parsed.metadata, guessing)
    assert (first.role, first.channel, first.decided_by) == ("caller", 0, "mline")  # a guess, and says so
    assert first.reason == (
        "mline: stream label '2' is audio m-line 0; caller by m-line order (not decided by "
        "metadata: no agent_patterns or caller_patterns configured, number_forms off; label: no "
        "agent_labels or caller_labels configured)"
    )
    assert first.participant is not None and first.participant.aor == AGENT_AOR  # still named
    assert roles(request("rfc", labels=("2", "1")), forms_off) == [("2", "unknown", 0), ("1", "unknown", 1)]


def test_missing_labels_are_unknown_unless_mline_is_configured() -> None:
    parsed = parse_body(request("rfc", labels=(None, None)))
    first, second = map_streams(parse_offer(parsed.sdp), parsed.metadata, AGENTS)
    assert (first.role, first.channel, second.role, second.channel) == ("unknown", 0, "unknown", 1)
    assert first.decided_by == "undecided" and "m-line 0 (no label) not in metadata" in first.reason
    assert first.reason.startswith("no rule decided, roles unknown, channels by m-line: ")
    guessing = SiprecRules(order=("metadata", "label", "mline"), agent_patterns=AGENTS.agent_patterns)
    first, second = map_streams(parse_offer(parsed.sdp), parsed.metadata, guessing)
    assert (first.role, second.role) == ("caller", "agent")
    assert first.reason.startswith("mline: m-line 0 (no label) is audio m-line 0; caller by m-line order")
    swapped = SiprecRules(order=("mline",), mline_order=("agent", "caller"))
    assert roles(request("rfc", labels=(None, None)), swapped) == [(None, "agent", 1), (None, "caller", 0)]


# --- the default: the metadata decides, by the senders' address forms ------------------------------


@pytest.mark.parametrize("style", ["rfc", "cisco", "oracle", "avaya"])
def test_default_rules_follow_the_metadata_in_both_mline_orders(style: str) -> None:
    """No patterns configured: each style's metadata decides, whichever stream the SRC puts first (Cisco
    lists the agent first among the participants, Avaya has names and no AORs, Oracle the draft shape)."""
    l0, l1 = style_labels(style)
    for labels in ((l0, l1), (l1, l0)):
        parsed = parse_body(request(style, labels=labels))
        mapped = map_streams(parse_offer(parsed.sdp), parsed.metadata, SiprecRules())
        expected = {l0: ("caller", 0, CALLER_AOR), l1: ("agent", 1, AGENT_AOR)}
        for role in mapped:
            assert role.label is not None
            sender = role.participant.aor or role.participant.name if role.participant else None
            assert (role.role, role.channel, sender) == expected[role.label], (style, labels, role.reason)
            assert role.decided_by == "metadata" and role.reason.startswith("metadata: participant ")
            assert "by its address form" in role.reason
            assert role.as_dict()["decided_by"] == "metadata"


def test_an_e164_caller_and_a_named_agent_first_in_the_offer() -> None:
    """The issue's case: sip:agent42@pbx sends the stream labelled 2, which is m-line 0."""
    meta = metadata_xml("rfc", agent="sip:agent42@pbx")
    agent, caller = map_streams(
        parse_offer(parse_body(request("rfc", labels=("2", "1"), meta=meta)).sdp),
        parse_body(request("rfc", labels=("2", "1"), meta=meta)).metadata,
        SiprecRules(),
    )
    assert (agent.role, agent.channel, caller.role, caller.channel) == ("agent", 1, "caller", 0)
    assert caller.reason.endswith("caller by its address form (E.164 number +15551230001)")
    assert agent.reason.endswith("agent because the other stream is the caller")


@pytest.mark.parametrize(
    ("caller", "agent"),
    [
        ("sip:alice@atlanta.example.com", "sip:bob@biloxi.example.com"),  # RFC 7865's own example
        ("sip:+15551230001@carrier.example.net", "sip:+15559870002@carrier.example.net"),  # both outside
        ("sip:2001@pbx", "sip:2002@pbx"),  # an internal call
    ],
)
def test_metadata_that_cannot_tell_gives_unknown_roles(caller: str, agent: str) -> None:
    for labels in (("1", "2"), ("2", "1")):
        meta = metadata_xml("rfc", caller=caller, agent=agent)
        result = roles(request("rfc", labels=labels, meta=meta), SiprecRules())
        assert result == [(labels[0], "unknown", 0), (labels[1], "unknown", 1)]


@pytest.mark.parametrize(
    ("aor", "name", "expected"),
    [
        ("sip:+15551230001@carrier.example.net;user=phone", None, "caller"),
        ("tel:+44-20-7946-0001", None, "caller"),
        ("sips:2001@pbx.example", None, "agent"),
        (None, "+1 (555) 123-0001", "caller"),
        (None, "sip:2001@pbx", "agent"),
        ("sip:5551230001@carrier", None, None),  # national form: not decidable
        ("sip:agent42@pbx", "Agent 42", None),
        ("sip:pbx.example", None, None),
        (None, None, None),
        ("sip:+0123@x", None, None),
    ],
)
def test_number_form(aor: str | None, name: str | None, expected: str | None) -> None:
    form = number_form(Participant("p", aor=aor, name=name))
    assert (form[0] if form else None) == expected


def test_one_labelled_stream_is_enough() -> None:
    # the second m-line carries a label the metadata does not know: the first decides both
    assert roles(request("rfc", labels=("2", "zzz"))) == [("2", "agent", 1), ("zzz", "caller", 0)]


def test_conflict_does_not_decide() -> None:
    everyone = SiprecRules(agent_patterns=(r"^sip:",))
    parsed = parse_body(request("rfc"))
    first, _ = map_streams(parse_offer(parsed.sdp), parsed.metadata, everyone)
    assert (first.role, first.channel, first.decided_by) == ("unknown", 0, "undecided")
    assert "metadata: every stream matched agent" in first.reason


def test_undecided_without_mline_strategy() -> None:
    rules = SiprecRules(order=("metadata",), number_forms=False)
    result = roles(request("rfc"), rules)
    assert result == [("1", "unknown", 0), ("2", "unknown", 1)]


def test_single_mixed_stream() -> None:
    parsed = parse_body(request("metaswitch", labels=("1",)))
    (mixed,) = map_streams(parse_offer(parsed.sdp), parsed.metadata, AGENTS)
    assert (mixed.role, mixed.channel, mixed.label) == ("mixed", 0, "1")
    assert [p.aor for p in mixed.participants] == [CALLER_AOR, AGENT_AOR]
    assert mixed.reason.startswith("single audio stream: mixed recording on channel 0; metadata: sent by")


def test_hold_keeps_the_mapping() -> None:
    parsed = parse_body(request("rfc", direction="inactive"))
    result = map_streams(parse_offer(parsed.sdp), parsed.metadata, AGENTS)
    assert [(r.role, r.direction) for r in result] == [("caller", "inactive"), ("agent", "inactive")]


def test_reinvite_with_new_metadata_after_transfer() -> None:
    # the call moves to agent 2002, and the SRC now sends the agent's stream first
    meta = metadata_xml("cisco", agent="sip:2002@pbx.callcentre.example")
    parsed = parse_body(request("cisco", labels=("2", "1"), meta=meta))
    agent, caller = map_streams(parse_offer(parsed.sdp), parsed.metadata, AGENTS)
    assert (agent.role, agent.channel) == ("agent", 1)
    assert agent.participant is not None and agent.participant.aor == "sip:2002@pbx.callcentre.example"
    assert caller.role == "caller"


def test_three_streams() -> None:
    offer = parse_offer(offer_sdp([4000, 4002, 4004], ["1", "2", "3"]))
    result = map_streams(offer, None, SiprecRules())
    assert [(r.role, r.channel) for r in result] == [("unknown", 0), ("unknown", 1), ("unknown", 2)]
    guessing = map_streams(offer, None, SiprecRules(order=("mline",)))
    assert [(r.role, r.channel) for r in guessing] == [("caller", 0), ("agent", 1), ("unknown", 2)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order": ("metadata", "guess")}, "siprec.order"),
        ({"order": ()}, "siprec.order"),
        ({"agent_patterns": ("(",)}, "siprec.agent_patterns"),
        ({"mline_order": ("caller", "caller")}, "siprec.mline_order"),
    ],
)
def test_rules_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SiprecRules(**kwargs)  # type: ignore[arg-type]


# --- the test SRC itself, against a scripted recorder on 127.0.0.1 --------------------------------


def test_siprec_caller_sends_two_paced_streams() -> None:
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for sock in (sip, *rtp):
        sock.bind(("127.0.0.1", 0))
    seen: dict[str, list[str]] = {"methods": [], "invite": []}
    packets: list[list[tuple[float, int, int, int, bytes]]] = [[], []]
    stop = threading.Event()

    def srs() -> None:
        answer = offer_sdp([s.getsockname()[1] for s in rtp], [None, None], "recvonly")
        while not stop.is_set():
            ready, _, _ = select.select([sip, *rtp], [], [], 0.05)
            for index, sock in enumerate(rtp):
                if sock in ready:
                    data = sock.recv(2048)
                    _, _, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
                    packets[index].append((time.monotonic(), seq, ts, ssrc, data[12:]))
            if sip not in ready:
                continue
            data, peer = sip.recvfrom(65535)
            text = data.decode()
            method = text.split(" ", 1)[0]
            seen["methods"].append(method)
            if method == "ACK":
                continue
            if method == "INVITE":
                seen["invite"].append(text)
            head = "\r\n".join(
                line
                for line in text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
                if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")
            )
            to = next(line for line in text.split("\r\n") if line.lower().startswith("to:"))
            body = answer if method == "INVITE" else ""
            reply = (
                f"SIP/2.0 200 OK\r\n{head}\r\n{to};tag=srs\r\nContact: <sip:srs@127.0.0.1>\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            )
            sip.sendto(reply.encode(), peer)

    thread = threading.Thread(target=srs, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        result = run_siprec_call(
            sip.getsockname()[1], b"\x01" * 8000, b"\x02" * 4000, lead_silence=0.1, tail_silence=0.1
        )
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)
        for sock in (sip, *rtp):
            sock.close()
    assert (result.status, result.bye_status) == (200, 200)
    assert seen["methods"] == ["INVITE", "ACK", "BYE"]
    assert "Content-Type: multipart/mixed" in seen["invite"][0]
    assert result.packets == (61, 61)  # 0.1 s + 1 s of the longer file + 20 ms + 0.1 s
    assert 1.1 < elapsed < 2.0  # paced in real time
    caller, agent = packets
    assert len(caller) == len(agent) == 61
    assert caller[0][3] != agent[0][3]  # own SSRC
    for stream in (caller, agent):
        assert [(p[1] - stream[0][1]) % 65536 for p in stream] == list(range(61))
        assert [(p[2] - stream[0][2]) % 2**32 for p in stream] == [160 * i for i in range(61)]
    assert caller[10][4] == b"\x01" * 160 and agent[10][4] == b"\x02" * 160
    assert agent[40][4] == b"\xff" * 160  # the shorter file is padded with silence

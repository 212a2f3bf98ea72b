"""Hostile and unlucky callers against a live worker: every refusal leaves the same worker serving calls.

Each refusal path is sent over UDP and over TCP to one long-lived bridge; after each, the worker must
be the same process (same PID, no restart counted) and must still answer 4 concurrent real calls whose
audio the engine heard (its final transcript counts the seconds). The RFC 4475 torture messages below
are written out from the RFC's descriptions: valid-but-odd ones must get an answer, invalid ones must
be refused or dropped, and none of the invalid ones may become a call.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Bridge, Standin, end_bridge, new_bridge, run_sipp, run_standin, speech
from tests.fixtures import rawsip, sipua
from tests.fixtures.siprec_caller import metadata_xml, multipart_body, offer_sdp

TRANSPORTS = ("udp", "tcp")
ACK_TIMEOUT = 3.0
FIRST_RTP_TIMEOUT = 3.0
TRANSACTION_TIMEOUT = 2.0
RETRY_AFTER = "7"


@dataclass
class Hostile:
    bridge: Bridge
    metrics_port: int
    audio: Path
    workdir: Path

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, labels: str = "") -> float:
        text = self.scrape()
        selector = re.escape("{" + labels + "}") if labels else r"(?:\{[^}]*\})?"
        return sum(float(v) for v in re.findall(rf"^{re.escape(name)}{selector} (\S+)$", text, re.M))

    def restarts(self) -> float:
        text = self.scrape()
        return sum(
            float(v) for v in re.findall(r"^vblaze_bridge_worker_restarts_total\{[^}]*\} (\S+)$", text, re.M)
        )

    def worker_pid(self) -> int:
        found = subprocess.run(
            ["pgrep", "-f", f"bridge worker --config {self.bridge.config_path}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert len(found) == 1, found
        return int(found[0])

    def serves_four_calls(self) -> None:
        """4 concurrent sipp calls complete, and the engine heard each one's audio."""
        before = set(self.bridge.calls())
        result = run_sipp(self.bridge.sip_port, self.audio, self.workdir, hold_ms=2500, calls=4, concurrent=4)
        assert result.returncode == 0, result.stdout[-2000:]
        deadline = time.monotonic() + 30
        new: dict[str, list[dict[str, Any]]] = {}
        while time.monotonic() < deadline:
            new = {
                k: v
                for k, v in self.bridge.calls().items()
                if k not in before and v[0]["kind"] == "call.started"
            }
            ended = [v for v in new.values() if v[-1]["kind"] == "call.ended"]
            if len(ended) == 4:
                break
            time.sleep(0.2)
        assert len(new) == 4, new
        for events in new.values():
            ended = events[-1]
            assert ended["kind"] == "call.ended", events
            assert ended["data"]["reason"] == "remote_bye"
            assert ended["data"]["transcript"]["audiosecs"] > 1.0, ended  # the engine heard the audio

    def lived_on(self, pid: int, restarts: float) -> None:
        assert self.bridge.proc is not None and self.bridge.proc.poll() is None
        assert self.worker_pid() == pid, "the worker was replaced"
        assert self.restarts() == restarts
        assert "died with" not in self.bridge.log()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Iterator[Hostile]:
    engine: Standin = run_standin("--recognizer", "vad-only", "--max-streams", "16")
    directory = tmp_path_factory.mktemp("hostile")
    from bridge.demo import free_port_block

    metrics_port = free_port_block(1, low=29000, high=30000)
    bridge = new_bridge(
        directory,
        0,
        engine.url,
        sip={
            "allow_from": ["127.0.0.1/32", "127.0.0.2/32", "127.0.0.4/32"],
            "retry_after_seconds": int(RETRY_AFTER),
            "ack_timeout_seconds": ACK_TIMEOUT,
            "first_rtp_timeout_seconds": FIRST_RTP_TIMEOUT,
            "transaction_timeout_seconds": TRANSACTION_TIMEOUT,
        },
        metrics={"port": metrics_port},
    )
    audio = speech("one two three four", speech_dir, "hostile")
    try:
        yield Hostile(bridge, metrics_port, audio, directory)
    finally:
        end_bridge(bridge)
        engine.stop()


# --- the refusal paths ------------------------------------------------------------------------------


def _siprec(port: int, metadata: str, close: bool = True, option: str = "Require") -> bytes:
    ctype, body = multipart_body(offer_sdp([4000, 4002], ["1", "2"]), metadata, "rfc", close=close)
    return rawsip.invite(port, body=body, content_type=ctype, extra_headers=f"{option}: siprec\r\n")


def _no_boundary(port: int) -> bytes:
    _, body = multipart_body(offer_sdp([4000, 4002], ["1", "2"]), metadata_xml("rfc"), "rfc")
    return rawsip.invite(port, body=body, content_type="multipart/mixed", extra_headers="Require: siprec\r\n")


BROKEN_METADATA = '<?xml version="1.0"?><recording xmlns="urn:ietf:params:xml:ns:recording:1"><session'

# name -> (message for port, expected status, source address)
ANSWERS: dict[str, tuple[Callable[[int], bytes], int, str]] = {
    "no_sdp": (lambda port: rawsip.invite(port, body="", content_type=None), 488, "127.0.0.1"),
    "no_common_codec": (
        lambda port: rawsip.invite(
            port, body=rawsip.SDP.format(port=4000, pts="18").replace("0 PCMU", "18 G729")
        ),
        488,
        "127.0.0.1",
    ),
    # tolerated: the boundary is found from the body's first delimiter line, by pjsip and the bridge alike
    "multipart_without_boundary": (_no_boundary, 200, "127.0.0.1"),
    "multipart_without_close_delimiter": (
        lambda port: _siprec(port, metadata_xml("rfc"), close=False),
        488,
        "127.0.0.1",
    ),
    "bad_siprec_metadata": (lambda port: _siprec(port, BROKEN_METADATA), 400, "127.0.0.1"),
    # tolerated: without Require: siprec the recording goes on, its roles decided without metadata
    "bad_siprec_metadata_not_required": (
        lambda port: _siprec(port, BROKEN_METADATA, option="Supported"),
        200,
        "127.0.0.1",
    ),
    "unparseable_sdp": (
        lambda port: rawsip.invite(port, body=rawsip.SDP.format(port="²", pts="0")),
        400,
        "127.0.0.1",
    ),
    "forbidden_source": (lambda port: rawsip.invite(port), 403, "127.0.0.3"),
}


@pytest.mark.parametrize("case", list(ANSWERS))
def test_hostile_invite_is_answered_and_the_same_worker_serves(hostile: Hostile, case: str) -> None:
    build, status, source = ANSWERS[case]
    port = hostile.bridge.sip_port
    pid, restarts = hostile.worker_pid(), hostile.restarts()
    for transport in TRANSPORTS:
        reply = rawsip.send(port, build(port), transport, source=source)
        assert reply is not None, f"{case} over {transport}: no answer"
        assert reply.status == status, (transport, reply.raw[:300])
        if reply.status == 200:
            _hang_up(port, reply, transport)
    time.sleep(0.5)  # a crash after the answer (as 488 used to) shows up here
    hostile.lived_on(pid, restarts)
    hostile.serves_four_calls()
    hostile.lived_on(pid, restarts)


def test_content_length_beyond_the_datagram_is_400_and_never_a_call(hostile: Hostile) -> None:
    port = hostile.bridge.sip_port
    pid, restarts = hostile.worker_pid(), hostile.restarts()
    body = rawsip.SDP.format(port=4000, pts="0")
    message = rawsip.invite(port, body=body, content_length=len(body) + 300)
    call_id = re.search(rb"Call-ID: (\S+)", message)
    assert call_id is not None
    reply = rawsip.send(port, message, "udp")
    assert reply is not None and reply.status == 400
    time.sleep(0.5)
    assert call_id.group(1).decode() not in hostile.bridge.calls()
    hostile.lived_on(pid, restarts)


def test_full_worker_answers_503_with_retry_after_over_udp_and_tcp(hostile: Hostile) -> None:
    port = hostile.bridge.sip_port
    pid, restarts = hostile.worker_pid(), hostile.restarts()
    held = [sipua.invite(port, hangup=False) for _ in range(4)]
    try:
        assert [answer.status for answer in held] == [200] * 4
        for transport in TRANSPORTS:
            reply = rawsip.send(port, rawsip.invite(port), transport)
            assert reply is not None and reply.status == 503, transport
            assert reply.headers.get("retry-after") == RETRY_AFTER
    finally:
        for answer in held:
            if answer.dialog is not None:
                answer.dialog.bye()
    time.sleep(1.0)
    hostile.lived_on(pid, restarts)
    hostile.serves_four_calls()


def test_flood_from_one_source_gets_503_and_other_sources_are_served(hostile: Hostile) -> None:
    port = hostile.bridge.sip_port
    pid, restarts = hostile.worker_pid(), hostile.restarts()
    answers: list[int] = []
    for transport in TRANSPORTS:
        for _ in range(30):  # the default burst is 40 INVITEs: 60 from one source overflow it
            reply = rawsip.send(
                port, rawsip.invite(port, body="", content_type=None), transport, source="127.0.0.4"
            )
            answers.append(reply.status if reply else 0)
    assert set(answers) <= {488, 503}, answers
    assert answers.count(503) >= 15, answers
    assert hostile.metric("vblaze_bridge_calls_total", 'result="rejected_rate"') >= 15
    hostile.lived_on(pid, restarts)
    hostile.serves_four_calls()


def test_oversized_invite_is_dropped_and_counted(hostile: Hostile) -> None:
    port = hostile.bridge.sip_port
    pid, restarts = hostile.worker_pid(), hostile.restarts()
    before = hostile.metric("vblaze_bridge_sip_messages_dropped_total")
    big = rawsip.invite(port, extra_headers="X-Big: " + "A" * 70_000 + "\r\n")
    for transport in TRANSPORTS:
        reply = rawsip.send(port, big, transport, wait=1.5)
        assert reply is None or 400 <= reply.status < 600, transport
    time.sleep(0.5)
    assert hostile.metric("vblaze_bridge_sip_messages_dropped_total") > before
    hostile.lived_on(pid, restarts)
    hostile.serves_four_calls()


def test_answered_calls_that_are_never_acked_or_never_send_rtp_give_their_slots_back(
    hostile: Hostile,
) -> None:
    port = hostile.bridge.sip_port
    pid, restarts = hostile.worker_pid(), hostile.restarts()
    no_ack_before = hostile.metric("vblaze_bridge_calls_reclaimed_total", 'cause="no_ack"')
    no_rtp_before = hostile.metric("vblaze_bridge_calls_reclaimed_total", 'cause="no_rtp"')
    unacked = [rawsip.send(port, rawsip.invite(port), "udp") for _ in range(2)]
    assert [reply.status if reply else 0 for reply in unacked] == [200, 200]
    silent = [sipua.invite(port, hangup=False) for _ in range(2)]  # ACKed, never a packet of RTP
    assert [answer.status for answer in silent] == [200, 200]
    started = time.monotonic()
    try:
        # Each slot comes back once the bridge hung up and pjsip's transactions with the dead peer ended;
        # until then the gate answers 503 (not pjsua's 486).
        bound = max(ACK_TIMEOUT, FIRST_RTP_TIMEOUT) + TRANSACTION_TIMEOUT + 2
        answers: list[int] = []
        while time.monotonic() - started < bound + 2:
            probe = [sipua.invite(port, hangup=False) for _ in range(4)]
            answers += [answer.status for answer in probe]
            for answer in probe:
                if answer.dialog is not None:
                    answer.dialog.bye()
            if all(answer.status == 200 for answer in probe):
                break
            time.sleep(0.5)
        freed_after = time.monotonic() - started
        assert set(answers) <= {200, 503}, answers
        assert freed_after < bound, (freed_after, answers)
    finally:
        for answer in silent:
            if answer.dialog is not None:
                answer.dialog.sock.close()
                answer.dialog.rtp.close()
    assert hostile.metric("vblaze_bridge_calls_reclaimed_total", 'cause="no_ack"') == no_ack_before + 2
    assert hostile.metric("vblaze_bridge_calls_reclaimed_total", 'cause="no_rtp"') == no_rtp_before + 2
    reasons = sorted(
        events[-1]["data"]["reason"]
        for events in hostile.bridge.calls().values()
        if events[-1]["kind"] == "call.ended" and events[-1]["data"]["reason"] in ("no_ack", "no_rtp")
    )
    assert reasons.count("no_ack") >= 2 and reasons.count("no_rtp") >= 2
    hostile.lived_on(pid, restarts)
    hostile.serves_four_calls()


# --- a separate bridge for the settings that would disturb the others ----------------------------


def test_one_source_holds_at_most_its_share_of_a_worker(make_bridge: Any, standin_vad: Standin) -> None:
    bridge = make_bridge(standin_vad.url, sip={"calls_per_source": 2, "first_rtp_timeout_seconds": 30})
    port = bridge.sip_port
    held = [sipua.invite(port, hangup=False) for _ in range(2)]
    try:
        assert [answer.status for answer in held] == [200, 200]
        third = rawsip.send(port, rawsip.invite(port), "udp")
        assert third is not None and third.status == 503
        other = rawsip.send(port, rawsip.invite(port), "tcp", source="127.0.0.2")
        assert other is not None and other.status == 200  # another source still gets a slot
    finally:
        for answer in held:
            if answer.dialog is not None:
                answer.dialog.bye()


def test_draining_worker_answers_503_and_finishes_its_call(make_bridge: Any, standin_vad: Standin) -> None:
    bridge = make_bridge(standin_vad.url, drain={"timeout_seconds": 20}, sip={"retry_after_seconds": 3})
    port = bridge.sip_port
    call = sipua.invite(port, hangup=False)
    assert call.status == 200 and call.dialog is not None
    dialog = call.dialog
    talker = threading.Thread(target=dialog.send_silence, args=(4.0,))
    talker.start()
    assert bridge.proc is not None
    bridge.proc.send_signal(15)
    time.sleep(1.0)
    for transport in TRANSPORTS:
        reply = rawsip.send(port, rawsip.invite(port), transport)
        assert reply is not None and reply.status == 503, transport
        assert reply.headers.get("retry-after") == "3"
    talker.join()
    dialog.bye()
    assert bridge.proc.wait(timeout=40) == 0
    (events,) = bridge.calls().values()
    assert events[-1]["kind"] == "call.ended" and events[-1]["data"]["reason"] == "remote_bye"


# --- RFC 4475 torture messages ---------------------------------------------------------------------


def _m(text: str) -> bytes:
    """A torture message: `|` stands for CRLF; @CALLID@ is made unique per send."""
    return text.replace("|", "\r\n").replace("@CALLID@", f"torture-{uuid.uuid4().hex[:12]}").encode()


_SDP = (
    "v=0|o=- 1 1 IN IP4 127.0.0.1|s=-|c=IN IP4 127.0.0.1|t=0 0|m=audio 4000 RTP/AVP 0|a=rtpmap:0 PCMU/8000|"
)
_VIA = "Via: SIP/2.0/@TRANSPORT@ @HOST@:@LOCAL@;branch=@BRANCH@;rport|"
_COMMON = (
    "From: <sip:t@@HOST@:@LOCAL@>;tag=t1|To: <sip:svc@127.0.0.1>|Call-ID: @CALLID@|Max-Forwards: 70|"
    "Contact: <sip:t@@HOST@:@LOCAL@>|"
)


def _with_sdp(head: str) -> bytes:
    body = _SDP.replace("|", "\r\n")
    return _m(head + f"Content-Type: application/sdp|Content-Length: {len(body)}||") + body.encode()


VALID_ODD: dict[str, bytes] = {
    # 3.1.1.1 wsinv: line folding, odd whitespace and case, unknown headers, escaped quotes
    "wsinv": _with_sdp(
        "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0|"
        "TO :| sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n|"
        'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>|  ;|  tag = 98asjd8|'
        "MaX-fOrWaRdS: 0068|Call-ID: @CALLID@|cseq: 0009|  INVITE|"
        "Via  : SIP  /   2.0| /@TRANSPORT@|    @HOST@:@LOCAL@;branch=@BRANCH@;rport|"
        "s :|NewFangledHeader:   newfangled value| continued newfangled value|"
        "UnknownHeaderWithUnusualValue: ;;,,;;,;|"
        'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =|      newvalue ;|'
        "  secondparam ; q = 0.33|"
    ),
    # 3.1.1.2 intmeth: a method name made of every token character
    "intmeth": _m(
        "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0|"
        + _VIA
        + "To: <sip:svc@127.0.0.1>|From: <sip:t@@HOST@>;tag=1|Call-ID: @CALLID@|Max-Forwards: 70|"
        "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~|Content-Length: 0||"
    ),
    # 3.1.1.3 esc01: escaped characters in the Request-URI user part
    "esc01": _with_sdp(
        "INVITE sip:sip%3Auser%40example.com@127.0.0.1;lr SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|"
    ),
    # 3.1.1.4 escnull: an escaped NUL in the user part
    "escnull": _with_sdp("INVITE sip:null-%00-null@127.0.0.1 SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|"),
    # 3.1.1.6 lwsdisp: no whitespace between the display name and '<'
    "lwsdisp": _m(
        "OPTIONS sip:user@example.com SIP/2.0|" + _VIA + "To: sip:user@example.com|"
        "From: caller<sip:caller@example.com>;tag=323|Max-Forwards: 70|Call-ID: @CALLID@|CSeq: 1 OPTIONS|"
        "Content-Length: 0||"
    ),
    # 3.1.1.7 longreq (shortened to fit a datagram): long display names, values and many parameters
    "longreq": _with_sdp(
        "INVITE sip:user@127.0.0.1 SIP/2.0|"
        + _VIA
        + f'To: "{"I have a user name of " * 20}"<sip:svc@127.0.0.1>|'
        "From: <sip:t@@HOST@>;tag=" + "12982424" * 20 + "|Call-ID: @CALLID@|Max-Forwards: 70|CSeq: 1 INVITE|"
        "Contact: <sip:t@@HOST@:@LOCAL@>|"
        "X-Unknown: " + ";".join(f"p{i}=v{i}" for i in range(120)) + "|"
    ),
    # 3.1.1.8 dblreq: two requests in one datagram (the second is to be ignored)
    "dblreq": _m(
        "REGISTER sip:example.com SIP/2.0|"
        + _VIA
        + "To: sip:j.user@example.com|From: sip:j.user@example.com;tag=43251j3j324|"
        "Max-Forwards: 8|I: @CALLID@|Contact: sip:j.user@host.example.com|CSeq: 8 REGISTER|L: 0||"
        "INVITE sip:joe@example.com SIP/2.0|t: sip:joe@example.com|From: sip:caller@example.net;tag=141334|"
        "Max-Forwards: 8|Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15|CSeq: 8 INVITE|"
        "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234|Content-Type: application/sdp|"
        "Content-Length: 151||"
    ),
    # 3.1.1.9 semiuri: a semicolon-separated parameter in the user part
    "semiuri": _with_sdp(
        "INVITE sip:user;par=u%40example.net@127.0.0.1 SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|"
    ),
    # 3.1.1.10 transports: unknown transports in further Via headers
    "transports": _m(
        "OPTIONS sip:user@example.com SIP/2.0|"
        + _VIA
        + "Via: SIP/2.0/SCTP t1.example.com;branch=z9hG4bKkdjuw|"
        "Via: SIP/2.0/TLS t2.example.com;branch=z9hG4bKklasjdhf|"
        "Via: SIP/2.0/UNKNOWN t3.example.com;branch=z9hG4bK2980|"
        + _COMMON
        + "CSeq: 1 OPTIONS|Content-Length: 0||"
    ),
    # 3.1.1.11 mpart01: a multipart body with the SDP as one part
    "mpart01": _m(
        "INVITE sip:svc@127.0.0.1 SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|"
        "Content-Type: multipart/mixed;boundary=7a9cbec02ceef655|Content-Length: @LEN@||"
    ),
    # 3.1.2.x with an RFC 2543 flavour (3.1.1.13 inv2543): no magic cookie in the branch, no Max-Forwards
    "inv2543": _with_sdp(
        "INVITE sip:UserB@127.0.0.1 SIP/2.0|Via: SIP/2.0/@TRANSPORT@ @HOST@:@LOCAL@;rport|"
        "From: <sip:UserA@@HOST@>;tag=1|To: <sip:UserB@127.0.0.1>|Call-ID: @CALLID@|CSeq: 1 INVITE|"
        "Contact: <sip:UserA@@HOST@:@LOCAL@>|"
    ),
}
_MPART_BODY = (
    "--7a9cbec02ceef655|Content-Type: application/sdp|Content-Transfer-Encoding: 8bit||"
    + _SDP
    + "|--7a9cbec02ceef655|Content-Type: text/plain|Content-Transfer-Encoding: binary||Hello|"
    "--7a9cbec02ceef655--|"
).replace("|", "\r\n")
VALID_ODD["mpart01"] = (
    VALID_ODD["mpart01"].replace(b"@LEN@", str(len(_MPART_BODY)).encode()) + _MPART_BODY.encode()
)

# Valid by RFC 4475, but pjsip 2.15 sends no answer to them (a method of every token character; a
# datagram holding two requests); they are not INVITEs, so the bridge's gate never decides on them.
UNANSWERED_BY_PJSIP = {"intmeth", "dblreq"}

# Invalid by RFC 4475 3.1.2.9 (trws: whitespace after the request line's version), yet pjsip and the
# bridge read it as the INVITE it plainly is, as robust UAs do: answered like the valid ones.
VALID_ODD["trws"] = _with_sdp("INVITE sip:svc@127.0.0.1 SIP/2.0 |" + _VIA + _COMMON + "CSeq: 1 INVITE|")

INVALID: dict[str, bytes] = {
    # 3.1.2.2 clerr: Content-Length larger than the body
    "clerr": _m(
        "INVITE sip:svc@127.0.0.1 SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|Content-Length: 9999||v=0|"
    ),
    # 3.1.2.3 scalar02: integers out of range
    "scalar02": _with_sdp(
        "INVITE sip:svc@127.0.0.1 SIP/2.0|" + _VIA + "From: <sip:t@@HOST@>;tag=1|To: <sip:svc@127.0.0.1>|"
        "Call-ID: @CALLID@|Max-Forwards: 300|Expires: 1" + "0" * 20 + "|CSeq: 36893488147419103232 INVITE|"
    ),
    # 3.1.2.4 scalarlg: a huge Content-Length
    "scalarlg": _m(
        "INVITE sip:svc@127.0.0.1 SIP/2.0|"
        + _VIA
        + _COMMON
        + "CSeq: 1 INVITE|Content-Length: 18446744073709551617||"
    ),
    # 3.1.2.5 quotbal: an unterminated quoted string in a display name
    "quotbal": _with_sdp(
        "INVITE sip:svc@127.0.0.1 SIP/2.0|"
        + _VIA
        + 'From: "Bob <sip:bob@example.com>;tag=1|To: <sip:svc@127.0.0.1>|'
        "Call-ID: @CALLID@|Max-Forwards: 70|CSeq: 1 INVITE|"
    ),
    # 3.1.2.6 ltgtruri: the Request-URI enclosed in <>
    "ltgtruri": _with_sdp("INVITE <sip:svc@127.0.0.1> SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|"),
    # 3.1.2.7 lwsruri: whitespace inside the Request-URI
    "lwsruri": _with_sdp(
        "INVITE sip:svc@127.0.0.1;lr; transport=udp SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|"
    ),
    # 3.1.2.8 lwsstart: several spaces between the request line's parts
    "lwsstart": _with_sdp("INVITE  sip:svc@127.0.0.1  SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|"),
    # 3.1.2.13 badvers: an unknown SIP version
    "badvers": _with_sdp("INVITE sip:svc@127.0.0.1 SIP/7.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|"),
    # 3.1.2.14 mismatch01: the CSeq method does not match the request's
    "mismatch01": _with_sdp("INVITE sip:svc@127.0.0.1 SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 OPTIONS|"),
    # 3.1.2.16 insuf: mandatory headers missing (no Call-ID, From, CSeq)
    "insuf": _with_sdp(
        "INVITE sip:svc@127.0.0.1 SIP/2.0|" + _VIA + "To: <sip:svc@127.0.0.1>|Max-Forwards: 70|"
    ),
    # 3.1.2.x multi01: several values in single-value headers
    "multi01": _with_sdp(
        "INVITE sip:svc@127.0.0.1 SIP/2.0|" + _VIA + _COMMON + "To: <sip:other@127.0.0.1>|"
        "Call-ID: second-@CALLID@|CSeq: 1 INVITE|CSeq: 2 INVITE|"
    ),
    # 3.1.2.x ncl: a negative Content-Length
    "ncl": _m("INVITE sip:svc@127.0.0.1 SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|Content-Length: -999||"),
    # ours: 200 audio m-lines
    "many_mlines": _with_sdp(
        "INVITE sip:svc@127.0.0.1 SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|"
    ).replace(
        b"m=audio 4000 RTP/AVP 0\r\n",
        b"".join(b"m=audio %d RTP/AVP 0\r\n" % (4000 + 2 * i) for i in range(200)),
    ),
    # ours: a clock rate of 0
    "rtpmap_rate_zero": _with_sdp(
        "INVITE sip:svc@127.0.0.1 SIP/2.0|" + _VIA + _COMMON + "CSeq: 1 INVITE|"
    ).replace(b"PCMU/8000", b"PCMU/0"),
    # responses to nothing, and bytes that are no SIP at all
    "stray_response": _m("SIP/2.0 200 OK|" + _VIA + _COMMON + "CSeq: 1 INVITE|Content-Length: 0||"),
    "bigcode": _m(
        "SIP/2.0 4294967301 better not break the receiver|"
        + _VIA
        + _COMMON
        + "CSeq: 1 INVITE|Content-Length: 0||"
    ),
    "garbage": b"\x00\x01\x02garbage\xff\xfe\r\n\r\n",
}


def _fix_length(message: bytes) -> bytes:
    """Content-Length as the bytes after the header section, where a case rewrote the body."""
    head, sep, body = message.partition(b"\r\n\r\n")
    if b"@LEN@" in head or not sep or b"Content-Length: " not in head:
        return message
    return re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % len(body), head) + sep + body


INVALID["many_mlines"] = _fix_length(INVALID["many_mlines"])
INVALID["rtpmap_rate_zero"] = _fix_length(INVALID["rtpmap_rate_zero"])


def test_rfc4475_torture_then_the_same_worker_takes_four_calls_within_5_s(hostile: Hostile) -> None:
    port = hostile.bridge.sip_port
    pid, restarts = hostile.worker_pid(), hostile.restarts()
    unanswered: list[str] = []
    for transport in TRANSPORTS:
        for name, message in VALID_ODD.items():
            if name == "dblreq" and transport == "tcp":
                continue  # the second request is half a message on a stream
            reply = rawsip.send(port, message, transport, wait=1.0 if name in UNANSWERED_BY_PJSIP else 2.0)
            if name in UNANSWERED_BY_PJSIP:
                continue
            if reply is None:
                unanswered.append(f"{name}/{transport}")
            elif reply.status == 200 and reply.headers.get("cseq", "").endswith("INVITE"):
                _hang_up(port, reply, transport)
        for name, message in INVALID.items():
            call_id = re.search(rb"Call-ID: (\S+)", message)
            reply = rawsip.send(port, message, transport, wait=1.0)
            assert reply is None or 400 <= reply.status < 700, (name, transport, reply.raw[:200])
            if call_id is not None:
                assert call_id.group(1).decode() not in hostile.bridge.calls(), (name, transport)
    assert not unanswered, unanswered
    done = time.monotonic()
    hostile.lived_on(pid, restarts)
    threads = threading.Thread(target=hostile.serves_four_calls)
    threads.start()
    deadline = done + 5
    while time.monotonic() < deadline and hostile.metric("vblaze_bridge_calls_active") < 4:
        time.sleep(0.1)
    assert hostile.metric("vblaze_bridge_calls_active") == 4, "4 calls not up within 5 s of the torture"
    threads.join(60)
    hostile.lived_on(pid, restarts)


def _hang_up(port: int, reply: rawsip.Reply, transport: str) -> None:
    """ACK a 2xx the torture got and send BYE, so its slot is free at once."""
    text = reply.raw.decode(errors="replace").split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [line for line in text[1:] if line.split(":", 1)[0].strip().lower() in ("from", "to", "call-id")]
    for cseq, method in ((1, "ACK"), (2, "BYE")):
        message = "\r\n".join(
            [
                f"{method} sip:svc@127.0.0.1:{port} SIP/2.0",
                _VIA.rstrip("|"),
                *keep,
                f"CSeq: {cseq} {method}",
                "Content-Length: 0",
            ]
        )
        rawsip.send(port, (message + "\r\n\r\n").encode(), transport, wait=0.3 if method == "ACK" else 1.0)

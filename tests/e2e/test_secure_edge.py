"""The secure edge (docs/security.md): SIP over TLS with digest or allow-list authentication at
Kamailio, SRTP terminated by rtpengine, the workers on plain UDP SIP and RTP behind them.

Real peers on 127.0.0.1: Kamailio running bridge/assets/kamailio.cfg with WITH_SECURE, rtpengine in
userspace, baresip as the device (TLS transport, `mediaenc=srtp-mand`, speech from a WAV file), the
bridge with its stand-in engine, tshark on `lo`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.load import Kamailio, scrape, start_kamailio, total
from bridge.config import load_config
from bridge.demo import wait_for_sip
from bridge.dispatcher import dispatcher_list
from sip.limits import rtp_ports
from tests.e2e.conftest import Bridge, Standin, end_bridge, new_bridge
from tests.fixtures import edge, rawsip
from tests.fixtures.audio import speech_wav as espeak_wav
from tests.fixtures.harness import free_port_block, wait_until
from tests.fixtures.sbc import TlsSbc
from tests.fixtures.siprec_caller import run_siprec_call

TOOLS = ("kamailio", "kamcmd", "rtpengine", "baresip", "tshark", "openssl", "espeak-ng", "sox")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
TLS_MODULE = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so")
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}"),
    pytest.mark.skipif(not TLS_MODULE.exists(), reason="kamailio-tls-modules is not installed"),
]

SENTENCE = "please check my order number four two seven, it was sent to the wrong address"
INVITES = "vblaze_bridge_invite_responses_total"
RTP_PACKETS = "vblaze_bridge_rtp_packets_total"


@dataclass
class Edge:
    kam: Kamailio
    rtpengine: edge.Rtpengine
    pki: edge.Pki
    tls_port: int
    bridge: Bridge
    metrics_url: str
    worker_rtp: tuple[int, int]  # the RTP ports the bridge's workers bind (the inside leg's far end)

    def uri(self, user: str = "svc") -> str:
        return f"sip:{user}@127.0.0.1:{self.tls_port};transport=tls"

    def invites(self) -> float:
        return total(scrape(self.metrics_url), INVITES)


@pytest.fixture
def speech_wav(speech_dir: Path) -> Path:
    """The sentence as an 8 kHz mono 16-bit WAV: baresip's audio source."""
    target = speech_dir / "secure-edge.wav"
    if not target.exists():
        raw = speech_dir / "secure-edge-22k.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), SENTENCE], check=True)
        subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(target)], check=True)
    return target


@pytest.fixture
def secure_edge(tmp_path: Path, make_bridge: Any) -> Iterator[Any]:
    """factory(engine_url, advertise=None, trunks=(), more_defines=()) -> Edge; everything stopped after."""
    stops: list[Any] = []

    def factory(
        engine_url: str,
        advertise: str | None = None,
        trunks: tuple[tuple[str, int], ...] = (),
        more_defines: tuple[str, ...] = (),
        **bridge_sections: dict[str, Any],
    ) -> Edge:
        metrics_port = free_port_block(1)
        bridge = make_bridge(engine_url, metrics={"port": metrics_port}, **bridge_sections)
        pki = edge.make_pki(tmp_path / "pki")
        auth_db = edge.write_auth_db(tmp_path / "auth", {"alice": "correct-horse-42"}, trunks)
        rtpengine = edge.start_rtpengine(tmp_path / "rtpengine", advertise=advertise)
        stops.append(rtpengine)
        tls_port = free_port_block(1)
        defines = edge.secure_defines(pki, auth_db, rtpengine.ng_port, tls_port, *more_defines)
        config = load_config(bridge.config_path)
        kam = start_kamailio(dispatcher_list(config), tmp_path / "kamailio", defines=defines)
        stops.append(kam)
        kam.wait_destinations(1)
        first = config.sip.rtp_first_port
        worker_rtp = (first, first + rtp_ports(config.sip.workers) - 1)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        return Edge(kam, rtpengine, pki, tls_port, bridge, metrics_url, worker_rtp)

    yield factory
    for each in reversed(stops):
        each.stop()


def call(workdir: Path, target: str, edge_: Edge, wav: Path, seconds: int, **kwargs: Any) -> edge.Baresip:
    phone = edge.start_baresip(workdir, target, ca=edge_.pki.ca, wav=wav, seconds=seconds, **kwargs)
    try:
        phone.wait(seconds + 15)
    finally:
        phone.stop()
    return phone


def test_a_tls_srtp_call_brings_the_words_back_and_nothing_leaves_the_caller_in_clear(
    standin_whisper: Standin, secure_edge: Any, speech_wav: Path, tmp_path: Path
) -> None:
    e = secure_edge(standin_whisper.url)
    phone_dir = tmp_path / "baresip"
    # Every port of the caller (its SIP port, its RTP ports, its TLS connection) and rtpengine's.
    low, high = e.rtpengine.ports
    sip_port, rtp_first = edge.baresip_ports()
    capture = edge.start_capture(
        tmp_path,
        f"port {sip_port} or tcp port {e.tls_port} or udp portrange {rtp_first}-{rtp_first + 9} "
        f"or udp portrange {low}-{high}",
    )
    try:
        phone = call(
            phone_dir,
            e.uri(),
            e,
            speech_wav,
            seconds=10,
            password="correct-horse-42",
            ports=(sip_port, rtp_first),
        )
    finally:
        capture.stop()
    assert capture.fields(f"udp.port == {sip_port} || tcp.port == {sip_port}", "frame.number") == []
    calls = e.bridge.wait_ended(1, timeout=60)
    ((call_id, events),) = calls.items()
    ended = events[-1]
    assert ended["kind"] == "call.ended" and ended["data"]["reason"] == "remote_bye", events
    words = " ".join(str(ended["data"]["transcript"] or "").lower().replace(",", " ").split())
    # tiny.en on G.711 through SRTP: most of the sentence, not every word (once "wrong address" came back
    # as "narang and rest" on a loaded machine); garbled or no audio would give none of them.
    heard = {"please", "check", "order", "number", "sent", "wrong", "address"} & set(
        re.findall(r"[a-z]+", words)
    )
    assert len(heard) >= 4, words
    log = e.kam.log()
    assert "alice authenticated from 127.0.0.1" in log and f"rtpengine: {call_id} anchored" in log

    # SIP: TLS records only on the caller's hop, no SIP method or status line in clear.
    as_tls = [f"tcp.port=={e.tls_port},tls"]
    assert capture.fields(
        f"tcp.port == {e.tls_port} && tls.handshake.type == 1", "frame.number", decode_as=as_tls
    )
    records = capture.fields(f"tcp.port == {e.tls_port} && tls.app_data", "frame.number", decode_as=as_tls)
    assert len(records) >= 6, records  # INVITE, 401, ACK, INVITE, 100/200, ACK, BYE, 200: all encrypted
    clear = capture.fields(
        f'tcp.port == {e.tls_port} && (frame contains "SIP/2.0" || frame contains "INVITE")', "frame.number"
    )
    assert clear == []
    assert capture.fields(f"tcp.port == {e.tls_port} && sip", "frame.number", decode_as=as_tls) == []
    # Media leaving the caller: SRTP only (RTP header + 160 bytes of PCMU + a 10-byte auth tag, the
    # payload indistinguishable from random); on the inside, rtpengine -> worker, the same audio is plain.
    # The caller is whoever sends to rtpengine but the worker (baresip picks its ports from `rtp_ports`,
    # but what this test checks must not hang on that choice).
    worker_low, worker_high = e.worker_rtp
    # rtpengine's NG replies (from its NG port) go to Kamailio's ephemeral NG socket, which may fall inside
    # rtpengine's media range: they are not media.
    ng = e.rtpengine.ng_port
    caller = (
        f"udp.dstport >= {low} && udp.dstport <= {high} && !(udp.srcport >= {low} && udp.srcport <= {high})"
        f" && !(udp.srcport >= {worker_low} && udp.srcport <= {worker_high}) && udp.srcport != {ng}"
    )
    caller_flows = flows(capture, caller)
    out = [p for flow in caller_flows.values() for p in flow]
    rtp = [p for p in out if not edge.is_rtcp(p)]
    seen = (sorted(caller_flows), phone.rtp_ports, phone.log()[-1500:])
    assert len(rtp) > 200 and {len(p) for p in rtp} == {edge.RTP_HEADER + 160 + edge.SRTP_TAG}, seen
    assert edge.byte_entropy(b"".join(p[edge.RTP_HEADER : -edge.SRTP_TAG] for p in rtp)) > 7.8
    # RTCP is SRTCP but for what baresip 1.0.0 itself sends outside it: an APP "PING" when the stream
    # starts, BYE and SDES when it ends (no audio in either; docs/security.md says so).
    rtcp = [edge.plain_rtcp_types(p) for p in out if edge.is_rtcp(p)]
    assert None in rtcp  # SRTCP reports
    leaked = {t for types in rtcp if types is not None for t in types}
    assert leaked <= {202, 203, 204}, leaked
    assert sum(types is not None for types in rtcp) <= 3, rtcp
    inside = flows(
        capture,
        f"udp.srcport >= {low} && udp.srcport <= {high}"
        f" && udp.dstport >= {worker_low} && udp.dstport <= {worker_high}",
    )
    plain = max(inside.values(), key=len)
    assert len(plain) > 200 and {len(p) for p in plain} == {edge.RTP_HEADER + 160}
    assert edge.byte_entropy(b"".join(p[edge.RTP_HEADER :] for p in plain)) < 7.5


def flows(capture: edge.Capture, display_filter: str) -> dict[tuple[str, str], list[bytes]]:
    """UDP payloads matching the filter, by (source port, destination port)."""
    out: dict[tuple[str, str], list[bytes]] = {}
    for src, dst, data in capture.fields(display_filter, "udp.srcport", "udp.dstport", "udp.payload"):
        out.setdefault((src, dst), []).append(bytes.fromhex(data))
    return out


def test_the_worker_hangs_up_a_tls_caller_over_its_own_connection(
    secure_edge: Any, standin_vad: Standin, speech_wav: Path, tmp_path: Path
) -> None:
    """A draining bridge ends the call itself: its BYE reaches the TLS caller through Kamailio over the
    caller's connection (the Contact's ;alias=), not by a new connection to the caller's address."""
    e = secure_edge(standin_vad.url, more_defines=("WITH_DEBUG",), drain={"timeout_seconds": 1})
    long_wav = tmp_path / "long.wav"
    subprocess.run(["sox", str(speech_wav), str(long_wav), "pad", "0", "30"], check=True, timeout=30)
    phone = edge.start_baresip(
        tmp_path / "baresip", e.uri(), ca=e.pki.ca, wav=long_wav, seconds=40, password="correct-horse-42"
    )
    try:
        wait_until(lambda: "Call established" in phone.log(), 15, "the call is up")
        assert e.bridge.proc is not None
        e.bridge.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "terminated" in phone.log(), 15, "baresip's call ended by the bridge")
    finally:
        phone.stop()
    # baresip reports a BYE from the far end as ECONNRESET ("Connection reset by peer").
    assert "session closed: Connection reset by peer" in phone.log(), phone.log()[-1500:]
    bye = [line for line in e.kam.log().splitlines() if " BYE " in line]
    assert any("ki_handle_ruri_alias_mode(): setting dst_uri to <sip:127.0.0.1:" in line for line in bye)
    assert any("found connection by peer address" in line for line in bye), bye[-20:]
    calls = e.bridge.wait_ended(1, timeout=15)
    ended = next(iter(calls.values()))[-1]
    assert ended["kind"] == "call.ended" and ended["data"]["reason"] != "remote_bye", ended


def test_the_wrong_ca_or_plain_text_on_the_tls_port_gets_no_sip(
    secure_edge: Any, standin_vad: Standin
) -> None:
    e = secure_edge(standin_vad.url)
    options = (
        f"OPTIONS sip:127.0.0.1:{e.tls_port} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bK-t1\r\n"
        "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: tls-probe\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()

    def over_tls(ca: Path) -> bytes:
        context = ssl.create_default_context(cafile=str(ca))
        with socket.create_connection(("127.0.0.1", e.tls_port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(options)
                return tls.recv(4096)

    assert over_tls(e.pki.ca).startswith(b"SIP/2.0 200")  # the right CA: a TLS session and SIP in it
    with pytest.raises(ssl.SSLCertVerificationError):
        over_tls(e.pki.other_ca)
    # SIP in clear to the TLS port: no SIP answer, the connection is closed.
    with socket.create_connection(("127.0.0.1", e.tls_port), timeout=5) as raw:
        raw.sendall(options)
        raw.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert b"SIP/2.0" not in raw.recv(4096)
    assert e.kam.proc.poll() is None and e.bridge.calls() == {}


def test_a_wrong_digest_password_is_refused_at_the_edge_and_the_right_one_gets_through(
    secure_edge: Any, standin_vad: Standin, speech_wav: Path, tmp_path: Path
) -> None:
    e = secure_edge(standin_vad.url)
    before = e.invites()
    wrong = call(tmp_path / "wrong", e.uri(), e, speech_wav, seconds=4, password="incorrect-horse-42")
    assert "403 Forbidden" in wrong.log(), wrong.log()[-2000:]
    assert "bad credentials for alice from 127.0.0.1" in e.kam.log()
    assert "dispatch " not in e.kam.log()
    time.sleep(1)
    assert e.bridge.calls() == {} and e.invites() == before  # nothing reached a worker
    unknown = call(tmp_path / "unknown", e.uri(), e, speech_wav, seconds=4, user="mallory")
    assert "403 Forbidden" in unknown.log() and e.bridge.calls() == {}

    call(tmp_path / "right", e.uri(), e, speech_wav, seconds=5, password="correct-horse-42")
    calls = e.bridge.wait_ended(1, timeout=30)
    assert next(iter(calls.values()))[0]["kind"] == "call.started"
    assert e.invites() == before + 1


@pytest.mark.parametrize("anchor", [False, True], ids=["plain-passes", "ANCHOR_PLAIN"])
def test_an_allow_listed_trunk_needs_no_challenge_and_its_plain_rtp_passes_or_is_anchored(
    secure_edge: Any, standin_vad: Standin, anchor: bool
) -> None:
    trunk_port = free_port_block(1)
    more = ("ANCHOR_PLAIN",) if anchor else ()
    e = secure_edge(standin_vad.url, trunks=(("127.0.0.1", trunk_port),), more_defines=more)
    challenged = rawsip.send(e.kam.port, rawsip.invite(e.kam.port), wait=3.0)  # another source port
    assert challenged is not None and challenged.status == 401, challenged
    assert 'realm="vblaze-bridge"' in challenged.headers.get("www-authenticate", "")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", trunk_port))
        sock.settimeout(5)
        message = rawsip.fill(rawsip.invite(e.kam.port), "UDP", "127.0.0.1", trunk_port, "z9hG4bK-trunk1")
        sock.sendto(message, ("127.0.0.1", e.kam.port))
        replies: list[bytes] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            replies.append(sock.recv(65535))
            if replies[-1].startswith(b"SIP/2.0 2"):
                break
    assert replies and replies[-1].startswith(b"SIP/2.0 200"), replies
    assert "allowed by address" in e.kam.log()
    media = re.search(rb"m=audio (\d+) (\S+)", replies[-1])
    assert media is not None and media.group(2) == b"RTP/AVP"
    low, high = e.rtpengine.ports
    # Plain RTP goes straight to the worker (its own port in the answer) unless ANCHOR_PLAIN is set.
    assert (low <= int(media.group(1)) <= high) == anchor, (media.group(1), e.rtpengine.ports)
    wait_until(lambda: len(e.bridge.calls()) == 1, 10, "the trunk's call reached a worker")


def test_a_tampered_srtp_auth_tag_is_dropped_by_rtpengine_and_counted(
    secure_edge: Any, standin_vad: Standin, speech_wav: Path, tmp_path: Path
) -> None:
    """rtpengine advertises 127.0.0.2 (bound to 127.0.0.1); a proxy there flips a byte of the auth tag of
    every second SRTP packet from the caller. rtpengine drops exactly those and counts them as errors."""
    e = secure_edge(standin_vad.url, advertise="127.0.0.2")
    before = e.rtpengine.totals()
    proxy = edge.TamperProxy("127.0.0.2", e.rtpengine.ports, e.worker_rtp)
    proxy.start()
    try:
        phone = edge.start_baresip(
            tmp_path / "baresip", e.uri(), ca=e.pki.ca, wav=speech_wav, seconds=8, password="correct-horse-42"
        )
        try:
            phone.wait(25)
        finally:
            phone.stop()
    finally:
        proxy.stop()
    assert proxy.tampered > 50, (proxy.tampered, proxy.forwarded, proxy.caller_ports, phone.log()[-1500:])
    after = e.rtpengine.totals()
    errors = int(after["relayedpacketerrors"]) - int(before["relayedpacketerrors"])
    assert abs(errors - proxy.tampered) <= 5, (errors, proxy.tampered, e.rtpengine.log()[-2000:])
    calls = e.bridge.wait_ended(1, timeout=30)
    assert next(iter(calls.values()))[-1]["kind"] == "call.ended"
    # The worker got the good half only (had rtpengine relayed the tampered ones it would count ~all).
    received = total(scrape(e.metrics_url), RTP_PACKETS)
    good = proxy.from_caller - proxy.tampered
    assert 0.8 * good <= received <= good, (received, proxy.from_caller, proxy.tampered)  # last ones race BYE


def test_pike_drops_a_flooding_source(secure_edge: Any, standin_vad: Standin) -> None:
    e = secure_edge(standin_vad.url, more_defines=("PIKE_DENSITY=10", "PIKE_UNIT=2"))
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        sock.settimeout(0.05)
        for n in range(100):
            sock.sendto(
                (
                    f"OPTIONS sip:127.0.0.1:{e.kam.port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-flood{n}\r\n"
                    f"From: <sip:flood@127.0.0.1>;tag=f\r\nTo: <sip:127.0.0.1>\r\nCall-ID: flood-{n}\r\n"
                    "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", e.kam.port),
            )
            with contextlib.suppress(TimeoutError):
                while sock.recv(65535):
                    answered += 1
    assert 5 <= answered <= 40, answered
    assert "pike: 127.0.0.1 over" in e.kam.log()
    assert e.kam.proc.poll() is None


CALLER_TEXT = "I would like to cancel my subscription today."
AGENT_TEXT = "Certainly, may I have your account number please."


def test_siprec_over_tls_with_both_streams_in_srtp(
    standin_whisper: Standin, secure_edge: Any, tmp_path: Path
) -> None:
    """An SBC (tests/fixtures/sbc.py: TLS and its own rtpengine making SRTP) records a call to the
    bridge through the edge: both streams cross the outside hop as SRTP, both voices come back."""
    e = secure_edge(
        standin_whisper.url,
        trunks=(("127.0.0.1", 0),),  # the SBC: by address, no digest
        siprec={"agent_patterns": [r"@pbx\.callcentre\.example$"]},
    )
    sbc_media = edge.start_rtpengine(tmp_path / "sbc-rtpengine")
    sbc = TlsSbc(e.tls_port, e.pki.ca, sbc_media)
    outside = f"udp portrange {sbc_media.ports[0]}-{sbc_media.ports[1]}"
    capture = edge.start_capture(tmp_path, f"tcp port {e.tls_port} or {outside}")
    try:
        sbc.start()
        caller = espeak_wav(CALLER_TEXT, voice="en-us", encoding="u-law")
        agent = espeak_wav(AGENT_TEXT, voice="en-gb+f3", encoding="u-law")
        result = run_siprec_call(
            sbc.port, caller, agent, metadata_style="rfc", actions=[(1.5, "metadata:rfc")]
        )
    finally:
        capture.stop()
        sbc.stop()
        sbc_media.stop()
    assert result.status == 200 and result.bye_status == 200, (result.invite_response, sbc.relayed)
    assert result.actions == [("metadata:rfc", 200)], sbc.relayed  # a re-INVITE, through both rtpengines
    calls = e.bridge.wait_ended(1, timeout=60)
    events = calls[result.call_id]
    siprec = events[0]["data"]["siprec"]
    assert [r["role"] for r in siprec["roles"]] == ["caller", "agent"], siprec
    said = {
        role: " ".join(
            u["data"]["text"].lower()
            for u in events
            if u["kind"] == "utterance" and u["data"]["role"] == role
        )
        for role in ("caller", "agent")
    }
    assert "subscription" in said["caller"] and "account" in said["agent"], said
    assert "allowed by address" in e.kam.log() and f"rtpengine: {result.call_id} anchored" in e.kam.log()
    assert f"rtpengine: {result.call_id} re-offered as RTP/AVP" in e.kam.log()

    as_tls = [f"tcp.port=={e.tls_port},tls"]
    assert capture.fields(
        f"tcp.port == {e.tls_port} && tls.handshake.type == 1", "frame.number", decode_as=as_tls
    )
    assert capture.fields(f'tcp.port == {e.tls_port} && frame contains "SIP/2.0"', "frame.number") == []
    # The outside hop: the SBC's rtpengine <-> the edge's rtpengine, two SRTP streams and nothing plain.
    low, high = e.rtpengine.ports
    out = flows(capture, f"udp.srcport >= {sbc_media.ports[0]} && udp.srcport <= {sbc_media.ports[1]} "
                         f"&& udp.dstport >= {low} && udp.dstport <= {high}")  # fmt: skip
    rtp = {key: [p for p in flow if not edge.is_rtcp(p)] for key, flow in out.items()}
    streams = [packets for packets in rtp.values() if len(packets) > 100]
    assert len(streams) == 2, {k: len(v) for k, v in rtp.items()}
    for packets in streams:  # the suite the two rtpengines agree: AES-CM/HMAC-SHA1-80 or AES-GCM (16)
        (size,) = {len(p) for p in packets}
        tag = size - edge.RTP_HEADER - 160
        assert tag in (edge.SRTP_TAG, 16), size
        assert edge.byte_entropy(b"".join(p[edge.RTP_HEADER : -tag] for p in packets)) > 7.8
    assert all(edge.plain_rtcp_types(p) is None for flow in out.values() for p in flow if edge.is_rtcp(p))


def test_make_kamailio_secure_starts_bridge_kamailio_and_rtpengine(tmp_path: Path) -> None:
    """`make kamailio SECURE=1` (setup taken as done): a self-signed certificate and empty tables are
    made, `make kamailio-user` stores only an HA1, the three processes answer, SIGTERM stops them all."""
    repo = Path(__file__).resolve().parents[2]
    bridge = new_bridge(tmp_path, 0, "ws://127.0.0.1:9/unused", start=False)
    sip, tls = free_port_block(1), free_port_block(1)
    ng, cli = free_port_block(1), free_port_block(1)
    media = free_port_block(20, low=40000, high=60000)
    kdir = tmp_path / "kam"
    args = [
        "make", "-s", "-o", "setup", f"BIN={Path(sys.executable).parent}", f"CONFIG={bridge.config_path}",
        f"KAMAILIO_DIR={kdir}", f"KAMAILIO_LISTEN=udp:127.0.0.1:{sip}",
        f"KAMAILIO_TLS_LISTEN=tls:127.0.0.1:{tls}", f"RTPENGINE_NG=127.0.0.1:{ng}",
        f"RTPENGINE_CLI=127.0.0.1:{cli}", f"RTPENGINE_PORT_MIN={media}", f"RTPENGINE_PORT_MAX={media + 19}",
    ]  # fmt: skip
    added = subprocess.run(
        [*args, "kamailio-user", "DEVICE=alice"], cwd=repo, input="s3cret-pw\n", text=True,
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    rows = (kdir / "auth" / "subscriber").read_text().splitlines()
    assert rows[1] == f"1:alice:vblaze-bridge:{edge.ha1('alice', 's3cret-pw')}" and "s3cret-pw" not in rows[1]
    assert (kdir / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    log = (tmp_path / "make.log").open("wb")
    proc = subprocess.Popen(
        [*args, "SECURE=1", "kamailio"], cwd=repo, stdout=log, stderr=log, start_new_session=True
    )
    try:
        wait_for_sip(bridge.sip_port, timeout=30)
        wait_for_sip(sip, timeout=30)
        context = ssl.create_default_context(cafile=str(kdir / "tls" / "cert.pem"))
        with socket.create_connection(("127.0.0.1", tls), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                assert conn.version() in ("TLSv1.2", "TLSv1.3")
        engine = edge.Rtpengine(proc, ng, (media, media + 19), tmp_path / "make.log")  # type: ignore[arg-type]
        assert engine.ng({"command": "ping"})["result"] == "pong"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        end_bridge(bridge)
    for pattern in (f"{kdir}/kamailio_ctl", f"--listen-ng=127.0.0.1:{ng}", f"--config {bridge.config_path}"):
        wait_until(lambda p=pattern: not running(p), 15, f"no process left matching {pattern}")


def running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, check=False).returncode == 0

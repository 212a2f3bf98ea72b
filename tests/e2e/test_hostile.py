"""Hostile and unlucky callers against a live worker: every refusal leaves the same worker serving calls.

Each refusal path is sent over UDP and over TCP to one long-lived bridge; after each, the worker must
be the same process (same PID, no restart counted) and must still answer 4 concurrent real calls whose
audio the engine heard (its final transcript counts the seconds). The RFC 4475 torture messages below
are written out from the RFC's descriptions: valid-but-odd ones must get an answer, invalid ones must
be refused or dropped, and none of the invalid ones may become a call.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sip.limits import IOQUEUE_KEYS, MAX_MEDIA_PORTS
from sip.sockets import CALL_SOCKETS, KEY_LINGER, MEDIA_KEYS, SOCKETS_PER_STREAM
from tests.e2e.conftest import Bridge, Standin, end_bridge, new_bridge, run_sipp, run_standin, speech
from tests.fixtures import rawsip, sipua
from tests.fixtures.siprec_caller import metadata_xml, multipart_body, offer_sdp
from tests.fixtures.torture import INVALID, UNANSWERED_BY_PJSIP, VALID_ODD, VIA

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
        return self.bridge.worker_pid()

    def serves_four_calls(self) -> None:
        """4 concurrent sipp calls complete, and the engine heard each one's audio."""
        before = set(self.bridge.calls())
        result = run_sipp(self.bridge.sip_port, self.audio, self.workdir, hold_ms=2500, calls=4, concurrent=4)
        assert result.returncode == 0, result.stdout[-2000:]
        deadline = time.monotonic() + 30
        new: dict[str, list[dict[str, Any]]] = {}
        while time.monotonic() < deadline:
            # sipp's calls only: events of the test's own calls may still be on their way to the file
            new = {
                k: v
                for k, v in self.bridge.calls().items()
                if k not in before
                and v[0]["kind"] == "call.started"
                and v[0]["data"]["from"].startswith('"sipp"')
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
    from tests.fixtures.harness import free_port_block

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
    assert hostile.metric("vblaze_bridge_calls_total", 'result="rejected_rate",route="default"') >= 15
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
        # (+1: the endpoint checks calls once a second; +2: this loop's own INVITEs and BYEs)
        bound = max(ACK_TIMEOUT, FIRST_RTP_TIMEOUT) + 1 + TRANSACTION_TIMEOUT + 2
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


def test_calls_hung_up_within_a_frame_give_their_conference_ports_back(hostile: Hostile) -> None:
    """A call hung up before the conference clock's first tick (20 ms) must not keep its stream's port:
    pjmedia frees a removed port only in a tick, so a clock stopped at once would leak it, and once the
    conference is full every further call fails its media (pjsua answers 488) for good."""
    port = hostile.bridge.sip_port
    pid, restarts = hostile.worker_pid(), hostile.restarts()
    statuses: list[int] = []
    for _ in range(3 * MAX_MEDIA_PORTS // 2):  # more calls than the conference has ports
        answer = sipua.invite(port, hangup=False)
        statuses.append(answer.status)
        if answer.dialog is not None:
            answer.dialog.bye()
        time.sleep(0.05)  # paced: their sockets fit (the next test floods)
    assert statuses == [200] * len(statuses), statuses
    assert "PJ_ETOOMANY" not in hostile.bridge.log()
    hostile.lived_on(pid, restarts)
    hostile.serves_four_calls()


def test_a_burst_of_calls_hung_up_at_once_is_answered_503_until_their_sockets_are_free(
    hostile: Hostile,
) -> None:
    """pjlib keeps a closed socket's key for half a second and aborts the process when a socket finds
    none: the worker refuses calls whose sockets would not fit (503, Retry-After) and lives on."""
    port = hostile.bridge.sip_port
    pid, restarts = hostile.worker_pid(), hostile.restarts()
    full = ("vblaze_bridge_calls_total", 'result="rejected_full",route="default"')
    full_before = hostile.metric(*full)
    time.sleep(KEY_LINGER)  # the keys of the calls before this test are free
    answers: list[sipua.Answer] = []
    for _ in range(IOQUEUE_KEYS):  # each call 2 sockets: twice what the ioqueue holds
        answer = sipua.invite(port, hangup=False)
        answers.append(answer)
        if answer.dialog is not None:
            answer.dialog.bye()
    statuses = [answer.status for answer in answers]
    assert set(statuses) == {200, 503}, statuses
    refusals = [answer for answer in answers if answer.status == 503]
    assert all(answer.headers.get("retry-after") == RETRY_AFTER for answer in refusals)
    reasons = {answer.reason for answer in refusals}  # past its burst, the source's rate says no too
    assert reasons <= {"Busy, Sockets Of Ended Calls Not Free Yet", "Too Many Calls From This Source"}
    refused = sum(1 for answer in refusals if answer.reason.startswith("Busy"))
    assert refused > 0, reasons
    # the calls the ioqueue had room for were taken (less a few calls' sockets: BYEs still in flight)
    assert statuses.count(200) * SOCKETS_PER_STREAM >= MEDIA_KEYS - 3 * CALL_SOCKETS, statuses
    time.sleep(KEY_LINGER)
    hostile.lived_on(pid, restarts)
    assert hostile.metric(*full) == full_before + refused
    assert "Sockets Of Ended Calls Not Free Yet" in hostile.bridge.log()
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
    # Within 5 s, 4 concurrent calls answered by the same worker and talking to it; then 4 sipp calls of
    # real speech that the engine hears (sipp's own start-up is not the bridge's, so it is not timed).
    calls = [sipua.invite(port, hangup=False) for _ in range(4)]
    assert [call.status for call in calls] == [200] * 4
    assert time.monotonic() - done < 5, time.monotonic() - done
    dialogs = [call.dialog for call in calls if call.dialog is not None]
    talkers = [threading.Thread(target=dialog.send_silence, args=(1.0,)) for dialog in dialogs]
    for talker in talkers:
        talker.start()
    for talker in talkers:
        talker.join()
    for dialog in dialogs:
        dialog.bye()
    hostile.lived_on(pid, restarts)
    hostile.serves_four_calls()
    hostile.lived_on(pid, restarts)


def _hang_up(port: int, reply: rawsip.Reply, transport: str) -> None:
    """ACK a 2xx the torture got and send BYE, so its slot is free at once."""
    text = reply.raw.decode(errors="replace").split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [line for line in text[1:] if line.split(":", 1)[0].strip().lower() in ("from", "to", "call-id")]
    for cseq, method in ((1, "ACK"), (2, "BYE")):
        message = "\r\n".join(
            [
                f"{method} sip:svc@127.0.0.1:{port} SIP/2.0",
                VIA.rstrip("|"),
                *keep,
                f"CSeq: {cseq} {method}",
                "Content-Length: 0",
            ]
        )
        rawsip.send(port, (message + "\r\n\r\n").encode(), transport, wait=0.3 if method == "ACK" else 1.0)

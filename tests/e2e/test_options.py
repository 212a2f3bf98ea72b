"""SIP OPTIONS tell a worker's readiness by the rule /readyz uses, and a flood of them costs nothing.

A dispatcher in front (Kamailio, tests/e2e/test_kamailio.py) takes a worker out when its OPTIONS answer
is not 200; here the answers themselves, over UDP and TCP, for each reason a worker would refuse a call.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from typing import Any

from tests.e2e.conftest import Standin, free_port_block, run_standin
from tests.fixtures import rawsip, sipua


def options(port: int, transport: str = "udp", host: str = "127.0.0.1") -> rawsip.Reply:
    """OPTIONS to host:port, sent from `host` (so, on another host, call it in that host's namespace)."""
    message = (
        f"OPTIONS sip:probe@{host}:{port} SIP/2.0\r\n"
        "Via: SIP/2.0/@TRANSPORT@ @HOST@:@LOCAL@;branch=@BRANCH@;rport\r\n"
        f"From: <sip:probe@@HOST@:@LOCAL@>;tag={uuid.uuid4().hex[:8]}\r\nTo: <sip:probe@{host}:{port}>\r\n"
        f"Call-ID: {uuid.uuid4()}@probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    reply = rawsip.send(port, message, transport, source=host, target=host)
    assert reply is not None, f"no answer to OPTIONS over {transport}"
    return reply


def reason_text(reply: rawsip.Reply) -> str:
    found = re.search(r'text="([^"]*)"', reply.headers.get("reason", ""))
    return found.group(1) if found else ""


def test_options_answer_200_when_a_call_would_be_taken_and_503_with_the_reason_when_not(
    standin_vad: Standin, make_bridge: Any
) -> None:
    bridge = make_bridge(standin_vad.url, sip={"retry_after_seconds": 4, "first_rtp_timeout_seconds": 30})
    port = bridge.sip_port
    time.sleep(2.5)  # the supervisor's first engine probe has reached the worker
    for transport in ("udp", "tcp"):
        assert options(port, transport).status == 200
    held = [sipua.invite(port, hangup=False) for _ in range(4)]
    try:
        assert [answer.status for answer in held] == [200] * 4
        for transport in ("udp", "tcp"):
            full = options(port, transport)
            assert full.status == 503 and reason_text(full) == "pool full", full.raw[:400]
            assert full.headers.get("retry-after") == "4"
            assert full.headers.get("x-vblaze-calls") == "4/4"
        fifth = sipua.invite(port)
        assert fifth.status == 503  # the INVITE answer agrees with the OPTIONS answer
    finally:
        for answer in held[1:]:
            if answer.dialog is not None:
                answer.dialog.bye()
    time.sleep(0.5)
    assert options(port).status == 200  # slots back: ready again

    # Draining: the last held call keeps the worker draining; OPTIONS say so.
    assert bridge.proc is not None
    bridge.proc.send_signal(15)
    time.sleep(1.0)
    draining = options(port)
    assert draining.status == 503 and reason_text(draining) == "draining"
    if held[0].dialog is not None:
        held[0].dialog.bye()
    assert bridge.proc.wait(timeout=30) == 0


def test_options_follow_the_engine_probe(make_bridge: Any) -> None:
    """The supervisor probes the engine and tells its workers: unreachable → 503, back → 200."""
    engine_port = free_port_block(1, low=28000, high=29000)
    bridge = make_bridge(f"ws://127.0.0.1:{engine_port}/transcribe")
    time.sleep(2.5)
    down = options(bridge.sip_port)
    assert down.status == 503 and reason_text(down) == "engine unreachable", down.raw[:400]
    assert sipua.invite(bridge.sip_port).status == 200  # on_unreachable: answer (the default) still takes it
    engine = run_standin("--recognizer", "vad-only", "--port", str(engine_port))
    try:
        deadline = time.monotonic() + 10
        status = 503
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            status = options(bridge.sip_port).status
        assert status == 200
    finally:
        engine.stop()


def test_10000_options_and_2000_refused_invites_at_500_per_second(
    standin_vad: Standin, make_bridge: Any
) -> None:
    """Same PID after, RSS flat within 2 MB, every request answered (counted by Call-ID).

    pjsip keeps each answered request's transaction for `sip.transaction_timeout_seconds`, so RSS is
    read once they have ended: after a first flood of the same size (pjsip's pools are warm then) and
    after the measured one."""
    bridge = make_bridge(standin_vad.url, sip={"transaction_timeout_seconds": TRANSACTION_TIMEOUT})
    port = bridge.sip_port
    pid = bridge.worker_pid()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    local = sock.getsockname()[1]
    answered: dict[str, int] = {}
    done = threading.Event()

    def receive() -> None:
        sock.settimeout(0.2)
        while not done.is_set():
            try:
                data = sock.recv(65535)
            except TimeoutError:
                continue
            found = re.search(rb"\r\nCall-ID: (\S+)", data)
            status = data.split(b" ", 2)[1] if data.startswith(b"SIP/2.0 ") else b""
            if found and status and int(status) >= 200:
                answered.setdefault(found.group(1).decode(), int(status))

    def request(n: int) -> tuple[str, bytes]:
        call_id = f"flood-{n}"
        method = "INVITE" if n % 6 == 5 else "OPTIONS"  # 2 000 of 12 000: INVITEs without SDP, refused
        text = (
            f"{method} sip:svc@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
            f"From: <sip:flood@127.0.0.1:{local}>;tag=f{n}\r\nTo: <sip:svc@127.0.0.1:{port}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:flood@127.0.0.1:{local}>\r\nContent-Length: 0\r\n\r\n"
        )
        return call_id, text.encode()

    def send(first: int, count: int, rate: float) -> None:
        start = time.monotonic()
        for n in range(first, first + count):
            _, data = request(n)
            sock.sendto(data, ("127.0.0.1", port))
            delay = start + (n - first + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    receiver = threading.Thread(target=receive)
    receiver.start()
    try:
        send(0, WARM_UP, 500)  # allocator and pjsip's pools settle
        time.sleep(TRANSACTION_TIMEOUT + 2)
        rss_before = rss_kib(pid)
        send(WARM_UP, 12000, 500)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(answered) < WARM_UP + 12000:
            time.sleep(0.2)
        time.sleep(TRANSACTION_TIMEOUT + 2)
        rss_after = rss_kib(pid)
    finally:
        done.set()
        receiver.join()
        sock.close()
    assert len(answered) == WARM_UP + 12000, f"{WARM_UP + 12000 - len(answered)} requests unanswered"
    statuses = {status for call_id, status in answered.items() if int(call_id.split("-")[1]) % 6 != 5}
    assert statuses == {200}  # OPTIONS: ready all along
    refused = {status for call_id, status in answered.items() if int(call_id.split("-")[1]) % 6 == 5}
    assert refused <= {488, 503}  # no SDP, or the flood limit of one source
    assert bridge.worker_pid() == pid
    assert abs(rss_after - rss_before) <= 2048, (rss_before, rss_after)
    assert sipua.invite(port).status == 200  # and still takes a call


TRANSACTION_TIMEOUT = 2.0
WARM_UP = 12000


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")

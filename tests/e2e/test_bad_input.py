"""Bad input on the SIP and media side: the bridge keeps working, and says what it saw."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Standin, free_port_block, run_sipp
from tests.fixtures import sipua
from tests.fixtures.harness import metric, scrape

TORTURE = [
    b"\x00\x01\x02garbage\xff\xfe\r\n\r\n",
    b"INVITE sip:svc@127.0.0.1 SIP/7.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1\r\n\r\n",
    b"INVITE  SIP/2.0\r\n\r\n",
    # RFC 4475 3.1.2.x style: missing mandatory headers, bad Content-Length, unterminated quote
    b"INVITE sip:svc@127.0.0.1 SIP/2.0\r\nTo: <sip:svc@127.0.0.1>\r\nContent-Length: 5\r\n\r\n",
    b"OPTIONS sip:svc@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n"
    b'From: "unterminated <sip:a@b>;tag=1\r\nTo: sip:svc@127.0.0.1\r\nCall-ID: t1\r\nCSeq: 8 OPTIONS\r\n'
    b"Content-Length: 99999\r\n\r\n",
    b"SIP/2.0 200 OK\r\n\r\n",  # a response to nothing
    b"INVITE sip:svc@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK2\r\nX-Big: "
    + b"A" * 70000
    + b"\r\n\r\n",
]


def test_malformed_sip_over_udp_and_tcp_is_counted_and_the_daemon_stays_up(
    standin_vad: Standin, make_bridge: Any
) -> None:
    metrics_port = free_port_block(1, low=29000, high=30000)
    bridge = make_bridge(standin_vad.url, metrics={"port": metrics_port})
    for message in TORTURE:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(message[:65000], ("127.0.0.1", bridge.sip_port))
        with socket.create_connection(("127.0.0.1", bridge.sip_port), timeout=5) as tcp:
            tcp.sendall(message)
            time.sleep(0.05)
    time.sleep(1.0)
    assert sipua.invite(bridge.sip_port).status == 200  # still taking calls
    assert bridge.proc is not None and bridge.proc.poll() is None
    text = scrape(metrics_port)
    dropped = metric(text, "vblaze_bridge_sip_messages_dropped_total", 'reason="malformed"')
    assert dropped >= 3, text
    assert "worker 0 (pid" not in bridge.log()  # no worker died


def test_invite_flood_from_one_source_gets_503(standin_vad: Standin, make_bridge: Any) -> None:
    metrics_port = free_port_block(1, low=29000, high=30000)
    bridge = make_bridge(
        standin_vad.url,
        sip={"invite_rate_per_source": 1, "invite_burst_per_source": 2},
        metrics={"port": metrics_port},
    )
    answers = [sipua.invite(bridge.sip_port).status for _ in range(4)]
    assert answers[:2] == [200, 200]
    assert 503 in answers[2:]
    text = scrape(metrics_port)
    assert metric(text, "vblaze_bridge_calls_total", 'result="rejected_rate",route="default"') >= 1


def test_call_that_never_sends_rtp_is_hung_up(standin_vad: Standin, make_bridge: Any) -> None:
    bridge = make_bridge(standin_vad.url, sip={"rtp_timeout_seconds": 2})
    answer = sipua.invite(bridge.sip_port, hangup=False)
    assert answer.status == 200 and answer.dialog is not None
    try:
        (events,) = bridge.wait_ended(1, timeout=20).values()
    finally:
        answer.dialog.sock.close()
        answer.dialog.rtp.close()
    ended = events[-1]["data"]
    assert ended["reason"] == "rtp_timeout"
    assert 2 <= ended["duration"] < 10


def test_silence_and_clipping_give_clean_calls(
    standin_vad: Standin, make_bridge: Any, tmp_path: Path
) -> None:
    bridge = make_bridge(standin_vad.url)
    silence = tmp_path / "silence.ul"
    clipped = tmp_path / "clipped.ul"
    subprocess.run(
        ["sox", "-n", "-r", "8000", "-c", "1", "-t", "ul", str(silence), "trim", "0", "4"], check=True
    )
    subprocess.run(
        [
            "sox",
            "-n",
            "-r",
            "8000",
            "-c",
            "1",
            "-t",
            "ul",
            str(clipped),
            "synth",
            "3",
            "square",
            "300",
            "gain",
            "+20",
        ],
        check=True,
    )
    for audio in (silence, clipped):
        assert run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=4500).returncode == 0
    calls = bridge.wait_ended(2)
    by_utterances = sorted(sum(e["kind"] == "utterance" for e in events) for events in calls.values())
    assert by_utterances[0] == 0  # silence: no utterance
    assert by_utterances[1] >= 1  # the clipped tone is loud: the level VAD cuts it
    for events in calls.values():
        assert events[-1]["data"]["gaps"] == []
        assert events[-1]["data"]["transcript"] is not None

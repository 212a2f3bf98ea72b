"""The pjsua thread waits in libHandleEvents up to IDLE_POLL_MS, and a command wakes it at once.

A real SipEndpoint (pjsua2) runs in a child process (its teardown leaves with os._exit, which a test
process cannot): the child makes the wait 30 s, so a command that did not wake the thread would wait
for the poll to end, and times three pings. It also records every log line of pjsua, the gate and the
endpoint, and every SIP drop counted, while the wake-ups go out, then asks its own port for OPTIONS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.harness import free_port_block

ROOT = Path(__file__).resolve().parents[2]
LONG_WAIT_MS = 30_000
ANSWERED_WITHIN_S = 2.0  # against a 30 s wait: the pings were woken, not served by the poll's end

CHILD = r"""
import json, logging, os, socket, sys, threading, time
sys.path.insert(0, sys.argv[1])
import sip.endpoint as endpoint
from bridge.config import parse_config
from bridge.sip_adapter import sip_settings, worker_readiness
from sip.settings import NullObserver

port, rtp, transport, wait_ms = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
broken = sys.argv[6] == "broken"
endpoint.IDLE_POLL_MS = wait_ms

class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []
    def emit(self, record):
        self.lines.append(f"{record.name}: {record.getMessage()}")

class Drops(NullObserver):
    def __init__(self):
        self.drops = []
    def sip_dropped(self, reason):
        self.drops.append(str(reason))

records, drops = Records(), Drops()
logging.getLogger().addHandler(records)
logging.getLogger().setLevel(logging.DEBUG)
config = parse_config(
    {"sip": {"first_port": port, "workers": 1, "transports": [transport]},
     "engine": {"url": "ws://127.0.0.1:9/transcribe"}}, "wake")
ep = endpoint.SipEndpoint(sip_settings(config), port, rtp, lambda e: None, lambda *a: None,
                          worker_readiness, drops)
ep.start()
time.sleep(1.0)  # the thread is in its wait
if broken:
    ep._wake_socket.close()  # every wake-up now fails with OSError (EBADF)
records.lines.clear()
pings = []
for i in range(5):
    answered = threading.Event()
    t0 = time.monotonic()
    ep.ping(answered.set)
    answered.wait(3.0)
    pings.append(time.monotonic() - t0 if answered.is_set() else None)
    time.sleep(0.137 * (i % 4 + 1))  # pings at varied points of the poll's wait
lines = list(records.lines)
options = None
if transport == "udp":
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        local = sock.getsockname()[1]
        sock.sendto((
            f"OPTIONS sip:bridge@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-wake-1\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:bridge@127.0.0.1>\r\n"
            "Call-ID: wake-options\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(),
            ("127.0.0.1", port))
        options = sock.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
print(json.dumps({"pings": pings, "lines": lines, "drops": drops.drops, "options": options,
                  "thread_alive": ep._thread.is_alive()}), flush=True)
ep.stop()
sys.stdout.flush()
os._exit(0)
"""


def run_child(transport: str, wait_ms: int, wake: str = "working") -> dict[str, Any]:
    port = free_port_block(1, low=15000, high=26000)
    rtp = free_port_block(40, low=26000, high=50000)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(port), str(rtp), transport, str(wait_ms), wake],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_a_command_wakes_the_thread_out_of_a_long_wait_and_the_datagram_leaves_no_trace() -> None:
    result = run_child("udp", LONG_WAIT_MS)
    assert all(p is not None and p < ANSWERED_WITHIN_S for p in result["pings"]), result["pings"]
    # pjsip read the one-byte datagrams and dropped them without a word: no log line, no drop counted
    assert result["lines"] == [], result["lines"]
    assert result["drops"] == []
    # and the transport still answers SIP
    assert result["options"] is not None and result["options"].startswith("SIP/2.0 "), result
    assert result["thread_alive"]


@pytest.mark.parametrize("transport", ["tcp"])
def test_without_a_udp_transport_the_thread_polls_as_before(transport: str) -> None:
    """Nothing can wake a TCP-only endpoint, so it keeps the short poll (POLL_MS), whatever the wait."""
    result = run_child(transport, LONG_WAIT_MS)
    assert all(p is not None and p < ANSWERED_WITHIN_S for p in result["pings"]), result["pings"]
    assert result["thread_alive"]


def test_a_wake_up_that_cannot_be_sent_is_logged_once_and_the_command_runs_at_the_end_of_the_wait() -> None:
    wait_ms = 400
    result = run_child("udp", wait_ms, wake="broken")
    pings = result["pings"]
    assert all(p is not None and p < wait_ms / 1000 + 1.0 for p in pings), pings  # served by the poll's end
    assert max(pings) > 0.05, pings  # not woken: at least one waited for the poll to end
    warnings = [line for line in result["lines"] if "could not wake the pjsua thread" in line]
    assert len(warnings) == 1, result["lines"]  # throttled: five failures, one line
    assert f"commands wait up to {wait_ms} ms" in warnings[0]
    assert result["options"] is not None and result["options"].startswith("SIP/2.0 "), result
    assert result["thread_alive"]

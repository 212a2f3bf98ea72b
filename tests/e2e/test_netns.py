"""The namespace test bed itself (tests/fixtures/netns.py): hosts reach each other on the switch, the
root namespace gets no address, link or route, and `close` removes every namespace and process."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import netns
from tests.fixtures.harness import wait_until

UNUSABLE = netns.usable()
pytestmark = pytest.mark.skipif(UNUSABLE is not None, reason=f"no network namespaces: {UNUSABLE}")

ECHO = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = sock.recvfrom(100)
    sock.sendto(data, peer)
"""


def echo(address: str, port: int, tries: int = 40) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        for _ in range(tries):
            sock.sendto(b"ping", (address, port))
            try:
                return sock.recv(100)
            except TimeoutError:
                continue
    raise TimeoutError(f"no echo from {address}:{port}")


def test_hosts_meet_on_the_switch_only_and_close_removes_everything(tmp_path: Path) -> None:
    bed = netns.TestBed.create()
    try:
        a = bed.add_host("a", "10.231.0.1")
        b = bed.add_host("b", "10.231.0.2")
        b.popen([sys.executable, "-c", ECHO, b.address, "7777"], tmp_path / "echo.log")
        assert a.call(echo, b.address, 7777) == b"ping"
        root = "".join(netns.ip("-o", *what).stdout for what in (["addr"], ["link"], ["route"]))
        assert "10.231." not in root and "p-a" not in root  # nothing of the bed in the root namespace
        a.link(False)
        with pytest.raises(OSError):
            a.call(echo, b.address, 7777, tries=5)
        a.link(True)
        assert a.call(echo, b.address, 7777) == b"ping"
        stubborn = a.popen(["sh", "-c", "trap '' TERM; sleep 600"], tmp_path / "sleep.log")
        wait_until(lambda: stubborn.pid in a.pids(), 5, "the process in the namespace")
    finally:
        bed.close()
    assert stubborn.poll() is not None
    left = netns.ip("netns", "list").stdout
    assert all(name not in left for name in (bed.switch, a.name, b.name)), left


def test_a_dead_run_s_leftovers_are_swept_and_names_never_repeat() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    name = f"{netns.PREFIX}{gone.pid}x0000-sw"
    netns.ip("netns", "add", name)
    try:
        assert name in netns.sweep_leftovers()
        assert name not in netns.ip("netns", "list").stdout
    finally:
        netns.ip("netns", "del", name, check=False)
    first, second = netns.TestBed.create(), netns.TestBed.create()
    try:
        assert first.prefix != second.prefix
        assert first.switch in netns.ip("netns", "list").stdout  # a live run's bed is not swept
    finally:
        first.close()
        second.close()

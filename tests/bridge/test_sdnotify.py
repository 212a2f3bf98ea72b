"""sd_notify over a real AF_UNIX datagram socket, as systemd would listen on it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import sdnotify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield sock, path
    sock.close()


def test_notify_is_noop_without_socket() -> None:
    assert sdnotify.notify("READY=1", env={}) is False


def test_ready_reaches_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert sdnotify.notify("READY=1\nSTATUS=serving", env={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_abstract_socket_name() -> None:
    name = f"vblaze-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        assert sdnotify.notify("STOPPING=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_missing_peer_does_not_raise(tmp_path: Path) -> None:
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_unsupported_address_is_ignored() -> None:
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


def test_watchdog_for_another_pid_is_not_ours() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert sdnotify.watchdog_interval(env) is None
    env["WATCHDOG_PID"] = str(os.getpid())
    assert sdnotify.watchdog_interval(env) == 1.0


def test_clean_child_env_drops_notify_variables() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "PATH": "/bin"}
    assert sdnotify.clean_child_env(env) == {"PATH": "/bin"}


async def _recv_all(sock: socket.socket, seconds: float) -> list[bytes]:
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                got.append(await loop.sock_recv(sock, 4096))
    except TimeoutError:
        pass
    return got


async def test_watchdog_pings_from_the_loop(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}  # ping every 0.05 s
    task = asyncio.create_task(sdnotify.run_watchdog(env=env))
    try:
        got = await _recv_all(sock, 0.3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(got) >= 3
    assert set(got) == {b"WATCHDOG=1"}


async def test_a_stalled_loop_stops_the_pings(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}
    task = asyncio.create_task(sdnotify.run_watchdog(env=env))
    try:
        await asyncio.sleep(0.12)
        assert _drain(sock), "pings while the loop runs"
        time.sleep(0.4)  # noqa: ASYNC251 -- deliberately stall the loop: no ping may be sent meanwhile
        assert _drain(sock) == []
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _drain(sock: socket.socket) -> list[bytes]:
    """Everything already queued on the socket, without waiting."""
    sock.setblocking(False)
    got: list[bytes] = []
    while True:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            return got


async def test_unhealthy_supervisor_skips_pings(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}
    task = asyncio.create_task(sdnotify.run_watchdog(healthy=lambda: False, env=env))
    try:
        assert await _recv_all(sock, 0.25) == []
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_no_watchdog_configured_returns_at_once() -> None:
    async with asyncio.timeout(1):
        await sdnotify.run_watchdog(env={})

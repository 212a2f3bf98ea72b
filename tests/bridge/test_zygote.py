"""The zygote's channel lines, the supervisor's handle on a forked worker (a real child through a
pidfd) and its link to a zygote that will not start (real processes standing in for the zygote)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import zygote
from bridge.config import load_config
from bridge.zygote import (
    ForkedProcess,
    ZygoteGone,
    ZygoteLink,
    env_message,
    parse_env,
    parse_reply,
    parse_request,
    spawn_request,
)


@given(st.dictionaries(st.text(), st.text()))
def test_the_environment_message_round_trips(env: dict[str, str]) -> None:
    assert parse_env(env_message(env)) == env


@given(st.binary(max_size=200))
def test_anything_else_is_no_environment(data: bytes) -> None:
    assert parse_env(data) is None or data.startswith(b"env ")
    for bad in (b"", b"ready", b"env ", b"env [1]", b'env {"A": 1}', b"env {", b'env {"A": null}'):
        assert parse_env(bad) is None


def test_the_lines_round_trip() -> None:
    assert parse_request(spawn_request(7)) == 7
    assert parse_reply(b"pid 3 4242") == (3, 4242)
    assert parse_reply(b"failed 3") == (3, None)
    for bad in (b"", b"spawn", b"spawn -1", b"spawn x", b"pid 3", b"pid a b", b"failed", b"ready"):
        assert parse_request(bad) is None or bad.startswith(b"spawn ")
        assert parse_reply(bad) is None


@given(st.binary(max_size=64))
def test_any_bytes_parse_to_none_or_numbers(data: bytes) -> None:
    index = parse_request(data)
    assert index is None or index >= 0
    reply = parse_reply(data)
    assert reply is None or (reply[0] >= 0 and (reply[1] is None or reply[1] >= 0))


def fork_child(code: str) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            exec(code)
        finally:
            os._exit(0)
    return pid


async def test_a_forked_process_reports_its_exit_code_and_its_signal() -> None:
    exits = ForkedProcess(fork_child("os._exit(3)"))
    assert await asyncio.wait_for(exits.wait(), 5) == 3
    sleeper = ForkedProcess(fork_child("import time; time.sleep(30)"))
    assert sleeper.returncode is None
    sleeper.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(sleeper.wait(), 5) == -9
    with pytest.raises(ProcessLookupError):
        sleeper.send_signal(signal.SIGTERM)  # reaped: no signal can reach a reused pid


async def test_a_child_already_gone_when_watched_is_still_reaped() -> None:
    pid = fork_child("os._exit(5)")
    await asyncio.to_thread(os.waitid, os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # a zombie, not reaped
    assert await asyncio.wait_for(ForkedProcess(pid).wait(), 5) == 5


async def test_a_zygote_that_never_starts_fails_the_spawn_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(zygote, "ZYGOTE_READY_TIMEOUT_SECONDS", 1.0)
    link = ZygoteLink(lambda fd: [sys.executable, "-c", "import sys; sys.exit(4)"], dict(os.environ))
    task = asyncio.create_task(link.run())
    ours, theirs = socket.socketpair()
    try:
        with pytest.raises(OSError):  # TimeoutError or ZygoteGone: a failed start of that worker
            await link.spawn(0, theirs.fileno())
        assert link.starts >= 2
    finally:
        task.cancel()
        await link.stop()
        ours.close()
        theirs.close()


async def test_a_zygote_that_cannot_fork_fails_the_spawn_and_its_pid_is_none() -> None:
    script = (
        "import socket, sys; s = socket.socket(fileno=int(sys.argv[1])); s.send(b'ready'); "
        "m, fds, _, _ = socket.recv_fds(s, 256, 1); s.send(b'failed 0'); s.recv(1)"
    )
    link = ZygoteLink(lambda fd: [sys.executable, "-c", script, str(fd)], dict(os.environ))
    task = asyncio.create_task(link.run())
    ours, theirs = socket.socketpair()
    try:
        with pytest.raises(ZygoteGone):
            await link.spawn(0, theirs.fileno())
    finally:
        task.cancel()
        await link.stop()
        ours.close()
        theirs.close()


def test_a_worker_takes_the_zygotes_config_only_while_the_file_holds_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("sip: {workers: 3}\n")
    warm = zygote.WarmConfig(path.read_bytes(), load_config(path))
    assert warm.current(str(path)) is warm.config
    path.write_text("sip: {workers: 4}\n")  # edited since: the worker loads it afresh
    assert warm.current(str(path)) is None
    path.unlink()
    assert warm.current(str(path)) is None

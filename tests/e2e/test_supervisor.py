"""The real supervisor and its workers: a hung worker replaced, a worker that cannot start retried,
the first signal draining and the second forcing, and 20 fresh bridges starting without a failure."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.demo import wait_for_sip
from tests.bridge.webhook.receiver import SECRET, Answer, Receiver
from tests.e2e.conftest import Bridge, Standin, run_sipp, speech
from tests.e2e.test_bad_input import metric, scrape
from tests.e2e.test_faults import worker_pid
from tests.e2e.test_operations import status
from tests.e2e.test_webhook_call import ThreadedReceiver
from tests.fixtures import sipua
from tests.fixtures.harness import free_port_block, wait_until
from tests.fixtures.sipua import Dialog

COUNT = "one two three four five six seven eight nine ten eleven twelve"


def metrics_port() -> int:
    return free_port_block(1, low=29000, high=30000)


def launch(bridge: Bridge) -> None:
    """Start the supervisor without waiting for its workers (Bridge.start waits for all of them)."""
    assert bridge.log_path is not None
    with bridge.log_path.open("ab") as log:
        bridge.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(bridge.config_path)], stderr=log
        )


def pids_of(bridge: Bridge) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"bridge worker --config {bridge.config_path} "], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


@contextmanager
def live_call(port: int) -> Iterator[Dialog]:
    """A call that stays up, with RTP (silence) flowing so that no RTP timeout ends it."""
    answer = sipua.invite(port, hangup=False)
    assert answer.status == 200 and answer.dialog is not None, answer.raw
    dialog = answer.dialog
    stop = threading.Event()

    def talk() -> None:
        while not stop.is_set():
            try:
                dialog.send_silence(0.2)
            except OSError:
                return

    talker = threading.Thread(target=talk, daemon=True)
    talker.start()
    try:
        yield dialog
    finally:
        stop.set()
        talker.join(5)
        dialog.rtp.close()
        dialog.sock.close()


def hang_up(dialog: Dialog) -> None:
    dialog.bye()


def ended(bridge: Bridge) -> list[dict[str, Any]]:
    return [e for e in bridge.events() if e["kind"] == "call.ended"]


# --- hung workers -------------------------------------------------------------------------------------


def test_a_stopped_worker_is_killed_and_replaced_within_5_s(
    standin_vad: Standin, make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    """SIGSTOP worker 0 with a call up: within 5 s it is SIGKILLed and a new worker answers on its
    port; its call ends worker_lost with a gap; worker 1 and its call are untouched."""
    port = metrics_port()
    bridge = make_bridge(standin_vad.url, workers=2, metrics={"port": port})
    assert bridge.proc is not None
    supervisor = bridge.proc.pid
    audio = speech(COUNT, speech_dir, "count12")
    results: list[Any] = []
    caller = threading.Thread(
        target=lambda: results.append(run_sipp(bridge.sip_port + 1, audio, tmp_path, hold_ms=9000))
    )
    with live_call(bridge.sip_port):
        caller.start()
        wait_until(lambda: len(bridge.calls()) == 2, 10, "both calls started")
        time.sleep(1.0)
        victim, other = worker_pid(bridge.config_path, 0), worker_pid(bridge.config_path, 1)
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_until(lambda: victim not in pids_of(bridge), 5, "the stopped worker killed")
        wait_for_sip(bridge.sip_port, timeout=5)
        replaced = time.monotonic() - stopped_at
        print(f"\nSIGSTOP to a new worker answering SIP: {replaced:.2f} s")
        assert replaced < 5.0, replaced
        assert 2.0 <= replaced  # not before the pings had time to be missed
    replacement = worker_pid(bridge.config_path, 0)
    assert replacement != victim
    caller.join(60)
    assert results and results[0].returncode == 0, results[0].stdout if results else "no sipp result"
    calls = bridge.wait_ended(2, timeout=30)
    by_worker = {events[0]["data"]["worker"]: events for events in calls.values()}
    lost = by_worker[0][-1]
    assert lost["kind"] == "call.ended" and lost["data"]["reason"] == "worker_lost"
    assert lost["data"]["gaps"] and lost["data"]["gaps"][0]["cause"] == "worker_lost"
    survivor = by_worker[1][-1]["data"]
    assert survivor["reason"] == "remote_bye" and survivor["gaps"] == [] and survivor["transcript"]
    assert worker_pid(bridge.config_path, 1) == other
    assert bridge.proc.pid == supervisor and bridge.proc.poll() is None
    text = scrape(port)
    assert metric(text, "vblaze_bridge_worker_restarts_total", 'reason="hung"') == 1
    for reason in ("exit", "signal", "start_failed", "other"):
        assert metric(text, "vblaze_bridge_worker_restarts_total", f'reason="{reason}"') == 0, reason
    assert sipua.invite(bridge.sip_port).status == 200  # the replacement takes calls
    assert worker_pid(bridge.config_path, 0) == replacement
    wait_until(lambda: status(f"http://127.0.0.1:{port}/readyz")[0] == 200, 5, "ready again")
    assert "hung" in bridge.log()


def test_a_worker_told_to_drain_by_someone_else_is_not_taken_for_hung(
    standin_vad: Standin, make_bridge: Any
) -> None:
    """SIGTERM straight to worker 0 with a call up: it says it drains, so the supervisor stops pinging
    it instead of killing it; the call finishes normally, then the worker is replaced (reason exit)."""
    port = metrics_port()
    bridge = make_bridge(standin_vad.url, metrics={"port": port}, drain={"timeout_seconds": 30})
    with live_call(bridge.sip_port) as dialog:
        wait_until(lambda: len(bridge.calls()) == 1, 10, "the call started")
        victim = worker_pid(bridge.config_path, 0)
        os.kill(victim, signal.SIGTERM)
        time.sleep(4.0)  # longer than hung detection takes
        assert victim in pids_of(bridge) and not ended(bridge)
        assert sipua.invite(bridge.sip_port).status == 503  # it drains
        hang_up(dialog)
        wait_until(lambda: victim not in pids_of(bridge), 15, "the drained worker left")
    wait_for_sip(bridge.sip_port, timeout=10)
    (call,) = ended(bridge)
    assert call["data"]["reason"] == "remote_bye" and call["data"]["gaps"] == []
    text = scrape(port)
    assert metric(text, "vblaze_bridge_worker_restarts_total", 'reason="exit"') == 1
    assert metric(text, "vblaze_bridge_worker_restarts_total", 'reason="hung"') == 0
    assert sipua.invite(bridge.sip_port).status == 200


def test_workers_drain_and_leave_when_their_supervisor_is_killed(
    standin_vad: Standin, make_bridge: Any
) -> None:
    """SIGKILL the supervisor with a call up: its worker sees the control socket close and drains (new
    calls 503, the call goes on), then leaves once the call is over; no orphan keeps the port."""
    bridge = make_bridge(standin_vad.url, drain={"timeout_seconds": 30})
    assert bridge.proc is not None
    with live_call(bridge.sip_port) as dialog:
        wait_until(lambda: len(bridge.calls()) == 1, 10, "the call started")
        orphan = worker_pid(bridge.config_path, 0)
        bridge.proc.kill()
        bridge.proc.wait(5)
        time.sleep(1.0)
        assert orphan in pids_of(bridge) and not ended(bridge)
        assert sipua.invite(bridge.sip_port).status == 503
        hang_up(dialog)
        wait_until(lambda: not pids_of(bridge), 15, "the orphaned worker left")
    (call,) = ended(bridge)
    assert call["data"]["reason"] == "remote_bye" and call["data"]["gaps"] == []


# --- start failures -----------------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fewest_fds(pid: int, seconds: float) -> int:
    """The fewest fds the process had over `seconds` (an attempt in flight holds a few for a while)."""
    deadline = time.monotonic() + seconds
    fewest = fd_count(pid)
    while time.monotonic() < deadline:
        fewest = min(fewest, fd_count(pid))
        time.sleep(0.02)
    return fewest


def test_a_worker_that_cannot_start_is_retried_while_the_others_keep_their_calls(
    standin_vad: Standin, make_bridge: Any
) -> None:
    """Worker 0's SIP port is taken: its starts fail and are retried with backoff and counted; worker 1
    serves a call all along; /readyz says 503 "workers down"; no fd leaks; once the port is free,
    worker 0 comes up on a retry and /readyz turns 200."""
    port = metrics_port()
    bridge = make_bridge(standin_vad.url, workers=2, start=False, metrics={"port": port})
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", bridge.sip_port))
    try:
        launch(bridge)
        assert bridge.proc is not None
        supervisor = bridge.proc.pid
        wait_for_sip(bridge.sip_port + 1, timeout=30)
        readyz = f"http://127.0.0.1:{port}/readyz"

        def start_failures() -> float:
            return metric(scrape(port), "vblaze_bridge_worker_restarts_total", 'reason="start_failed"')

        with live_call(bridge.sip_port + 1) as dialog:
            healthy = worker_pid(bridge.config_path, 1)
            wait_until(lambda: start_failures() >= 2, 20, "two failed starts", step=0.2)
            assert status(readyz) == (503, "workers down\n")
            before = fewest_fds(supervisor, 1.5)
            wait_until(lambda: start_failures() >= 5, 30, "five failed starts", step=0.2)
            after = fewest_fds(supervisor, 1.5)
            assert after <= before, (before, after)  # three more failed starts left no fd behind
            assert status(readyz) == (503, "workers down\n")
            assert bridge.proc.poll() is None and worker_pid(bridge.config_path, 1) == healthy
            assert not ended(bridge)  # worker 1's call is still up

            squatter.close()
            wait_for_sip(bridge.sip_port, timeout=15)  # the next retry binds it
            wait_until(lambda: status(readyz)[0] == 200, 5, "/readyz 200 once every worker serves")
            assert sipua.invite(bridge.sip_port).status == 200
            hang_up(dialog)
            wait_until(lambda: len(ended(bridge)) == 2, 20, "both calls ended")
        by_worker = {events[0]["data"]["worker"]: events for events in bridge.calls().values()}
        assert by_worker[1][-1]["kind"] == "call.ended"
        assert by_worker[1][-1]["data"]["reason"] == "remote_bye" and by_worker[1][-1]["data"]["gaps"] == []
        assert worker_pid(bridge.config_path, 1) == healthy and bridge.proc.pid == supervisor
        text = scrape(port)
        assert metric(text, "vblaze_bridge_worker_restarts_total", 'reason="hung"') == 0
        assert "failed to start" in bridge.log()
    finally:
        squatter.close()


# --- the systemd watchdog ----------------------------------------------------------------------------


def test_ready_waits_for_a_worker_and_the_watchdog_is_fed_while_workers_are_replaced(
    standin_vad: Standin, make_bridge: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a NOTIFY_SOCKET: worker 0 cannot start, yet READY=1 comes once worker 1 serves, and
    WATCHDOG=1 keeps coming while worker 0 is retried and while a hung worker 1 is replaced (the
    supervisor is doing its job); a stopped supervisor sends none."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every 0.5 s
    bridge = make_bridge(standin_vad.url, workers=2, start=False)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", bridge.sip_port))
    seen: list[tuple[float, bytes]] = []

    def collect(seconds: float) -> list[bytes]:
        deadline = time.monotonic() + seconds
        got = []
        while time.monotonic() < deadline:
            try:
                data = listener.recv(4096)
            except TimeoutError:
                continue
            seen.append((time.monotonic(), data))
            got.append(data)
        return got

    try:
        launch(bridge)
        assert bridge.proc is not None
        wait_for_sip(bridge.sip_port + 1, timeout=30)
        first = collect(3.0)
        assert b"READY=1" in first  # one worker serves; the other is being retried
        assert first.count(b"WATCHDOG=1") >= 4
        os.kill(worker_pid(bridge.config_path, 1), signal.SIGSTOP)
        during = collect(5.0)  # hung, killed, replaced: the supervisor's checks pass throughout
        assert during.count(b"WATCHDOG=1") >= 8, during
        pings = [at for at, data in seen if data == b"WATCHDOG=1"]
        assert max(later - earlier for earlier, later in itertools.pairwise(pings)) < 1.0  # none skipped
        wait_for_sip(bridge.sip_port + 1, timeout=5)
        os.kill(bridge.proc.pid, signal.SIGSTOP)  # the supervisor's own loop stops
        try:
            assert b"WATCHDOG=1" not in collect(1.5)
        finally:
            os.kill(bridge.proc.pid, signal.SIGCONT)
        assert b"WATCHDOG=1" in collect(1.5)
        bridge.proc.send_signal(signal.SIGTERM)
        assert b"STOPPING=1" in collect(2.0)
        assert bridge.proc.wait(timeout=30) == 0
        assert "hung" in bridge.log() and "failed to start" in bridge.log()
    finally:
        squatter.close()
        listener.close()


# --- signals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_first_signal_drains_a_live_call(standin_vad: Standin, make_bridge: Any, first: int) -> None:
    port = metrics_port()
    bridge = make_bridge(standin_vad.url, metrics={"port": port}, drain={"timeout_seconds": 30})
    assert bridge.proc is not None
    with live_call(bridge.sip_port) as dialog:
        wait_until(lambda: len(bridge.calls()) == 1, 10, "the call started")
        os.kill(bridge.proc.pid, first)
        time.sleep(1.5)
        assert bridge.proc.poll() is None  # still there, draining
        assert status(f"http://127.0.0.1:{port}/readyz") == (503, "draining\n")
        assert sipua.invite(bridge.sip_port).status == 503  # new calls refused
        assert not ended(bridge)  # the call goes on
        hung_up = time.monotonic()
        hang_up(dialog)
        assert bridge.proc.wait(timeout=30) == 0
        assert time.monotonic() - hung_up < 10  # left once its last call was done, not at the drain bound
    (call,) = ended(bridge)
    assert call["data"]["reason"] == "remote_bye" and call["data"]["gaps"] == []
    assert not pids_of(bridge)


@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)],
    ids=["INT-INT", "TERM-INT", "INT-TERM"],
)
def test_a_second_signal_forces(standin_vad: Standin, make_bridge: Any, first: int, second: int) -> None:
    bridge = make_bridge(standin_vad.url, drain={"timeout_seconds": 60})
    assert bridge.proc is not None
    with live_call(bridge.sip_port):
        wait_until(lambda: len(bridge.calls()) == 1, 10, "the call started")
        os.kill(bridge.proc.pid, first)
        time.sleep(1.0)
        assert bridge.proc.poll() is None and not ended(bridge)  # the first one only drains
        forced = time.monotonic()
        os.kill(bridge.proc.pid, second)
        bridge.proc.wait(timeout=20)
        assert time.monotonic() - forced < 8
    assert not pids_of(bridge)
    (call,) = ended(bridge)  # hung up and flushed on the way out, not lost
    assert call["data"]["reason"] != "worker_lost"


# --- fresh starts -------------------------------------------------------------------------------------

FRESH_BRIDGES = 20
AT_ONCE = 4
BAD_START_LINES = ("Traceback", "database is locked", "failed to start", ": hung")


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("VBLAZE_BRIDGE_WEBHOOK_SECRET", SECRET.decode())
    with ThreadedReceiver(lambda request: Answer()) as running:
        yield running


@pytest.mark.slow  # about 60 s on 2 shared cores: 80 worker starts are CPU-bound
def test_20_fresh_bridges_of_4_workers_all_start(
    standin_vad: Standin, make_bridge: Any, webhook: Receiver
) -> None:
    """Each with a new state directory and webhook spool (its 4 workers open it together), AT_ONCE
    bridges starting together: every worker's SIP port answers and /readyz is 200, no worker needed a
    second start; each then stops cleanly, with no traceback in its log."""
    failures: list[str] = []
    timings: list[float] = []

    def fresh_batch() -> list[tuple[Bridge, int]]:
        """Bridges whose SIP and metrics ports do not overlap (they are picked before any is bound)."""
        batch: list[tuple[Bridge, int]] = []
        taken: set[int] = set()
        while len(batch) < AT_ONCE:
            port = metrics_port()
            bridge = make_bridge(
                standin_vad.url,
                workers=4,
                start=False,
                metrics={"port": port},
                sink={"kind": "webhook"},
                webhook={"urls": [webhook.url]},
            )
            ports = {port, *range(bridge.sip_port, bridge.sip_port + 4)}
            if ports & taken:
                continue  # never started; the fixture's teardown has nothing to stop
            taken |= ports
            batch.append((bridge, port))
        return batch

    def one(bridge: Bridge, port: int) -> None:
        started = time.monotonic()
        launch(bridge)
        try:
            for index in range(4):
                wait_for_sip(bridge.sip_port + index, timeout=30)
            wait_until(lambda: status(f"http://127.0.0.1:{port}/readyz")[0] == 200, 10, "/readyz 200")
            timings.append(time.monotonic() - started)
        except (AssertionError, RuntimeError, OSError) as exc:
            failures.append(f"{bridge.config_path}: {exc}\n{bridge.log()[-3000:]}")
        finally:
            code = bridge.stop(signal.SIGTERM, timeout=30)
            if code != 0:
                failures.append(f"{bridge.config_path}: exit {code}\n{bridge.log()[-3000:]}")
            for line in bridge.log().splitlines():
                if any(bad in line for bad in BAD_START_LINES):
                    failures.append(f"{bridge.config_path}: {line[:3000]}")
                    break

    for _ in range(FRESH_BRIDGES // AT_ONCE):
        threads = [threading.Thread(target=one, args=pair) for pair in fresh_batch()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    assert not failures, "\n".join(failures)
    assert len(timings) == FRESH_BRIDGES
    print(f"\n{FRESH_BRIDGES} bridges ready in {min(timings):.2f}-{max(timings):.2f} s")


def test_a_second_bridge_on_the_same_metrics_dir_is_refused_and_the_first_serves_on(
    standin_vad: Standin, make_bridge: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An inherited ``PROMETHEUS_MULTIPROC_DIR`` must not let one bridge delete another's live counters."""
    shared = tmp_path / "shared-prom"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    port = metrics_port()
    first = make_bridge(standin_vad.url, metrics={"port": port})
    assert first.proc is not None
    pid, workers = first.proc.pid, pids_of(first)
    with live_call(first.sip_port) as dialog:
        wait_until(lambda: metric(scrape(port), "vblaze_bridge_calls_active") == 1, 10, "one call up")
        files = sorted(p.name for p in shared.glob("*.db"))
        second = make_bridge(standin_vad.url, start=False)
        launch(second)
        assert second.proc is not None
        assert second.proc.wait(timeout=30) == 1
        assert f"belongs to another running bridge (pid {pid})" in second.log()
        assert "Traceback" not in second.log()
        assert sorted(p.name for p in shared.glob("*.db")) == files  # nothing of the first's was removed
        assert metric(scrape(port), "vblaze_bridge_calls_active") == 1
        hang_up(dialog)
    assert sipua.invite(first.sip_port).status == 200  # and it still takes new calls
    assert len(first.wait_ended(2)) == 2
    assert (first.proc.pid, first.proc.poll(), pids_of(first)) == (pid, None, workers)
    assert not re.search(r"^vblaze_bridge_worker_restarts_total\{.*\} [1-9]", scrape(port), re.M)

"""Workers forked from the zygote (bridge/zygote.py), with real processes: they carry their name, are the
supervisor's children, count into one scrape; a killed zygote is started again and the next restart
of a worker works; a worker's restart to ready is timed (and, with ``sip.spawn: exec``, compared)."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.demo import wait_for_sip
from tests.bridge.webhook.receiver import SECRET, Answer
from tests.e2e.conftest import Bridge, Standin
from tests.e2e.test_bad_input import scrape
from tests.e2e.test_faults import worker_pid
from tests.e2e.test_supervisor import metrics_port
from tests.e2e.test_webhook_call import ThreadedReceiver
from tests.fixtures import sipua
from tests.fixtures.harness import wait_until


def zygote_pids(bridge: Bridge) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"bridge zygote --config {bridge.config_path}"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def calls_total(text: str) -> float:
    return sum(float(v) for v in re.findall(r"^vblaze_bridge_calls_total\{[^}]*\} (\S+)$", text, re.M))


def test_forked_workers_carry_their_name_and_their_counters_sum_in_one_scrape(
    standin_vad: Standin, make_bridge: Any
) -> None:
    port = metrics_port()
    bridge = make_bridge(standin_vad.url, workers=2, metrics={"port": port})
    assert bridge.proc is not None
    (zygote,) = zygote_pids(bridge)
    workers = [worker_pid(bridge.config_path, index) for index in (0, 1)]
    for index, pid in enumerate(workers):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip().decode()
        assert cmdline.startswith(f"vblaze-bridge worker --config {bridge.config_path} --index {index} ")
        assert parent_of(pid) == bridge.proc.pid  # re-parented to the supervisor, its subreaper
    assert parent_of(zygote) == bridge.proc.pid
    before = calls_total(scrape(port))
    for index in (0, 1):
        assert sipua.invite(bridge.sip_port + index).status == 200
    wait_until(lambda: calls_total(scrape(port)) == before + 2, 10, "both workers' calls in the scrape")
    bridge.stop()
    assert not zygote_pids(bridge)


def test_a_killed_zygote_is_started_again_and_the_next_worker_restart_works(
    standin_vad: Standin, make_bridge: Any
) -> None:
    bridge = make_bridge(standin_vad.url, workers=2)
    (zygote,) = zygote_pids(bridge)
    workers = [worker_pid(bridge.config_path, index) for index in (0, 1)]
    os.kill(zygote, signal.SIGKILL)
    wait_until(lambda: len(zygote_pids(bridge)) == 1 and zygote_pids(bridge) != [zygote], 30, "a new zygote")
    assert [worker_pid(bridge.config_path, index) for index in (0, 1)] == workers  # untouched
    assert sipua.invite(bridge.sip_port).status == 200
    replace_worker(bridge, 0, workers[0])
    assert sipua.invite(bridge.sip_port).status == 200
    assert parent_of(worker_pid(bridge.config_path, 0)) == bridge.proc.pid
    assert "zygote" in bridge.log() and "exited with -9; starting it again" in bridge.log()


def worker_pid_or_none(bridge: Bridge, index: int) -> int | None:
    out = subprocess.run(
        ["pgrep", "-f", f"bridge worker --config {bridge.config_path} --index {index} "],
        capture_output=True,
        text=True,
    )
    pids = out.stdout.split()
    return int(pids[0]) if len(pids) == 1 else None


def kill_zygote(bridge: Bridge, zygote: int) -> None:
    """SIGKILL the zygote and wait until its replacement, exec'd, logs that it is ready (INFO)."""
    os.kill(zygote, signal.SIGKILL)
    wait_until(lambda: zygote_pids(bridge) not in ([], [zygote]), 30, "a new zygote")
    (second,) = zygote_pids(bridge)
    wait_until(lambda: f"zygote ready (pid {second}, started by exec)" in bridge.log(), 30, "it is ready")


def replace_worker(bridge: Bridge, index: int, victim: int) -> None:
    """SIGKILL worker `index` (pid `victim`) and wait until its replacement answers SIP."""
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: worker_pid_or_none(bridge, index) not in (None, victim), 15, f"worker {index} replaced"
    )
    wait_for_sip(bridge.sip_port + index, timeout=10)


READY = re.compile(r"worker 0 ready in (\d+\.\d+) s")
RESTARTS = 5


@pytest.mark.parametrize("spawn", ["fork", "exec"])
def test_a_worker_restart_to_ready_is_timed(standin_vad: Standin, make_bridge: Any, spawn: str) -> None:
    """SIGKILL worker 0 five times; the supervisor logs each start's time from spawn to `ready`.
    Forked, the median is expected well under 0.5 s (the bound asserted is doubled for a shared
    machine); exec'd it is printed for comparison."""
    bridge = make_bridge(standin_vad.url, sip={"spawn": spawn}, logging={"level": "INFO"})
    for _ in range(RESTARTS):
        victim = worker_pid(bridge.config_path, 0)
        seen = len(READY.findall(bridge.log()))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda seen=seen: len(READY.findall(bridge.log())) > seen, 30, "the replacement ready")
        time.sleep(0.3)  # its first pings answered
    times = [float(t) for t in READY.findall(bridge.log())[1:]]
    median = statistics.median(times)
    print(f"\nworker restart to ready ({spawn}): median {median:.3f} s, {min(times):.3f}-{max(times):.3f} s")
    if spawn == "fork":
        assert median <= 1.0, times


def shared_dirty_kb(pid: int) -> int:
    """Anonymous pages `pid` wrote and still shares with a process forked from it (copy-on-write)."""
    found = re.search(r"^Shared_Dirty:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
    assert found is not None
    return int(found.group(1))


def test_the_first_zygote_is_forked_from_the_supervisor_and_shares_its_pages(
    standin_vad: Standin, make_bridge: Any
) -> None:
    """The first zygote is forked from the supervisor once it has imported its config, uvloop, aiohttp,
    websockets and pjsua2, so those pages are shared by the supervisor, the zygote and its workers.
    Once the zygote and its worker are gone, their replacements (exec'd zygote, its worker) share none
    of the supervisor's pages, and they serve calls as well."""
    bridge = make_bridge(standin_vad.url, workers=1, logging={"level": "INFO"})
    assert bridge.proc is not None
    (zygote,) = zygote_pids(bridge)
    assert f"zygote ready (pid {zygote}, forked from the supervisor)" in bridge.log()
    forked = shared_dirty_kb(bridge.proc.pid)
    kill_zygote(bridge, zygote)
    worker = worker_pid(bridge.config_path, 0)
    assert sipua.invite(bridge.sip_port).status == 200  # the pre-forked zygote's worker serves on
    replace_worker(bridge, 0, worker)
    assert sipua.invite(bridge.sip_port).status == 200
    time.sleep(0.5)
    alone = shared_dirty_kb(bridge.proc.pid)
    print(f"\nsupervisor's shared dirty pages: {forked} kB with its forked zygote, {alone} kB without")
    assert forked > 5000 and alone < forked / 4, (forked, alone)


def test_a_supervisor_that_fails_at_start_leaves_no_zygote(standin_vad: Standin, make_bridge: Any) -> None:
    """The zygote is forked before the control tokens are read; a missing token ends the supervisor
    (exit 2), and the zygote, waiting for its environment, sees its channel close and exits too."""
    bridge = make_bridge(
        standin_vad.url,
        start=False,
        control={"port": metrics_port(), "tokens": [{"name": "ops", "env": "VBLAZE_TEST_NO_SUCH_TOKEN"}]},
    )
    env = {k: v for k, v in os.environ.items() if k != "VBLAZE_TEST_NO_SUCH_TOKEN"}
    run = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(bridge.config_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert run.returncode == 2 and "VBLAZE_TEST_NO_SUCH_TOKEN" in run.stderr, run.stderr
    wait_until(lambda: not zygote_pids(bridge), 10, "no zygote left")


LATE = "modules imported after the fork, each held by this worker alone"


def test_a_forked_worker_imports_nothing_after_the_fork(
    standin_vad: Standin, make_bridge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module a worker imports after the fork is built in its own memory, once a worker, instead of
    shared. Two workers, each forked by a different zygote (the one forked from the supervisor, and the
    one exec'd after it was killed), serve a call whose events go to a webhook named by host name, as
    deployments name it; stopped, each logs what it imported since its fork: nothing."""
    monkeypatch.setenv("VBLAZE_BRIDGE_WEBHOOK_SECRET", SECRET.decode())
    with ThreadedReceiver(lambda request: Answer()) as receiver:
        bridge = make_bridge(
            standin_vad.url,
            workers=2,
            logging={"level": "INFO"},
            sink={"kind": "webhook"},
            webhook={
                "urls": [receiver.url.replace("127.0.0.1", "localhost")],
                "backoff_initial_seconds": 0.1,
            },
        )
        (zygote,) = zygote_pids(bridge)
        kill_zygote(bridge, zygote)
        replace_worker(bridge, 1, worker_pid(bridge.config_path, 1))  # forked by the exec'd zygote
        for index in (0, 1):
            assert sipua.invite(bridge.sip_port + index).status == 200
        wait_until(
            lambda: sum(e["type"] == "call.ended" for e in receiver.processed) == 2,
            30,
            "both calls delivered",
        )
        assert bridge.stop() == 0
    log = bridge.log()
    assert LATE not in log, [line for line in log.splitlines() if LATE in line]
    assert log.count("no module imported after the fork") == 2, log[-3000:]

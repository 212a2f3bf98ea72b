"""The pool's memory marked for the host's KSM (`sip.memory_merge`, bridge/memory_merge.py), with a real
bridge: the zygote and every worker are marked (forked or exec'd), the supervisor is not, the setting
turned off marks none; with the host's KSM on, the workers' own pages shrink as KSM merges the ones they
hold alike, and the workers serve calls as before."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.load import smaps_rollup
from bridge.demo import wait_for_sip
from tests.e2e.conftest import Bridge, Standin
from tests.e2e.test_faults import worker_pid
from tests.e2e.test_zygote import zygote_pids
from tests.fixtures import sipua
from tests.fixtures.harness import (
    KSM_DIR,
    KSM_SETTINGS,
    host_ksm_on,
    ksm_stat,
    restore_host_ksm,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/ksm_stat").exists(), reason="this kernel has no per-process KSM (Linux < 6.4)"
)


def private_dirty_kib(pid: int) -> int:
    return smaps_rollup(pid)["Private_Dirty"] // 1024


def workers(bridge: Bridge) -> list[int]:
    return [worker_pid(bridge.config_path, index) for index in range(bridge.workers)]


def serves_a_call(bridge: Bridge) -> None:
    for index in range(bridge.workers):
        assert sipua.invite(bridge.sip_port + index).status == 200


@pytest.mark.parametrize("spawn", ["fork", "exec"])
def test_the_zygote_and_every_worker_are_marked_and_the_supervisor_is_not(
    standin_vad: Standin, make_bridge: Any, spawn: str
) -> None:
    bridge = make_bridge(standin_vad.url, workers=2, sip={"spawn": spawn}, logging={"level": "INFO"})
    assert bridge.proc is not None
    marked = workers(bridge) + (zygote_pids(bridge) if spawn == "fork" else [])
    assert len(marked) == (3 if spawn == "fork" else 2)
    for pid in marked:
        assert ksm_stat(pid)["ksm_merge_any"] == "yes", pid
    assert ksm_stat(bridge.proc.pid)["ksm_merge_any"] == "no"
    said = [r["msg"] for r in bridge.log_records() if "memory marked mergeable" in r["msg"]]
    assert len(said) == (1 if spawn == "fork" else 2), said  # the zygote once, or each exec'd worker
    serves_a_call(bridge)


def test_memory_merge_off_marks_nothing(standin_vad: Standin, make_bridge: Any) -> None:
    bridge = make_bridge(standin_vad.url, workers=2, sip={"memory_merge": False}, logging={"level": "INFO"})
    for pid in workers(bridge) + zygote_pids(bridge):
        assert ksm_stat(pid)["ksm_merge_any"] == "no", pid
    assert "mergeable" not in bridge.log()
    serves_a_call(bridge)


@pytest.fixture
def host_ksm_running_fast() -> Iterator[None]:
    """The host's KSM on and scanning fast for the test; its settings as they were afterwards."""
    if not all(os.access(KSM_DIR / name, os.W_OK) for name in KSM_SETTINGS):
        pytest.skip(f"{KSM_DIR} is not writable here: the host's KSM cannot be turned on for the test")
    saved = host_ksm_on(4000, 10)
    try:
        yield
    finally:
        restore_host_ksm(saved)


def test_with_the_hosts_ksm_on_the_workers_own_pages_are_merged(
    host_ksm_running_fast: None, standin_vad: Standin, make_bridge: Any
) -> None:
    bridge = make_bridge(standin_vad.url, workers=4)
    serves_a_call(bridge)  # every worker has run a call's code once
    pids = workers(bridge)
    before = sum(private_dirty_kib(pid) for pid in pids)

    def merged() -> bool:
        return sum(private_dirty_kib(pid) for pid in pids) < before * 0.7

    wait_until(merged, 90, "the workers' private pages down by 30 %", step=1.0)
    after = sum(private_dirty_kib(pid) for pid in pids)
    sharing = [int(ksm_stat(pid)["ksm_merging_pages"]) for pid in pids]
    print(f"\n4 workers' private dirty pages: {before} KiB, then {after} KiB; merged pages {sharing}")
    assert all(pages > 0 for pages in sharing), sharing
    time.sleep(0.5)
    for index in range(bridge.workers):
        wait_for_sip(bridge.sip_port + index, timeout=10)
    serves_a_call(bridge)  # a merged page written again is copied: the workers serve on
    assert workers(bridge) == pids  # none of them was replaced

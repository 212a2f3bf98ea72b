"""A real Kamailio (bridge/assets/kamailio.cfg) on 127.0.0.1 in front of the worker pool.

sipp calls Kamailio's one address; Kamailio picks a worker by call load, and ACK and BYE come back
through it by the Record-Route (sipp's scenario follows the route set, see bench/load.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.load import Kamailio, proxied_scenario_file, sipp_command, sipp_stats, start_kamailio
from bridge.config import load_config
from bridge.dispatcher import dispatcher_list
from tests.e2e.conftest import Standin, free_port_block, run_standin, speech
from tests.fixtures import sipua

pytestmark = pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed")

COUNT = "one two three four five six seven eight nine ten"


@pytest.fixture
def kamailio(tmp_path: Path) -> Iterator[Any]:
    started: list[Kamailio] = []

    def factory(list_text: str, **kwargs: Any) -> Kamailio:
        kam = start_kamailio(list_text, tmp_path / f"kamailio-{len(started)}", **kwargs)
        started.append(kam)
        return kam

    yield factory
    for kam in started:
        kam.stop()


def sipp(
    port: int, audio: Path, workdir: Path, *, calls: int, hold_ms: int, rate: float = 10
) -> tuple[subprocess.Popen[str], Path]:
    """Start sipp placing `calls` calls at once through the proxy on `port`; returns it and its stats."""
    scenario = proxied_scenario_file(audio, workdir, hold_ms)
    local = free_port_block(1)
    stats = workdir / f"sipp-{local}.csv"
    cmd = sipp_command(
        scenario, port, stats, calls=calls, concurrent=calls, rate=rate, local_port=local,
        media_port=free_port_block(2 * calls + 2, low=40000, high=60000),
    )  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, stats


def finish(proc: subprocess.Popen[str], stats: Path, timeout: float) -> dict[str, int]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(f"sipp did not finish within {timeout} s: {out[-2000:]}") from None
    st = sipp_stats(stats)
    return {"ok": int(st.get("SuccessfulCall(C)", 0)), "failed": int(st.get("FailedCall(C)", 0))}


def worker_of(events: list[dict[str, Any]]) -> int:
    return int(events[0]["data"]["worker"])


def test_one_address_for_the_pool_and_a_stopped_worker_costs_only_its_own_calls(
    standin_vad: Standin, make_bridge: Any, kamailio: Any, speech_dir: Path, tmp_path: Path
) -> None:
    bridge = make_bridge(standin_vad.url, workers=4)
    config = load_config(bridge.config_path)
    # Kamailio must see the stopped worker first: a probe a second, given up after FR_TIMER. With the
    # cfg's 2 s, that is 2 to 3 s after the stop, while the supervisor kills and replaces a worker once
    # two pings have waited 2 s (2.5 to 3 s), and a replacement answering a retransmitted OPTIONS keeps
    # the destination active. With 1 s, Kamailio has it down within 1 to 2 s.
    kam = kamailio(dispatcher_list(config), defines=["FR_TIMER=1000"])
    kam.wait_destinations(4)
    audio = speech(COUNT, speech_dir, "count")

    # 8 calls at once through one address: more than a worker holds, spread by call load.
    first, first_stats = sipp(kam.port, audio, tmp_path, calls=8, hold_ms=18000)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(bridge.calls()) < 8:
        time.sleep(0.1)
    before = bridge.calls()
    assert len(before) == 8, kam.log()[-3000:]
    load = Counter(worker_of(events) for events in before.values())
    assert max(load.values()) <= config.sip.calls_per_worker and len(load) >= 2, load

    # Stop one worker that holds calls (SIGSTOP). Kamailio sees it first (an unanswered OPTIONS);
    # the supervisor replaces it once two of its pings have waited 2 s.
    victim = max(load, key=lambda w: load[w])
    victim_uri = f"sip:127.0.0.1:{bridge.sip_port + victim}"
    pgrep = subprocess.run(
        ["pgrep", "-f", f"bridge worker --config {bridge.config_path} --index {victim}"],
        capture_output=True,
        text=True,
        check=False,
    )
    (pid,) = [int(p) for p in pgrep.stdout.split()]
    os.kill(pid, signal.SIGSTOP)
    try:
        flags = kam.wait_destinations(1, active=False, timeout=10)
        assert flags[victim_uri].startswith("I"), flags  # inactive after one unanswered OPTIONS
        assert f"worker down: {victim_uri}" in kam.log()

        # New calls fill the three live workers (2 free slots each) and none goes to the stopped one.
        second, second_stats = sipp(kam.port, audio, tmp_path, calls=6, hold_ms=5000)
        assert finish(second, second_stats, 60) == {"ok": 6, "failed": 0}, kam.log()[-3000:]
        # The first batch: only the calls on the stopped worker fail (their BYE times out).
        assert finish(first, first_stats, 60) == {"ok": 8 - load[victim], "failed": load[victim]}
    finally:
        with contextlib.suppress(ProcessLookupError):  # the supervisor may have killed it already
            os.kill(pid, signal.SIGKILL)

    survivors = 8 - load[victim] + 6
    calls = bridge.wait_ended(survivors, timeout=60)
    new = {cid: events for cid, events in calls.items() if cid not in before}
    # None went to the stopped worker. Its replacement (forked in about 0.05 s once the supervisor has
    # killed it) may take new calls on the same port once Kamailio has seen it up again.
    log = kam.log()
    back_up = log.find(f"worker up: {victim_uri}", log.find(f"worker down: {victim_uri}"))
    assert len(new) == 6
    for cid, events in new.items():
        dispatched = log.find(f"dispatch {cid} to {victim_uri}")
        assert dispatched == -1 or -1 < back_up < dispatched, (cid, log[-3000:])
        assert worker_of(events) != victim or dispatched > back_up > -1, cid
    # Every call but the stopped worker's own ended well, the replacement's new ones included.
    lost = {cid for cid, events in before.items() if worker_of(events) == victim}
    kept = {cid: events for cid, events in calls.items() if cid not in lost}
    for cid, events in kept.items():
        ended = events[-1]
        assert ended["kind"] == "call.ended", (cid, events)
        assert ended["data"]["reason"] == "remote_bye"  # sipp's BYE reached the worker by the route set
        assert ended["data"]["transcript"] is not None and ended["data"]["gaps"] == []
    assert len(kept) == survivors, sorted(kept)


def test_an_unanswering_worker_fails_over_within_the_timer(
    standin_vad: Standin, make_bridge: Any, kamailio: Any, speech_dir: Path, tmp_path: Path
) -> None:
    """Probing is slowed to once an hour, so only the INVITE's own timeout can find the dead worker."""
    bridge = make_bridge(standin_vad.url, workers=1)
    dead = free_port_block(1)  # nothing listens there
    text = dispatcher_list(load_config(bridge.config_path))
    text += f"1 sip:127.0.0.1:{dead} 0 0 duid=dead;maxload=4\n"
    kam = kamailio(text, ping_interval=3600)
    audio = speech(COUNT, speech_dir, "count")
    started = time.monotonic()
    proc, stats = sipp(kam.port, audio, tmp_path, calls=2, hold_ms=3000)
    assert finish(proc, stats, 60) == {"ok": 2, "failed": 0}, kam.log()[-3000:]
    assert time.monotonic() - started < 3 + 2 + 5  # hold + fr_timer + slack
    log = kam.log()
    assert f"sip:127.0.0.1:{dead} did not answer; marked inactive" in log
    assert f"to sip:127.0.0.1:{bridge.sip_port} after 408" in log
    calls = bridge.wait_ended(2)
    assert all(events[-1]["data"]["reason"] == "remote_bye" for events in calls.values())


def test_a_draining_bridge_is_taken_out_by_its_own_options_answers(
    standin_vad: Standin, make_bridge: Any, kamailio: Any, speech_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM to one bridge: its workers answer OPTIONS 503 (draining), Kamailio marks them inactive
    within two probe intervals and sends every new call to the other bridge (the other host)."""
    leaving = make_bridge(standin_vad.url, workers=2, drain={"timeout_seconds": 30})
    staying = make_bridge(standin_vad.url, workers=2)
    text = dispatcher_list(load_config(leaving.config_path)) + dispatcher_list(
        load_config(staying.config_path)
    )
    kam = kamailio(text)
    kam.wait_destinations(4)
    audio = speech(COUNT, speech_dir, "count")
    held = sipua.invite(leaving.sip_port, hangup=False)  # keeps the leaving bridge draining
    assert held.status == 200 and held.dialog is not None
    talker = threading.Thread(target=held.dialog.send_silence, args=(12.0,))
    talker.start()
    try:
        assert leaving.proc is not None
        leaving.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        flags = kam.wait_destinations(2, active=False, timeout=4)
        assert time.monotonic() - signalled <= 2 * 1 + 1  # two probe intervals (1 s) and slack
        for index in range(2):
            assert flags[f"sip:127.0.0.1:{leaving.sip_port + index}"].startswith("I"), flags
        seen = len(kam.log())
        proc, stats = sipp(kam.port, audio, tmp_path, calls=4, hold_ms=3000)
        assert finish(proc, stats, 60) == {"ok": 4, "failed": 0}, kam.log()[-3000:]
        since = kam.log()[seen:]
    finally:
        talker.join()
        held.dialog.bye()
    assert len(staying.wait_ended(4)) == 4
    assert len(leaving.calls()) == 1  # nothing but the call it held
    assert since.count("dispatch ") >= 4, since
    for index in range(2):  # no INVITE went to a draining worker once it was out
        assert not re.search(rf"to sip:127\.0\.0\.1:{leaving.sip_port + index}\b", since), since
    assert leaving.proc.wait(timeout=40) == 0


def test_a_worker_without_its_engine_is_taken_out_and_comes_back(
    standin_vad: Standin, make_bridge: Any, kamailio: Any, speech_dir: Path, tmp_path: Path
) -> None:
    engine_port = free_port_block(1, low=28000, high=29000)
    orphan = make_bridge(f"ws://127.0.0.1:{engine_port}/transcribe")
    healthy = make_bridge(standin_vad.url)
    text = dispatcher_list(load_config(orphan.config_path)) + dispatcher_list(
        load_config(healthy.config_path)
    )
    kam = kamailio(text)
    flags = kam.wait_destinations(1, active=False, timeout=10)
    assert flags[f"sip:127.0.0.1:{orphan.sip_port}"].startswith("I"), flags
    audio = speech(COUNT, speech_dir, "count")
    proc, stats = sipp(kam.port, audio, tmp_path, calls=2, hold_ms=2000)
    assert finish(proc, stats, 60) == {"ok": 2, "failed": 0}, kam.log()[-3000:]
    assert orphan.calls() == {} and len(healthy.wait_ended(2)) == 2
    engine = run_standin("--recognizer", "vad-only", "--port", str(engine_port))
    try:
        kam.wait_destinations(2, timeout=15)  # the engine is back: so is the worker
    finally:
        engine.stop()


def test_a_full_worker_is_skipped_once_probed_without_a_503_round_trip(
    standin_vad: Standin, make_bridge: Any, kamailio: Any, speech_dir: Path, tmp_path: Path
) -> None:
    """4 calls held on a worker directly (not through Kamailio, so its own load count cannot know):
    its next OPTIONS answer (503 pool full) takes it out, and new calls go elsewhere at the first try."""
    full = make_bridge(standin_vad.url, sip={"first_rtp_timeout_seconds": 60})
    other = make_bridge(standin_vad.url)
    kam = kamailio("".join(dispatcher_list(load_config(b.config_path)) for b in (full, other)))
    kam.wait_destinations(2)
    held = [sipua.invite(full.sip_port, hangup=False) for _ in range(4)]
    try:
        assert [answer.status for answer in held] == [200] * 4
        flags = kam.wait_destinations(1, active=False, timeout=4)
        assert flags[f"sip:127.0.0.1:{full.sip_port}"].startswith("I"), flags
        proc, stats = sipp(kam.port, speech(COUNT, speech_dir, "count"), tmp_path, calls=3, hold_ms=2000)
        assert finish(proc, stats, 60) == {"ok": 3, "failed": 0}, kam.log()[-3000:]
    finally:
        for answer in held:
            if answer.dialog is not None:
                answer.dialog.bye()
    assert len(other.wait_ended(3)) == 3
    assert "after 503" not in kam.log()  # no INVITE was tried on the full worker first
    kam.wait_destinations(2, timeout=10)  # slots free again: back in the rotation

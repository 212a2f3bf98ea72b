"""Real peers on 127.0.0.1 for end-to-end tests: the stand-in engine, the bridge, sipp callers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.demo import sipp_scenario, speech_file, start_standin, stop_process, wait_for_sip
from sip.limits import rtp_ports
from tests.fixtures.harness import free_port_block, json_lines


@dataclass
class Standin:
    proc: subprocess.Popen[str]
    url: str

    def stop(self) -> None:
        stop_process(self.proc, 10)


def run_standin(*args: str) -> Standin:
    proc, url = start_standin(list(args))
    return Standin(proc, url)


@pytest.fixture
def standin_vad() -> Iterator[Standin]:
    engine = run_standin("--recognizer", "vad-only", "--max-streams", "16")
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def standin_whisper() -> Iterator[Standin]:
    engine = run_standin("--max-streams", "16")
    yield engine
    engine.stop()


@dataclass
class Bridge:
    config_path: Path
    events_path: Path
    sip_port: int
    workers: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        assert self.log_path is not None
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(self.config_path)], stderr=log
        )
        for index in range(self.workers):
            wait_for_sip(self.sip_port + index, timeout=30)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        return json_lines(self.events_path.read_text())

    def calls(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for event in self.events():
            out.setdefault(event["call_id"], []).append(event)
        return out

    def wait_ended(self, count: int, timeout: float = 90.0) -> dict[str, list[dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            calls = self.calls()
            ended = [c for c in calls.values() if any(e["kind"] == "call.ended" for e in c)]
            if len(ended) >= count:
                return calls
            time.sleep(0.2)
        raise AssertionError(f"fewer than {count} calls ended within {timeout} s: {self.calls()}")

    def worker_pid(self, index: int | None = None) -> int:
        """The PID of the one worker (or of worker `index`) running now; fails if there is not exactly one."""
        pattern = f"bridge worker --config {self.config_path}"
        if index is not None:
            pattern += f" --index {index} "
        found = subprocess.run(
            ["pgrep", "-f", pattern], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(found) == 1, found
        return int(found[0])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        """The log's JSON lines, parsed."""
        return json_lines(self.log())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def new_bridge(
    directory: Path,
    number: int,
    engine_url: str,
    workers: int = 1,
    start: bool = True,
    **sections: dict[str, Any],
) -> Bridge:
    """A bridge with its own ports, config, events file, state and spool in `directory`."""
    sip_port = free_port_block(workers)
    rtp_port = free_port_block(rtp_ports(workers), low=30000, high=60000)
    events_path = directory / f"events-{number}.jsonl"
    config: dict[str, Any] = {
        "sip": {"first_port": sip_port, "workers": workers, "rtp_first_port": rtp_port},
        "engine": {"url": engine_url, "final_timeout_seconds": 30, "reconnect_initial_seconds": 0.2},
        "sink": {"kind": "jsonl", "jsonl_path": str(events_path)},
        "metrics": {"port": 0},
        "control": {"port": 0},  # a test that needs the control API gives it a free port
        "drain": {"timeout_seconds": 5},
        "state": {"directory": str(directory / f"state-{number}")},
        "webhook": {"spool_path": str(directory / f"spool-{number}.sqlite3")},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    config_path = directory / f"config-{number}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    bridge = Bridge(config_path, events_path, sip_port, workers, log_path=directory / f"bridge-{number}.log")
    if start:
        bridge.start()
    return bridge


def end_bridge(bridge: Bridge) -> None:
    """Stop a test's bridge and anything it left behind."""
    bridge.stop(signal.SIGKILL if bridge.proc and bridge.proc.poll() is None else signal.SIGTERM, timeout=5)
    for kind in ("worker", "zygote"):
        subprocess.run(["pkill", "-9", "-f", f"bridge {kind} --config {bridge.config_path}"], check=False)


@pytest.fixture
def make_bridge(tmp_path: Path) -> Iterator[Any]:
    started: list[Bridge] = []

    def factory(engine_url: str, workers: int = 1, start: bool = True, **sections: dict[str, Any]) -> Bridge:
        started.append(bridge := new_bridge(tmp_path, len(started), engine_url, workers, False, **sections))
        if start:
            bridge.start()
        return bridge

    yield factory
    for bridge in started:
        end_bridge(bridge)


@dataclass
class SippResult:
    returncode: int
    stdout: str
    stats: dict[str, str]


def run_sipp(
    port: int,
    audio: Path,
    workdir: Path,
    *,
    hold_ms: int,
    calls: int = 1,
    concurrent: int = 1,
    rate: int = 10,
    pt: int = 0,
    timeout: float = 120.0,
    before_audio: str = "",
    after_audio: str = "",
    service: str = "svc",
) -> SippResult:
    """Place `calls` calls (at most `concurrent` at once) that play `audio` as G.711 RTP, to the user
    `service` (the Request-URI's and To's user part: a DID)."""
    scenario = sipp_scenario(audio, workdir, hold_ms, pt, before_audio, after_audio)
    local = free_port_block(1)
    media = free_port_block(2 * calls + 2, low=40000, high=60000)
    stats = workdir / f"sipp-{local}.csv"
    cmd = [
        "sipp", "-sf", str(scenario), "-m", str(calls), "-l", str(concurrent), "-r", str(rate),
        "-i", "127.0.0.1", "-p", str(local), "-mp", str(media), "-s", service, "-nostdin",
        "-trace_stat", "-stf", str(stats), "-fd", "1", f"127.0.0.1:{port}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    parsed: dict[str, str] = {}
    if stats.exists():
        lines = stats.read_text().splitlines()
        if len(lines) >= 2:
            parsed = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
    return SippResult(proc.returncode, proc.stdout + proc.stderr, parsed)


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


def speech(text: str, directory: Path, name: str) -> Path:
    target = directory / name
    target.mkdir(exist_ok=True)
    return speech_file(text, target)

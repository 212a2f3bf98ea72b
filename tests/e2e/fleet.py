"""A fleet in network namespaces (tests/fixtures/netns.py): callers, Kamailio, two bridge hosts, an engine.

The layout is the one docs/fleet.md describes, on 10.231.0.0/24 behind one switch:

    caller .10 ──SIP──▶ kam .2:5060 ──SIP──▶ a .11:5080-5083 ─┐
        └────────── RTP, straight ────────▶ b .12:5080-5083 ─┴─▶ engine .20 (stand-in)
                                              └── webhooks ──▶ hook .30:8081 (a's), :8082 (b's)

Each bridge host runs `vblaze-bridge run` with its own config (same ports, its own `sip.host`, spool,
state directory and metrics address); Kamailio's list comes from `vblaze-bridge dispatcher-list` with
the other host as `--host-extra`. Each host posts its events to its own receiver process on the hook
host (`tests.bridge.webhook.receiver_main`), which writes every request to a JSON-lines file; a
receiver can be told to answer 503 for a while, so that its bridge keeps the events in its spool.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.load import KAMAILIO_CFG, Kamailio, parse_prometheus, proxied_scenario_file, sipp_command
from bridge.demo import start_standin, wait_for_sip
from bridge.dispatcher import kamailio_args
from tests.e2e.conftest import Bridge
from tests.fixtures.harness import json_lines
from tests.fixtures.netns import Host, TestBed, wait_tcp

NET = "10.231.0"
ADDRESSES = {"kam": f"{NET}.2", "caller": f"{NET}.10", "a": f"{NET}.11", "b": f"{NET}.12"}
ADDRESSES |= {"engine": f"{NET}.20", "hook": f"{NET}.30"}
BRIDGE_HOSTS = ("a", "b")
HOOK_PORTS = {"a": 8081, "b": 8082}
SIP_PORT = 5080  # the same layout on every bridge host
RTP_PORT = 20000
METRICS_PORT = 9100
PROXY_PORT = 5060
PING_INTERVAL = 1  # Kamailio's OPTIONS probe, seconds (the cfg's default)
FR_TIMER = 2.0  # seconds Kamailio waits for a first answer (the cfg's default)


@dataclass
class HostBridge(Bridge):
    """`tests.e2e.conftest.Bridge` on a host of the bed: started with `ip netns exec`, probed from inside."""

    host: Host | None = None

    def start(self) -> None:
        assert self.host is not None and self.log_path is not None
        argv = [sys.executable, "-m", "bridge", "run", "--config", str(self.config_path)]
        self.proc = self.host.popen(argv, self.log_path)
        for index in range(self.workers):
            self.host.call(wait_for_sip, SIP_PORT + index, 30, host=self.host.address)

    def uris(self) -> list[str]:
        assert self.host is not None
        return [f"sip:{self.host.address}:{SIP_PORT + i}" for i in range(self.workers)]

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        assert self.host is not None
        url = f"http://{self.host.address}:{METRICS_PORT}/metrics"
        text = self.host.call(lambda: urllib.request.urlopen(url, timeout=5).read().decode(), timeout=10)
        return parse_prometheus(text)

    def counted(self, name: str, **labels: str) -> float:
        samples = self.metrics().get(name, [])
        return sum(v for have, v in samples if all(have.get(k) == want for k, want in labels.items()))


@dataclass
class Hook:
    """One receiver process on the hook host; `requests` reads what it got."""

    url: str
    out: Path
    gate: Path

    def requests(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return json_lines(self.out.read_text())

    def refuse(self, refuse: bool) -> None:
        """Answer 503 from now on (the bridge spools), or 200 again."""
        if refuse:
            self.gate.touch()
        else:
            self.gate.unlink(missing_ok=True)

    def calls(self, kind: str | None = None) -> set[str]:
        """Call ids it was sent an event of (of `kind`), answered or not."""
        return {r["envelope"]["call_id"] for r in self.requests() if kind in (None, r["envelope"]["type"])}

    def delivered(self) -> dict[str, list[dict[str, Any]]]:
        """Per call, the events it accepted (200), in arrival order, each event id once."""
        seen: set[str] = set()
        out: dict[str, list[dict[str, Any]]] = {}
        for request in self.requests():
            envelope = request["envelope"]
            if request["status"] == 200 and envelope["event_id"] not in seen:
                seen.add(envelope["event_id"])
                out.setdefault(envelope["call_id"], []).append(envelope)
        return out

    def started_at(self, calls: Iterable[str]) -> dict[str, float]:
        """Per call of `calls`, the unix time its worker answered it (its delivered call.started)."""
        delivered = self.delivered()
        return {
            cid: datetime.fromisoformat(delivered[cid][0]["data"]["started_at"]).timestamp() for cid in calls
        }

    def ended(self) -> dict[str, dict[str, Any]]:
        """Per call, the data of its delivered call.ended."""
        return {
            cid: events[-1]["data"]
            for cid, events in self.delivered().items()
            if events[-1]["type"] == "call.ended"
        }


@dataclass
class Fleet:
    bed: TestBed
    directory: Path
    audio: Path
    engine_url: str = ""
    hooks: dict[str, Hook] = field(default_factory=dict)
    bridges: dict[str, HostBridge] = field(default_factory=dict)
    kam: Kamailio | None = None
    _sipp_runs: int = 0

    def host(self, role: str) -> Host:
        return self.bed.hosts[role]

    def start_engine(self) -> None:
        engine = self.bed.add_host("engine", ADDRESSES["engine"])
        args = ["--recognizer", "vad-only", "--max-streams", "48", "--host", engine.address]
        proc, self.engine_url = start_standin(args, wrap=engine.wrap())
        engine.adopt(proc)

    def start_hooks(self) -> None:
        hook = self.bed.add_host("hook", ADDRESSES["hook"])
        for role in BRIDGE_HOSTS:
            out, gate = self.directory / f"hook-{role}.jsonl", self.directory / f"hook-{role}.refuse"
            argv = [sys.executable, "-m", "tests.bridge.webhook.receiver_main", "--host", hook.address]
            argv += ["--port", str(HOOK_PORTS[role]), "--out", str(out), "--refuse-while", str(gate)]
            hook.popen(argv, self.directory / f"hook-{role}.log")
            hook.call(wait_tcp, hook.address, HOOK_PORTS[role])
            self.hooks[role] = Hook(f"http://{hook.address}:{HOOK_PORTS[role]}/hook", out, gate)

    def add_bridge(self, role: str, workers: int, drain_seconds: float) -> HostBridge:
        host = self.bed.add_host(role, ADDRESSES[role])
        home = self.directory / role
        home.mkdir()
        config_path = home / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.host_config(host, workers, drain_seconds)))
        bridge = HostBridge(
            config_path, home / "unused.jsonl", SIP_PORT, workers, log_path=home / "bridge.log"
        )
        bridge.host = host
        bridge.start()
        self.bridges[role] = bridge
        return bridge

    def host_config(self, host: Host, workers: int, drain_seconds: float) -> dict[str, Any]:
        """One host's config: the shared layout, and what is this host's own (address, spool, state)."""
        home = self.directory / host.role
        return {
            "sip": {
                "host": host.address,
                "first_port": SIP_PORT,
                "workers": workers,
                "rtp_first_port": RTP_PORT,
                "allow_from": [f"{ADDRESSES['kam']}/32"],
            },
            "engine": {"url": self.engine_url, "final_timeout_seconds": 30, "reconnect_initial_seconds": 0.2},
            "sink": {"kind": "webhook"},
            "webhook": {
                "urls": [self.hooks[host.role].url],
                "spool_path": str(home / "spool.sqlite3"),
                "backoff_initial_seconds": 0.1,
                "backoff_max_seconds": 1.0,
            },
            "state": {"directory": str(home / "state")},
            "metrics": {"host": host.address, "port": METRICS_PORT},
            "control": {"port": 0},
            "drain": {"timeout_seconds": drain_seconds},
        }

    def start_proxy(self) -> Kamailio:
        """Kamailio on the kam host, its list from `vblaze-bridge dispatcher-list` for both hosts."""
        kam = self.bed.add_host("kam", ADDRESSES["kam"])
        workdir = self.directory / "kamailio"
        workdir.mkdir()
        a, others = self.bridges["a"], [b for role, b in self.bridges.items() if role != "a"]
        cmd = [sys.executable, "-m", "bridge", "dispatcher-list", "--config", str(a.config_path)]
        for other in others:
            assert other.host is not None
            cmd += ["--host-extra", other.host.address]
        listing = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
        list_path = workdir / "dispatcher.list"
        list_path.write_text(listing)
        ctl = workdir / "kamailio_ctl"
        listen = f"udp:{kam.address}:{PROXY_PORT}"
        argv = kamailio_args(
            str(KAMAILIO_CFG), str(list_path), listen, runtime_dir=str(workdir), ctl_socket=str(ctl)
        )
        log = workdir / "kamailio.log"
        proc = kam.popen(argv, log, cwd=workdir)
        self.kam = Kamailio(proc, PROXY_PORT, workdir, log, ctl)
        kam.call(wait_for_sip, PROXY_PORT, 15, host=kam.address)
        return self.kam

    def sipp(self, calls: int, hold_ms: int, rate: float = 10) -> tuple[subprocess.Popen[str], Path, str]:
        """sipp on the caller host placing `calls` calls at once through Kamailio; it, its stats, and
        the marker every one of its Call-IDs contains (`-PID@`)."""
        caller = self.host("caller")
        self._sipp_runs += 1
        run = self._sipp_runs
        workdir = self.directory / f"sipp-{run}"
        workdir.mkdir()
        scenario = proxied_scenario_file(self.audio, workdir, hold_ms)
        stats = workdir / "stats.csv"
        cmd = sipp_command(
            scenario, PROXY_PORT, stats, calls=calls, concurrent=calls, rate=rate, local_port=5100 + run,
            media_port=30000 + 400 * run, local_ip=caller.address, target_host=ADDRESSES["kam"],
        )  # fmt: skip
        proc = subprocess.Popen(
            [*caller.wrap(), *cmd], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        caller.adopt(proc)
        return proc, stats, f"-{proc.pid}@"

    def where(self, marker: str, kind: str = "call.started") -> dict[str, set[str]]:
        """Per bridge host, the calls of one sipp run (by its marker) whose `kind` event it sent."""
        return {role: {c for c in hook.calls(kind) if marker in c} for role, hook in self.hooks.items()}

    def wait_where(
        self, marker: str, count: int, timeout: float, kind: str = "call.started"
    ) -> dict[str, set[str]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.where(marker, kind)
            if sum(map(len, found.values())) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} calls of {marker} not seen within {timeout} s: {found}")
            time.sleep(0.1)


def wait_delivered(hook: Hook, calls: Iterable[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Wait until `hook` accepted a call.ended of every call in `calls`; their data."""
    want = set(calls)
    deadline = time.monotonic() + timeout
    while True:
        ended = hook.ended()
        if want <= set(ended):
            return {cid: ended[cid] for cid in want}
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no call.ended delivered within {timeout} s for {sorted(want - set(ended))}"
            )
        time.sleep(0.2)

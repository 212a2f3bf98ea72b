"""A real Prometheus scrapes a live bridge during a call, with deploy/prometheus's rules loaded: every
rule and every expression of the Grafana dashboard returns data through Prometheus's HTTP API.

Prometheus (Debian's `prometheus`) scrapes every second and evaluates the rules every second. The call
is a sipp call through the vad-only stand-in, with a real webhook receiver, so every hop's histogram
gets observations. An alert's expression is evaluated with its final comparison made `bool`
(`tests/deploy/test_rules.py` checks each has that form), so a healthy bridge still proves each series
behind it exists. About 40 s.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bridge.webhook.receiver import Receiver
from tests.deploy.test_rules import RULES, alerts, as_bool, dashboard_exprs, rules
from tests.e2e.conftest import Standin, free_port_block, run_sipp, speech
from tests.e2e.test_operations import COUNT, receiver  # noqa: F401  (the fixture)
from tests.fixtures.harness import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed"),
]
# Grafana's own variables, as the dashboard's "All" selections and a short range expand them.
GRAFANA_VARIABLES = {"$instance": ".*", "$route": ".*", "$__rate_interval": "1m", "$__range": "5m"}


class Prometheus:
    def __init__(self, directory: Path, target_port: int) -> None:
        self.port = free_port_block(1, low=30000, high=31000)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "vblaze-bridge", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (directory / "prometheus.log").open("wb")
        command = ["prometheus", f"--config.file={directory / 'prometheus.yml'}"]
        command += [
            f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.proc = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=self.log,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(target_port: int) -> Prometheus:
        server = Prometheus(tmp_path, target_port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def expand(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_every_rule_and_dashboard_expression_returns_data_on_a_real_prometheus(
    standin_vad: Standin,
    make_bridge: Any,
    receiver: Receiver,  # noqa: F811
    speech_dir: Path,
    tmp_path: Path,
    prometheus_for: Any,
) -> None:
    port = free_port_block(1, low=29000, high=30000)
    bridge = make_bridge(
        standin_vad.url, metrics={"port": port}, sink={"kind": "webhook"}, webhook={"urls": [receiver.url]}
    )
    prometheus = prometheus_for(port)
    wait_until(lambda: _up(prometheus), 30, "Prometheus scraping the bridge")
    audio = speech(COUNT.replace(" six", " six |"), speech_dir, "count-split")
    results: list[Any] = []
    caller = threading.Thread(
        target=lambda: results.append(run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=9000))
    )
    caller.start()
    wait_until(
        lambda: bool(prometheus.query("vblaze_bridge_calls_active == 1")), 20, "the call seen by Prometheus"
    )
    caller.join(60)
    assert results and results[0].returncode == 0, results
    wait_until(lambda: any(e["type"] == "call.ended" for e in receiver.processed), 30, "call.ended delivered")
    # The last hop (webhook 2xx) is observed after call.ended reached the receiver; two more scrapes.
    wait_until(
        lambda: _finite(prometheus, "instance:vblaze_bridge_utterance_to_webhook_ack_seconds:p99_1m"),
        20,
        "the recorded p99 of the last hop",
    )

    empty = [expr for expr in dashboard_exprs() if not prometheus.query(expand(expr))]
    assert not empty, "dashboard expressions without data:\n" + "\n".join(empty)
    for rule in rules():
        expr = as_bool(rule["expr"]) if "alert" in rule else rule["expr"]
        assert prometheus.query(expr), f"no data: {expr}"
    for rule in rules():
        if "record" in rule and ":p" in rule["record"]:  # every hop was observed within the minute
            assert _finite(prometheus, rule["record"]), rule["record"]
    # Prometheus evaluated each rule itself, without error, and nothing fires on a healthy bridge.
    loaded = [r for group in prometheus.api("rules")["groups"] for r in group["rules"]]
    assert len(loaded) == len(rules())
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]
    firing = [r["name"] for r in loaded if r["type"] == "alerting" and r["state"] != "inactive"]
    assert firing == [], firing
    assert {r["name"] for r in loaded if r["type"] == "alerting"} == {a["alert"] for a in alerts()}


def _up(prometheus: Prometheus) -> bool:
    try:
        return bool(prometheus.query('up{job="vblaze-bridge"} == 1'))
    except OSError:
        return False


def _finite(prometheus: Prometheus, expr: str) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in prometheus.query(expr))

"""deploy/: the Prometheus rules pass promtool (syntax and a unit test per alert), and the Grafana
dashboard's expressions name only metrics the bridge exports.

On a real Prometheus scraping a live bridge, every rule and every dashboard expression is evaluated by
tests/e2e/test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "vblaze-bridge.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "vblaze-bridge.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "vblaze-bridge.json"
# An alert's expression: anything, then one comparison with a number at the end (see the rules file).
ALERT_FORM = re.compile(r"^(?P<signal>.*\S)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<threshold>-?[0-9.]+)$", re.S)
# Families only the supervisor renders at scrape time (bridge/metrics.py `_PoolCollector`).
SUPERVISOR_FAMILIES = {"worker_restarts", "ready", "draining", "engine_up", "engine_full"}
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard_exprs() -> list[str]:
    """Every target expression of every panel of the dashboard."""
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in doc["panels"] for target in panel.get("targets", [])]


def as_bool(expr: str) -> str:
    """An alert's expression with its final comparison made `bool`: a 0/1 sample wherever its series exist."""
    found = ALERT_FORM.match(expr.strip())
    assert found, expr
    return f"({found['signal']}) {found['op']} bool {found['threshold']}"


def exported_families() -> set[str]:
    """The metric family names the bridge exports (without the `vblaze_bridge_` prefix)."""
    names = {
        collector._name  # type: ignore[attr-defined]
        for collector in vars(metrics).values()
        if hasattr(collector, "_name") and hasattr(collector, "_type")
    }
    prefix = metrics.PREFIX + "_"
    return {name.removeprefix(prefix) for name in names} | SUPERVISOR_FAMILIES


def referenced_families(expr: str) -> set[str]:
    """The families an expression reads: vblaze_bridge_X, less sample suffixes (_bucket, _total, ...)."""
    out = set()
    for name in re.findall(rf"(?<![:\w]){metrics.PREFIX}_(\w+)", expr):
        for suffix in ("_bucket", "_count", "_sum", "_total"):
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        out.add(name)
    return out


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    proc = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


@needs_promtool
def test_promtool_unit_tests_pass_and_cover_every_alert() -> None:
    proc = subprocess.run(
        ["promtool", "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULES.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {
        check["alertname"]
        for case in yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")  # shown firing, not only silent
    }
    assert tested == {rule["alert"] for rule in alerts()}


def test_every_alert_has_a_runbook_a_severity_and_the_comparison_form() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert len(rule["annotations"]["runbook"]) > 80, rule["alert"]
        as_bool(rule["expr"])


def test_rules_and_dashboard_name_only_metrics_the_bridge_exports() -> None:
    exported = exported_families()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for expr in [rule["expr"] for rule in rules()] + dashboard_exprs():
        assert referenced_families(expr) <= exported, expr
        for name in re.findall(r"instance:[\w:]+", expr):
            assert name in recorded, expr


def test_dashboard_filters_every_expression_by_instance_and_calls_by_route() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"instance", "route"} <= set(variables)
    assert all(variables[name]["allValue"] == ".*" for name in ("instance", "route"))
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    assert all('instance=~"$instance"' in expr for expr in exprs)
    assert any('route=~"$route"' in expr for expr in exprs)
    # Every metric family the bridge exports is on the dashboard somewhere, raw or through a rule.
    shown = set().union(*(referenced_families(e) for e in exprs))
    recorded = {
        name.split(":")[1].removeprefix(metrics.PREFIX + "_")
        for e in exprs
        for name in re.findall(r"instance:[\w:]+", e)
    }
    assert exported_families() - shown - recorded == set()

"""What the bridge gives sip/: settings built from the config, and the /readyz rule for OPTIONS."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from bridge.config import Config, parse_config
from bridge.sip_adapter import sip_settings, worker_readiness
from sip.limits import PJSUA_MAX_CALLS
from sip.settings import WorkerLoad

ROOT = Path(__file__).parents[2]


def test_settings_follow_the_config() -> None:
    config = parse_config(
        {
            "sip": {
                "host": "127.0.0.2",
                "calls_per_worker": 2,
                "allow_from": ["10.0.0.0/8"],
                "headers": ["X-A"],
            },
            "engine": {"on_unreachable": "reject"},
            "siprec": {"accept_require": False, "agent_labels": ["2"]},
            "audio": {"sample_rate": 16000},
        }
    )
    settings = sip_settings(config)
    assert (settings.host, settings.calls_per_worker, settings.capacity) == ("127.0.0.2", 2, 2)
    assert settings.allow_from == ("10.0.0.0/8",) and settings.headers == ("X-A",)
    assert settings.refuse_without_engine and not settings.accept_require_siprec
    assert settings.sample_rate == 16000 and settings.siprec_rules.agent_labels == ("2",)
    assert settings.policy().capacity == 2 and settings.policy().allow_from == ("10.0.0.0/8",)


def test_every_setting_is_a_config_key_of_the_same_name() -> None:
    """No setting carries a default of its own: each is read from the config (sip.<name> or its section)."""
    default = sip_settings(Config())
    sip = Config().sip
    for field in dataclasses.fields(default):
        if hasattr(sip, field.name):
            assert getattr(default, field.name) == getattr(sip, field.name), field.name
    assert default.capacity == min(sip.calls_per_worker, PJSUA_MAX_CALLS)


def test_options_follow_the_readyz_rule() -> None:
    def load(**changes: object) -> WorkerLoad:
        base = WorkerLoad(draining=False, calls_held=0, capacity=4, engine_reachable=None, engine_full=False)
        return dataclasses.replace(base, **changes)

    assert worker_readiness(load()).ready
    assert worker_readiness(load(draining=True)).reason == "draining"
    assert worker_readiness(load(calls_held=4)).reason == "pool full"
    assert worker_readiness(load(engine_reachable=False)).reason == "engine unreachable"
    assert worker_readiness(load(engine_full=True)).reason == "engine full"


def test_sip_imports_nothing_of_bridge() -> None:
    found = []
    for path in sorted((ROOT / "sip").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "bridge"]
    assert found == []

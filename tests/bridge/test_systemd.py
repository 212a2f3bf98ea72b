"""The systemd unit: the settings the drain and notify design rely on, and `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from bridge.config import DEFAULT_DRAIN_SECONDS, DEFAULT_FINAL_TIMEOUT

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "bridge" / "assets" / "vblaze-bridge.service"
SYSUSERS = REPO / "bridge" / "assets" / "vblaze-bridge.sysusers.conf"
INSTALLED = "/opt/vblaze-bridge/.venv/bin/vblaze-bridge"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")


def _settings(text: str) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def _one(settings: dict[tuple[str, str], list[str]], key: str, section: str = "Service") -> str:
    values = settings[(section, key)]
    assert len(values) == 1, key
    return values[0]


def test_unit_settings_the_design_relies_on() -> None:
    s = _settings(UNIT.read_text())
    assert _one(s, "Type") == "notify"
    assert _one(s, "NotifyAccess") == "main"
    assert _one(s, "ExecStart") == f"{INSTALLED} run --config /etc/vblaze-bridge/config.yaml"
    assert _one(s, "KillMode") == "mixed"  # SIGTERM to the supervisor only; it drains the workers
    assert _one(s, "KillSignal") == "SIGTERM"
    assert int(_one(s, "TimeoutStopSec")) > DEFAULT_DRAIN_SECONDS + DEFAULT_FINAL_TIMEOUT
    assert int(_one(s, "WatchdogSec")) > 0
    assert _one(s, "User") == "vblaze-bridge"
    assert _one(s, "StateDirectory") == "vblaze-bridge"
    assert _one(s, "RuntimeDirectory") == "vblaze-bridge"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert _one(s, key) == value, key
    assert _one(s, "WantedBy", "Install") == "multi-user.target"


def test_sysusers_creates_the_service_user() -> None:
    lines = SYSUSERS.read_text().splitlines()
    entries = [line.split() for line in lines if line and not line.startswith("#")]
    assert entries[0][:2] == ["u", "vblaze-bridge"]


def _unit_with_stub_binary(tmp_path: Path) -> Path:
    """The shipped unit with its binary path pointed at a stub, since verify checks it is executable."""
    stub = tmp_path / "bin" / "vblaze-bridge"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    unit = tmp_path / UNIT.name
    text = UNIT.read_text()
    assert INSTALLED in text
    unit.write_text(text.replace(INSTALLED, str(stub)))
    return unit


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice")
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, env=env
    )


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    proc = _verify(_unit_with_stub_binary(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # verify reports unknown keys only as warnings


@needs_analyze
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    unit = _unit_with_stub_binary(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilegs=yes"))
    assert "Unknown key" in _verify(unit).stderr


@needs_analyze
def test_security_exposure_is_low(tmp_path: Path) -> None:
    # The exposure score is 0-10; the threshold is given in tenths. 2.0 or less is "OK" in its scale.
    unit = _unit_with_stub_binary(tmp_path)
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_file_parses(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "--dry-run", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "vblaze-bridge" in proc.stdout + proc.stderr

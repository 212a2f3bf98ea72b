"""config.yaml matches the code's defaults, and bad files fail naming the file and the key."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from bridge.cli_check import check_config
from bridge.config import Config, load_config
from bridge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "bridge" / "assets" / "config.yaml"


def _dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_dotted_keys(annotation, key + "."))
    return keys


def _yaml_keys(node: object, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, dict):
        for name, value in node.items():
            key = f"{prefix}{name}"
            keys.append(key)
            if not key.startswith("engine.tags"):
                keys.extend(_yaml_keys(value, key + "."))
    return keys


def test_shipped_file_equals_the_defaults() -> None:
    assert load_config(SHIPPED) == Config()


def test_shipped_file_shows_every_key() -> None:
    shown = set(_yaml_keys(yaml.safe_load(SHIPPED.read_text())))
    expected = set(_dotted_keys(Config))
    assert expected - shown == set(), "keys missing from config.yaml"
    assert shown - expected == set(), "config.yaml has keys the code does not know"


def test_every_key_has_a_one_line_comment() -> None:
    for number, line in enumerate(SHIPPED.read_text().splitlines(), 1):
        if re.match(r"^\s*[a-z_]+:", line):
            assert re.search(r"\s#\s\S", line), f"config.yaml:{number} has no comment: {line!r}"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("sip:\n  bogus: 1\n", "sip.bogus", "unknown key"),
        ("nonsense: {}\n", "nonsense", "unknown key"),
        ("sip:\n  workers: many\n", "sip.workers", "integer"),
        ("sip:\n  calls_per_worker: 5\n", "sip.calls_per_worker", "less than or equal to 4"),
        ("metrics:\n  port: 70000\n", "metrics.port", "65535"),
        ("audio:\n  sample_rate: 44100\n", "audio.sample_rate", "8000"),
        ("sip:\n  allow_from: [10.0.0.0/33]\n", "sip.allow_from", "CIDR"),
        ("engine:\n  url: wss://x/transcribe\n", "engine.url", "ws://"),
        ("engine:\n  tags: {samprate: 16000}\n", "engine.tags", "samprate"),
        ("logging:\n  format: yaml\n", "logging.format", "'json'"),
        ("drain:\n  timeout_seconds: -1\n", "drain.timeout_seconds", "greater than or equal to 0"),
        # 0 used to mean "never": a call whose BYE was lost then held its slot for ever
        ("sip:\n  rtp_timeout_seconds: 0\n", "sip.rtp_timeout_seconds", "greater than 0"),
        ("sip:\n  ack_timeout_seconds: 0\n", "sip.ack_timeout_seconds", "greater than 0"),
        ("sip:\n  transaction_timeout_seconds: 60\n", "sip.transaction_timeout_seconds", "32"),
    ],
)
def test_bad_value_names_file_and_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}: {key}: " in message
    assert expected in message


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("sink:\n  kind: webhook\n", ("sink.kind", "webhook.urls")),
        (
            "engine:\n  reconnect_initial_seconds: 5\n  reconnect_max_seconds: 1\n",
            ("engine.reconnect_max_seconds", "engine.reconnect_initial_seconds"),
        ),
        ("audio:\n  chunk_ms: 30\n  port_frame_ms: 20\n", ("audio.chunk_ms", "audio.port_frame_ms")),
    ],
)
def test_cross_field_errors_name_both_keys(tmp_path: Path, text: str, keys: tuple[str, ...]) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for key in keys:
        assert key in message


def test_not_yaml_and_not_a_mapping_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(_write(tmp_path, "sip: [unclosed\n"))
    with pytest.raises(ConfigError, match=r"bad\.yaml: the top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: cannot read"):
        load_config(tmp_path / "nowhere.yaml")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")) == Config()


def test_check_config_ok_and_failing(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check_config(SHIPPED, out, err, env={}) == 0
    assert out.getvalue() == f"config OK: {SHIPPED}\n"
    assert err.getvalue() == ""

    bad = _write(tmp_path, "sip:\n  workers: 0\n  bogus: true\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_config(bad, out, err, env={}) == 2
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert any(line.startswith(f"{bad}: sip.workers: ") for line in lines)
    assert any(line == f"{bad}: sip.bogus: unknown key" for line in lines)


def test_check_config_warns_about_unset_secrets(tmp_path: Path) -> None:
    path = _write(tmp_path, "sink:\n  kind: webhook\nwebhook:\n  urls: [http://127.0.0.1:9/hook]\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_config(path, out, err, env={}) == 0
    assert "VBLAZE_BRIDGE_WEBHOOK_SECRET is not set" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert check_config(path, out, err, env={"VBLAZE_BRIDGE_WEBHOOK_SECRET": "s"}) == 0
    assert err.getvalue() == ""


def test_check_config_as_a_command(tmp_path: Path) -> None:
    bad = _write(tmp_path, "metrics:\n  port: -1\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli_check", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    assert f"{bad}: metrics.port: " in proc.stderr

"""The `pause:` and `control:` sections: validation naming the key, and check-config's token warning."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bridge.cli_check import check_config
from bridge.config import Config, PauseConfig, load_config
from bridge.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("pause:\n  dtmf_pause: '*x'\n", "pause.dtmf_pause", "DTMF sequence"),
        ("pause:\n  dtmf_pause: '*1'\n  dtmf_resume: '*12'\n", "pause", "neither start the other"),
        ("pause:\n  dtmf_pause: '*1'\n  dtmf_resume: '*1'\n", "pause", "must differ"),
        ("pause:\n  reason_max_length: 5000\n", "pause.reason_max_length", "1000"),
        ("pause:\n  auto_resume_seconds: -1\n", "pause.auto_resume_seconds", "greater than or equal"),
        ("control:\n  port: 70000\n", "control.port", "65535"),
        ("control:\n  tokens: [{name: 'a b', env: X}]\n", "control.tokens.0.name", "pattern"),
        ("control:\n  tokens: [{name: a, env: '1X'}]\n", "control.tokens.0.env", "pattern"),
        ("control:\n  tokens: [{name: a, env: X}, {name: a, env: Y}]\n", "control.tokens", "unique"),
        ("control:\n  tokens: [{name: a}]\n", "control.tokens.0.env", "required"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}: {key}" in str(caught.value) and expected in str(caught.value)


def test_defaults_and_a_section_of_its_own() -> None:
    pause = Config().pause
    assert (pause.dtmf_pause, pause.dtmf_resume, pause.auto_resume_seconds) == ("*1", "*2", 0.0)
    assert Config().control.port == 9401 and Config().control.tokens == ()
    assert PauseConfig.model_validate({"dtmf_pause": "", "dtmf_resume": "#9"}).dtmf_resume == "#9"


def test_check_config_warns_about_unset_tokens(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("control:\n  tokens: [{name: desk, env: DESK_TOKEN}]\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_config(path, out, err, env={}) == 0
    assert "control.tokens.0.env: environment variable DESK_TOKEN is not set" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert check_config(path, out, err, env={"DESK_TOKEN": "t"}) == 0 and err.getvalue() == ""

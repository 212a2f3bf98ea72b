"""`vblaze-bridge demo --verbose` lets the peers' logs through; without it they stay in log files.

The quiet run is checked line by line on the installed wheel (tests/e2e/test_wheel.py); this runs the
checkout's demo once with a short sentence and `--verbose`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("sipp", "espeak-ng", "sox")),
    reason="sipp/espeak-ng/sox missing",
)


def test_verbose_demo_shows_the_peers_logs_with_the_call() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--verbose", "--text", "Hello, I am calling about my order"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "standin.server: listening on ws://127.0.0.1:" in output  # the stand-in's log
    assert "pjlib 2.15.1 for POSIX initialized" in output  # pjsua's start-up lines
    assert "s after the words were spoken" in result.stdout and "call ended (remote_bye)" in result.stdout

"""The command line: the ready line within 5 s, clean stop on SIGTERM, fault flags."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from tests.fixtures.audio import silence, tone, wav_bytes
from tests.standin.wsclient import connect, transcribe

REPO = Path(__file__).resolve().parents[2]


class Proc:
    def __init__(self, *args: str, exe: list[str] | None = None) -> None:
        cmd = [*(exe or [sys.executable, "-m", "standin"]), "--host", "127.0.0.1", "--port", "0", *args]
        self.started = time.monotonic()
        self.p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.p.stdout is not None
        line = self.p.stdout.readline()  # bounded by the pytest timeout; the server prints or dies
        self.ready_after = time.monotonic() - self.started
        assert line.startswith("standin ready ws://127.0.0.1:"), (
            line,
            self.p.stderr.read() if self.p.stderr else "",
        )
        self.url = line.split()[2]

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                return self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)
                raise
        return self.p.returncode


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.p.poll() is None:
            proc.p.kill()
            proc.p.wait(timeout=5)


@pytest.mark.slow
async def test_ready_line_in_under_5s_transcribes_and_stops_on_sigterm(procs: list[Proc]) -> None:
    proc = Proc()  # the default recognizer: whisper
    procs.append(proc)
    assert proc.ready_after < 5.0
    wav = wav_bytes(silence(0.5))
    s = await transcribe(proc.url, [wav])
    assert s.close_code == 1000 and s.final_json()["utterances"] == []
    assert await asyncio.to_thread(proc.stop) == 0
    assert proc.p.stdout is not None and proc.p.stdout.read() == ""  # exactly one line on stdout


async def test_console_script_vad_only_with_fault_flags(procs: list[Proc]) -> None:
    exe = [str(Path(sys.executable).parent / "vblaze-standin")]
    if not os.access(exe[0], os.X_OK):
        pytest.skip("console script not installed")
    proc = Proc("--recognizer", "vad-only", "--fault-refuse", exe=exe)
    procs.append(proc)
    with pytest.raises(InvalidStatus) as err:
        await connect(proc.url)
    assert err.value.response.status_code == 503
    assert await asyncio.to_thread(proc.stop) == 0


async def test_fault_delay_flag(procs: list[Proc]) -> None:
    proc = Proc("--recognizer", "vad-only", "--fault-delay-ms", "300", "--max-streams", "1")
    procs.append(proc)
    started = time.monotonic()
    s = await transcribe(proc.url, [wav_bytes(tone(1.0))])
    assert len(s.final_json()["utterances"]) == 1 and time.monotonic() - started >= 0.3
    assert await asyncio.to_thread(proc.stop) == 0


def test_bad_arguments_fail_before_binding() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "standin", "--max-streams", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and "max_streams" in r.stderr and r.stdout == ""

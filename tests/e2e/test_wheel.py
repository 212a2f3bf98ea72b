"""The wheel carries what its commands need: built from the sources, installed into a fresh venv outside
the checkout, `vblaze-bridge` checks the sample config, prints every shipped file and runs the demo.

The wheel is built the way a user builds it (`pip wheel .` with build isolation, setuptools from the
configured index: offline with a local index or pip's cache), from a copy of the sources so that no
`build/` left in the checkout can slip stale files in. The venv gets the wheel alone (`--no-deps`); its
dependencies come from the running interpreter's site-packages through a `.pth` path line (such a line
only adds the directory: the `.pth` files in it, among them an editable install of this checkout, are
not run), so the test needs no network and no minutes of installing numpy and pjsua2. The commands run
with no PYTHONPATH, from a directory outside the checkout, and the first test proves that `bridge`,
`sip` and `standin` are imported from the venv. About 45 s on a shared 2-core machine: 15 s to build
and install, 20 s for the demo's call.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.assets import ASSETS, CONFIG
from bridge.config import METRICS_DIR_ENV

REPO = Path(__file__).resolve().parents[2]
ASSET_DIR = REPO / "bridge" / "assets"
SOURCES = ("pyproject.toml", "README.md", "bridge", "sip", "standin")
BUILD_TIMEOUT = 300.0
DEMO_TIMEOUT = 240.0


@dataclass
class Installed:
    venv: Path
    cwd: Path
    env: dict[str, str]
    deps: tuple[str, ...]  # the runner's site-packages, on the venv's path for the dependencies only

    def run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`argv[0]` from the venv's bin/, in `cwd`; on a timeout its whole process group is killed."""
        proc = subprocess.Popen(
            [str(self.venv / "bin" / argv[0]), *argv[1:]],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{argv} ran over {timeout:.0f} s:\n{out[-3000:]}\n{err[-3000:]}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _build_wheel(work: Path) -> Path:
    src = work / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    dist = work / "dist"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)]
    subprocess.run(pip, check=True, timeout=BUILD_TIMEOUT, capture_output=True, text=True)
    (wheel,) = dist.glob("vblaze_bridge-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    work = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)]
    subprocess.run(install, check=True, timeout=BUILD_TIMEOUT, capture_output=True, text=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    deps = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site) / "_test_dependencies.pth").write_text("".join(f"{path}\n" for path in deps))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", METRICS_DIR_ENV)}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    cwd = work / "run"
    cwd.mkdir()
    yield Installed(venv, cwd, env, tuple(deps))


def test_the_commands_run_the_wheel_not_the_checkout(installed: Installed) -> None:
    code = (
        "import json, os, sys, bridge, sip, standin, bridge.assets; "
        "print(json.dumps({'files': [m.__file__ for m in (bridge, sip, standin, bridge.assets)], "
        "'cwd': os.getcwd(), 'path': sys.path}))"
    )
    result = installed.run("python", "-c", code)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert all(Path(f).is_relative_to(installed.venv) for f in seen["files"]), seen["files"]
    assert not Path(seen["cwd"]).is_relative_to(REPO)
    assert "PYTHONPATH" not in installed.env
    # The runner's venv may live inside the checkout (CI's does): its site-packages is on the path for
    # the dependencies, not for the project (its .pth files, the editable install's among them, are not
    # read from a path line), so nothing else may point into the checkout.
    inside = [
        p for p in seen["path"] if p and Path(p).resolve().is_relative_to(REPO) and p not in installed.deps
    ]
    assert not inside, seen["path"]


def test_check_config_accepts_the_printed_sample(installed: Installed) -> None:
    printed = installed.run("vblaze-bridge", "print-config")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == (ASSET_DIR / CONFIG).read_text(encoding="utf-8")
    (installed.cwd / "config.yaml").write_text(printed.stdout, encoding="utf-8")
    checked = installed.run("vblaze-bridge", "check-config", "--config", "config.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "config OK" in checked.stdout


def test_every_shipped_file_is_in_the_wheel(installed: Installed) -> None:
    on_disk = {p.name for p in ASSET_DIR.iterdir() if p.is_file() and p.suffix != ".py"}
    assert on_disk == set(ASSETS), "bridge/assets/ and bridge.assets.ASSETS differ"
    listed = installed.run("vblaze-bridge", "print-asset")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(ASSETS)
    for name in ASSETS:
        printed = installed.run("vblaze-bridge", "print-asset", name)
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout == (ASSET_DIR / name).read_text(encoding="utf-8"), name
    refused = installed.run("vblaze-bridge", "print-asset", "nope.cfg")
    assert refused.returncode == 2 and "invalid choice" in refused.stderr


def test_the_demo_call_scenario_comes_from_the_installed_package(installed: Installed) -> None:
    code = (
        "from pathlib import Path; from bridge.demo import sipp_scenario; "
        "print(sipp_scenario(Path('/x/speech.ul'), Path('.'), 4321).read_text())"
    )
    result = installed.run("python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert "/x/speech.ul" in result.stdout and "4321" in result.stdout and "@AUDIO@" not in result.stdout


@pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("sipp", "espeak-ng", "sox")),
    reason="sipp/espeak-ng/sox missing",
)
def test_the_demo_runs_from_the_wheel(installed: Installed) -> None:
    result = installed.run("vblaze-bridge", "demo", timeout=DEMO_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "call started:" in result.stdout
    assert "call ended (remote_bye):" in result.stdout
    assert "s after the words were spoken" in result.stdout  # at least one utterance
    assert_only_what_the_demo_is_about(result.stdout + result.stderr)


# Every line the demo may print without --verbose: start-up (two lines), the call, its utterances, its end.
DEMO_LINES = (
    re.compile(r"starting the stand-in V-Blaze engine \(faster-whisper tiny\.en\) and the bridge\.\.\.$"),
    re.compile(r"calling sip:demo@127\.0\.0\.1:\d+ with [\d.]+ s of speech\.\.\.$"),
    re.compile(r"call started: .* -> <sip:demo@127\.0\.0\.1:\d+>$"),
    re.compile(r"  \[ *[\d.]+- *[\d.]+ s\] .*  \(\+[\d.]+ s after the words were spoken\)$"),
    re.compile(r"call ended \(remote_bye\): \d+ utterances, [\d.]+ s, gaps: none$"),
)


def assert_only_what_the_demo_is_about(output: str) -> None:
    """No log line of a peer (pjsua, faster-whisper, the stand-in, sipp) reaches the terminal."""
    stray = [line for line in output.splitlines() if not any(p.match(line) for p in DEMO_LINES)]
    assert not stray, "\n".join(stray)

"""bridge/memory_merge.py in real processes: the mark is set, kept across fork and exec, and what it
says matches the host's KSM file; a process that was not marked is not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.memory_merge import ksm_running

# Run in a child interpreter so that the test process itself is never marked.
CHILD = """
import os, subprocess, sys
from pathlib import Path
from bridge.memory_merge import is_marked, mark_mergeable
print("before", is_marked())
marked, said = mark_mergeable(Path(sys.argv[1]))
print("marked", marked, is_marked())
print("said", said)
pid = os.fork()
if pid == 0:
    print("forked", is_marked(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
code = "from bridge.memory_merge import is_marked; print('execd', is_marked())"
sys.stdout.write(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
print("stat", "ksm_merge_any: yes" in Path("/proc/self/ksm_stat").read_text())
"""


def run_child(run_file: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(run_file)], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def prctl_merge_supported() -> bool:
    return Path("/proc/self/ksm_stat").exists()


@pytest.mark.skipif(not prctl_merge_supported(), reason="this kernel has no per-process KSM (Linux < 6.4)")
@pytest.mark.parametrize(("content", "running"), [("1\n", True), ("0\n", False), (None, False)])
def test_the_mark_is_set_kept_across_fork_and_exec_and_said_as_the_host_runs_ksm(
    tmp_path: Path, content: str | None, running: bool
) -> None:
    run_file = tmp_path / "run"
    if content is not None:
        run_file.write_text(content)
    seen = run_child(run_file)
    assert seen["before"] == "False"
    assert seen["marked"] == "True True"
    assert seen["forked"] == "True" and seen["execd"] == "True" and seen["stat"] == "True"
    if running:
        assert "KSM is running" in seen["said"], seen
    else:
        assert f"KSM is off ({run_file} is not 1)" in seen["said"], seen


def test_ksm_running_reads_the_hosts_file(tmp_path: Path) -> None:
    run_file = tmp_path / "run"
    assert ksm_running(run_file) is None
    for content, expected in (("1\n", True), ("0\n", False), ("2\n", False)):
        run_file.write_text(content)
        assert ksm_running(run_file) is expected

"""Kernel samepage merging (KSM) for the worker pool: one copy of the pages the workers hold alike.

A worker forked from the zygote starts with every page shared with it. Python then writes to many of
them: it counts references on every object it touches, so a page whose objects a worker only used is
copied into the worker, though its bytes end up as they were in the zygote and in every other worker
(docs/benchmarks.md, "Forked workers"). KSM finds pages with the same bytes and maps one read-only
copy into every process that holds one; a write copies the page again.

``prctl(PR_SET_MEMORY_MERGE, 1)`` (Linux 6.4 and later) makes all of a process's memory mergeable, and
the mark is kept across fork and exec: the zygote sets it once for itself and every worker it forks
(``sip.memory_merge``, on by default). Whether pages are merged is the host's choice: the kernel's
KSM thread runs only while ``/sys/kernel/mm/ksm/run`` is 1. The bridge reads that file, says what it
found, and never writes it (docs/operations.md, "Memory").
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

PR_SET_MEMORY_MERGE = 67
PR_GET_MEMORY_MERGE = 68
KSM_RUN = Path("/sys/kernel/mm/ksm/run")


def ksm_running(run_file: Path = KSM_RUN) -> bool | None:
    """Whether the host's KSM thread is merging pages (None: this kernel has no KSM to read)."""
    try:
        return run_file.read_text().strip() == "1"
    except OSError:
        return None


def mark_mergeable(run_file: Path = KSM_RUN) -> tuple[bool, str]:
    """Mark this process's memory (and, across fork and exec, its children's) mergeable.

    Returns whether the mark is set and a sentence for the log saying what it will do on this host.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        return False, (
            f"memory merging unavailable: prctl(PR_SET_MEMORY_MERGE) failed: {os.strerror(errno)} "
            "(it needs Linux 6.4 or later with KSM); each worker keeps its own copy of the pages it wrote"
        )
    running = ksm_running(run_file)
    if running:
        return True, "memory marked mergeable; the host's KSM is running, so identical pages are shared"
    return True, (
        f"memory marked mergeable, but the host's KSM is off ({run_file} is not 1): no page is merged "
        "until the host turns it on"
    )


def mark_and_log(log: logging.Logger, who: str) -> None:
    """:func:`mark_mergeable`, and its sentence logged by `who`: a warning if the mark could not be set."""
    marked, said = mark_mergeable()
    log.log(logging.INFO if marked else logging.WARNING, "%s: %s", who, said)


def is_marked() -> bool:
    """Whether this process's memory is marked mergeable (False where the kernel cannot say)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) == 1)

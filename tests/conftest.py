"""What every test gets: no test passes the metrics directory it exported on to the next one."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bridge.metrics import MULTIPROC_ENV


@pytest.fixture(autouse=True)
def _metrics_dir_restored() -> Iterator[None]:
    """``setup_multiprocess_dir`` exports ``PROMETHEUS_MULTIPROC_DIR``; put it back as it was.

    Otherwise every bridge a later test starts inherits an earlier test's directory, and bridges that
    share one would delete each other's files (they now refuse to start instead).
    """
    before = os.environ.get(MULTIPROC_ENV)
    yield
    if before is None:
        os.environ.pop(MULTIPROC_ENV, None)
    else:
        os.environ[MULTIPROC_ENV] = before

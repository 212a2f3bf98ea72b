"""A one-node nats-server with JetStream for the sink's tests (tests/fixtures/nats.py starts it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.nats import NatsCluster


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path, size=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop_all()

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bridge.webhook.delivery import WebhookSettings, WebhookSink

from .receiver import SECRET, Receiver


class Observer:
    """A DeliveryObserver that records every call."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, float]] = []
        self.sends: list[float] = []
        self.deliveries: list[float] = []
        self.depths: list[int] = []
        self.sizes: list[tuple[int, int]] = []
        self.rejections: list[int] = []
        self.drops: list[str] = []

    def attempt(self, outcome: str, seconds: float) -> None:
        self.attempts.append((outcome, seconds))

    def sent(self, latency_seconds: float) -> None:
        self.sends.append(latency_seconds)

    def delivered(self, latency_seconds: float) -> None:
        self.deliveries.append(latency_seconds)

    def spool_depth(self, n: int) -> None:
        self.depths.append(n)

    def spool_size(self, used: int, limit: int) -> None:
        self.sizes.append((used, limit))

    def rejected(self, status: int) -> None:
        self.rejections.append(status)

    def dropped(self, reason: str) -> None:
        self.drops.append(reason)


def spool_rows(path: Path, table: str = "events") -> list[tuple[Any, ...]]:
    """Rows of the spool, read with a plain connection (no ownership taken)."""
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT url, call_id, seq FROM {table} ORDER BY url, call_id, seq").fetchall()


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "webhook.sqlite3"


@pytest.fixture
def settings(spool_path: Path) -> Callable[..., WebhookSettings]:
    def make(*urls: str, **overrides: Any) -> WebhookSettings:
        base = WebhookSettings(
            urls=urls,
            secret=SECRET,
            spool_path=spool_path,
            timeout_seconds=2.0,
            backoff_initial_seconds=0.02,
            backoff_max_seconds=0.2,
            claim_interval_seconds=0.2,
        )
        return replace(base, **overrides)

    return make


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Any]]:
    started: list[Receiver] = []

    async def make(**kwargs: Any) -> Receiver:
        r = Receiver(**kwargs)
        await r.start()
        started.append(r)
        return r

    yield make
    for r in started:
        await r.stop()


@pytest.fixture
async def sinks() -> AsyncIterator[Callable[..., Any]]:
    made: list[WebhookSink] = []

    async def make(settings: WebhookSettings, **kwargs: Any) -> WebhookSink:
        sink = WebhookSink(settings, **kwargs)
        await sink.start()
        made.append(sink)
        return sink

    yield make
    for sink in made:
        await sink.aclose(0.5)

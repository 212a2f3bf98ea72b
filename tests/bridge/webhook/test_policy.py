from __future__ import annotations

import random

import pytest

from bridge.webhook import policy


@pytest.mark.parametrize(
    ("status", "verdict", "outcome"),
    [
        (200, "delivered", "ok"),
        (204, "delivered", "ok"),
        (408, "retry", "http_4xx"),
        (429, "retry", "http_429"),
        (500, "retry", "http_5xx"),
        (503, "retry", "http_5xx"),
        (400, "reject", "http_4xx"),
        (401, "reject", "http_4xx"),
        (404, "reject", "http_4xx"),
        (413, "reject", "http_4xx"),
        (301, "reject", "other"),
    ],
)
def test_verdict_and_outcome(status: int, verdict: str, outcome: str) -> None:
    assert policy.verdict(status) == verdict
    assert policy.outcome(status) == outcome


def test_retry_after() -> None:
    now = 1_700_000_000.0
    assert policy.parse_retry_after(None, now) is None
    assert policy.parse_retry_after("", now) is None
    assert policy.parse_retry_after("7", now) == 7.0
    assert policy.parse_retry_after(" 0 ", now) == 0.0
    assert policy.parse_retry_after("soon", now) is None
    assert policy.parse_retry_after("-3", now) is None
    date = "Tue, 14 Nov 2023 22:13:50 GMT"  # now + 30 s
    assert policy.parse_retry_after(date, now) == pytest.approx(30.0)
    assert policy.parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0  # in the past


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rand = random.Random(1)
    for failures, full in [(1, 0.5), (2, 1.0), (3, 2.0), (8, 60.0), (500, 60.0)]:
        delays = [policy.backoff(failures, 0.5, 60.0, rand=rand) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 4  # jittered


def test_retry_after_replaces_backoff_capped() -> None:
    assert policy.backoff(1, 0.5, 60.0, retry_after=7.0) == 7.0
    assert policy.backoff(9, 0.5, 60.0, retry_after=0.0) == 0.0
    assert policy.backoff(1, 0.5, 60.0, retry_after=3600.0) == 60.0

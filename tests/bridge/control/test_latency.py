"""The monitor's hop latencies: Prometheus's histogram_quantile, over the last minute's snapshots."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from bridge.control.latency import HOPS, LatencyWindow, difference, quantile

INF = math.inf


def test_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    buckets = [(0.1, 0.0), (0.5, 50.0), (1.0, 100.0), (INF, 100.0)]
    assert quantile(0.5, buckets) == 0.5
    assert quantile(0.25, buckets) == 0.1 + 0.4 * 25 / 50
    assert math.isclose(quantile(0.99, buckets) or 0, 0.5 + 0.5 * 49 / 50)
    # The rank in +Inf: the highest finite bound; no observations: nothing.
    assert quantile(0.99, [(1.0, 1.0), (INF, 10.0)]) == 1.0
    assert quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None
    assert quantile(0.5, []) is None and quantile(1.5, buckets) is None


bucket_lists = st.lists(st.floats(0, 1000), min_size=1, max_size=12).map(
    lambda counts: list(
        zip([0.001 * 2**i for i in range(len(counts) - 1)] + [INF], sorted(counts), strict=True)
    )
)


@given(bucket_lists, st.floats(0, 1), st.floats(0, 1))
def test_quantiles_rise_with_q_and_stay_within_the_bounds(
    buckets: list[tuple[float, float]], a: float, b: float
) -> None:
    low, high = quantile(min(a, b), buckets), quantile(max(a, b), buckets)
    if low is None or high is None:
        assert buckets[-1][1] == 0
        return
    finite = [bound for bound, _ in buckets if not math.isinf(bound)]
    assert 0 <= low <= high <= (max(finite) if finite else 0.0) + 1e-9


def test_difference_of_snapshots_and_a_reset() -> None:
    older = [(1.0, 2.0), (INF, 3.0)]
    assert difference([(1.0, 5.0), (INF, 9.0)], older) == [(1.0, 3.0), (INF, 6.0)]
    assert difference([(1.0, 1.0), (INF, 1.0)], older) == [(1.0, 1.0), (INF, 1.0)]  # counters reset
    assert difference([(1.0, 1.0), (INF, 1.0)], None) == [(1.0, 1.0), (INF, 1.0)]


def test_the_window_reads_the_last_minute_only() -> None:
    window = LatencyWindow(window=60, every=5)
    slow = {hop: [(0.01, 0.0), (10.0, 100.0), (INF, 100.0)] for hop in HOPS}  # everything slow at first
    window.add(0.0, slow)
    assert window.hops()["audio_to_socket"].count == 100  # one snapshot: since the start
    fast = {hop: [(0.01, 100.0), (10.0, 200.0), (INF, 200.0)] for hop in HOPS}  # then 100 fast ones
    for t in range(5, 70, 5):
        assert window.due(float(t))
        window.add(float(t), fast)
    figures = window.hops()["speech_end_to_utterance"]
    assert figures.count == 0 and figures.p99 is None  # the slow minute has left the window
    window.add(70.0, {hop: [(0.01, 150.0), (10.0, 250.0), (INF, 250.0)] for hop in HOPS})
    figures = window.hops()["speech_end_to_utterance"]
    assert figures.count == 50 and figures.p99 is not None and figures.p99 <= 0.01
    assert not window.due(71.0)

"""The hop latencies of the last minute, for the top of the call monitor page (no I/O).

The supervisor keeps cumulative snapshots of the four hop histograms (`bridge/metrics.py`), one
every SNAPSHOT_SECONDS for WINDOW_SECONDS; the p50 and p99 of the last minute are read from the
difference between the newest snapshot and the oldest one in the window, with the interpolation
Prometheus's `histogram_quantile` uses, so the page and the dashboard agree.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WINDOW_SECONDS = 60.0
SNAPSHOT_SECONDS = 5.0
HOPS = (
    "audio_to_socket",
    "speech_end_to_utterance",
    "utterance_to_webhook_sent",
    "utterance_to_webhook_ack",
)

Buckets = Sequence[tuple[float, float]]  # (upper bound, cumulative count), ascending, +Inf last


def quantile(q: float, buckets: Buckets) -> float | None:
    """`histogram_quantile(q, …)` over cumulative `buckets`; None when they hold no observation."""
    if not buckets or not 0 <= q <= 1:
        return None
    total = buckets[-1][1]
    if total <= 0 or math.isnan(total):
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # in the +Inf bucket: the highest finite bound, as Prometheus
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def difference(newer: Buckets, older: Buckets | None) -> list[tuple[float, float]]:
    """Per-bucket counts added between two snapshots (a reset, e.g. all workers restarted, is the newer)."""
    if (
        older is None
        or len(older) != len(newer)
        or any(n[1] < o[1] for n, o in zip(newer, older, strict=True))
    ):
        return list(newer)
    return [(bound, count - old) for (bound, count), (_, old) in zip(newer, older, strict=True)]


@dataclass(frozen=True)
class HopLatency:
    p50: float | None
    p99: float | None
    count: float  # observations in the window


class LatencyWindow:
    """Snapshots in, the last minute's p50/p99 per hop out."""

    def __init__(self, window: float = WINDOW_SECONDS, every: float = SNAPSHOT_SECONDS) -> None:
        self._window = window
        self._every = every
        self._snapshots: collections.deque[tuple[float, Mapping[str, Buckets]]] = collections.deque()

    def due(self, now: float) -> bool:
        return not self._snapshots or now - self._snapshots[-1][0] >= self._every

    def add(self, now: float, histograms: Mapping[str, Buckets]) -> None:
        self._snapshots.append((now, histograms))
        while len(self._snapshots) > 1 and now - self._snapshots[1][0] >= self._window:
            self._snapshots.popleft()

    def hops(self) -> dict[str, HopLatency]:
        if not self._snapshots:
            return {hop: HopLatency(None, None, 0.0) for hop in HOPS}
        oldest, newest = self._snapshots[0][1], self._snapshots[-1][1]
        out = {}
        for hop in HOPS:
            delta = difference(newest.get(hop, ()), oldest.get(hop) if len(self._snapshots) > 1 else None)
            count = delta[-1][1] if delta else 0.0
            out[hop] = HopLatency(quantile(0.5, delta), quantile(0.99, delta), count)
        return out

"""Per-second energy of the audio a stream received, for tests (``--record-energy``). No I/O.

`EnergyMeter.feed(samples, samprate)` takes decoded 16-bit samples, shape (n, channels), in any split;
`peaks()` is, per channel, the peak absolute sample of each second of audio received so far (the last
second possibly partial). A test reads it from ``/status`` to check what the engine heard, e.g. that
a paused stretch was digital silence (peak 0) on every channel.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class EnergyMeter:
    def __init__(self) -> None:
        self._done: list[list[int]] = []  # per second: the peak of each channel
        self._current: list[int] = []
        self._count = 0  # samples of the current second

    def feed(self, samples: npt.NDArray[np.int16], samprate: int) -> None:
        if samples.ndim != 2 or not len(samples) or samprate <= 0:
            return
        if not self._current:
            self._current = [0] * samples.shape[1]
        start = 0
        while start < len(samples):
            take = min(len(samples) - start, samprate - self._count)
            part = np.abs(samples[start : start + take].astype(np.int32)).max(axis=0)
            self._current = [max(a, int(b)) for a, b in zip(self._current, part, strict=False)]
            self._count += take
            start += take
            if self._count >= samprate:
                self._done.append(self._current)
                self._current = [0] * samples.shape[1]
                self._count = 0

    def peaks(self) -> list[list[int]]:
        """Per channel, the peak absolute sample of each second so far."""
        seconds = self._done + ([self._current] if self._count else [])
        channels = len(seconds[0]) if seconds else 0
        return [[second[ch] for second in seconds] for ch in range(channels)]

"""The stand-in's per-second energy record (standin/energy.py, `--record-energy`)."""

from __future__ import annotations

import numpy as np

from standin.energy import EnergyMeter


def test_peaks_per_second_and_channel_in_any_split() -> None:
    meter = EnergyMeter()
    second = np.zeros((8000, 2), dtype=np.int16)
    loud = second.copy()
    loud[100, 0], loud[7999, 1] = -3000, 12
    audio = np.concatenate([loud, second, second[:4000]])
    for start in range(0, len(audio), 1234):  # frames of any size, across second boundaries
        meter.feed(audio[start : start + 1234], 8000)
    assert meter.peaks() == [[3000, 0, 0], [12, 0, 0]]  # the last second is partial


def test_nothing_fed() -> None:
    meter = EnergyMeter()
    meter.feed(np.zeros((0, 1), dtype=np.int16), 8000)
    assert meter.peaks() == []

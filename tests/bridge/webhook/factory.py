"""Realistic BridgeEvents for tests, shaped as bridge/event_data.py builds them."""

from __future__ import annotations

import time
from typing import Any

from bridge.events import BridgeEvent


def engine_utterance(text: str, start: float, end: float) -> dict[str, Any]:
    """An utterance as V-Blaze sends it (the shape is the engine's; the bridge passes it through)."""
    words = text.split()
    step = (end - start) / max(1, len(words))
    return {
        "utterance": 0,
        "start": start,
        "end": end,
        "events": [
            {"word": w, "b": round(start + i * step, 2), "e": round(start + (i + 1) * step, 2), "c": 0.9}
            for i, w in enumerate(words)
        ],
        "confidence": 0.91,
        "donedate": "2026-11-24 08:00:00.000000",
        "recvtz": ["UTC", 0],
    }


def call_events(
    call_id: str, utterances: int = 3, *, dtmf: bool = True, t0: float | None = None
) -> list[BridgeEvent]:
    """call.started, `utterances` utterances (and a dtmf after the first), call.ended; seq from 0."""
    t0 = time.time() if t0 is None else t0
    out: list[BridgeEvent] = []

    def add(kind: Any, data: dict[str, Any]) -> None:
        out.append(
            BridgeEvent(kind=kind, call_id=call_id, seq=len(out), time=t0 + len(out) * 0.01, data=data)
        )

    add(
        "call.started",
        {
            "from": "sip:alice@127.0.0.1",
            "to": "sip:bridge@127.0.0.1",
            "headers": {"X-Customer-Id": "42"},
            "started_at": "2026-11-24T08:00:00.000Z",
            "worker": 0,
            "remote": "127.0.0.1:5060",
            "route": "default",
        },
    )
    for i in range(utterances):
        text = f"utterance number {i} of call {call_id}"
        start, end = 2.0 * i, 2.0 * i + 1.5
        engine = engine_utterance(text, start, end)
        add(
            "utterance",
            {
                "text": text,
                "words": [
                    {"word": e["word"], "start": e["b"], "end": e["e"], "confidence": e["c"]}
                    for e in engine["events"]
                ],
                "start": start,
                "end": end,
                "confidence": 0.91,
                "channel": 0,
                "engine": engine,
                "latency": {"speech_end_to_utterance_seconds": 0.4},
            },
        )
        if dtmf and i == 0:
            add("dtmf", {"digit": "5", "at": 1.7})
    add(
        "call.ended",
        {
            "reason": "bye",
            "duration": 2.0 * utterances + 1,
            "utterances": utterances,
            "transcript": {
                "utterances": [
                    {"start": 2.0 * i, "end": 2.0 * i + 1.5, "text": f"utterance number {i}"}
                    for i in range(utterances)
                ],
                "audiosecs": 2.0 * utterances + 1,
                "confidence": 0.91,
                "engine_streams": [
                    {
                        "stream": 0,
                        "offset": 0.0,
                        "source": "final",
                        "ended": "final",
                        "utterances": utterances,
                    }
                ],
                "gaps": [],
                "complete": True,
            },
            "gaps": [{"start": 0.5, "duration": 0.2, "cause": "disconnected"}] if utterances > 1 else [],
        },
    )
    return out

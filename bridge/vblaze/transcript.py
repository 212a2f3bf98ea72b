"""A call's complete transcript from the final documents of all its engine streams, without I/O.

A call's audio may reach the engine over several streams (one per connection: the socket was lost and
the bridge reconnected, replaying from the end of the last utterance). Each stream's final document
covers only that stream, on that stream's own clock. `merge(streams, audio_seconds, gaps)` puts them
together on the call's timeline:

- Each `StreamRecord` gives the stream's final document (if it sent one), the utterances it delivered
  live, where its audio lies on the call (`segments`: stream byte → call byte, one per contiguous run)
  and how much of the call it confirmed (`covered`).
- A stream's utterances come from its final document when it is a JSON object with an ``utterances``
  list; otherwise (the stream died without a final) from the utterances it delivered live, and the
  merged document says so (``engine_streams[i].source = "live"``).
- Utterance and word times are mapped onto the call's timeline exactly as `protocol.Session` maps the
  live utterances (stream seconds + the offset of the segment they fall in).
- Replayed overlaps are removed by the rule the live stream applies: an utterance of a later stream
  that ends no later than the last one kept is a duplicate. An utterance of a stream that another
  stream followed, ending after the audio the next stream started from, is dropped too: the next stream
  heard that audio again and transcribed it.
- ``audiosecs`` is the call audio some stream covered; ``confidence`` the mean of the kept utterances'
  confidences (as V-Blaze computes its own); ``gaps`` are the stretches of [0, audio_seconds] no
  stream covered, each with the cause of the bridge's gap it falls in (``other`` if none).
- The top-level fields of the last final document (``asr``, ``model``, ``requestid``...) are kept;
  ``engine_finals`` in `engine_finals(streams)` gives every final document untouched with its offset.

Returns None when no stream delivered anything (no final document, no utterance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge.vblaze.protocol import Gap, Utterance

DUPLICATE_TOLERANCE_SECONDS = 0.001
MIN_GAP_SECONDS = 0.001  # uncovered slivers shorter than this are rounding, not gaps
MERGED_KEYS = ("utterances", "audiosecs", "confidence")


@dataclass(frozen=True)
class Segment:
    """A contiguous run of a stream's audio: its first byte in the stream and on the call, its length."""

    stream_byte: int
    call_byte: int
    length: int


@dataclass(frozen=True)
class StreamRecord:
    """One engine stream (one connection) of a call, as the client saw it.

    ``ended`` is None when the final arrived after the end of the audio, else why the stream ended
    (``closed``, ``send_timeout``, ``ended_early``, ``final_timeout``...). ``covered`` are call-timeline
    spans in seconds whose audio this stream confirmed (transcribed, or heard before its separator).
    """

    index: int
    bytes_per_second: int
    segments: tuple[Segment, ...]
    covered: tuple[tuple[float, float], ...]
    final: dict[str, Any] | str | None
    live: tuple[Utterance, ...]
    ended: str | None

    @property
    def offset(self) -> float:
        """Call seconds at which this stream's audio starts (0 if it sent none)."""
        return self.segments[0].call_byte / self.bytes_per_second if self.segments else 0.0

    def call_time(self, stream_seconds: float) -> float:
        """A time of this stream mapped onto the call (the rule of `protocol.Session.call_time`)."""
        if not self.segments:
            return stream_seconds
        position = stream_seconds * self.bytes_per_second
        segment = self.segments[0]
        for candidate in self.segments:
            if candidate.stream_byte <= position:
                segment = candidate
        return stream_seconds + (segment.call_byte - segment.stream_byte) / self.bytes_per_second


def engine_finals(streams: Sequence[StreamRecord]) -> list[dict[str, Any]]:
    """Every final document the engine sent, untouched, with the call seconds its times start at."""
    return [
        {"stream": s.index, "offset": round(s.offset, 3), "transcript": s.final}
        for s in streams
        if s.final is not None
    ]


def merge(
    streams: Sequence[StreamRecord], audio_seconds: float, gaps: Sequence[Gap] = ()
) -> dict[str, Any] | None:
    """The call's transcript from all its streams (see the module docstring)."""
    kept: list[dict[str, Any]] = []
    kept_end = float("-inf")
    summary: list[dict[str, Any]] = []
    last_doc: dict[str, Any] | None = None
    for position, stream in enumerate(streams):
        document = _document(stream.final)
        candidates: list[dict[str, Any]]
        if document is not None:
            last_doc = document
            source = "final"
            mapped = (_mapped(u, stream) for u in document["utterances"] if isinstance(u, dict))
            candidates = [u for u in mapped if u is not None]
        else:
            source = "live"
            candidates = [_live(u) for u in stream.live]
        following = next((s for s in streams[position + 1 :] if s.segments), None)
        until = following.offset if following is not None else float("inf")
        taken = 0
        for utt in sorted(candidates, key=lambda u: (u["end"], u["start"])):
            if utt["end"] <= kept_end + DUPLICATE_TOLERANCE_SECONDS:
                continue
            if utt["end"] > until + DUPLICATE_TOLERANCE_SECONDS:
                continue
            kept.append(utt)
            kept_end = utt["end"]
            taken += 1
        summary.append(
            {
                "stream": stream.index,
                "offset": round(stream.offset, 3),
                "source": source,
                "ended": stream.ended or "final",
                "utterances": taken,
            }
        )
    if last_doc is None and not any(s.live for s in streams):
        return None
    kept.sort(key=lambda u: (u["start"], u["end"]))
    covered = _union([span for s in streams for span in s.covered], audio_seconds)
    uncovered = _complement(covered, audio_seconds)
    confidences = [u["confidence"] for u in kept if _is_number(u.get("confidence"))]
    merged: dict[str, Any] = {k: v for k, v in (last_doc or {}).items() if k not in MERGED_KEYS}
    merged.update(
        {
            "utterances": kept,
            "audiosecs": round(sum(end - start for start, end in covered), 3),
            "confidence": round(sum(confidences) / len(confidences), 3) if confidences else None,
            "engine_streams": summary,
            "gaps": [
                {"start": round(s, 3), "duration": round(e - s, 3), "cause": _cause(s, e, gaps)}
                for s, e in uncovered
            ],
            "complete": bool(streams) and streams[-1].ended is None,
        }
    )
    return merged


# --- helpers ----------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _document(final: dict[str, Any] | str | None) -> dict[str, Any] | None:
    if isinstance(final, dict) and isinstance(final.get("utterances"), list):
        return final
    return None


def _mapped(utterance: dict[str, Any], stream: StreamRecord) -> dict[str, Any] | None:
    """An utterance of a final document with its times (and its words') on the call's timeline."""
    body = utterance.get("utterance") if isinstance(utterance.get("utterance"), dict) else utterance
    assert isinstance(body, dict)
    start, end = body.get("start"), body.get("end")
    if not isinstance(start, int | float) or not isinstance(end, int | float):
        return None
    out = dict(body)
    out["start"] = round(stream.call_time(float(start)), 3)
    out["end"] = round(stream.call_time(float(end)), 3)
    events = body.get("events")
    if isinstance(events, list):
        mapped_events = []
        for event in events:
            if isinstance(event, dict):
                event = dict(event)
                for key in ("start", "end"):
                    if _is_number(event.get(key)):
                        event[key] = round(stream.call_time(float(event[key])), 3)
            mapped_events.append(event)
        out["events"] = mapped_events
    return out


def _live(utt: Utterance) -> dict[str, Any]:
    """A live utterance in the shape of a final document's utterance (times already on the call)."""
    body = utt.raw.get("utterance") if isinstance(utt.raw.get("utterance"), dict) else utt.raw
    metadata = body.get("metadata") if isinstance(body, dict) else None
    out: dict[str, Any] = {
        "start": utt.start,
        "end": utt.end,
        "confidence": utt.confidence,
        "text": utt.text,
        "events": [
            {"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence} for w in utt.words
        ],
    }
    out["metadata"] = dict(metadata) if isinstance(metadata, dict) else {"channel": utt.channel}
    return out


def _union(spans: list[tuple[float, float]], limit: float) -> list[tuple[float, float]]:
    """Spans clipped to [0, limit], sorted and merged."""
    out: list[tuple[float, float]] = []
    for start, end in sorted((max(s, 0.0), min(e, limit)) for s, e in spans):
        if end <= start:
            continue
        if out and start <= out[-1][1] + MIN_GAP_SECONDS:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _complement(covered: list[tuple[float, float]], limit: float) -> list[tuple[float, float]]:
    out = []
    at = 0.0
    for start, end in covered:
        if start - at >= MIN_GAP_SECONDS:
            out.append((at, start))
        at = max(at, end)
    if limit - at >= MIN_GAP_SECONDS:
        out.append((at, limit))
    return out


def _cause(start: float, end: float, gaps: Sequence[Gap]) -> str:
    """The cause of the bridge's gap that overlaps [start, end) the most."""
    best, overlap = "other", 0.0
    for gap in gaps:
        shared = min(end, gap.end) - max(start, gap.start)
        if shared > overlap:
            best, overlap = gap.cause, shared
    return best

"""Result documents in V-Blaze's shapes (vblaze-protocol.md §3). No I/O.

Utterance object (final document, `utterances[]`):
    {"start", "end", "confidence", "recvdate", "donedate", "recvtz", "events": [{"word", "start",
     "end", "confidence"}], "metadata": {"uttid", "channel", "source", "model"}}
Streamed and `utterance_callback` utterances (`utterance_fmt=json`) are that same bare object plus
`"text"` (the words joined by spaces), as in the one concrete callback body the docs show; it is not
wrapped in `{"source", "utterance"}`. With `utterance_fmt=text` they are the text alone, no newline.

Final document (`output=json`): {"asr", "model", "requestid"?, "streamtags", "started", "donedate",
"audiosecs"?, "confidence"?, "warning"?, "utterances"} with null elements omitted, utterances in time
order. `output=text` is one line per utterance in time order, joined by "\n". `Final.zipped` puts the
result (and the scrubbed audio) in a zip container, for `outzip` and for `scrubaudio` without streaming.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from standin.recognizer import Recognition
from standin.tags import Format, Tags

ASR_VERSION = "standin-0.1"
SOURCE = "stream"
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

JsonObject = dict[str, Any]


def timestamp(when: datetime) -> str:
    """V-Blaze's "YYYY-MM-DD HH:MM:SS.ffffff" (UTC)."""
    return when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Utterance:
    uttid: int
    channel: int
    start: float
    end: float
    recvdate: datetime
    donedate: datetime
    recognition: Recognition

    @property
    def text(self) -> str:
        return self.recognition.text

    def to_json(self, model: str, with_text: bool = False) -> JsonObject:
        rec = self.recognition
        doc: JsonObject = {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "confidence": round(rec.confidence, 3),
            "recvdate": timestamp(self.recvdate),
            "donedate": timestamp(self.donedate),
            "recvtz": ["UTC", 0],
            "events": [
                {
                    "word": w.word,
                    "start": round(self.start + w.start, 3),
                    "end": round(self.start + w.end, 3),
                    "confidence": w.confidence,
                }
                for w in rec.words
            ],
            "metadata": {"uttid": self.uttid, "channel": self.channel, "source": SOURCE, "model": model},
        }
        if with_text:
            doc["text"] = self.text
        return doc


def utterance_message(utt: Utterance, tags: Tags) -> str:
    """One streamed / utterance_callback utterance, per `utterance_fmt`."""
    if tags.utterance_fmt is Format.TEXT:
        return utt.text
    return json.dumps(utt.to_json(tags.model, with_text=True))


@dataclass(frozen=True)
class Final:
    tags: Tags
    started: datetime
    donedate: datetime
    audiosecs: float | None
    utterances: tuple[Utterance, ...]
    warning: str | None = None

    def ordered(self) -> list[Utterance]:
        return sorted(self.utterances, key=lambda u: (u.start, u.channel, u.uttid))

    def to_json(self) -> JsonObject:
        utts = self.ordered()
        doc: JsonObject = {
            "asr": ASR_VERSION,
            "model": self.tags.model,
            "requestid": self.tags.requestid,
            "streamtags": dict(self.tags.raw),
            "started": timestamp(self.started),
            "donedate": timestamp(self.donedate),
            "audiosecs": None if self.audiosecs is None else round(self.audiosecs, 3),
            "confidence": round(sum(u.recognition.confidence for u in utts) / len(utts), 3) if utts else None,
            "warning": self.warning,
            "utterances": [u.to_json(self.tags.model) for u in utts],
        }
        return {k: v for k, v in doc.items() if v is not None}

    def to_text(self) -> str:
        return "\n".join(u.text for u in self.ordered())

    def render(self) -> str:
        """The final message per `output`."""
        return self.to_text() if self.tags.output is Format.TEXT else json.dumps(self.to_json())

    def zipped(self, audio: bytes | None) -> bytes:
        """The result as a zip container: ``NAME.json`` (or ``.txt``) unless `notext`, and the scrubbed
        audio as ``NAME.wav`` / ``NAME.mp3`` when there is some. NAME is the requestid, else ``stream``."""
        tags = self.tags
        name = tags.requestid or "stream"
        members: list[tuple[str, bytes]] = []
        if not tags.redaction.notext:
            members.append(
                (f"{name}.{'txt' if tags.output is Format.TEXT else 'json'}", self.render().encode())
            )
        if audio is not None:
            members.append((f"{name}.{tags.redaction.outfmt.split('-')[0]}", audio))
        return zip_bytes(members, self.donedate)


def zip_bytes(members: list[tuple[str, bytes]], when: datetime) -> bytes:
    """A deflated zip of `members` (name, bytes), each dated `when`."""
    out = io.BytesIO()
    stamp = when.astimezone(UTC).timetuple()[:6]
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(max(1980, stamp[0]), *stamp[1:]))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return out.getvalue()

"""The `data` of every event a call produces: one typed builder per kind, without I/O.

`bridge/call.py` (a call's own events) and `bridge/ledger.py` (the `call.ended` of a call whose worker
died) build every payload here, so each key, its order and its type are decided in one place: the
TypedDicts below. `bridge/webhook/schema.json` is the JSON Schema of what these builders return (the
envelope around it is `bridge/webhook/payload.py`); docs/webhook.md describes each key for receivers.
`tests/bridge/test_contracts.py` fails when the builders, the schema or the docs drift apart.

Times in `data` (`start`, `end`, `at`, gap starts) are seconds on the call's timeline, defined in
`bridge/call.py`. A stream role is `sip.siprec.StreamRole.as_dict()`; a SIPREC call's `siprec` is
`sip.events.SiprecSession.as_dict()` plus `delivery`, the call's audio mode (mono, stereo or streams,
as `bridge.call.delivery_of` decides from config `siprec.delivery`; not webhook delivery).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from bridge.vblaze.buffer import GapCause

if TYPE_CHECKING:
    from bridge.vblaze.protocol import Gap, Utterance, Word
    from sip.events import CallStarted
    from sip.siprec import StreamRole

WORKER_LOST = "worker_lost"  # call.ended reason of a call whose worker died (its gap: GapCause.WORKER_LOST)


class WordData(TypedDict):
    word: str
    start: float
    end: float
    confidence: float | None


class LatencyData(TypedDict, total=False):
    speech_end_to_utterance_seconds: float


class UtteranceData(TypedDict):
    text: str
    words: list[WordData]
    start: float
    end: float
    confidence: float | None
    channel: int
    engine: dict[str, Any]
    latency: LatencyData
    role: NotRequired[str]  # SIPREC calls only, as the next two
    participant: NotRequired[dict[str, Any] | None]
    stream: NotRequired[int | None]


class DtmfData(TypedDict):
    digit: str
    at: float


# "from" is a keyword: the functional form.
CallStartedData = TypedDict(
    "CallStartedData",
    {
        "from": str,
        "to": str,
        "headers": dict[str, str],
        "started_at": str,
        "worker": int,
        "remote": str,
        "codecs": list[str],
        "siprec": dict[str, Any] | None,
        # routes: the route the call took (`routes:` in the config; "default": the top-level settings)
        "route": str,
    },
)


class GapData(TypedDict):
    start: float
    duration: float
    cause: str
    stream: NotRequired[int]  # siprec.delivery streams: the audio stream


class EngineFinalData(TypedDict):
    stream: int
    offset: float
    transcript: Any
    audio_stream: NotRequired[int]  # siprec.delivery streams: the audio stream


class StreamTranscriptData(TypedDict):
    stream: int
    role: str
    channel: int
    transcript: Any


class StreamTranscriptsData(TypedDict):
    """`call.ended`'s transcript with siprec.delivery streams: one merged transcript per audio stream."""

    streams: list[StreamTranscriptData]


class CallEndedData(TypedDict):
    reason: str
    duration: float
    audio_seconds: float | None
    utterances: int
    transcript: Any
    engine_finals: NotRequired[list[EngineFinalData]]
    gaps: list[GapData]
    streams: NotRequired[list[dict[str, Any]]]  # SIPREC calls only, as remaps
    remaps: NotRequired[int]
    recording: NotRequired[RecordingData]  # recording.enabled only


# --- recordings (bridge/recording.py) ---------------------------------------------------------------


class RecordingGapData(TypedDict):
    start: float
    duration: float


class RecordingFileData(TypedDict):
    path: str
    seconds: float
    bytes: int
    sha256: str
    channels: int
    gaps: list[RecordingGapData]
    stream: NotRequired[int]  # siprec.delivery streams: the audio stream


class RecordingData(TypedDict):
    """`call.ended`'s recording: one file's facts at the top, or (siprec.delivery streams) `streams`."""

    status: str
    redacted: bool
    reason: NotRequired[str]  # status failed only
    path: NotRequired[str]
    seconds: NotRequired[float]
    bytes: NotRequired[int]
    sha256: NotRequired[str]
    channels: NotRequired[int]
    gaps: NotRequired[list[RecordingGapData]]
    streams: NotRequired[list[RecordingFileData]]


RECORDING_WRITTEN = "written"  # call.ended recording status values
RECORDING_FAILED = "failed"


def recording_file(
    path: str, seconds: float, size: int, sha256: str, channels: int, gaps: Sequence[tuple[float, float]]
) -> RecordingFileData:
    """One finished recording file; `gaps` (start, duration) in call seconds, written as silence."""
    return {
        "path": path,
        "seconds": round(seconds, 3),
        "bytes": size,
        "sha256": sha256,
        "channels": channels,
        "gaps": [{"start": round(start, 3), "duration": round(length, 3)} for start, length in gaps],
    }


def recording(files: Sequence[RecordingFileData], failure: str | None, per_stream: bool) -> RecordingData:
    """`call.ended`'s recording: `failure` the reason if any file failed (status failed); `per_stream`:
    one file per audio stream (siprec.delivery streams), listed under `streams` with their stream."""
    data: RecordingData = {"status": RECORDING_FAILED if failure else RECORDING_WRITTEN, "redacted": True}
    if failure:
        data["reason"] = failure
    if per_stream:
        data["streams"] = list(files)
    elif files and not failure:
        one = files[0]
        data["path"], data["seconds"], data["bytes"] = one["path"], one["seconds"], one["bytes"]
        data["sha256"], data["channels"], data["gaps"] = one["sha256"], one["channels"], one["gaps"]
    return data


# ---------------------------------------------------------------------------------------------------


def call_started(info: CallStarted, answered_at: float, worker: int, delivery: str) -> CallStartedData:
    """`answered_at`: unix time the call was answered; `delivery`: the call's audio mode (mono, stereo,
    streams)."""
    return {
        "from": info.from_uri,
        "to": info.to_uri,
        "headers": dict(info.headers),
        "started_at": datetime.fromtimestamp(answered_at, UTC).isoformat(),
        "worker": worker,
        "remote": info.remote,
        "codecs": list(info.codecs),
        "siprec": {**info.siprec.as_dict(), "delivery": delivery} if info.siprec else None,
        "route": info.route,  # routes
    }


def word(w: Word) -> WordData:
    return {"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence}


def utterance(
    utt: Utterance,
    speech_end_to_utterance: float | None,
    siprec: bool = False,
    role: StreamRole | None = None,
    stream: int | None = None,
) -> UtteranceData:
    """`speech_end_to_utterance`: seconds from the end of the speech to the utterance's arrival, None
    before the first audio frame. A SIPREC call (`siprec`) adds who was heard: `role` the stream role
    (None if unknown), `stream` the audio stream with one engine stream per audio stream, else None."""
    latency: LatencyData = {}
    if speech_end_to_utterance is not None:
        latency["speech_end_to_utterance_seconds"] = round(speech_end_to_utterance, 4)
    data: UtteranceData = {
        "text": utt.text,
        "words": [word(w) for w in utt.words],
        "start": utt.start,
        "end": utt.end,
        "confidence": utt.confidence,
        "channel": utt.channel,
        "engine": utt.raw,
        "latency": latency,
    }
    if siprec:
        participant = role.participant if role else None
        if role is not None and stream is not None:
            data["channel"] = role.channel
        data["role"] = role.role if role else "unknown"
        data["participant"] = participant.as_dict() if participant else None
        data["stream"] = role.index if role else stream
    return data


def dtmf(digit: str, at: float) -> DtmfData:
    return {"digit": digit, "at": round(at, 3)}


def gap(g: Gap, stream: int | None = None) -> GapData:
    data: GapData = {"start": g.start, "duration": g.duration, "cause": g.cause}
    if stream is not None:
        data["stream"] = stream
    return data


def engine_final(final: dict[str, Any], audio_stream: int | None = None) -> EngineFinalData:
    """One of `vblaze.transcript.engine_finals`, tagged with its audio stream if there are several."""
    data: EngineFinalData = {
        "stream": final["stream"],
        "offset": final["offset"],
        "transcript": final["transcript"],
    }
    if audio_stream is not None:
        data["audio_stream"] = audio_stream
    return data


def stream_transcript(stream: int, role: StreamRole, transcript: Any) -> StreamTranscriptData:
    """The merged transcript of audio stream `stream`, whose role is `role`."""
    return {"stream": stream, "role": role.role, "channel": role.channel, "transcript": transcript}


def call_ended(
    reason: str,
    duration: float,
    audio_seconds: float | None,
    utterances: int,
    transcript: Any,
    gaps: list[GapData],
    engine_finals: list[EngineFinalData] | None = None,
    streams: Sequence[StreamRole] | None = None,
    remaps: int = 0,
    recording: RecordingData | None = None,
) -> CallEndedData:
    """`engine_finals` None: a lost call's (no finals known); `streams` None: a plain call; `recording`
    None: recording is off (no key)."""
    seconds = round(duration, 3)
    audio = None if audio_seconds is None else round(audio_seconds, 3)
    data: CallEndedData
    if engine_finals is None:
        data = {
            "reason": reason,
            "duration": seconds,
            "audio_seconds": audio,
            "utterances": utterances,
            "transcript": transcript,
            "gaps": gaps,
        }
    else:
        data = {
            "reason": reason,
            "duration": seconds,
            "audio_seconds": audio,
            "utterances": utterances,
            "transcript": transcript,
            "engine_finals": engine_finals,
            "gaps": gaps,
        }
    if streams is not None:
        data["streams"] = [role.as_dict() for role in streams]
        data["remaps"] = remaps
    if recording is not None:
        data["recording"] = recording
    return data


def lost_call_ended(
    started_at: float, lost_at: float, utterances: int, last_end: float, audio_started_at: float | None = None
) -> CallEndedData:
    """The `call.ended` of a call whose worker died at `lost_at` (unix time), answered at `started_at`,
    whose last utterance ended at `last_end` on the call's timeline, which began at `audio_started_at`
    (unix time; the answer if the ledger never learnt it): the audio after it is a `worker_lost` gap."""
    elapsed = max(0.0, lost_at - started_at)
    timeline = max(0.0, lost_at - (started_at if audio_started_at is None else audio_started_at))
    lost = max(0.0, timeline - last_end)
    gaps: list[GapData] = [
        {"start": round(last_end, 3), "duration": round(lost, 3), "cause": GapCause.WORKER_LOST.value}
    ]
    return call_ended(WORKER_LOST, elapsed, None, utterances, None, gaps)


# --- pause (PCI): call.paused and call.resumed (bridge/pause.py) ---------------------------------------


class PausedData(TypedDict):
    at: float
    by: str
    reason: str | None


class ResumedData(TypedDict):
    at: float
    by: str
    duration: float


def paused(at: float, by: str, reason: str | None) -> PausedData:
    """`by`: "api:<token name>", "dtmf" or "auto"; `reason`: the API caller's free text, or None."""
    return {"at": round(at, 3), "by": by, "reason": reason}


def resumed(at: float, by: str, duration: float) -> ResumedData:
    """`duration`: seconds the pause lasted on the call's timeline."""
    return {"at": round(at, 3), "by": by, "duration": round(max(0.0, duration), 3)}


# --- end of pause ---------------------------------------------------------------------------------------

EventData = CallStartedData | UtteranceData | DtmfData | CallEndedData | PausedData | ResumedData


def as_data(data: EventData) -> dict[str, Any]:
    """A builder's payload as `BridgeEvent.data` (a TypedDict is a plain dict at run time)."""
    return cast("dict[str, Any]", data)

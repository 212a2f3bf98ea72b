"""The call's complete transcript from its engine streams' final documents (`vblaze.transcript`, no I/O)."""

from __future__ import annotations

from typing import Any

from bridge.vblaze.protocol import Gap, Utterance, Word
from bridge.vblaze.transcript import Segment, StreamRecord, engine_finals, merge

BPS = 16000  # 8 kHz mono 16-bit


def utt_doc(start: float, end: float, text: str, confidence: float = 0.9) -> dict[str, Any]:
    """An utterance of a final document, on its stream's own clock."""
    mid = round((start + end) / 2, 3)
    words = text.split()
    return {
        "start": start,
        "end": end,
        "confidence": confidence,
        "events": [
            {"word": words[0], "start": start, "end": mid, "confidence": confidence},
            {"word": " ".join(words[1:]), "start": mid, "end": end, "confidence": confidence},
        ],
        "metadata": {"channel": 0, "uttid": 0},
    }


def final(*utterances: dict[str, Any], audiosecs: float = 0.0) -> dict[str, Any]:
    return {
        "asr": "standin",
        "requestid": "call-1",
        "audiosecs": audiosecs,
        "confidence": 0.5,
        "utterances": list(utterances),
    }


def live(start: float, end: float, text: str) -> Utterance:
    """A live utterance as the client delivered it: times already on the call's timeline."""
    return Utterance(
        text=text,
        words=(Word(text, start, end, 0.8),),
        start=start,
        end=end,
        confidence=0.8,
        channel=0,
        raw={"start": 0.0, "end": end - start, "metadata": {"channel": 0}},
        received_at=0.0,
    )


def record(
    index: int,
    segments: list[tuple[float, float, float]],
    covered_until: float,
    final_doc: dict[str, Any] | str | None = None,
    live_utts: tuple[Utterance, ...] = (),
    ended: str | None = None,
) -> StreamRecord:
    """segments: (stream seconds, call seconds, seconds); covered: the segments up to covered_until."""
    segs = tuple(Segment(int(s * BPS), int(c * BPS), int(n * BPS)) for s, c, n in segments)
    covered = tuple((c, min(c + n, covered_until)) for _, c, n in segments if c < covered_until)
    return StreamRecord(index, BPS, segs, covered, final_doc, live_utts, ended)


def texts(doc: dict[str, Any]) -> list[str]:
    return [" ".join(e["word"] for e in u["events"]) for u in doc["utterances"]]


def test_one_stream_is_its_own_final_with_recomputed_totals() -> None:
    stream = record(
        0, [(0, 0, 10)], 10, final(utt_doc(1, 3, "hello there", 0.8), utt_doc(5, 8, "good bye", 0.6))
    )
    doc = merge([stream], 10.0)
    assert doc is not None
    assert texts(doc) == ["hello there", "good bye"]
    assert [(u["start"], u["end"]) for u in doc["utterances"]] == [(1, 3), (5, 8)]
    assert doc["audiosecs"] == 10.0 and doc["confidence"] == 0.7
    assert doc["gaps"] == [] and doc["complete"] is True
    assert doc["asr"] == "standin" and doc["requestid"] == "call-1"
    assert doc["engine_streams"] == [
        {"stream": 0, "offset": 0.0, "source": "final", "ended": "final", "utterances": 2}
    ]


def test_a_stream_lost_without_final_gives_its_live_utterances_and_the_next_its_final_on_the_call() -> None:
    """Stream 0 died at 12 s after delivering two utterances (last ends at 9.5 s); stream 1 replayed from
    9.5 s, so its own clock is 9.5 s behind the call's."""
    first = record(0, [(0, 0, 12)], 9.5, None, (live(1, 4, "one"), live(6, 9.5, "two")), ended="closed")
    second = record(
        1, [(0, 9.5, 20.5)], 30, final(utt_doc(1.0, 4.0, "three four"), utt_doc(10.5, 14.5, "five six"))
    )
    doc = merge([first, second], 30.0)
    assert doc is not None
    assert [u["text"] if "text" in u else None for u in doc["utterances"]][:2] == ["one", "two"]
    assert [(u["start"], u["end"]) for u in doc["utterances"]] == [(1, 4), (6, 9.5), (10.5, 13.5), (20, 24)]
    words = doc["utterances"][3]["events"]
    assert words[0]["start"] == 20.0 and words[-1]["end"] == 24.0  # words mapped too
    assert doc["audiosecs"] == 30.0 and doc["gaps"] == []
    assert [s["source"] for s in doc["engine_streams"]] == ["live", "final"]
    assert doc["engine_streams"][0]["ended"] == "closed"
    assert [f["offset"] for f in engine_finals([first, second])] == [9.5]
    assert engine_finals([first, second])[0]["transcript"]["utterances"][0]["start"] == 1.0  # untouched


def test_replayed_overlap_is_removed() -> None:
    """The new stream re-transcribes the end of the replayed audio: its utterance ending no later than the
    last one kept is a duplicate; one of an earlier final ending past the next stream's start goes too."""
    first = record(
        0, [(0, 0, 8)], 5, final(utt_doc(1, 5, "kept one"), utt_doc(6, 8, "cut off")), ended="ended_early"
    )
    second = record(1, [(0, 5, 10)], 15, final(utt_doc(-0.5, 0.0, "again"), utt_doc(1, 4, "kept two")))
    doc = merge([first, second], 15.0)
    assert doc is not None
    assert texts(doc) == ["kept one", "kept two"]  # "cut off" was heard again by stream 1 ("kept two")
    assert [(u["start"], u["end"]) for u in doc["utterances"]] == [(1, 5), (6, 9)]


def test_uncovered_spans_are_gaps_with_the_bridges_cause() -> None:
    """Stream 0 lost at 10 s with nothing confirmed after 4 s; only 2 s before the loss could be replayed."""
    first = record(0, [(0, 0, 10)], 4, None, (live(1, 4, "one"),), ended="closed")
    second = record(1, [(0, 8, 12)], 20, final(utt_doc(3, 5, "two three")))
    bridge_gaps = [Gap(4.0, 4.0, "replay_exceeded")]
    doc = merge([first, second], 20.0, bridge_gaps)
    assert doc is not None
    assert doc["gaps"] == [{"start": 4.0, "duration": 4.0, "cause": "replay_exceeded"}]
    assert doc["audiosecs"] == 16.0
    assert [(u["start"], u["end"]) for u in doc["utterances"]] == [(1, 4), (11, 13)]


def test_audio_after_the_last_confirmation_without_final_is_a_gap() -> None:
    only = record(0, [(0, 0, 10)], 6, None, (live(2, 6, "one"),), ended="final_timeout")
    doc = merge([only], 10.0, [Gap(6.0, 4.0, "final_timeout")])
    assert doc is not None
    assert doc["complete"] is False and doc["gaps"] == [
        {"start": 6.0, "duration": 4.0, "cause": "final_timeout"}
    ]
    assert doc["engine_streams"][0]["source"] == "live" and doc["confidence"] == 0.8


def test_a_jump_inside_a_stream_maps_times_across_it() -> None:
    """Audio dropped while the engine was away (overflow) leaves a hole inside one stream."""
    stream = record(0, [(0, 0, 5), (5, 8, 4)], 12, final(utt_doc(1, 2, "a b"), utt_doc(6, 7, "c d")))
    doc = merge([stream], 12.0, [Gap(5.0, 3.0, "buffer_overflow")])
    assert doc is not None
    assert [(u["start"], u["end"]) for u in doc["utterances"]] == [(1, 2), (9, 10)]
    assert doc["gaps"] == [{"start": 5.0, "duration": 3.0, "cause": "buffer_overflow"}]


def test_nothing_delivered_is_none_and_text_finals_fall_back_to_live() -> None:
    assert merge([], 5.0) is None
    assert merge([record(0, [(0, 0, 5)], 0, None, ended="closed")], 5.0) is None
    text = record(0, [(0, 0, 5)], 5, "hello world", (live(1, 2, "hello world"),))
    doc = merge([text], 5.0)
    assert doc is not None and doc["engine_streams"][0]["source"] == "live" and len(doc["utterances"]) == 1
    assert engine_finals([text]) == [{"stream": 0, "offset": 0.0, "transcript": "hello world"}]


def test_malformed_final_utterances_are_skipped() -> None:
    bad = final({"start": "x", "end": 1}, {"start": True, "end": None}, utt_doc(1, 2, "ok fine"))
    bad["utterances"].append("not an object")
    doc = merge([record(0, [(0, 0, 3)], 3, bad)], 3.0)
    assert doc is not None and texts(doc) == ["ok fine"]

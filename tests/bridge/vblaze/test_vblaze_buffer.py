"""The per-call audio buffer: chunking, bounded buffering, replay and gaps, without sockets."""

from __future__ import annotations

import pytest

from bridge.vblaze.buffer import AudioBuffer, GapCause
from bridge.vblaze.protocol import Gap

BUFFER_OVERFLOW, REPLAY_EXCEEDED = GapCause.BUFFER_OVERFLOW, GapCause.REPLAY_EXCEEDED

BPS = 16000  # 8 kHz, 16-bit
CHUNK = 1600  # 100 ms


def make(limit_s: float = 60, replay_s: float = 15) -> AudioBuffer:
    return AudioBuffer(BPS, CHUNK, int(limit_s * BPS), int(replay_s * BPS))


def fill(buf: AudioBuffer, seconds: float, t0: float = 0.0) -> None:
    for i in range(round(seconds * 10)):
        buf.push(bytes([i % 256, 0]) * (CHUNK // 2), t0 + i * 0.1)


def drain(buf: AudioBuffer, flush: bool = False) -> list[tuple[int, int]]:
    out = []
    while (chunk := buf.next_chunk(flush)) is not None:
        out.append((chunk.position, len(chunk.data)))
    return out


def test_chunks_wait_for_a_whole_chunk_unless_flushing() -> None:
    buf = make()
    buf.push(b"\x00\x00" * 500, 1.0)
    assert buf.next_chunk() is None
    buf.push(b"\x00\x00" * 500, 1.1)
    chunk = buf.next_chunk()
    assert chunk is not None and (chunk.position, len(chunk.data), chunk.arrival) == (0, 1600, 1.0)
    assert buf.next_chunk() is None
    chunk = buf.next_chunk(flush=True)
    assert chunk is not None and (chunk.position, len(chunk.data)) == (1600, 400)


def test_odd_length_audio_is_refused() -> None:
    with pytest.raises(ValueError):
        make().push(b"\x00", 0.0)


def test_overflow_drops_oldest_and_records_one_merged_gap() -> None:
    buf = make(limit_s=2)
    fill(buf, 5)
    assert buf.pending_bytes == 2 * BPS
    assert buf.gaps == [Gap(0.0, 3.0, BUFFER_OVERFLOW)]
    first = buf.next_chunk()
    assert first is not None and first.position == 3 * BPS


def test_replay_after_loss_starts_at_the_last_acknowledged_position() -> None:
    buf = make(replay_s=5)
    fill(buf, 3)
    assert len(drain(buf)) == 30
    buf.ack(buf.position(1.2))
    assert buf.rewind() == []
    chunks = drain(buf)
    assert chunks[0] == (buf.position(1.2), CHUNK)
    assert sum(n for _, n in chunks) == buf.position(1.8)
    assert buf.gaps == []


def test_replay_too_short_records_a_gap() -> None:
    buf = make(replay_s=2)
    fill(buf, 10)
    drain(buf)
    buf.ack(buf.position(1.0))
    gaps = buf.rewind()
    assert gaps == [Gap(1.0, 7.0, REPLAY_EXCEEDED)]
    chunks = drain(buf)
    assert chunks[0][0] == buf.position(8.0) and sum(n for _, n in chunks) == 2 * BPS
    replayed = buf.next_chunk()
    assert replayed is None


def test_replayed_chunks_carry_no_arrival() -> None:
    buf = make()
    fill(buf, 1)
    drain(buf)
    buf.rewind()
    chunk = buf.next_chunk()
    assert chunk is not None and chunk.arrival is None


def test_hole_in_pending_audio_is_not_bridged() -> None:
    buf = make(limit_s=1, replay_s=1)
    buf.push(b"\x00\x00" * 400, 0.0)  # 0..800 sent
    assert buf.next_chunk(flush=True) is not None
    fill(buf, 1.5, t0=1.0)  # engine stalls: pending overflows
    chunks = drain(buf)
    positions = [p for p, _ in chunks]
    assert positions[0] == 800 + 8000  # the oldest half second was dropped
    assert buf.gaps == [Gap(0.05, 0.5, BUFFER_OVERFLOW)]


def test_abandon_turns_the_rest_of_the_call_into_one_gap() -> None:
    buf = make(limit_s=2)
    fill(buf, 4)  # 0..2 s dropped by overflow
    drain(buf)
    buf.ack(buf.position(2.5))
    buf.abandon("engine_rejected")
    fill(buf, 1)
    assert buf.gaps == [Gap(0.0, 2.0, BUFFER_OVERFLOW), Gap(2.5, 2.5, "engine_rejected")]
    assert buf.next_chunk(flush=True) is None


def test_arrival_of_a_position() -> None:
    buf = make()
    fill(buf, 1, t0=100.0)
    assert buf.arrival_of(buf.position(0.25)) == pytest.approx(100.2)
    buf.ack(buf.position(0.5))
    assert buf.arrival_of(0) == pytest.approx(100.4)

"""A paused call's audio in the buffer (bridge/vblaze/buffer.py): silence stored, one gap, silent replay."""

from __future__ import annotations

from bridge.vblaze.buffer import AudioBuffer, GapCause
from bridge.vblaze.protocol import Gap

BPS = 16000
FRAME = BPS // 10


def buffer() -> AudioBuffer:
    return AudioBuffer(BPS, FRAME, limit_bytes=60 * BPS, replay_bytes=15 * BPS)


def speech(n: int = FRAME) -> bytes:
    return b"\x11\x22" * (n // 2)


def drain(buf: AudioBuffer) -> bytes:
    out = b""
    while (chunk := buf.next_chunk(flush=True)) is not None:
        out += chunk.data
    return out


def test_paused_audio_is_stored_as_silence_and_reported_once_when_the_pause_ends() -> None:
    buf = buffer()
    assert buf.push(speech(), 1.0) == []
    reported = [buf.push(speech(), 1.1 + i / 10, paused=True) for i in range(5)]
    assert reported == [[]] * 5  # nothing until the span closes
    assert buf.push(speech(), 1.6) == [Gap(0.1, 0.5, GapCause.PAUSED)]
    sent = drain(buf)
    assert sent == speech() + bytes(5 * FRAME) + speech()
    assert buf.gaps == [Gap(0.1, 0.5, GapCause.PAUSED)]


def test_a_replay_after_a_lost_stream_replays_silence_for_the_paused_span() -> None:
    buf = buffer()
    buf.push(speech(), 1.0)
    for i in range(3):
        buf.push(speech(), 1.1 + i / 10, paused=True)
    first = drain(buf)
    assert buf.rewind() == []  # the stream was lost: everything since the last ack goes again
    replayed = drain(buf)
    assert replayed == first == speech() + bytes(3 * FRAME)
    assert b"\x11\x22" not in replayed[FRAME:]


def test_a_call_ending_while_paused_closes_the_span() -> None:
    buf = buffer()
    buf.push(speech(), 1.0, paused=True)
    buf.push(speech(), 1.1, paused=True)
    assert buf.close_pause() == [Gap(0.0, 0.2, GapCause.PAUSED)]
    assert buf.close_pause() == []


def test_abandon_while_paused_keeps_the_paused_span_a_paused_gap() -> None:
    buf = buffer()
    buf.push(speech(), 1.0)
    buf.push(speech(), 1.1, paused=True)
    gaps = buf.abandon(GapCause.ENGINE_UNAVAILABLE)
    assert Gap(0.1, 0.1, GapCause.PAUSED) in gaps
    assert buf.gaps == [Gap(0.0, 0.1, GapCause.ENGINE_UNAVAILABLE), Gap(0.1, 0.1, GapCause.PAUSED)]


def test_overflow_of_paused_silence_stays_a_paused_gap() -> None:
    buf = AudioBuffer(BPS, FRAME, limit_bytes=2 * FRAME, replay_bytes=BPS)
    for i in range(4):
        buf.push(speech(), i / 10, paused=True)
    assert buf.gaps == [Gap(0.0, 0.4, GapCause.PAUSED)]  # dropped silence is no second gap

"""Small scripted V-Blaze engines for the client tests: real `websockets` servers on 127.0.0.1.

`ScriptedEngine` accepts connections and runs a per-connection script; `segmenting_script` behaves like a
level-VAD V-Blaze (one utterance per burst of sound, empty text), with fault knobs for the cases the
stand-in cannot produce on cue. Audio, headers and timings of every connection are recorded.
"""

from __future__ import annotations

import array
import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

RATE = 8000
BPS = RATE * 2
FRAME = BPS // 10  # the fake VAD's 100 ms frame


def tone(seconds: float, amplitude: int = 8000, freq: float = 440.0) -> bytes:
    n = round(seconds * RATE)
    samples = array.array("h", (int(amplitude * math.sin(2 * math.pi * freq * i / RATE)) for i in range(n)))
    return samples.tobytes()


def silence(seconds: float) -> bytes:
    return bytes(round(seconds * RATE) * 2)


def bursts(count: int, on: float = 1.0, off: float = 1.5) -> bytes:
    """`count` times: `on` seconds of 440 Hz at amplitude 8000, then `off` seconds of silence."""
    return (tone(on) + silence(off)) * count


async def feed(stream: Any, pcm: bytes, pace: float = 0.01, frame: int = FRAME) -> None:
    """Push `pcm` in 100 ms frames, `pace` seconds apart (0.01 = ten times real time)."""
    for i in range(0, len(pcm), frame):
        stream.push_audio(pcm[i : i + frame], time.monotonic())
        await asyncio.sleep(pace)


@dataclass
class Conn:
    """What one connection of a scripted engine saw."""

    index: int
    headers: dict[str, str]
    audio: bytearray = field(default_factory=bytearray)
    ended: bool = False  # the empty frame arrived
    opened_at: float = field(default_factory=time.monotonic)


Script = Callable[[ServerConnection, Conn], Awaitable[None]]


class ScriptedEngine:
    """A WebSocket server whose connection `i` runs `scripts[min(i, len-1)]`; `reject(i)` may refuse it."""

    def __init__(
        self,
        scripts: list[Script],
        reject: Callable[[int], tuple[int, str] | None] | None = None,
        port: int = 0,
    ) -> None:
        self.scripts = scripts
        self.reject = reject
        self.port = port
        self.conns: list[Conn] = []
        self.attempts: list[float] = []  # monotonic time of each upgrade request
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/transcribe"

    async def __aenter__(self) -> ScriptedEngine:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            process_request=self._process,
            compression=None,
            max_size=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)

    def _process(self, connection: ServerConnection, request: Request) -> Response | None:
        index = len(self.attempts)
        self.attempts.append(time.monotonic())
        refusal = self.reject(index) if self.reject else None
        if refusal is not None:
            status, body = refusal
            return connection.respond(HTTPStatus(status), body)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = Conn(len(self.conns), {k.lower(): v for k, v in ws.request.headers.raw_items()})
        self.conns.append(conn)
        script = self.scripts[min(conn.index, len(self.scripts) - 1)]
        try:
            await script(ws, conn)
        except ConnectionClosed:
            pass


def utterance_json(start: float, end: float, uttid: int = 0) -> str:
    return json.dumps(
        {
            "start": round(start, 3),
            "end": round(end, 3),
            "confidence": 0.0,
            "text": "",
            "events": [],
            "metadata": {"uttid": uttid, "channel": 0, "source": "stream"},
        }
    )


def segmenting_script(
    *,
    close_after_seconds: float | None = None,
    reset_after_seconds: float | None = None,
    send_final: bool = True,
    send_separator: bool = True,
    close_after_final: bool = True,
    reply_delay: float = 0.0,
    min_silence: float = 0.5,
    before: list[str] | None = None,
) -> Script:
    """A level-VAD engine: reads audio, sends one utterance per burst once `min_silence` follows it,
    then at the empty frame the last utterance, the separator, the final, and closes.

    Faults: close (1000, no final) or reset (abort) once `*_after_seconds` of audio arrived;
    no final / no separator / no close; `before`: raw messages to send first.
    """

    async def script(ws: ServerConnection, conn: Conn) -> None:
        header_pending = conn.headers.get("x-voci-datahdr", "WAVE").upper() == "WAVE"
        raw = bytearray()
        done: list[dict[str, Any]] = []
        active_start: int | None = None
        last_active_end = 0
        silent = 0
        frame_no = 0

        async def emit(start_f: int, end_f: int) -> None:
            utt = utterance_json(start_f * 0.1, end_f * 0.1, len(done))
            done.append(json.loads(utt))
            if reply_delay:
                await asyncio.sleep(reply_delay)
            await ws.send(utt)

        for text in before or []:
            await ws.send(text)
        async for message in ws:
            assert isinstance(message, bytes), "audio must go in binary frames"
            if not message:
                conn.ended = True
                break
            pcm = message
            if header_pending:
                assert pcm[:4] == b"RIFF"
                pcm = pcm[44:]
                header_pending = False
            conn.audio += pcm
            raw += pcm
            if close_after_seconds is not None and len(conn.audio) >= close_after_seconds * BPS:
                await ws.close()
                return
            if reset_after_seconds is not None and len(conn.audio) >= reset_after_seconds * BPS:
                ws.transport.abort()
                return
            while len(raw) >= FRAME:
                frame = array.array("h", bytes(raw[:FRAME]))
                del raw[:FRAME]
                level = sum(abs(s) for s in frame) / len(frame)
                if level > 500:
                    if active_start is None:
                        active_start = frame_no
                    last_active_end = frame_no + 1
                    silent = 0
                elif active_start is not None:
                    silent += 1
                    if silent * 0.1 >= min_silence - 1e-9:
                        await emit(active_start, last_active_end)
                        active_start = None
                frame_no += 1
        if not conn.ended:
            return
        if active_start is not None:
            await emit(active_start, last_active_end)
        if send_separator:
            await ws.send("")
        if send_final:
            await ws.send(json.dumps({"requestid": conn.headers.get("x-voci-requestid"), "utterances": done}))
        if close_after_final:
            await ws.close()
        else:
            await ws.wait_closed()

    return script


def utt(start: float, end: float, **extra: object) -> str:
    """An engine utterance message (JSON text) from `start` to `end` with two words; `extra` overrides."""
    body: dict[str, object] = {
        "start": start,
        "end": end,
        "confidence": 0.9,
        "events": [
            {"word": "hello", "start": start, "end": start + 0.2, "confidence": 0.8},
            {"word": "there", "start": start + 0.2, "end": end, "confidence": 0.7},
        ],
        "metadata": {"uttid": 1, "channel": 0, "source": "stream"},
    }
    body.update(extra)
    return json.dumps(body)

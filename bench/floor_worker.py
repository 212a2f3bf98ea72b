"""The floor for bench/load.py: one bare pjsua2 worker that answers calls and forwards nothing.

It is the bridge's own SIP stack (`sip.endpoint.SipEndpoint`: same pjsua2 settings, ports, codecs,
admission and 100 ms frame ports read through ctypes) with the rest of the bridge taken away: no
asyncio loop, no engine stream, no events, no metrics. Audio frames are only counted. On SIGTERM it
stops the endpoint and writes `{"frames", "expected_frames", "calls", "call_seconds", "rtp_packets",
"rtp_lost", "rtp_discarded", "frames_dropped"}` to `--out` (expected: whole frames in the time from
media up to hang-up, call by call; RTP as pjmedia's stream statistics count it, polled by the
endpoint once a second, as the bridge's `vblaze_bridge_rtp_packets_total`, `_lost_total` and
`_discarded_total`).

    python bench/floor_worker.py --config CONFIG --index I --out floor-I.json
    python bench/floor_worker.py --config CONFIG --fork --out floor-{index}.json
    python bench/floor_worker.py --config CONFIG --fork --stream --out floor-{index}.json

`--fork` starts every worker of the config from this one process with os.fork(), after pjsua2 and the
bridge's modules are imported (and before any pjsua2 object exists), as the bridge's zygote does with
`sip.spawn: fork` (bridge/zygote.py): bench/load.py runs the floor so by default, for a fair ratio.

`--stream` makes it the *streaming floor*: the least any bridge must add to the bare floor. Each call's
frames also go to the engine (`engine.url` of the config) over a WebSocket of the call's own, opened
with the bridge's own upgrade headers (`bridge.vblaze.protocol.request_headers`) on an event loop
(uvloop) in the main thread, from pjmedia's clock thread through one loop wake-up per batch of frames
(as the bridge hands them over); at hang-up the empty frame, then the engine's replies are read to the
end and discarded. No buffer, no replay, no session state, no events, no metrics. The JSON gains
`"streamed"` (frames written to a socket) and `"stream_failures"` (streams that failed, logged).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop
from websockets.asyncio.client import ClientConnection, connect

from bridge.config import Config, load_config
from bridge.memory_merge import mark_and_log
from bridge.sip_adapter import sip_settings, worker_readiness
from bridge.vblaze.protocol import request_headers, stream_datahdr, wav_stream_header
from sip.endpoint import SipEndpoint
from sip.events import CallEnded, CallMedia, SipEvent
from sip.limits import RTP_PORTS_PER_WORKER
from sip.settings import NullObserver

logger = logging.getLogger("floor")
STREAM_TIMEOUT_SECONDS = 30.0  # a stream's connect, a send, and the wait for the engine's last reply


class Counts(NullObserver):
    def __init__(self, frame_seconds: float) -> None:
        self.frame_seconds = frame_seconds
        self.frames = 0
        self.expected_frames = 0
        self.calls = 0
        self.call_seconds = 0.0
        self._media_at: dict[int, float] = {}
        self._lock = threading.Lock()
        self.rtp_packets = 0
        self.rtp_lost = 0
        self.rtp_discarded = 0
        self.dropped = 0

    # sip.settings.CallObserver: only RTP and dropped frames are counted (NullObserver: the rest)
    def rtp_in(self, packets: int, lost: int, discarded: int) -> None:
        self.rtp_packets += packets
        self.rtp_lost += lost
        self.rtp_discarded += discarded

    def frames_dropped(self, frames: int, cause: str) -> None:
        self.dropped += frames

    def audio(self, key: int, *rest: object) -> None:
        """sip.media.AudioDeliver (its arguments after the call's key are not looked at)."""
        self.frames += 1  # only pjmedia's clock thread calls this

    def event(self, event: SipEvent) -> None:
        with self._lock:
            if isinstance(event, CallMedia) and event.key not in self._media_at:
                self._media_at[event.key] = time.monotonic()
            elif isinstance(event, CallEnded):
                started = self._media_at.pop(event.key, None)
                self.calls += 1
                if started is not None:
                    seconds = time.monotonic() - started
                    self.call_seconds += seconds
                    self.expected_frames += int(seconds / self.frame_seconds)


class Streamer:
    """--stream: each call's frames to the engine over its own WebSocket (see the module docstring).

    `audio` runs on pjmedia's clock thread and `event` on the SIP thread; both only hand over to the
    loop. On the loop a call is a queue of frames and one task writing them to its socket."""

    def __init__(self, config: Config, counts: Counts, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        wave = stream_datahdr(config.engine.datahdr, 1) == "WAVE"
        self.preamble = wav_stream_header(config.audio.sample_rate) if wave else b""
        self.counts = counts
        self.loop = loop
        self.streamed = 0
        self.failures = 0
        self._batch: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        self._queues: dict[int, asyncio.Queue[bytes | None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def audio(self, key: int, stream: int, pcm: bytes | None, arrival: float) -> None:
        self.counts.audio(key, stream, pcm, arrival)
        if pcm is None:
            return
        with self._lock:
            self._batch.append((key, pcm))
            first = len(self._batch) == 1
        if first:  # one wake-up of the loop for the frames of one clock tick
            self.loop.call_soon_threadsafe(self._drain)

    def event(self, event: SipEvent) -> None:
        self.counts.event(event)
        if isinstance(event, CallMedia | CallEnded):
            self.loop.call_soon_threadsafe(self._on_loop, event)

    def _on_loop(self, event: SipEvent) -> None:
        if isinstance(event, CallMedia) and event.key not in self._queues:
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            self._queues[event.key] = queue
            task = asyncio.create_task(self._stream(event.key, queue))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(event, CallEnded) and event.key in self._queues:
            self._queues.pop(event.key).put_nowait(None)

    def _drain(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
        for key, pcm in batch:
            queue = self._queues.get(key)
            if queue is not None:
                queue.put_nowait(pcm)

    def close_all(self) -> None:
        for queue in self._queues.values():
            queue.put_nowait(None)
        self._queues.clear()

    async def _stream(self, key: int, queue: asyncio.Queue[bytes | None]) -> None:
        headers = request_headers(self.config.engine, self.config.audio, f"floor-{os.getpid()}-{key}")
        try:
            async with asyncio.timeout(STREAM_TIMEOUT_SECONDS):
                ws = await connect(
                    self.config.engine.url, additional_headers=headers, compression=None, ping_interval=None
                )
            async with ws:
                reader = asyncio.create_task(self._read(ws))
                if self.preamble:
                    async with asyncio.timeout(STREAM_TIMEOUT_SECONDS):
                        await ws.send(self.preamble)
                while (pcm := await queue.get()) is not None:
                    async with asyncio.timeout(STREAM_TIMEOUT_SECONDS):
                        await ws.send(pcm)
                    self.streamed += 1
                async with asyncio.timeout(STREAM_TIMEOUT_SECONDS):
                    await ws.send(b"")
                    await reader
        except Exception:
            self.failures += 1
            logger.exception("call %d: the stream failed", key)

    @staticmethod
    async def _read(ws: ClientConnection) -> None:
        async for _reply in ws:
            pass


def merge_memory(config: Config) -> None:
    """With `sip.memory_merge`, this process's memory (and its children's) mergeable by the host's KSM,
    as the bridge's is (bridge/memory_merge.py), so that the floor's memory is measured alike."""
    if config.sip.memory_merge:
        mark_and_log(logger, "floor")


def fork_all(config_path: Path, out: str, stream: bool) -> None:
    """Fork one child per worker of the config; pass SIGTERM on and wait for them."""
    config = load_config(config_path)
    merge_memory(config)  # as the bridge's zygote does, before the first fork
    children = []
    for index in range(config.sip.workers):
        pid = os.fork()
        if pid == 0:
            run(config_path, index, Path(out.format(index=index)), stream)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        os.waitpid(child, 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--fork", action="store_true", help="run every worker, forked from this process")
    parser.add_argument("--out", required=True, help="JSON file; with --fork, {index} is the worker's")
    parser.add_argument("--stream", action="store_true", help="each call's audio to the engine too")
    args = parser.parse_args()
    if args.fork:
        fork_all(args.config, args.out, args.stream)
    else:
        merge_memory(load_config(args.config))  # as an exec'd bridge worker does
        run(args.config, args.index, Path(args.out), args.stream)


def run(config_path: Path, index: int, out: Path, stream: bool = False) -> None:
    config = load_config(config_path)
    counts = Counts(config.audio.port_frame_ms / 1000)
    port = config.sip.first_port + index
    rtp_port = config.sip.rtp_first_port + index * RTP_PORTS_PER_WORKER
    streamed: dict[str, int] = {}
    if stream:
        streamed = uvloop.run(_serve_streaming(config, counts, port, rtp_port))
    else:
        endpoint = SipEndpoint(
            sip_settings(config), port, rtp_port, counts.event, counts.audio, worker_readiness, counts
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        endpoint.start()
        while not stop.wait(1.0):
            pass
        endpoint.stop()
    out.write_text(
        json.dumps(
            streamed
            | {
                "frames": counts.frames,
                "expected_frames": counts.expected_frames,
                "calls": counts.calls,
                "call_seconds": counts.call_seconds,
                "rtp_packets": counts.rtp_packets,
                "rtp_lost": counts.rtp_lost,
                "rtp_discarded": counts.rtp_discarded,
                "frames_dropped": counts.dropped,
            }
        )
    )
    os._exit(0)  # see sip.endpoint: the frame ports must not be destroyed after the library


async def _serve_streaming(config: Config, counts: Counts, port: int, rtp_port: int) -> dict[str, int]:
    """--stream: the endpoint, and each call's stream on this loop, until SIGTERM; the streams' counts."""
    loop = asyncio.get_running_loop()
    streamer = Streamer(config, counts, loop)
    endpoint = SipEndpoint(
        sip_settings(config), port, rtp_port, streamer.event, streamer.audio, worker_readiness, counts
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    endpoint.start()
    await stop.wait()
    endpoint.stop()
    streamer.close_all()
    if streamer.tasks:
        await asyncio.wait(set(streamer.tasks), timeout=STREAM_TIMEOUT_SECONDS)
    return {"streamed": streamer.streamed, "stream_failures": streamer.failures}


if __name__ == "__main__":
    main()

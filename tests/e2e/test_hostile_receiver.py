"""A webhook receiver that answers hostile bytes, against a real worker: the worker lives on, retries, and
delivers every event in order once the receiver answers properly.

The receiver is a raw asyncio server on 127.0.0.1. Its first answers, one per request, are each something
no client should take for a delivery: random bytes, a truncated body, a 200 KB header, silence, a broken
chunk, a bogus status line, a reset, two thousand `100 Continue`, a NUL in a header, an HTTP/2 frame, an
answer dripped a byte at a time. After them it answers `200` with keep-alive. A call made while those
answers go out and one made after must both reach the receiver whole: every event, each call's in order.
The worker must be the same process throughout (same PID, no restart counted), nothing but the HTTP
client's documented errors may have come out of it (no traceback in the log), and each hostile answer
must be counted as a failed attempt.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Bridge, Standin, end_bridge, new_bridge, run_sipp, run_standin, speech
from tests.fixtures.harness import ServerThread, free_port_block, metric, scrape, wait_until

ATTEMPT_TIMEOUT = 1.0  # webhook.timeout_seconds
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

Writer = asyncio.StreamWriter
Hostile = Callable[[Writer], Awaitable[None]]


def sends(data: bytes) -> Hostile:
    async def answer(writer: Writer) -> None:
        writer.write(data)
        await writer.drain()

    return answer


async def silence(writer: Writer) -> None:
    await asyncio.sleep(ATTEMPT_TIMEOUT * 3)


async def reset(writer: Writer) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST


async def drip(writer: Writer) -> None:
    for byte in OK:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.1)  # the whole answer takes 3.8 s, the attempt's limit is 1 s


HOSTILE: list[tuple[str, Hostile]] = [
    ("random bytes", sends(os.urandom(300))),
    ("truncated body", sends(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nshort")),
    ("200 KB header", sends(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")),
    ("silence", silence),
    ("broken chunk", sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n")),
    ("bogus status line", sends(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")),
    ("reset", reset),
    ("2000 continues", sends(b"HTTP/1.1 100 Continue\r\n\r\n" * 2000)),
    ("NUL in a header", sends(b"HTTP/1.1 200 OK\r\nX-\x00: y\r\nContent-Length: 0\r\n\r\n")),
    ("HTTP/2 frame", sends(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")),
    ("dripped answer", drip),
]


@dataclass
class HostileReceiver:
    """Answers request k with HOSTILE[k] (then closes), and every later one 200 with keep-alive."""

    port: int = 0
    requests: int = 0
    hostile_sent: list[str] = field(default_factory=list)
    delivered: list[dict[str, Any]] = field(default_factory=list)  # envelopes answered 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> HostileReceiver:
        self.server = ServerThread(self._serve)
        self.port = self.server.port
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(match.group(1))) if match else b""
                with self.lock:
                    n, self.requests = self.requests, self.requests + 1
                if n < len(HOSTILE):
                    name, hostile = HOSTILE[n]
                    with self.lock:
                        self.hostile_sent.append(name)
                    await hostile(writer)
                    return
                with self.lock:
                    self.delivered.append(json.loads(body))
                writer.write(OK)
                await writer.drain()
        except ConnectionError:
            return  # the client gave up on a hostile answer
        finally:
            writer.close()

    def calls(self) -> dict[str, list[dict[str, Any]]]:
        """Envelopes answered 200, per call, the first of each event_id."""
        out: dict[str, list[dict[str, Any]]] = {}
        seen: set[str] = set()
        with self.lock:
            for envelope in self.delivered:
                if envelope["event_id"] not in seen:
                    seen.add(envelope["event_id"])
                    out.setdefault(envelope["call_id"], []).append(envelope)
        return out


@pytest.fixture
def engine() -> Iterator[Standin]:
    standin = run_standin("--recognizer", "vad-only")
    yield standin
    standin.stop()


def test_hostile_answers_leave_the_worker_serving_and_every_event_delivered_in_order(
    engine: Standin, tmp_path: Path, speech_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VBLAZE_BRIDGE_WEBHOOK_SECRET", "hostile-receiver-secret")
    audio = speech("one two three four", speech_dir, "hostile-receiver")
    metrics_port = free_port_block(1, low=29000, high=30000)
    with HostileReceiver() as receiver:
        bridge: Bridge = new_bridge(
            tmp_path,
            0,
            engine.url,
            sink={"kind": "webhook"},
            webhook={
                "urls": [receiver.url],
                "timeout_seconds": ATTEMPT_TIMEOUT,
                "backoff_initial_seconds": 0.05,
                "backoff_max_seconds": 0.2,
            },
            metrics={"port": metrics_port},
        )
        try:
            pid = bridge.worker_pid()
            during = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=3000)
            assert during.returncode == 0, during.stdout[-2000:]
            wait_until(lambda: len(receiver.hostile_sent) == len(HOSTILE), 60, "every hostile answer sent")
            after = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=3000)
            assert after.returncode == 0, after.stdout[-2000:]

            def both_ended() -> bool:
                calls = receiver.calls()
                return len(calls) == 2 and all(c[-1]["type"] == "call.ended" for c in calls.values())

            wait_until(both_ended, 60, "both calls delivered to their call.ended")
            for envelopes in receiver.calls().values():
                assert [e["seq"] for e in envelopes] == list(range(len(envelopes))), envelopes
                assert envelopes[0]["type"] == "call.started"
                assert envelopes[-1]["data"]["transcript"]["audiosecs"] > 1.0  # the engine heard it
            assert receiver.hostile_sent == [name for name, _ in HOSTILE]

            text = scrape(metrics_port)
            failed = metric(text, "vblaze_bridge_webhook_attempts_total", 'outcome="connect_error"')
            failed += metric(text, "vblaze_bridge_webhook_attempts_total", 'outcome="timeout"')
            assert failed >= len(HOSTILE), text
            assert metric(text, "vblaze_bridge_webhook_events_rejected_total") == 0
            assert metric(text, "vblaze_bridge_worker_restarts_total") == 0
            assert bridge.proc is not None and bridge.proc.poll() is None
            assert bridge.worker_pid() == pid, "the worker was replaced"
            log = bridge.log()
            assert "Traceback" not in log and "died with" not in log, log[-4000:]
        finally:
            end_bridge(bridge)

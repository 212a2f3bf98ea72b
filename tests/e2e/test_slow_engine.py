"""An engine slow to answer its health probe, through a real bridge: one slow probe leaves the pool up.

The supervisor probes the engine's /maxstreamscheck every 2 s with a 2 s limit (bridge/health.py). A
probe with no answer within the limit counts as "engine unreachable" only as the second in a row, so
an engine busy for one probe does not turn every worker's OPTIONS to 503 and empty Kamailio's
dispatcher set. Here a TCP proxy in front of the stand-in holds chosen probe requests for longer than
the limit and passes everything else (the calls' WebSockets) straight through:

- one held probe: every OPTIONS answer stays 200, a call placed meanwhile is transcribed, the log says
  the slow probe did not count yet;
- two held in a row: the workers answer 503 "engine unreachable", and 200 again once the probes are
  answered;
- throughout, the same worker PID, no restart counted, no traceback.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Bridge, Standin, run_sipp, speech
from tests.e2e.test_options import options, reason_text
from tests.fixtures.harness import ServerThread, free_port_block, metric, scrape, wait_until

pytestmark = pytest.mark.timeout(180)

HOLD_SECONDS = 3.0  # longer than the probe's 2 s limit (bridge.health.DEFAULT_PROBE_TIMEOUT)


class ProbeHoldingProxy:
    """127.0.0.1:port → the stand-in; the next `hold` /maxstreamscheck requests wait HOLD_SECONDS first.

    The supervisor keeps its probe connection alive, so each request on a connection is read and relayed
    with its answer; a WebSocket upgrade is passed through both ways from then on."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hold = 0
        self.probes: list[bool] = []  # each probe request seen: held or not

    def __enter__(self) -> ProbeHoldingProxy:
        self.server = ServerThread(self._serve)
        self.port = self.server.port
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    def arm(self, count: int) -> None:
        self.server.call_soon(setattr, self, "hold", count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            while head := await _head(reader):
                if not head.startswith(b"GET /maxstreamscheck"):  # a call's WebSocket
                    up_writer.write(head)
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                    return
                held = self.hold > 0
                self.hold -= held
                self.probes.append(held)
                if held:
                    await asyncio.sleep(HOLD_SECONDS)
                up_writer.write(head)
                answer = await _head(up_reader)
                length = re.search(rb"(?im)^content-length:\s*(\d+)", answer)
                body = await up_reader.readexactly(int(length.group(1))) if length else b""
                writer.write(answer + body)
                await writer.drain()
        except ConnectionError:
            return  # the supervisor gave up on a held probe and closed its connection
        finally:
            writer.close()
            up_writer.close()


async def _head(reader: asyncio.StreamReader) -> bytes:
    """An HTTP message's head, or b"" at the end of the stream."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as end:
        assert not end.partial, end.partial
        return b""


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        return  # one side went away: the other is closed below
    finally:
        writer.close()


def test_one_slow_probe_leaves_the_pool_up_two_in_a_row_take_it_out(
    standin_vad: Standin, make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    upstream = int(standin_vad.url.rsplit(":", 1)[1].split("/")[0])
    metrics_port = free_port_block(1, low=29000, high=30000)
    audio = speech("one two three four five", speech_dir, "slow-probe")
    with ProbeHoldingProxy(upstream) as proxy:
        bridge: Bridge = make_bridge(
            f"ws://127.0.0.1:{proxy.port}/transcribe", metrics={"port": metrics_port}
        )
        wait_until(lambda: options(bridge.sip_port).status == 200, 15, "the worker ready")
        pid = bridge.worker_pid()

        # one held probe: the worker keeps answering 200 before, during and after it
        proxy.arm(1)
        caller = threading.Thread(
            target=run_sipp, args=(bridge.sip_port, audio, tmp_path), kwargs={"hold_ms": 3000}, name="sipp"
        )
        caller.start()
        answers: list[int] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (True in proxy.probes and proxy.probes[-1] is False):
            answers.append(options(bridge.sip_port).status)
            time.sleep(0.2)
        assert True in proxy.probes, "the proxy never held a probe"
        assert proxy.probes[-1] is False, "no probe answered after the held one"
        answers.append(options(bridge.sip_port).status)
        assert set(answers) == {200}, answers
        caller.join(60)
        (events,) = bridge.wait_ended(1).values()
        assert [e["seq"] for e in events] == list(range(len(events))), events
        assert events[-1]["data"]["audio_seconds"] > 1.0 and events[-1]["data"]["utterances"] >= 1, events
        said = [r["msg"] for r in bridge.log_records() if r["logger"] == "bridge.health"]
        assert any("1 of 2" in m for m in said), said
        assert not any("unreachable" in m and "1 of 2" not in m for m in said), said

        # two held in a row: the workers say the engine is unreachable, then recover
        proxy.arm(2)
        wait_until(
            lambda: reason_text(options(bridge.sip_port)) == "engine unreachable",
            20,
            "503 engine unreachable after two slow probes",
            step=0.2,
        )
        wait_until(lambda: options(bridge.sip_port).status == 200, 15, "200 again", step=0.2)
        assert proxy.probes.count(True) == 3

        text = scrape(metrics_port)
        assert metric(text, "vblaze_bridge_worker_restarts_total") == 0
        assert bridge.proc is not None and bridge.proc.poll() is None
        assert bridge.worker_pid() == pid, "the worker was replaced"
        assert "Traceback" not in bridge.log(), bridge.log()[-4000:]

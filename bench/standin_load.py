"""The stand-in engine's own cost under many realtime streams, and whether it still answers meanwhile.

The stand-in (`--recognizer vad-only`, as bench/load.py runs it) runs in its own process; this script
opens N WebSocket streams to it (``datahdr=NONE``, 16-bit PCM at 8 kHz, one channel, like a bridge's
mono call) over a ramp of `--ramp` seconds, and each sends looped speech in 100 ms chunks on a realtime
clock for `--seconds` seconds, then the empty frame, and reads to the final result. Every second a probe
asks ``GET /maxstreamscheck``, as the bridge's supervisor does, and times the answer.

Printed per phase: the stand-in's CPU over the steady part (every stream open; utime + stime from /proc,
in cores, and in ms a stream-second), the probe's answer time (median and worst) over the whole phase,
the chunks sent late by the client (more than 50 ms behind its clock: the client itself starved),
streams ending with their final result, utterances received, and the machine's load average and idle and
steal percentages over the steady part.

With ``--compare DIR`` (a work tree of another revision, e.g. ``git worktree add /tmp/old REV``) the
phases alternate, that tree's stand-in first (A B A B ...), and each pair's CPU ratio is printed with the
median.

    .venv/bin/python bench/standin_load.py --streams 200 --seconds 30 --pairs 2 [--compare /tmp/old]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import websockets  # noqa: E402

from bench.load import CLK_TCK, SPEECH, cpu_ticks, cpu_times, idle_steal, load_average  # noqa: E402
from bridge.demo import start_standin, stop_process  # noqa: E402
from bridge.health import maxstreams_url  # noqa: E402
from tests.fixtures.audio import speech_wav  # noqa: E402

RATE = 8000
CHUNK = RATE * 2 // 10  # 100 ms of 16-bit samples
LATE = 0.05
QUERY = "realtime=true&datahdr=NONE&encoding=SPCM&samprate=8000"
IO_TIMEOUT = 30.0


@dataclass
class Phase:
    label: str
    streams: int
    cpu_cores: float = 0.0
    steady_seconds: float = 0.0
    probes: list[float] = field(default_factory=list)  # answer times; a probe with no answer counts 2 s
    probe_failures: int = 0
    late_chunks: int = 0
    chunks: int = 0
    finished: int = 0
    utterances: int = 0
    load: float = 0.0
    idle: float = 0.0
    steal: float = 0.0

    @property
    def ms_per_stream_second(self) -> float:
        return 1000.0 * self.cpu_cores / self.streams if self.streams else 0.0

    def line(self) -> str:
        probes = sorted(self.probes)
        p50 = statistics.median(probes) * 1000 if probes else float("nan")
        worst = probes[-1] * 1000 if probes else float("nan")
        return (
            f"{self.label}: {self.streams} streams, CPU {self.cpu_cores:.3f} cores "
            f"({self.ms_per_stream_second:.2f} ms a stream-second) over {self.steady_seconds:.0f} s; "
            f"probe p50 {p50:.1f} ms, worst {worst:.0f} ms, {self.probe_failures} unanswered; "
            f"{self.finished}/{self.streams} final results, {self.utterances} utterances; "
            f"{self.late_chunks}/{self.chunks} chunks sent late; "
            f"load {self.load:.2f}, idle {self.idle:.0f} %, steal {self.steal:.0f} %"
        )


def speech() -> bytes:
    """The bench's speech as 16-bit PCM at 8 kHz, a whole number of chunks long."""
    with wave.open(str(speech_wav(SPEECH)), "rb") as w:
        data = w.readframes(w.getnframes())
    return data[: len(data) - len(data) % CHUNK]


async def one_stream(url: str, audio: bytes, start: float, seconds: float, phase: Phase) -> None:
    async with asyncio.timeout(IO_TIMEOUT):
        ws = await websockets.connect(f"{url}?{QUERY}", max_size=None, compression=None)  # as the bridge
    try:
        offset = int(np.random.default_rng().integers(0, len(audio) // CHUNK)) * CHUNK
        chunks = round(seconds * 10)
        for n in range(chunks):
            due = start + n / 10
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > LATE:
                phase.late_chunks += 1
            async with asyncio.timeout(IO_TIMEOUT):
                await ws.send(audio[offset : offset + CHUNK])
            offset = (offset + CHUNK) % len(audio)
            phase.chunks += 1
        async with asyncio.timeout(IO_TIMEOUT):
            await ws.send(b"")
            separator_seen = False
            async for message in ws:
                if message == "":
                    separator_seen = True
                elif isinstance(message, str) and separator_seen:
                    phase.finished += 1
                elif isinstance(message, str):
                    phase.utterances += 1
    finally:
        async with asyncio.timeout(IO_TIMEOUT):
            await ws.close()


def probe_once(url: str) -> float | None:
    http = maxstreams_url(url)
    began = time.monotonic()
    try:
        with urllib.request.urlopen(http, timeout=2.0) as answer:
            answer.read()
    except urllib.error.HTTPError:
        pass  # 429 (full) is an answer
    except OSError:
        return None
    return time.monotonic() - began


async def probing(url: str, phase: Phase, stop: asyncio.Event) -> None:
    while not stop.is_set():
        took = await asyncio.to_thread(probe_once, url)
        if took is None:
            phase.probe_failures += 1
            took = 2.0
        phase.probes.append(took)
        try:
            async with asyncio.timeout(max(0.0, 1.0 - took)):
                await stop.wait()
        except TimeoutError:
            pass  # the next probe is due


async def drive(url: str, pid: int, args: argparse.Namespace, phase: Phase, audio: bytes) -> None:
    stop = asyncio.Event()
    prober = asyncio.create_task(probing(url, phase, stop))
    began = time.monotonic()
    starts = [began + args.ramp * k / max(1, args.streams) for k in range(args.streams)]

    async def delayed(start: float) -> None:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        await one_stream(url, audio, start, args.seconds, phase)

    streams = asyncio.gather(*(delayed(s) for s in starts), return_exceptions=True)
    # steady: from the ramp's end (every stream open) to the first stream's end
    await asyncio.sleep(max(0.0, began + args.ramp + 1.0 - time.monotonic()))
    ticks, times, t0 = cpu_ticks([pid]), cpu_times(), time.monotonic()
    await asyncio.sleep(max(1.0, args.seconds - args.ramp - 2.0))
    phase.steady_seconds = time.monotonic() - t0
    phase.cpu_cores = (cpu_ticks([pid]) - ticks) / CLK_TCK / phase.steady_seconds
    phase.idle, phase.steal = idle_steal(times, cpu_times())
    phase.load = load_average()
    async with asyncio.timeout(args.seconds + IO_TIMEOUT * 3):
        results = await streams
    stop.set()
    await prober
    for result in results:
        if isinstance(result, BaseException):
            print(f"  a stream failed: {result!r}", file=sys.stderr)


def run_phase(label: str, tree: Path, args: argparse.Namespace, audio: bytes) -> Phase:
    proc, url = start_standin(
        ["--recognizer", "vad-only", "--max-streams", str(args.streams + 16), "--log-level", "WARNING"],
        env=dict(os.environ, PYTHONPATH=str(tree)),
        cwd=tree,  # `python -m` puts the working directory first on the path
    )
    phase = Phase(label, args.streams)
    try:
        asyncio.run(drive(url, proc.pid, args, phase, audio))
    finally:
        stop_process(proc, 15)
    return phase


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--ramp", type=float, default=10.0)
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--compare", type=Path, help="a work tree of another revision, run first in each pair")
    p.add_argument("--json", type=Path, help="also write every phase's figures to this file")
    args = p.parse_args(argv)
    if args.seconds < args.ramp + 4:
        p.error("--seconds must be at least --ramp + 4, for a steady part")
    audio = speech()
    ratios: list[float] = []
    every: list[Phase] = []
    for n in range(args.pairs):
        phases: list[Phase] = []
        if args.compare is not None:
            phases.append(run_phase(f"pair {n + 1}, {args.compare}", args.compare, args, audio))
            print(phases[-1].line(), flush=True)
        phases.append(run_phase(f"pair {n + 1}, this tree", ROOT, args, audio))
        print(phases[-1].line(), flush=True)
        every += phases
        if len(phases) == 2 and phases[0].cpu_cores > 0:
            ratios.append(phases[1].cpu_cores / phases[0].cpu_cores)
            print(f"  CPU this tree / {args.compare}: {ratios[-1]:.2f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"phases": [dataclasses.asdict(p) for p in every], "ratios": ratios}))
    if ratios:
        low, high = min(ratios), max(ratios)
        print(
            f"median CPU ratio this tree / {args.compare}: {statistics.median(ratios):.2f} "
            f"({low:.2f}-{high:.2f}, {len(ratios)} pairs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

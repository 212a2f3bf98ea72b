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

`--fork` starts every worker of the config from this one process with os.fork(), after pjsua2 and the
bridge's modules are imported (and before any pjsua2 object exists), as the bridge's zygote does with
`sip.spawn: fork` (bridge/zygote.py): bench/load.py runs the floor so by default, for a fair ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.config import load_config
from bridge.sip_adapter import sip_settings, worker_readiness
from sip.endpoint import SipEndpoint
from sip.events import CallEnded, CallMedia, SipEvent
from sip.limits import RTP_PORTS_PER_WORKER
from sip.settings import NullObserver


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


def fork_all(config_path: Path, out: str) -> None:
    """Fork one child per worker of the config; pass SIGTERM on and wait for them."""
    config = load_config(config_path)
    children = []
    for index in range(config.sip.workers):
        pid = os.fork()
        if pid == 0:
            run(config_path, index, Path(out.format(index=index)))
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
    args = parser.parse_args()
    if args.fork:
        fork_all(args.config, args.out)
    else:
        run(args.config, args.index, Path(args.out))


def run(config_path: Path, index: int, out: Path) -> None:
    config = load_config(config_path)
    counts = Counts(config.audio.port_frame_ms / 1000)
    port = config.sip.first_port + index
    rtp_port = config.sip.rtp_first_port + index * RTP_PORTS_PER_WORKER
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
            {
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


if __name__ == "__main__":
    main()

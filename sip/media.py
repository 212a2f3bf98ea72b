"""pjsua2 audio ports that hand each call's decoded PCM to the bridge.

Measured with the pjsua2-python wheel on this machine (see the call pipeline issue):
- `onFrameReceived` runs on pjmedia's clock thread for every call of the worker, so it does as little
  as possible: read the payload and hand it over with its arrival time.
- `bytes(frame.buf)` costs ~111 µs a frame; reading the vector's data pointer through ctypes costs
  ~1.3 µs and is bit-exact, so that is what `frame_bytes` does.
- Dropping a Python `AudioMediaPort` while the clock thread may still call it crashed the process;
  ports are therefore created once, kept in a pool and reused, never destroyed while the endpoint runs.
- Frames of 100 ms instead of 20 ms cut the callbacks five-fold.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable

import pjsua2 as pj

logger = logging.getLogger(__name__)

# deliver(key, stream index, pcm or None when the bridge sent no audio frame, monotonic arrival time);
# the stream index is 0 for a plain call, 0 or 1 (audio m-line order) for a SIPREC call.
AudioDeliver = Callable[[int, int, bytes | None, float], None]


def frame_bytes(frame: pj.MediaFrame) -> bytes:
    """The frame's payload, read through the std::vector's data pointer (see module docstring)."""
    size = int(frame.size)
    if size <= 0:
        return b""
    data_ptr = ctypes.c_void_p.from_address(int(frame.buf.this)).value
    if not data_ptr:
        return b""
    return ctypes.string_at(data_ptr, size)


class FramePort(pj.AudioMediaPort):  # type: ignore[misc]
    """A conference port that forwards each received frame of the call it is lent to."""

    def __init__(self, deliver: AudioDeliver, dropped: Callable[[int, str], None] | None = None) -> None:
        super().__init__()
        self.key: int | None = None
        self.stream = 0
        self.failures = 0
        self._deliver = deliver
        self._dropped = dropped

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        key = self.key
        if key is None:
            return
        arrival = time.monotonic()
        try:
            if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
                self._deliver(key, self.stream, frame_bytes(frame), arrival)
            else:
                self._deliver(key, self.stream, None, arrival)
        except Exception:
            # Nothing may propagate into pjmedia's clock thread; log the first failure, count the rest.
            self.failures += 1
            if self._dropped is not None:
                self._dropped(1, "other")
            if self.failures == 1:
                logger.exception("frame delivery failed for call %d; later failures are only counted", key)


class PortPool:
    """A fixed set of FramePorts, lent to calls and given back; never destroyed while running."""

    def __init__(
        self,
        size: int,
        sample_rate: int,
        frame_ms: int,
        deliver: AudioDeliver,
        dropped: Callable[[int, str], None] | None = None,
    ) -> None:
        fmt = pj.MediaFormatAudio()
        fmt.type = pj.PJMEDIA_TYPE_AUDIO
        fmt.init(pj.PJMEDIA_FORMAT_PCM, sample_rate, 1, frame_ms * 1000, 16)
        self._free: list[FramePort] = []
        self._all: list[FramePort] = []
        for index in range(size):
            port = FramePort(deliver, dropped)
            port.createPort(f"bridge-port-{index}", fmt)
            self._free.append(port)
            self._all.append(port)

    def lend(self, key: int, stream: int = 0) -> FramePort:
        port = self._free.pop()
        port.stream = stream
        port.key = key
        return port

    def give_back(self, port: FramePort) -> None:
        port.key = None
        self._free.append(port)

    @property
    def lent(self) -> int:
        """Ports out on loan."""
        return len(self._all) - len(self._free)

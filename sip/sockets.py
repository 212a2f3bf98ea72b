"""The sockets a worker's calls hold in pjlib's ioqueue, so no INVITE is taken whose sockets would
not fit (no I/O).

pjsip and pjmedia register every socket in one ioqueue of `sip.limits.IOQUEUE_KEYS` keys. A call
takes an RTP and an RTCP socket per audio stream. When a call ends its sockets are closed at once,
but pjlib keeps their keys for `KEY_FREE_DELAY` before it hands them out again; a socket registered
while every key is either in use or kept that way trips an assertion in pjlib and the process aborts
(open sockets alone are refused with an error instead). Calls hung up within a frame or two did it:
about 30 in half a second, within one source's burst allowance.

`SocketLedger` keeps the keys of ended calls until pjlib frees them; `fits` is the admission's
check (`sip.admission.decide` refuses with 503, as a full worker does, when a call would not fit).
"""

from __future__ import annotations

from collections import deque

from sip.limits import IOQUEUE_KEYS, MAX_SIPREC_STREAMS

SOCKETS_PER_STREAM = 2  # RTP and RTCP: pjsua opens both for every audio stream it answers
KEY_FREE_DELAY = 0.5  # s: pjlib's PJ_IOQUEUE_KEY_FREE_DELAY, how long a closed socket's key is kept
KEY_LINGER = KEY_FREE_DELAY + 0.1  # s: counted a little longer, for the loop's own latency
SIP_KEYS = 16  # keys left to SIP: the UDP and TCP listeners and up to 14 TCP connections
MEDIA_KEYS = IOQUEUE_KEYS - SIP_KEYS  # keys the calls' sockets may hold, open or being freed
CALL_SOCKETS = SOCKETS_PER_STREAM * MAX_SIPREC_STREAMS  # the most a new call may open


class SocketLedger:
    """Sockets of ended calls whose ioqueue keys pjlib has not freed yet."""

    def __init__(self, linger: float = KEY_LINGER) -> None:
        self._linger = linger
        self._closed: deque[tuple[float, int]] = deque()  # (free at, sockets), in order of closing
        self._held = 0

    def closed(self, now: float, sockets: int) -> None:
        """A call ended at `now` and pjsua closed its `sockets`."""
        self._expire(now)
        self._closed.append((now + self._linger, sockets))
        self._held += sockets

    def held(self, now: float) -> int:
        """Keys of closed sockets that pjlib may still keep at `now`."""
        self._expire(now)
        return self._held

    def _expire(self, now: float) -> None:
        while self._closed and self._closed[0][0] <= now:
            self._held -= self._closed.popleft()[1]


def fits(open_sockets: int, closing: int) -> bool:
    """Whether a new call's sockets fit beside `open_sockets` of live calls and `closing` keys."""
    return open_sockets + closing + CALL_SOCKETS <= MEDIA_KEYS

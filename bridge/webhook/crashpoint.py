"""Named crash points, for the tests that kill a process at one exact step of an event's life.

Inert unless ``VBLAZE_BRIDGE_CRASH_AT`` is set (only tests set it): ``NAME`` or ``NAME:N`` makes the
process SIGKILL itself the N-th time (default 1st) it reaches `reached(NAME)`. The points:

- ``spool.before_insert``: an event is on its way to the spool, not yet written;
- ``delivery.before_post``: the event is spooled, its POST not yet sent;
- ``delivery.after_2xx``: the receiver answered 2xx, the spool row is not yet deleted;
- ``spool.claim``: inside the transaction that takes over a dead owner's rows, before it commits;
- ``ledger.write``: in the middle of a ledger journal line (half of it written);
- ``ledger.compact``: the ledger's compacted file is written, not yet renamed into place;
- ``recording.write``: in the middle of appending scrubbed audio to a recording's partial file;
- ``recording.before_rename``: a recording's file is complete and fsynced, not yet renamed into place.
"""

from __future__ import annotations

import os
import signal

ENV = "VBLAZE_BRIDGE_CRASH_AT"

_point, _, _count = os.environ.get(ENV, "").partition(":")
_left = int(_count or 1)


def reached(name: str) -> None:
    """SIGKILL this process if `name` is the armed crash point and its count is reached."""
    global _left
    if name != _point:
        return
    _left -= 1
    if _left <= 0:
        os.kill(os.getpid(), signal.SIGKILL)

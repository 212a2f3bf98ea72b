"""When an answered call holds its slot for nothing, and is hung up to give it back (no I/O).

pjsua has `PJSUA_MAX_CALLS` slots a process; a call never ACKed, or whose RTP never came or stopped
(a lost BYE ends this way), would hold one until the peer's next call is refused. The pjsua thread
(`sip.endpoint`) feeds each call's state and pjmedia's RTP counts in once a second and hangs up the
calls these rules name:

- answered, not ACKed within `sip.ack_timeout_seconds` → `no_ack`, hung up with 408
- expecting RTP, none ever arrived within `sip.first_rtp_timeout_seconds` → `no_rtp`, BYE
- RTP stopped for `sip.rtp_timeout_seconds` while the media expects it → `rtp_timeout`, BYE

While the media expects no RTP (on hold, `a=inactive`) the clock restarts at each check.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ReclaimCause(StrEnum):
    """Why an answered call was hung up to free its slot: the `cause` label of
    `vblaze_bridge_calls_reclaimed_total`, and the call's end reason."""

    NO_ACK = "no_ack"  # answered, never ACKed (sip.ack_timeout_seconds)
    NO_RTP = "no_rtp"  # expecting RTP, none ever arrived (sip.first_rtp_timeout_seconds)
    RTP_TIMEOUT = "rtp_timeout"  # RTP stopped while the media expects it (sip.rtp_timeout_seconds)


@dataclass(frozen=True)
class Reclaim:
    """Hang the call up with `status` (its final answer or BYE) after `idle` seconds of `cause`."""

    cause: ReclaimCause
    idle: float
    status: int


def unacked(answered: float, now: float, ack_timeout: float) -> Reclaim | None:
    """A call answered at `answered` and not ACKed yet: reclaimed once `ack_timeout` has passed."""
    if now - answered >= ack_timeout:
        return Reclaim(ReclaimCause.NO_ACK, now - answered, 408)
    return None


@dataclass
class RtpWatch:
    """One confirmed call's RTP as pjmedia counts it (its streams summed), checked once a second."""

    changed: float  # when the packet count last moved (or the media expected none)
    packets: int = 0
    lost: int = 0
    discarded: int = 0  # packets that arrived and pjmedia threw away (late, duplicate, bad)
    seen: bool = False  # any RTP packet ever arrived
    expected: bool = False  # the media expects RTP (a stream flowing with direction decoding)

    def update(
        self, packets: int, lost: int, now: float, first_timeout: float, timeout: float
    ) -> tuple[int, int, Reclaim | None]:
        """Take pjmedia's totals; return the packets and losses new since the last check, and whether
        to reclaim the slot."""
        new_packets, new_lost = max(0, packets - self.packets), max(0, lost - self.lost)
        self.lost = lost
        self.seen = self.seen or packets > 0
        reclaim = None
        if packets != self.packets or not self.expected:
            self.packets = packets
            self.changed = now
        elif not self.seen and now - self.changed >= first_timeout:
            reclaim = Reclaim(ReclaimCause.NO_RTP, now - self.changed, 200)
        elif now - self.changed >= timeout:
            reclaim = Reclaim(ReclaimCause.RTP_TIMEOUT, now - self.changed, 200)
        return new_packets, new_lost, reclaim

    def discards(self, discarded: int) -> int:
        """Take pjmedia's total of discarded packets; return those new since the last check."""
        new, self.discarded = max(0, discarded - self.discarded), discarded
        return new

"""What pjsip's log lines say about messages it dropped before any callback saw them (no I/O).

pjsip parses every datagram before a module or pjsua sees it; one it cannot take is only logged. The
pjsua thread's log writer (`sip.endpoint`) hands each line of level 3 or below to `dropped_reason`
and counts what it names.
"""

from __future__ import annotations

from enum import StrEnum


class SipDropReason(StrEnum):
    """Why pjsip dropped a message: the `reason` label of `vblaze_bridge_sip_messages_dropped_total`."""

    MALFORMED = "malformed"  # a parse error, or a message without CSeq or the like
    OVERSIZED = "oversized"  # larger than PJSIP_MAX_PKT_LEN
    OTHER = "other"  # what `bridge.metrics.bounded` maps anything else to; never produced


# pjsip's log lines for messages it drops before any callback sees them, first match wins (pjsip 2.15:
# "Error processing packet from …: Rx buffer overflow" for a message larger than PJSIP_MAX_PKT_LEN,
# "Dropping N bytes packet from …: PJSIP syntax error exception when parsing …" for a parse error,
# "Error processing packet from …: Missing required header(s)" for a message without CSeq or the like).
DROPPED_MESSAGE_MARKERS = (
    ("Rx buffer overflow", SipDropReason.OVERSIZED),
    ("too large", SipDropReason.OVERSIZED),
    ("Error processing", SipDropReason.MALFORMED),
    ("bytes packet from", SipDropReason.MALFORMED),
)


def dropped_reason(line: str) -> SipDropReason | None:
    """Why the message this pjsip log line reports was dropped; None if it reports no dropped message."""
    return next((reason for marker, reason in DROPPED_MESSAGE_MARKERS if marker in line), None)

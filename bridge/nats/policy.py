"""What one JetStream publish attempt means, without I/O: its metrics outcome and its verdict.

An event is delivered only once JetStream acked it (a duplicate ack included: the stream holds that
`event_id` already). Everything else is retried with the webhook backoff (`bridge.webhook.policy`),
the event staying spooled, except a message larger than the server's max_payload, which can never be
published and is recorded as rejected.
"""

from __future__ import annotations

import enum

from bridge.webhook.policy import Verdict

# Statuses recorded in the spool's `rejected` table for a refused event (HTTP-like, for one table).
STATUS_TOO_LARGE = 413


class Outcome(enum.StrEnum):
    """How one publish ended: the ``outcome`` label of ``vblaze_bridge_nats_publish_attempts_total``.

    `bridge/metrics.py` derives its label values from these members; add one here, not there.
    """

    OK = "ok"  # acked, stored
    DUPLICATE = "duplicate"  # acked as a duplicate: the stream held this Nats-Msg-Id already
    TIMEOUT = "timeout"  # no ack within nats.publish_timeout_seconds
    NOT_CONNECTED = "not_connected"  # no server reachable (nats.servers): waiting to reconnect
    NO_RESPONDERS = "no_responders"  # connected, but no JetStream answered (no quorum, JetStream off)
    STREAM_ERROR = "stream_error"  # the stream does not exist and could not be created (nats.stream)
    API_ERROR = "api_error"  # JetStream refused the publish (logged with its code)
    TOO_LARGE = "too_large"  # larger than the server's max_payload: final
    OTHER = "other"


def verdict(outcome: Outcome) -> Verdict:
    """What to do after a publish that ended with `outcome`."""
    if outcome in (Outcome.OK, Outcome.DUPLICATE):
        return "delivered"
    if outcome is Outcome.TOO_LARGE:
        return "reject"
    return "retry"


def destination(stream: str, subject_prefix: str, route: str) -> str:
    """The spool destination (the `url` column) of one route's events to one stream."""
    return f"nats:{stream}:{subject_prefix}:{route}"


def parse_destination(dest: str) -> tuple[str, str, str] | None:
    """(stream, subject_prefix, route) of a destination made by `destination`, or None."""
    scheme, _, rest = dest.partition(":")
    parts = rest.split(":")
    if scheme != "nats" or len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]

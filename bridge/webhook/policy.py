"""Retry verdicts for webhook attempts, without I/O: what one HTTP answer means, its metrics outcome,
and how long to wait before the next attempt. The ordering rules that use them are in `queue.py`.

- 2xx: delivered.
- 408, 429, 5xx, connection errors, timeouts: retried with exponential backoff and jitter; a
  `Retry-After` answer replaces the backoff, capped at `backoff_max`.
- Anything else (other 4xx, 3xx, 1xx): final. The event is recorded as rejected and the call's next
  event goes out.
"""

from __future__ import annotations

import email.utils
import enum
import random
from typing import Literal

Verdict = Literal["delivered", "retry", "reject"]


class Outcome(enum.StrEnum):
    """How one attempt ended: the ``outcome`` label of ``vblaze_bridge_webhook_attempts_total``.

    `bridge/metrics.py` derives its label values from these members; add one here, not there.
    """

    OK = "ok"  # 2xx
    TIMEOUT = "timeout"  # no answer within webhook.timeout_seconds
    CONNECT_ERROR = "connect_error"  # refused, reset, DNS: the request did not get an answer
    HTTP_4XX = "http_4xx"  # 4xx but 429 (408 is retried, the others are final)
    HTTP_429 = "http_429"  # too many requests: retried, honouring Retry-After
    HTTP_5XX = "http_5xx"  # retried
    OTHER = "other"  # 1xx, 3xx (redirects are not followed) and anything outside 100-599


def verdict(status: int) -> Verdict:
    """What to do after an HTTP answer with `status`."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or 500 <= status < 600:
        return "retry"
    return "reject"


def outcome(status: int) -> Outcome:
    """The metrics outcome label of an HTTP answer."""
    if 200 <= status < 300:
        return Outcome.OK
    if status == 429:
        return Outcome.HTTP_429
    if 400 <= status < 500:
        return Outcome.HTTP_4XX
    if 500 <= status < 600:
        return Outcome.HTTP_5XX
    return Outcome.OTHER


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or HTTP-date), or None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def backoff(
    failures: int,
    initial: float,
    maximum: float,
    retry_after: float | None = None,
    rand: random.Random | None = None,
) -> float:
    """Seconds to wait after the `failures`-th consecutive failure (1 for the first).

    Exponential (`initial` · 2^(failures-1), capped at `maximum`) with "equal jitter": a uniform
    value in [d/2, d], so that receivers recovering from an outage are not hit by every bridge at once.
    A `Retry-After` from the receiver is honoured as given, capped at `maximum`.
    """
    if retry_after is not None:
        return min(max(0.0, retry_after), maximum)
    exponent = min(max(0, failures - 1), 62)
    delay = min(maximum, initial * (2.0**exponent))
    r = rand if rand is not None else random
    return delay / 2 + r.uniform(0, delay / 2)

"""The ioqueue's keys: the wheel's facts `sip.sockets` rests on (probed in a separate process, since
running out of keys aborts it), the ledger of ended calls' sockets, and the admission's 503."""

from __future__ import annotations

import signal
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from sip.admission import CallResult, Reject, decide
from sip.limits import IOQUEUE_KEYS
from sip.message import parse_request
from sip.sockets import CALL_SOCKETS, KEY_FREE_DELAY, KEY_LINGER, MEDIA_KEYS, SocketLedger, fits
from tests.sip.test_protocol_logic import POLICY, invite


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.fixtures.ioqueue_probe", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_wheels_ioqueue_holds_ioqueue_keys_sockets() -> None:
    probe = _probe("capacity")
    assert probe.returncode == 0, probe.stderr
    assert int(probe.stdout.split()[-1]) == IOQUEUE_KEYS


def test_a_key_is_reused_only_after_the_free_delay_and_finding_none_aborts_the_process() -> None:
    early = _probe("reuse", str(KEY_FREE_DELAY * 0.8))
    assert early.returncode == -signal.SIGABRT, (early.returncode, early.stdout[-300:])
    assert "free_list" in early.stderr  # pjlib's assertion, not some other failure
    late = _probe("reuse", str(KEY_FREE_DELAY + 0.05))
    assert late.returncode == 0, late.stderr
    assert late.stdout.split()[-1] == "1"


@given(st.lists(st.tuples(st.floats(0, 1.0), st.integers(0, 4)), max_size=40), st.floats(0, 2.0))
def test_the_ledger_holds_the_sockets_closed_within_the_linger(
    closings: list[tuple[float, int]], after: float
) -> None:
    ledger = SocketLedger()
    now, closed = 0.0, []
    for gap, sockets in closings:
        now += gap
        ledger.closed(now, sockets)
        closed.append((now, sockets))
        assert ledger.held(now) == sum(n for at, n in closed if at + KEY_LINGER > now)
    later = now + after
    assert ledger.held(later) == sum(n for at, n in closed if at + KEY_LINGER > later)


def test_a_call_fits_while_its_sockets_leave_the_sip_keys_free() -> None:
    assert fits(0, 0)
    assert fits(MEDIA_KEYS - CALL_SOCKETS - 10, 10)
    assert not fits(MEDIA_KEYS - CALL_SOCKETS - 10, 11)
    assert MEDIA_KEYS < IOQUEUE_KEYS


def test_a_call_whose_sockets_do_not_fit_is_refused_503_with_retry_after_as_full() -> None:
    decision = decide(parse_request(invite()), "127.0.0.1", 0, False, POLICY, sockets_fit=False)
    assert isinstance(decision, Reject)
    assert (decision.status, decision.result) == (503, CallResult.REJECTED_FULL)
    assert ("Retry-After", str(POLICY.retry_after)) in decision.headers
    draining = decide(parse_request(invite()), "127.0.0.1", 0, True, POLICY, sockets_fit=False)
    assert isinstance(draining, Reject) and draining.result is CallResult.REJECTED_DRAINING

"""sip.reclaim: when an answered call gives its slot back, decided from its state and RTP counts alone."""

from __future__ import annotations

from sip.reclaim import Reclaim, ReclaimCause, RtpWatch, unacked


def test_an_unacked_call_is_reclaimed_with_408_once_the_ack_timeout_passed() -> None:
    assert unacked(100.0, 104.9, 5.0) is None
    assert unacked(100.0, 105.0, 5.0) == Reclaim(ReclaimCause.NO_ACK, 5.0, 408)


def test_rtp_that_never_came_is_no_rtp_and_rtp_that_stopped_is_rtp_timeout() -> None:
    never = RtpWatch(changed=0.0, expected=True)
    assert never.update(0, 0, 9.0, 10.0, 60.0) == (0, 0, None)
    assert never.update(0, 0, 10.0, 10.0, 60.0) == (0, 0, Reclaim(ReclaimCause.NO_RTP, 10.0, 200))
    stopped = RtpWatch(changed=0.0, expected=True)
    assert stopped.update(50, 2, 1.0, 10.0, 60.0) == (50, 2, None)  # counted since the last check
    assert stopped.update(50, 2, 60.0, 10.0, 60.0) == (0, 0, None)
    assert stopped.update(50, 2, 61.0, 10.0, 60.0) == (0, 0, Reclaim(ReclaimCause.RTP_TIMEOUT, 60.0, 200))


def test_media_that_expects_no_rtp_restarts_the_clock() -> None:
    held = RtpWatch(changed=0.0, packets=50, seen=True, expected=False)
    assert held.update(50, 0, 500.0, 10.0, 60.0)[2] is None
    held.expected = True  # taken off hold
    assert held.update(50, 0, 559.0, 10.0, 60.0)[2] is None
    assert held.update(50, 0, 560.0, 10.0, 60.0)[2] == Reclaim(ReclaimCause.RTP_TIMEOUT, 60.0, 200)


def test_discards_are_counted_once() -> None:
    watch = RtpWatch(changed=0.0, expected=True)
    assert [watch.discards(total) for total in (0, 3, 3, 7, 2)] == [0, 3, 0, 4, 0]

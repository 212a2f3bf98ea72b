"""The SIP thread's log throttle for lines a peer can make it write (refused INVITEs)."""

from __future__ import annotations

from sip.throttle import Throttle


def test_throttle_lets_one_line_a_key_through_per_interval_and_counts_the_rest() -> None:
    throttle = Throttle(interval=10.0, max_keys=2)
    assert throttle.allow("a", 0.0) == 0
    assert [throttle.allow("a", t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert throttle.allow("b", 5.0) == 0  # another key is not held back
    assert throttle.allow("a", 10.0) == 3  # the next line says how many were held back
    assert throttle.allow("c", 30.0) == 0  # past max_keys, quiet keys are forgotten
    assert throttle.allow("a", 30.5) == 0

"""sip.phase.connect_delay: a port connected after the delay it gives lands in the window after a
delivery of the port it lines up with, and never waits more than a frame."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from sip.phase import AIM, WINDOW, connect_delay

FRAME = 0.1
TICK = 0.02

times = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(now=times, beat=times, frame_ms=st.integers(21, 1000), tick_ms=st.integers(1, 20))
def test_the_wait_ends_in_the_window_after_a_delivery_and_is_at_most_a_frame(
    now: float, beat: float, frame_ms: int, tick_ms: int
) -> None:
    frame, tick = frame_ms / 1000, tick_ms / 1000
    delay = connect_delay(now, beat, frame, tick)
    assert 0.0 <= delay <= frame - WINDOW * tick + AIM * tick + 1e-9
    since = (now + delay - beat) % frame
    # float rounding of large times: compare on the circle, to within a microsecond
    assert since < WINDOW * tick + 1e-6 or frame - since < 1e-6, (since, delay)


def test_connects_at_once_within_the_window_and_without_a_beat() -> None:
    assert connect_delay(10.0, None, FRAME, TICK) == 0.0
    assert connect_delay(10.005, 10.0, FRAME, TICK) == 0.0  # 5 ms after a delivery: the next tick
    assert connect_delay(10.205, 10.0, FRAME, TICK) == 0.0  # two frames later, the same phase
    assert connect_delay(10.05, 10.0, 0.02, TICK) == 0.0  # port frame of one tick: every tick delivers


def test_waits_for_the_next_delivery_plus_a_little_otherwise() -> None:
    assert math.isclose(connect_delay(10.03, 10.0, FRAME, TICK), 0.07 + AIM * TICK)
    assert math.isclose(connect_delay(10.099, 10.0, FRAME, TICK), 0.001 + AIM * TICK)
    assert math.isclose(connect_delay(10.011, 10.0, FRAME, TICK), 0.089 + AIM * TICK)

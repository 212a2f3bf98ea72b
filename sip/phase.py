"""When to connect a call's frame port to the conference, so that a worker's ports deliver together.

pjmedia's conference clock ticks every `tick` seconds (pjsua's audio frame ptime, 20 ms). A frame
port of `frame` seconds (100 ms) collects `frame / tick` ticks of its call's audio from the tick its
connection took effect, and is handed its frame in the tick that completes one, then every `frame`.
A connection asked for between two ticks takes effect at the next tick (the conference applies
connections from an operation queue at the start of each tick). So the tick at which a port is
connected fixes, for the rest of the call, in which of the `frame / tick` ticks its frames come.

Ports connected anywhere in a frame deliver in up to `frame / tick` different ticks, and the clock
thread hands each of those ticks' frames to the worker's loop with a wake-up of its own: up to five a
frame for four calls where one would do. A port connected just after another port's frame came
(within the same tick) delivers in that port's tick from then on. `connect_delay` says how long to
wait for that moment: at most one frame, at the start of a call or after its media changed.

No I/O here: the caller passes the time and the last delivery it saw.
"""

from __future__ import annotations

WINDOW = 0.5  # of a tick after a delivery: a connection asked for then takes effect at the next tick
AIM = 0.1  # of a tick after the next delivery: where a wait ends


def connect_delay(now: float, beat: float | None, frame: float, tick: float) -> float:
    """Seconds to wait before connecting a port so that it delivers in the same tick as the port whose
    last frame arrived at `beat` (monotonic seconds); 0.0 to connect now: there is no such port, the
    port frame is no longer than a tick, or `now` is within `WINDOW` of a tick after a delivery."""
    if beat is None or frame <= tick or tick <= 0:
        return 0.0
    since = (now - beat) % frame
    if since < WINDOW * tick:
        return 0.0
    return frame - since + AIM * tick

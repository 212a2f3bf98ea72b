"""Whether a new call would be taken: one rule for `/readyz` (the pool) and SIP OPTIONS (one worker).

No I/O. The supervisor feeds it the pool's figures for `/readyz`; each worker feeds it its own (draining,
its calls against its slots, the engine state the supervisor last told it) to answer OPTIONS, so a
dispatcher probing with OPTIONS sees what `/readyz` would say of that worker.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Readiness:
    """What the supervisor knows about whether the pool can take a call."""

    draining: bool = False
    workers_alive: int = 0  # workers ready and answering the supervisor's pings
    workers_total: int = 0  # sip.workers
    calls_active: int = 0
    capacity: int = 0  # calls the live workers can hold (sip.calls_per_worker x workers_alive)
    engine_reachable: bool | None = None  # None: not probed yet, or probing disabled
    engine_full: bool = False  # the engine answered 429 to /maxstreamscheck


@dataclass(frozen=True)
class Decision:
    ready: bool
    reason: str  # "ready" or why not


def decide(state: Readiness) -> Decision:
    """The readiness rule, in order: draining, no workers, workers down, pool full, engine unreachable,
    engine full.

    An engine that was never probed (``None``) does not block readiness: the bridge answers calls
    and buffers audio while it connects, as ``engine.on_unreachable = answer`` intends.
    """
    if state.draining:
        return Decision(False, "draining")
    if state.workers_alive <= 0 or state.capacity <= 0:
        return Decision(False, "no workers")
    if state.workers_alive < state.workers_total:
        return Decision(False, "workers down")
    if state.calls_active >= state.capacity:
        return Decision(False, "pool full")
    if state.engine_reachable is False:
        return Decision(False, "engine unreachable")
    if state.engine_full:
        return Decision(False, "engine full")
    return Decision(True, "ready")

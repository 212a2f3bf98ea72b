"""The live feed's hub: held events, resume by id, bounds, and slow watchers cut off."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.control.hub import EventHub


def env(call_id: str, seq: int, kind: str = "utterance") -> dict[str, Any]:
    return {"type": kind, "call_id": call_id, "seq": seq, "data": {}}


def call(hub: EventHub, call_id: str, utterances: int, ended: bool = True) -> None:
    hub.publish(env(call_id, 0, "call.started"))
    for seq in range(1, utterances + 1):
        hub.publish(env(call_id, seq))
    if ended:
        hub.publish(env(call_id, utterances + 1, "call.ended"))


def seqs(events: list[Any]) -> list[tuple[str, int]]:
    return [(e.call_id, e.envelope["seq"]) for e in events]


def test_a_watcher_gets_live_events_in_publish_order_with_increasing_ids() -> None:
    hub = EventHub(run="r1")
    watcher = hub.subscribe()
    call(hub, "a", 2, ended=False)
    hub.publish(env("b", 0, "call.started"))
    taken = watcher.take()
    assert seqs(taken) == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert [e.id for e in taken] == ["r1:1", "r1:2", "r1:3", "r1:4"]
    assert watcher.take() == [] and not watcher.wake.is_set()


def test_a_new_watcher_sees_the_calls_up_from_their_start_but_not_ended_ones() -> None:
    hub = EventHub()
    call(hub, "done", 2)
    call(hub, "up", 3, ended=False)
    assert seqs(hub.subscribe().take()) == [("up", 0), ("up", 1), ("up", 2), ("up", 3)]
    # Asking for one call gets it whole, ended or not.
    assert seqs(hub.subscribe("done").take()) == [("done", s) for s in range(4)]


def test_resume_after_an_id_gets_every_held_event_after_it_and_nothing_twice() -> None:
    hub = EventHub(run="r1")
    call(hub, "a", 2)
    last = hub.publish(env("b", 0, "call.started"))
    hub.publish(env("b", 1))
    call(hub, "c", 1)
    resumed = hub.subscribe(last_event_id=last.id).take()
    assert seqs(resumed) == [("b", 1), ("c", 0), ("c", 1), ("c", 2)]
    # An id of another run (the supervisor restarted) or garbage: the calls up, from their start.
    for stale in ("r0:3", "r1:x", "nonsense"):
        assert seqs(hub.subscribe(last_event_id=stale).take()) == [("b", 0), ("b", 1)]


def test_memory_is_bounded_per_call_and_by_ended_calls_and_call_started_is_kept() -> None:
    hub = EventHub(per_call=4, ended_calls=2)
    call(hub, "long", 10, ended=False)
    assert seqs(hub.subscribe("long").take()) == [("long", 0), ("long", 8), ("long", 9), ("long", 10)]
    for name in ("x", "y", "z"):
        call(hub, name, 1)
    assert hub.subscribe("x").take() == []  # the oldest ended call was let go
    assert len(hub.subscribe("z").take()) == 3


def test_a_watcher_too_far_behind_is_cut_off_and_others_are_not_slowed() -> None:
    hub = EventHub(queue_limit=5)
    slow, filtered = hub.subscribe(), hub.subscribe("other")
    call(hub, "a", 10)
    assert slow.cut == "more than 5 events behind" and slow.take() == []
    assert filtered.cut is None and filtered.take() == []  # it asked for another call only
    # Reconnecting with a backlog longer than the queue is not cut off: it is bounded by what is held.
    fresh = hub.subscribe("a")
    assert len(fresh.take()) == 12 and fresh.cut is None
    hub.unsubscribe(slow)
    assert hub.watchers == 2


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        EventHub(per_call=1)
    with pytest.raises(ValueError):
        EventHub(queue_limit=0)

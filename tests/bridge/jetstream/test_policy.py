"""Publish verdicts and the NATS metric labels have one source (bridge/nats/policy.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from bridge import metrics
from bridge.nats import policy
from bridge.nats.policy import Outcome

TRANSPORT = Path(policy.__file__).parent / "transport.py"


def test_only_an_ack_delivers_and_only_a_too_large_message_is_final() -> None:
    assert {o for o in Outcome if policy.verdict(o) == "delivered"} == {Outcome.OK, Outcome.DUPLICATE}
    assert {o for o in Outcome if policy.verdict(o) == "reject"} == {Outcome.TOO_LARGE}


def test_the_label_tuple_is_the_enum_and_every_member_but_other_is_produced() -> None:
    assert metrics.NATS_OUTCOMES == tuple(o.value for o in Outcome)
    named = {
        node.attr
        for node in ast.walk(ast.parse(TRANSPORT.read_text()))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Outcome"
    }
    assert named == {o.name for o in Outcome}  # OTHER too: a destination that is not NATS, other errors

"""The SIP layer's label values and bridge.metrics' tuples cannot drift apart.

Every value the SIP code (and the worker) can emit is a declared label value, and every declared value
but the ``other`` fallback is emitted somewhere: the tuples are derived from the enums of the modules
that produce them, producers name members (never a string), and each member is named by a producer.
"""

from __future__ import annotations

import ast
from enum import StrEnum
from pathlib import Path

from bridge import metrics
from sip.admission import CallResult
from sip.pjlog import DROPPED_MESSAGE_MARKERS, SipDropReason, dropped_reason
from sip.reclaim import ReclaimCause, RtpWatch, unacked
from sip.routing import REJECT_STATUSES

ROOT = Path(__file__).parents[2]
LABELS: list[tuple[type[StrEnum], tuple[str, ...]]] = [
    (CallResult, metrics.CALL_RESULTS),
    (SipDropReason, metrics.SIP_DROP_REASONS),
    (ReclaimCause, metrics.RECLAIM_CAUSES),
]
FALLBACK = "OTHER"  # what metrics.bounded maps anything else to; declared, never produced
BY_BRIDGE = {CallResult.COMPLETED, CallResult.FAILED, CallResult.WORKER_LOST}  # the worker's, not sip's


def trees(*packages: str) -> list[tuple[Path, ast.AST]]:
    return [
        (path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for package in packages
        for path in sorted((ROOT / package).rglob("*.py"))
    ]


def members_named(enum: type[StrEnum]) -> set[str]:
    """`Enum.MEMBER` as written anywhere in bridge/ and sip/."""
    return {
        node.attr
        for _, tree in trees("bridge", "sip")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == enum.__name__
    }


def test_the_label_tuples_are_the_enums_values() -> None:
    for enum, labels in LABELS:
        assert labels == tuple(member.value for member in enum), enum.__name__


def test_every_declared_value_but_the_fallback_is_produced() -> None:
    for enum, _ in LABELS:
        declared = {member.name for member in enum} - {FALLBACK}
        assert members_named(enum) == declared, enum.__name__


def test_the_sip_layer_writes_no_label_value_as_a_string() -> None:
    sip_values = {
        member.value
        for enum, _ in LABELS
        for member in enum
        if member.name != FALLBACK and member not in BY_BRIDGE
    }
    found = []
    for path, tree in trees("sip"):
        definitions = {
            id(node.value)
            for cls in ast.walk(tree)
            if isinstance(cls, ast.ClassDef)
            for node in cls.body
            if isinstance(node, ast.Assign)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in sip_values and id(node) not in definitions:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert found == [], "use the enum member: " + ", ".join(found)


def test_what_the_rules_return_is_declared() -> None:
    for marker, _ in DROPPED_MESSAGE_MARKERS:
        reason = dropped_reason(f"Error: {marker} from 127.0.0.1:5060")
        assert reason is not None and reason.value in metrics.SIP_DROP_REASONS
    reclaims = [unacked(0.0, 10.0, 5.0)]
    for packets, first, timeout in ((0, 1.0, 100.0), (5, 100.0, 1.0)):
        watch = RtpWatch(changed=0.0, packets=packets, seen=packets > 0, expected=True)
        reclaims.append(watch.update(packets, 0, 50.0, first, timeout)[2])
    assert {r.cause.value for r in reclaims if r is not None} == set(metrics.RECLAIM_CAUSES)


def gate_statuses() -> set[int]:
    """The status of every `Reject(...)` the admission rules build."""
    statuses = set()
    for name in ("admission.py", "screening.py"):
        tree = ast.parse((ROOT / "sip" / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Reject":
                status = node.args[0]
                assert isinstance(status, ast.Constant) and isinstance(status.value, int)
                statuses.add(status.value)
    return statuses


def test_invite_codes_are_the_codes_the_workers_count() -> None:
    # pjsua's 200 to an admitted INVITE, counted at call start; a route's reject: status (sip.routing)
    sent = gate_statuses() | set(REJECT_STATUSES) | {200}
    assert 400 in sent  # a malformed INVITE is counted under its own code, not as "4xx"
    assert set(metrics.INVITE_CODES) == {str(code) for code in sent}

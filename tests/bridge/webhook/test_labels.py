"""The webhook's metric labels have one source: every value the webhook code can emit is a declared
label value of `bridge.metrics`, and every declared value can be emitted."""

from __future__ import annotations

import ast
from pathlib import Path

from bridge import metrics
from bridge.webhook import policy, queue

PACKAGE = Path(policy.__file__).parent


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return f"<{type(node).__name__}>"


def _observer_arguments(method: str) -> list[str]:
    """The first argument, as written, of every ``self._observer.<method>(...)`` in bridge/webhook."""
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == method
                and _dotted(node.func.value) == "self._observer"
            ):
                found.append(_dotted(node.args[0]))
    return found


def _emitted_outcomes() -> set[str]:
    emitted: set[str] = set()
    for argument in _observer_arguments("attempt"):
        if argument.startswith("policy.Outcome."):
            emitted.add(policy.Outcome[argument.removeprefix("policy.Outcome.")].value)
        elif argument == "answer.outcome":  # queue.answer: policy.outcome of the HTTP status
            emitted.update(policy.outcome(status).value for status in range(1000))
        else:
            raise AssertionError(f"observer.attempt({argument}): not a policy.Outcome member")
    return emitted


def _emitted_drop_reasons() -> set[str]:
    emitted: set[str] = set()
    for argument in _observer_arguments("dropped"):
        if not argument.startswith("queue.DropReason."):
            raise AssertionError(f"observer.dropped({argument}): not a queue.DropReason member")
        emitted.add(queue.DropReason[argument.removeprefix("queue.DropReason.")].value)
    return emitted


def test_every_emitted_outcome_is_declared_and_every_declared_one_is_emitted() -> None:
    emitted = _emitted_outcomes()
    assert emitted <= set(metrics.WEBHOOK_OUTCOMES), emitted - set(metrics.WEBHOOK_OUTCOMES)
    assert set(metrics.WEBHOOK_OUTCOMES) <= emitted, set(metrics.WEBHOOK_OUTCOMES) - emitted
    assert "other" in emitted  # a 3xx (redirects are not followed)


def test_every_emitted_drop_reason_is_declared_and_every_declared_one_is_emitted() -> None:
    emitted = _emitted_drop_reasons()
    declared = set(metrics.WEBHOOK_DROP_REASONS)
    assert emitted <= declared, emitted - declared
    assert declared - {metrics.OTHER} <= emitted, declared - {metrics.OTHER} - emitted


def test_the_label_tuples_are_the_enums() -> None:
    assert metrics.WEBHOOK_OUTCOMES == tuple(policy.Outcome)
    assert metrics.WEBHOOK_DROP_REASONS == (*queue.DropReason, metrics.OTHER)
    assert "spooled" not in metrics.WEBHOOK_OUTCOMES  # declared once, never emitted

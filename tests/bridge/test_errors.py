"""The error tree of bridge/errors.py: every class in it is used by the code it is for, and the tree in
its docstring is the tree of classes."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from bridge import errors

ROOT = Path(__file__).parents[2]


def error_classes() -> dict[str, type[BaseException]]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, errors.BridgeError) and cls.__module__ == errors.__name__
    }


def test_every_error_class_is_used_outside_errors_py_and_tests() -> None:
    """Named (raised, caught, tested for, subclassed) somewhere in bridge/ or sip/; an unused import
    would fail ruff."""
    text = "\n".join(
        path.read_text(encoding="utf-8")
        for package in ("bridge", "sip")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "bridge" / "errors.py"
    )
    unused = [name for name in error_classes() if not re.search(rf"\b{name}\b", text)]
    assert unused == [], "error classes nothing raises or catches: use them or remove them"


def test_the_docstring_tree_names_every_class() -> None:
    doc = errors.__doc__ or ""
    tree = {m.group(1) for m in re.finditer(r"[├└]── (\w+)|^\s{4}(\w+)", doc, re.M) if m.group(1)}
    assert set(error_classes()) - {"BridgeError"} <= tree

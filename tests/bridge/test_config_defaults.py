"""Defaults live only in bridge/config.py: code elsewhere that carries its own copy of a config default
drifts the day the config's changes.

A copy is, outside bridge/config.py (in bridge/, sip/, standin/):
- a ``DEFAULT_<WORDS>`` constant whose words name a config field (``DEFAULT_CLAIM_INTERVAL`` and
  ``webhook.claim_interval_seconds``) and whose value is that field's default;
- a class field or parameter named like a config field (``backoff_initial_seconds``) whose default is
  a literal or a constant not imported from bridge.config (empty defaults, None and False aside).
A default may instead be defined in sip/ (which may not import bridge/) when bridge/config.py takes it
from there (``DEFAULT_SIPREC_ORDER = siprec.DEFAULT_ORDER``): that constant is the origin, and fields
of its own module that use it are no copies. Copies with a reason to stay are listed in KNOWN; the
test fails on a new copy and on a listed one that is gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from bridge.config import Config

ROOT = Path(__file__).parents[2]
PACKAGES = ("bridge", "sip", "standin")

KNOWN: dict[str, str] = {
    # The stand-in is another program (it serves V-Blaze's API): its host and recognizer threads are
    # its own, equal to the bridge's by chance.
    "standin/server.py:DEFAULT_HOST": "the stand-in's own option",
    "standin/recognizer.py:DEFAULT_WORKERS": "the stand-in's own option",
}


def config_defaults() -> dict[str, list[tuple[str, Any]]]:
    """field name -> [(section, default)] over every section."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for section, info in Config.model_fields.items():
        if section == "routes":  # no defaults of its own: it overrides the sections' keys
            continue
        cls = info.annotation
        assert cls is not None
        for name, field in cls.model_fields.items():
            out.setdefault(name, []).append((section, field.default))
    return out


def literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ...


def imported_from_config(tree: ast.AST) -> set[str]:
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "bridge.config"
        for alias in node.names
    }


def origins_in_sip() -> dict[str, set[str]]:
    """module path -> the sip/ constants bridge/config.py takes its defaults from (``siprec.DEFAULT_X``)."""
    tree = ast.parse((ROOT / "bridge" / "config.py").read_text(encoding="utf-8"))
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            out.setdefault(f"sip/{node.value.id}.py", set()).add(node.attr)
    return out


def copies(path: Path, tree: ast.AST, defaults: dict[str, list[tuple[str, Any]]]) -> list[str]:
    found = []
    rel = path.relative_to(ROOT).as_posix()
    origins = origins_in_sip().get(rel, set())
    from_config = imported_from_config(tree) | origins
    words = {name: set(name.split("_")) - {"seconds"} for name in defaults}

    def copied_default(name: str, value: ast.expr) -> bool:
        if name not in defaults or "_" not in name:  # host, port, headers: too common to mean the key
            return False
        if isinstance(value, ast.Name) and value.id in from_config:
            return False
        return literal(value) not in ((), None, False, "", {}) and not isinstance(value, ast.Call)

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.startswith("DEFAULT_") and name not in origins:
                mine = set(name.lower().split("_")[1:])
                value = literal(node.value)
                if any(
                    mine <= words[field] and any(value == default for _, default in defaults[field])
                    for field in defaults
                ):
                    found.append(f"{rel}:{name}")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if copied_default(node.target.id, node.value):
                found.append(f"{rel}:{node.target.id}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            found += [f"{rel}:{a.arg}" for a, d in pairs if copied_default(a.arg, d)]
    return found


def all_copies() -> set[str]:
    defaults = config_defaults()
    found: set[str] = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "bridge" / "config.py":
                continue
            found.update(copies(path, ast.parse(path.read_text(encoding="utf-8")), defaults))
    return found


def test_no_config_default_is_copied_outside_config_py() -> None:
    found = all_copies()
    assert found - set(KNOWN) == set(), "config defaults copied: import bridge.config's DEFAULT_* instead"
    assert set(KNOWN) - found == set(), "listed as copies but gone: drop them from KNOWN"


def test_the_check_sees_a_copy() -> None:
    defaults = config_defaults()
    tree = ast.parse(
        "from bridge.config import DEFAULT_DRAIN_SECONDS\n"
        "DEFAULT_REPLAY = 15.0\n"
        "def f(buffer_seconds: float = 60.0, timeout_seconds: float = DEFAULT_DRAIN_SECONDS) -> None: ...\n"
    )
    assert copies(ROOT / "x.py", tree, defaults) == ["x.py:DEFAULT_REPLAY", "x.py:buffer_seconds"]

"""Every config key is read by the code it configures: a key that is validated and then ignored (as
webhook.spool_warn_fraction and webhook.claim_interval_seconds once were) fails here.

A field counts as read where the package (outside bridge/config.py) accesses it on a section object:
``<anything>.<section>.<field>`` (``self.cfg.webhook.urls``), or ``<name>.<field>`` / ``getattr(<name>,
"<field>")`` where ``<name>`` is a parameter annotated with the section's class or a variable assigned
``<anything>.<section>``. Reading a same-named attribute of another object does not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import BaseModel

from bridge.config import Config

ROOT = Path(__file__).parents[2]
PACKAGES = ("bridge", "sip")

# Fields read in bridge/config.py itself count if the method reading them (not a validator) is read
# outside config.py, e.g. SiprecConfig.rules() (see `through_methods`).
ALLOWED_UNREAD: dict[tuple[str, str], str] = {}


def sections() -> dict[str, type[BaseModel]]:
    out = {}
    for name, info in Config.model_fields.items():
        if name == "routes":  # a list of overrides of the sections; tests/bridge/test_routes_config.py
            continue
        annotation = info.annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), name
        out[name] = annotation
    return out


def annotation_names(node: ast.expr | None) -> set[str]:
    if node is None:
        return set()
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {part.strip() for part in node.value.replace("|", " ").split()}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def reads(tree: ast.AST, secs: dict[str, type[BaseModel]]) -> set[tuple[str, str]]:
    by_class = {cls.__name__: name for name, cls in secs.items()}
    found: set[tuple[str, str]] = set()
    bound: dict[str, str] = {}  # variable name -> section, over the whole module (names are distinct enough)
    bound_attrs: dict[str, str] = {}  # `self.<name>` -> section
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            for name in annotation_names(node.annotation):
                if name in by_class:
                    bound[node.arg] = by_class[name]
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            section = None
            if isinstance(value, ast.Attribute) and value.attr in secs:
                section = value.attr
            elif isinstance(value, ast.Name) and value.id in bound:
                section = bound[value.id]
            if section is None:
                continue
            for target in targets:
                if isinstance(target, ast.Name):
                    bound[target.id] = section
                elif isinstance(target, ast.Attribute):
                    bound_attrs[target.attr] = section
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if isinstance(owner, ast.Attribute) and owner.attr in secs:
                found.add((owner.attr, node.attr))
            elif isinstance(owner, ast.Attribute) and owner.attr in bound_attrs:
                found.add((bound_attrs[owner.attr], node.attr))
            elif isinstance(owner, ast.Name) and owner.id in bound:
                found.add((bound[owner.id], node.attr))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in bound
            and isinstance(node.args[1], ast.Constant)
        ):
            found.add((bound[node.args[0].id], str(node.args[1].value)))
    return found


def package_reads() -> set[tuple[str, str]]:
    secs = sections()
    found: set[tuple[str, str]] = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "bridge" / "config.py":
                continue
            found |= reads(ast.parse(path.read_text(encoding="utf-8"), str(path)), secs)
    return found


def through_methods() -> dict[tuple[str, str], set[str]]:
    """(section, field) -> the methods of its section class in config.py that read ``self.<field>``,
    validators excepted."""
    by_class = {cls.__name__: name for name, cls in sections().items()}
    tree = ast.parse((ROOT / "bridge" / "config.py").read_text(encoding="utf-8"))
    out: dict[tuple[str, str], set[str]] = {}
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef) or cls.name not in by_class:
            continue
        for fn in cls.body:
            if not isinstance(fn, ast.FunctionDef) or any(
                "validator" in ast.unparse(d) for d in fn.decorator_list
            ):
                continue
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    out.setdefault((by_class[cls.name], node.attr), set()).add(fn.name)
    return out


def test_every_config_field_is_read_outside_config_py() -> None:
    found = package_reads()
    methods = through_methods()
    unread = []
    for section, cls in sections().items():
        for field in cls.model_fields:
            key = (section, field)
            if key in found or key in ALLOWED_UNREAD:
                continue
            if any((section, method) in found for method in methods.get(key, ())):
                continue
            unread.append(f"{section}.{field}")
    assert unread == [], f"validated but never read: {', '.join(unread)}"


def test_the_check_sees_a_field_read_only_under_another_name() -> None:
    """The defect this test exists for: WebhookSettings has fields named like the config's, so a
    plain grep for `.claim_interval_seconds` would pass while the config key was dropped."""
    secs = sections()
    dropped = ast.parse(
        "def from_config(config: WebhookConfig) -> None:\n"
        "    settings.claim_interval_seconds\n"
        "    return Settings(urls=config.urls)\n"
    )
    assert reads(dropped, secs) == {("webhook", "urls")}
    kept = ast.parse("def run(self) -> None:\n    w = self.cfg.webhook\n    w.claim_interval_seconds\n")
    assert reads(kept, secs) == {("webhook", "claim_interval_seconds")}

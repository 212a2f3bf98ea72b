"""Event payloads: the builders (bridge/event_data.py), bridge/webhook/schema.json and the docs say the same.

- Every key a builder's TypedDict declares is a property of the schema object it fills, and the
  reverse; the schema requires nothing a builder may leave out.
- What the builders return for a plain call, a SIPREC call (stereo and streams) and a lost call is
  valid against the schema made strict (no property the schema does not name), so a key added in
  code only (a stream role's, a SIPREC session's) fails too.
- Every key the event sections of docs/webhook.md and README.md name is produced by a builder (or is
  a value the schema or the metrics declare), and docs/webhook.md names every key produced.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints, is_typeddict

import jsonschema
import pytest

from bridge import event_data, metrics
from bridge.events import BridgeEvent
from bridge.supervision import RestartReason
from bridge.vblaze.protocol import Gap, Utterance, Word
from bridge.webhook import payload
from sip.events import CallStarted, SiprecSession
from sip.siprec import Participant, StreamRole

ROOT = Path(__file__).parents[2]
SCHEMA: dict[str, Any] = json.loads(payload.SCHEMA_PATH.read_text())
DEFS: dict[str, Any] = SCHEMA["$defs"]

# Each TypedDict a builder returns, and the schema object (a path under $defs) it fills.
SHAPES: dict[str, type] = {
    "call_started": event_data.CallStartedData,
    "utterance": event_data.UtteranceData,
    "utterance/latency": event_data.LatencyData,
    "word": event_data.WordData,
    "dtmf": event_data.DtmfData,
    "call_ended": event_data.CallEndedData,
    "call_ended/gaps/items": event_data.GapData,
    "call_ended/engine_finals/items": event_data.EngineFinalData,
    "stream_transcripts": event_data.StreamTranscriptsData,
    "stream_transcripts/streams/items": event_data.StreamTranscriptData,
    "call_paused": event_data.PausedData,
    "call_resumed": event_data.ResumedData,
    "recording": event_data.RecordingData,
    "recording_file": event_data.RecordingFileData,
    "recording_gap": event_data.RecordingGapData,
}


def at(path: str) -> dict[str, Any]:
    """The schema object at `path` ("call_ended/gaps/items": $defs.call_ended, property gaps, items)."""
    first, *rest = path.split("/")
    node = DEFS[first]
    for part in rest:
        node = node[part] if part == "items" else node["properties"][part]
    return dict(node)


def keys(shape: type) -> set[str]:
    return set(shape.__required_keys__) | set(shape.__optional_keys__)  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", sorted(SHAPES))
def test_every_key_a_builder_declares_is_in_the_schema_and_the_reverse(path: str) -> None:
    shape, node = SHAPES[path], at(path)
    declared, named = keys(shape), set(node.get("properties", {}))
    assert declared - named == set(), f"{shape.__name__} builds keys schema.json's {path} does not name"
    assert named - declared == set(), f"schema.json's {path} names keys no builder ({shape.__name__}) makes"
    may_omit = set(shape.__optional_keys__)  # type: ignore[attr-defined]
    assert may_omit & set(node.get("required", [])) == set(), f"{path} requires keys a builder may leave out"


def nested_shapes(shape: type) -> Iterator[type]:
    """The TypedDicts `shape` holds (for the check that SHAPES misses none)."""
    for hint in get_type_hints(shape).values():
        stack = [hint]
        while stack:
            item = stack.pop()
            if is_typeddict(item):
                yield item
            stack += [a for a in get_args(item) if a is not Ellipsis] if get_origin(item) else []


def test_every_typed_payload_is_checked() -> None:
    checked = set(SHAPES.values())
    for shape in list(checked):
        assert set(nested_shapes(shape)) <= checked, shape.__name__
    built = {v for v in vars(event_data).values() if is_typeddict(v)}
    assert built <= checked, f"not compared with schema.json: {sorted(s.__name__ for s in built - checked)}"


# --- what the builders return, against the schema made strict ---------------------------------------

STRICT_DEFS = [*SHAPES, "participant", "stream_role", "siprec"]


def strict_schema() -> dict[str, Any]:
    schema = copy.deepcopy(SCHEMA)
    for path in STRICT_DEFS:
        first, *rest = path.split("/")
        node = schema["$defs"][first]
        for part in rest:
            node = node[part] if part == "items" else node["properties"][part]
        node["additionalProperties"] = False
    return schema


VALIDATOR = jsonschema.Draft202012Validator(strict_schema(), format_checker=jsonschema.FormatChecker())
CALLER = Participant("p-1", aor="sip:+15551230001@carrier.example", name="Customer")
AGENT = Participant("p-2", aor="sip:2001@pbx.example", name=None)
ROLES = (
    StreamRole(0, "1", "sendonly", "caller", 0, "metadata: E.164", (CALLER,), "s-1", "metadata"),
    StreamRole(1, "2", "sendonly", "agent", 1, "metadata: extension", (AGENT,), "s-2", "metadata"),
)
SESSION = SiprecSession(("content-type",), ROLES, ("sess",), "grp", ("no group",), ("preamble",))
WORDS = (Word("hello", 0.5, 0.9, 0.9), Word("there", 1.0, 1.4, None))
UTT = Utterance("hello there", WORDS, 0.5, 1.4, 0.85, 1, {"utterance": {"start": 0.5}}, 12.0)
FINAL = {"stream": 0, "offset": 0.0, "transcript": "hello there"}  # a final document in text form
GAPS = (Gap(3.0, 1.5, "buffer_overflow"),)


def started(siprec: SiprecSession | None) -> CallStarted:
    return CallStarted(1, "c@h", "sip:a@h", "sip:b@h", "192.0.2.1:5060", (("X-Id", "7"),), ("PCMU",), siprec)


def built_events() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(what, type, data): every payload shape the builders make."""
    for what, siprec, delivery in (("plain", None, "mono"), ("stereo", SESSION, "stereo")):
        yield (
            what,
            "call.started",
            event_data.as_data(event_data.call_started(started(siprec), 0.0, 1, delivery)),
        )
    yield (
        "streams",
        "call.started",
        event_data.as_data(event_data.call_started(started(SESSION), 0.0, 0, "streams")),
    )
    yield "before audio", "utterance", event_data.as_data(event_data.utterance(UTT, None))
    yield "plain", "utterance", event_data.as_data(event_data.utterance(UTT, 0.61))
    yield "stereo", "utterance", event_data.as_data(event_data.utterance(UTT, 0.61, True, ROLES[1]))
    yield "streams", "utterance", event_data.as_data(event_data.utterance(UTT, 0.61, True, ROLES[0], 0))
    yield "unknown role", "utterance", event_data.as_data(event_data.utterance(UTT, 0.61, True, None, 1))
    yield "plain", "dtmf", event_data.as_data(event_data.dtmf("5", 2.25))
    yield "api", "call.paused", event_data.as_data(event_data.paused(3.5, "api:desk", "card number"))
    yield "dtmf", "call.paused", event_data.as_data(event_data.paused(3.5, "dtmf", None))
    yield "auto", "call.resumed", event_data.as_data(event_data.resumed(9.5, "auto", 6.0))
    gaps = [event_data.gap(g) for g in GAPS]
    finals = [event_data.engine_final(FINAL)]
    plain = event_data.call_ended("remote_bye", 9.0, 8.5, 1, None, gaps, finals)
    yield "plain", "call.ended", event_data.as_data(plain)
    stereo = event_data.call_ended("remote_bye", 9.0, 8.5, 1, None, gaps, finals, ROLES, 1)
    yield "stereo", "call.ended", event_data.as_data(stereo)
    per_stream = event_data.call_ended(
        "remote_bye",
        9.0,
        8.5,
        2,
        {"streams": [event_data.stream_transcript(i, r, None) for i, r in enumerate(ROLES)]},
        [event_data.gap(g, 1) for g in GAPS],
        [event_data.engine_final(FINAL, 1)],
        ROLES,
    )
    yield "streams", "call.ended", event_data.as_data(per_stream)
    yield "lost", "call.ended", event_data.as_data(event_data.lost_call_ended(100.0, 130.0, 2, 12.5))
    file = event_data.recording_file("var/recordings/c.wav", 8.5, 136044, "ab" * 32, 1, [(3.0, 0.5)])
    for what, rec in (
        ("recorded", event_data.recording([file], None, False)),
        ("rec failed", event_data.recording([], "engine refused scrubaudio", False)),
        ("rec streams", event_data.recording([{**file, "stream": 0}, {**file, "stream": 1}], None, True)),
    ):
        ended = event_data.call_ended("remote_bye", 9.0, 8.5, 1, None, gaps, finals, recording=rec)
        yield what, "call.ended", event_data.as_data(ended)


@pytest.mark.parametrize(("what", "kind", "data"), list(built_events()), ids=lambda v: str(v)[:12])
def test_what_the_builders_return_is_valid_against_the_strict_schema(
    what: str, kind: str, data: dict[str, Any]
) -> None:
    event = payload.envelope(BridgeEvent(kind, "c@h", 0, 1.0, data))  # type: ignore[arg-type]
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(event)]
    assert errors == [], f"{what} {kind}"


OPAQUE = ("engine", "headers")  # the engine's own JSON, SIP header names: not our keys


def produced_keys() -> set[str]:
    """Every key anywhere in a builder's output (a SIPREC session's and stream roles' included)."""
    found: set[str] = set()

    def walk(value: Any, opaque: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if not opaque:
                    found.add(key)
                walk(item, opaque or key in OPAQUE)
        elif isinstance(value, list):
            for item in value:
                walk(item, opaque)

    for _, _, data in built_events():
        walk(data, False)
    return found


# --- the docs -------------------------------------------------------------------------------------


def declared_values() -> set[str]:
    """Values, not keys, that the docs may name: the schema's enums and documented value lists, and the
    label values of the metrics the docs point to (gap causes)."""
    values: set[str] = set(metrics.GAP_CAUSES) | set(SCHEMA["properties"]["type"]["enum"]) | {"null"}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            values.update(str(v) for v in node.get("enum", []))
            if "const" in node:
                values.add(str(node["const"]))
            values.update(re.findall(r"[a-z][a-z0-9_]+", node.get("description", "")))
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(DEFS)
    return values


def webhook_md_data_section() -> str:
    text = (ROOT / "docs" / "webhook.md").read_text()
    start = text.index("\n", text.index("`data` by type:"))
    return text[start : text.index("**The complete transcript.**")]


def readme_event_rows() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Events and the webhook") :]
    return "\n".join(line for line in section.splitlines() if re.match(r"\| `(call\.|utterance|dtmf)", line))


def named_keys(text: str) -> set[str]:
    """Names the docs give as keys: backticked words (``codecs``), brace lists in backticks
    (``{word, start, end}``), keys of JSON fragments; config keys (``sip.headers``) are not event keys."""
    names: set[str] = set()
    for token in re.findall(r"`([^`]+)`", text):
        token = token.strip()
        if re.fullmatch(r"[a-z][a-z0-9_.]*(: .*)?", token) and ("." in token or ":" in token):
            continue  # a config key, or a key with its value (`siprec.delivery: streams`)
        names.update(re.findall(r"\b[a-z][a-z0-9_]*\b", token))
    return names


@pytest.mark.parametrize("doc", ["docs/webhook.md", "README.md"])
def test_every_key_the_docs_name_is_produced(doc: str) -> None:
    text = webhook_md_data_section() if doc == "docs/webhook.md" else readme_event_rows()
    assert text.strip()
    unknown = named_keys(text) - produced_keys() - declared_values()
    assert unknown == set(), f"{doc} names event keys no builder produces"


def test_docs_webhook_md_names_every_key_produced() -> None:
    missing = produced_keys() - named_keys(webhook_md_data_section())
    assert missing == set(), "docs/webhook.md does not describe these event keys"


# --- label values: what producers can emit is declared, and what is declared can be emitted -----------


def python_files(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_restart_reasons_are_the_supervisors_enum() -> None:
    assert metrics.RESTART_REASONS == tuple(r.value for r in RestartReason)


def test_every_restart_reason_is_produced_and_no_producer_copies_one() -> None:
    """The supervisor (bridge/app.py, rules in bridge/supervision.py) names reasons only as
    `RestartReason` members, and names every member somewhere outside the enum itself."""
    used: set[str] = set()
    copied = []
    values = set(metrics.RESTART_REASONS)
    for path in (ROOT / "bridge" / "app.py", ROOT / "bridge" / "supervision.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "RestartReason":
                node.body = []  # its own definition does not count
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "RestartReason":
                    used.add(RestartReason[node.attr].value)
            elif isinstance(node, (ast.Return, ast.Assign)) and isinstance(node.value, ast.Constant):
                if node.value.value in values:
                    copied.append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Tuple) and any(
                isinstance(e, ast.Constant) and e.value in values for e in node.elts
            ):
                copied.append(f"{path.name}:{node.lineno}")
    assert copied == [], "restart reasons written as strings instead of RestartReason members"
    assert used >= values, f"declared, never produced: {sorted(values - used)}"


def frames_dropped_causes() -> tuple[set[str], list[str]]:
    """The causes passed to a frame-drop counter (`frames_dropped(n, cause)`, or the callback given it,
    named `*dropped`) anywhere in bridge/ and sip/, and the calls whose cause is not a literal."""
    causes: set[str] = set()
    unknown = []
    for path in python_files("bridge", "sip"):
        if path.name == "metrics.py" or "webhook" in path.parts:  # webhook drops: WEBHOOK_DROP_REASONS
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or len(node.args) != 2:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if not name.endswith("dropped"):
                continue
            cause = node.args[1]
            if isinstance(cause, ast.Constant) and isinstance(cause.value, str):
                causes.add(cause.value)
            else:
                unknown.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return causes, unknown


def test_every_drop_cause_is_emitted_and_declared() -> None:
    emitted, unknown = frames_dropped_causes()
    assert unknown == [], "frames dropped with a cause the check cannot read"
    assert emitted, "no producer found: the check no longer sees them"
    assert emitted - set(metrics.DROP_CAUSES) == set(), "emitted but not a declared label value"
    assert set(metrics.DROP_CAUSES) - emitted == set(), "declared but no producer emits it"


@pytest.mark.parametrize(
    ("metric", "label", "values"),
    [
        ("vblaze_bridge_worker_restarts_total", "reason", metrics.RESTART_REASONS),
        ("vblaze_bridge_audio_frames_dropped_total", "cause", metrics.DROP_CAUSES),
        ("vblaze_bridge_recordings_total", "result", metrics.RECORDING_RESULTS),
    ],
)
def test_docs_operations_md_lists_the_label_values(metric: str, label: str, values: tuple[str, ...]) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith(f"| `{metric}` |")]
    listed = re.search(rf"`{label}`: ([^|]*)\|", row)
    assert listed is not None, row
    named = re.sub(r"\([^)]*\)", "", listed.group(1))
    assert {v.strip() for v in named.split(",")} == set(values)

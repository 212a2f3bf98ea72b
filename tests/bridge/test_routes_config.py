"""The `routes:` section: validation naming the dotted key, the effective config of each route, the
sample's commented example, and what the SIP layer is given of each route (every key is used)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import ROUTE_OVERRIDES, Config, load_config, parse_config
from bridge.errors import ConfigError
from bridge.sip_adapter import route_table, sip_settings
from sip.message import parse_request
from sip.routing import DEFAULT_ROUTE, RequestFacts, facts_of
from tests.fixtures.fuzz import FUZZ

SHIPPED = Path(__file__).resolve().parents[2] / "bridge" / "assets" / "config.yaml"
TWO = {
    "engine": {"tags": {"model": "eng1:callcenter", "vadtype": "level"}},
    "routes": [
        {"name": "sales", "match": {"to": "1001"}, "engine": {"tags": {"model": "eng1:sales"}}},
        {
            "name": "support",
            "match": {"to": "2002", "header": {"name": "X-Queue", "regex": "es"}},
            "engine": {"url": "ws://127.0.0.2:17171/transcribe", "tags": {"model": "spa1:support"}},
            "sip": {"headers": ["X-Queue"]},
            "siprec": {"order": ["mline"]},
        },
        {"name": "default", "reject": 404},
    ],
}


def route(**keys: Any) -> dict[str, Any]:
    return {"routes": [{"name": "r", "match": {"to": "1"}, **keys}]}


@pytest.mark.parametrize(
    ("raw", "key", "expected"),
    [
        (route(match={"to": "("}), "routes.0.match.to", "is not a regex"),
        (route(match={"from": "[a"}), "routes.0.match.from", "is not a regex"),
        (route(match={"participant": "*"}), "routes.0.match.participant", "is not a regex"),
        (route(match={"header": {"name": "X-Q", "regex": "("}}), "routes.0.match.header.regex", "regex"),
        (route(match={"header": {"name": "X Q", "regex": "a"}}), "routes.0.match.header.name", "pattern"),
        (route(match={"source": ["10.0.0.0/33"]}), "routes.0.match.source", "is not a CIDR"),
        (route(match={"did": "1"}), "routes.0.match.did", "unknown key"),
        (route(bogus={"x": 1}), "routes.0.bogus", "unknown key"),
        (route(engine={"datahdr": "WAVE"}), "routes.0.engine.datahdr", "unknown key"),
        (route(siprec={"accept_require": False}), "routes.0.siprec.accept_require", "unknown key"),
        (route(engine={"url": "http://x"}), "routes.0.engine.url", "ws://"),
        (route(engine={"tags": {"samprate": 8000}}), "routes.0.engine.tags", "set by the bridge"),
        (route(engine="fast"), "routes.0.engine", "mapping"),
        (route(sink={"kind": "webhook"}), "routes.0", "webhook.urls is empty"),
        (route(reject=400), "routes.0.reject", "403, 404, 480, 486, 503, 603"),
        ({"routes": [{"name": "Sales!"}]}, "routes.0.name", "lower-case"),
        ({"routes": [{"name": "none"}]}, "routes.0.name", "not 'none'"),
        ({"routes": [{"match": {"to": "1"}}]}, "routes.0.name", "Field required"),
        (
            {"routes": [{"name": "a", "match": {"to": "1"}}, {"name": "a", "match": {"to": "2"}}]},
            "routes.1.name",
            "duplicate route name 'a' (routes.0)",
        ),
        (
            {"routes": [{"name": "a", "match": {"to": "1"}}, {"name": "all"}, {"name": "b", "reject": 404}]},
            "routes.2",
            "routes.1 ('all') catches every call",
        ),
        (
            {"routes": [{"name": "default", "reject": 404}, {"name": "b", "match": {"to": "2"}}]},
            "routes.1",
            "catches every call",
        ),
        (
            {"routes": [{"name": "default", "match": {"to": "2"}}]},
            "routes.0.match",
            "the default route catches every call",
        ),
        (
            {
                "sink": {"kind": "webhook"},
                "webhook": {"urls": ["http://a/"]},
                "routes": [{"name": "x", "webhook": {"urls": ["http://a/"], "secret_env": "OTHER"}}],
            },
            "routes.0.webhook.urls",
            "signed otherwise in webhook",
        ),
    ],
)
def test_one_error_naming_the_dotted_key(raw: dict[str, Any], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "f.yaml")
    message = str(info.value)
    assert message.startswith(f"f.yaml: {key}: "), message
    assert expected in message and len(message.splitlines()) == 1, message


def test_each_route_has_its_effective_config() -> None:
    config = parse_config(TWO)
    sales, support = config.for_route("sales"), config.for_route("support")
    assert sales.engine.tags == {**config.engine.tags, "model": "eng1:sales"}  # merged over the top level
    assert sales.engine.url == config.engine.url and sales.sip == config.sip
    assert support.engine.url == "ws://127.0.0.2:17171/transcribe"
    assert support.engine.tags["model"] == "spa1:support" and support.engine.tags["vadtype"] == "level"
    assert support.sip.headers == ("X-Queue",) and support.siprec.order == ("mline",)
    assert config.for_route(DEFAULT_ROUTE).engine.tags == {**config.engine.tags}
    assert config.for_route("gone") is config  # a name no route has: the top level
    assert sales.for_route("sales") is sales  # an effective config has no routes of its own
    assert sales.routes == ()


def test_with_routes_keeps_the_other_sections() -> None:
    config = parse_config({**TWO, "drain": {"timeout_seconds": 3}})
    fresh = parse_config({"routes": [{"name": "sales", "match": {"to": "3003"}}]})
    updated = config.with_routes(fresh.routes)
    assert updated.drain.timeout_seconds == 3 and [r.name for r in updated.routes] == ["sales"]
    assert updated.for_route("sales").engine.tags == config.engine.tags


def test_every_overridable_section_is_a_section() -> None:
    for section, keys in ROUTE_OVERRIDES.items():
        fields = Config.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
        assert set(keys or fields) <= set(fields), section


def test_the_samples_commented_example_loads(tmp_path: Path) -> None:
    text = SHIPPED.read_text()
    assert load_config(SHIPPED).routes == ()  # the sample itself has no routes (it equals the defaults)
    block = text[text.index("# routes:\n") :]
    example = "\n".join(re.sub(r"^# ?", "", line) for line in block.splitlines() if line.startswith("#"))
    raw = yaml.safe_load(example)
    config = parse_config(raw)
    assert [r.name for r in config.routes] == ["sales", "support", "collections", "recorder", "default"]
    path = tmp_path / "routes.yaml"
    path.write_text(example)
    assert load_config(path).for_route("sales").sink.kind == "webhook"


def facts(**keys: Any) -> RequestFacts:
    return RequestFacts(**keys)


def test_the_sip_layer_gets_every_key_of_each_route() -> None:
    config = parse_config(
        {
            "sip": {"headers": ["X-Top"]},
            "routes": [
                {"name": "to", "match": {"to": "1"}},
                {"name": "from", "match": {"from": "2"}},
                {"name": "ruri", "match": {"ruri": "3"}},
                {"name": "source", "match": {"source": ["10.0.0.0/8"]}},
                {"name": "header", "match": {"header": {"name": "X-Queue", "regex": "^q"}}},
                {"name": "participant", "match": {"participant": "sip:p@x"}},
                {"name": "headers", "match": {"to": "7"}, "sip": {"headers": ["X-Mine"]}},
                {"name": "siprec", "match": {"to": "8"}, "siprec": {"order": ["label"]}},
                {"name": "rest", "reject": 603},
            ],
        }
    )
    table = route_table(config)
    assert sip_settings(config).routes == table
    cases = {
        "to": facts(to_user="1"),
        "from": facts(from_user="2"),
        "ruri": facts(ruri_user="3"),
        "source": facts(source_ip="10.9.9.9"),
        "header": facts(headers=(("x-queue", "q1"),)),
        "participant": facts(participant_aors=("sip:p@x",)),
        "rest": facts(),
    }
    for name, fact in cases.items():
        assert table.choose(fact).name == name
    assert table.choose(facts()).refusal() is not None and table.choose(facts()).reject == 603
    by_name = {r.name: r for r in table.routes}
    assert by_name["headers"].headers == ("X-Mine",) and by_name["to"].headers == ("X-Top",)
    assert by_name["siprec"].siprec_rules.order == ("label",)
    assert table.fallback.headers == ("X-Top",) and table.names[-1] == "rest"


def test_a_request_to_the_table() -> None:
    table = route_table(parse_config(TWO))
    raw = (
        "INVITE sip:2002@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:2002@h>\r\nX-Queue: es-1\r\n"
        "Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert table.choose(facts_of(parse_request(raw), "127.0.0.1")).name == "support"
    assert table.choose(facts_of(parse_request(raw.replace("es-1", "en")), "127.0.0.1")).reject == 404


def test_the_readmes_example_loads() -> None:
    readme = (SHIPPED.parents[2] / "README.md").read_text()
    section = readme[readme.index("## Routes") :]
    example = section[section.index("```yaml\n") + 8 : section.index("```\n", section.index("```yaml"))]
    config = parse_config(yaml.safe_load(example))
    assert [r.name for r in config.routes] == ["sales", "support", "collections", "default"]
    assert config.for_route("support").engine.tags["model"] == "spa1:support"
    table = route_table(config)
    assert table.choose(RequestFacts(from_user="+15550001", source_ip="10.1.2.3")).name == "collections"
    assert table.choose(RequestFacts(to_user="2003", headers=(("x-queue", "es-1"),))).name == "support"
    assert table.choose(RequestFacts(to_user="2003")).reject == 404


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 700)
    | st.text(max_size=12)
    | st.sampled_from(["(", "1001", "10.0.0.0/8"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [
        "name",
        "match",
        "reject",
        "engine",
        "sink",
        "webhook",
        "sip",
        "siprec",
        "bogus",
        "to",
        "from",
        "tags",
        "url",
    ]
)
ROUTES = st.lists(
    st.dictionaries(KEYS, VALUES | st.dictionaries(KEYS, VALUES, max_size=3), max_size=5), max_size=4
)


@settings(FUZZ, max_examples=60)  # each example validates a whole config per route
@given(ROUTES)
def test_random_routes_load_or_fail_naming_a_routes_key(routes: list[dict[str, Any]]) -> None:
    try:
        config = parse_config({"routes": routes}, "f.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("f.yaml: routes"), str(exc)  # (random keys may hold newlines)
        return
    table = route_table(config)  # what loads is a table the SIP layer can use
    assert table.choose(RequestFacts()).name in table.names
    for route in config.routes:
        assert config.for_route(route.name).routes == ()

"""The nats section: defaults, the sink kinds that use it, route overrides, checks naming the keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import Config, parse_config
from bridge.errors import ConfigError
from bridge.route_sinks import RouteSinks

SERVERS = {"servers": ["nats://127.0.0.1:4222"]}


def config(**sections: Any) -> Config:
    return parse_config(sections)


def test_defaults_and_destinations() -> None:
    c = config(sink={"kind": "nats"}, nats=SERVERS)
    assert c.sink.destinations == ("nats",)
    assert (c.nats.stream, c.nats.subject_prefix, c.nats.replicas) == ("VBLAZE", "vblaze", 1)
    both = config(sink={"kind": "webhook", "also_nats": True}, webhook={"urls": ["http://x/"]}, nats=SERVERS)
    assert both.sink.destinations == ("webhook", "nats")
    assert RouteSinks.destinations(both, "sales") == ["http://x/", "nats:VBLAZE:vblaze:sales"]
    assert config().sink.destinations == ()


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"sink": {"kind": "nats"}}, "nats.servers is empty"),
        ({"sink": {"kind": "jsonl", "also_nats": True}, "nats": SERVERS}, "sink.also_nats"),
        ({"nats": {"servers": ["http://x"]}}, "nats.servers"),
        ({"nats": {"stream": "a.b"}}, "nats.stream"),
        ({"nats": {"subject_prefix": "v*"}}, "nats.subject_prefix"),
        ({"nats": {"replicas": 7}}, "nats.replicas"),
        ({"nats": {"creds_file": "a", "nkey_seed_file": "b"}}, "at most one"),
        ({"nats": {"tls_cert_file": "a"}}, "nats.tls_cert_file and nats.tls_key_file"),
        ({"nats": {"password": "x"}}, "nats.password: unknown key"),
    ],
)
def test_bad_settings_name_the_key(sections: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("*", r"\*")):
        parse_config(sections)


def test_a_route_may_publish_to_its_own_stream_next_to_its_webhook() -> None:
    c = config(
        nats=SERVERS,
        routes=[
            {
                "name": "sales",
                "match": {"to": "1"},
                "sink": {"kind": "webhook", "also_nats": True},
                "webhook": {"urls": ["http://crm/"]},
                "nats": {"stream": "SALES", "subject_prefix": "sales"},
            }
        ],
    )
    assert RouteSinks.destinations(c.for_route("sales"), "sales") == ["http://crm/", "nats:SALES:sales:sales"]
    with pytest.raises(ConfigError, match=r"routes\.0\.nats\.replicas"):
        config(nats=SERVERS, routes=[{"name": "a", "match": {"to": "1"}, "nats": {"replicas": 3}}])


def test_streams_may_not_share_subjects() -> None:
    route = {"name": "a", "match": {"to": "1"}, "sink": {"kind": "nats"}, "nats": {"stream": "OTHER"}}
    with pytest.raises(ConfigError, match="streams may not share subjects"):
        config(sink={"kind": "nats"}, nats=SERVERS, routes=[route])


def test_the_sample_config_loads_with_nats(tmp_path: Path) -> None:
    sample = (Path(__file__).parents[3] / "bridge" / "assets" / "config.yaml").read_text()
    path = tmp_path / "c.yaml"
    path.write_text(
        sample.replace("kind: jsonl", "kind: nats").replace("servers: []", 'servers: ["nats://h:4222"]')
    )
    from bridge.config import load_config

    assert load_config(path).sink.kind == "nats"


def test_check_config_warns_of_an_unreadable_credentials_file(tmp_path: Path) -> None:
    from bridge.cli_check import secret_warnings

    c = config(sink={"kind": "nats"}, nats={**SERVERS, "creds_file": str(tmp_path / "absent.creds")})
    assert any(w.startswith("nats.creds_file: cannot read") for w in secret_warnings(c, {}))

"""A worker's `reload`: it re-reads its file and takes the routes for new calls; a file it cannot load
(changed again after the supervisor checked it) keeps the old routes, logged with the dotted key."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml

from bridge import metrics
from bridge.config import parse_config
from bridge.route_sinks import RouteSinks
from bridge.sip_adapter import route_table
from bridge.worker import Worker
from sip.routing import RouteTable


class Endpoint:
    def __init__(self) -> None:
        self.tables: list[RouteTable] = []

    def set_routes(self, table: RouteTable) -> None:
        self.tables.append(table)


def worker(tmp_path: Path, raw: dict[str, object]) -> tuple[Worker, Endpoint, Path]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = parse_config(raw)
    made = Worker.__new__(Worker)  # only what a reload uses: no SIP endpoint, no control channel
    made.cfg, made.config_path, made.sinks = config, str(path), RouteSinks(config)
    made._route_names = set(route_table(config).names)
    made._effective = {name: config.for_route(name) for name in made._route_names}
    made._loop = asyncio.get_running_loop()
    made._reload_lock = asyncio.Lock()
    made.endpoint = endpoint = Endpoint()  # type: ignore[assignment]
    return made, endpoint, path


async def test_a_reload_takes_the_files_routes_and_keeps_the_rest(tmp_path: Path) -> None:
    raw: dict[str, object] = {
        "sink": {"kind": "jsonl", "jsonl_path": str(tmp_path / "top.jsonl")},
        "drain": {"timeout_seconds": 3},
        "routes": [{"name": "sales", "match": {"to": "1001"}}],
    }
    made, endpoint, path = worker(tmp_path, raw)
    before = made.cfg.for_route("sales")
    raw["drain"] = {"timeout_seconds": 9}
    raw["routes"] = [
        {"name": "support", "match": {"to": "2002"}, "sink": {"jsonl_path": str(tmp_path / "s.jsonl")}}
    ]
    path.write_text(yaml.safe_dump(raw))
    await made._reload()
    (table,) = endpoint.tables
    assert table.names == ("support", "default") and made._route_names >= {"sales", "support"}
    assert made.cfg.drain.timeout_seconds == 3  # only routes are reloaded
    assert made._effective["sales"] is before  # a call admitted by the old routes still finds its own
    assert made._effective["support"] is made.cfg.for_route("support")
    assert made.cfg.for_route("support").sink.jsonl_path == str(tmp_path / "s.jsonl")
    assert str(tmp_path / "s.jsonl") in made.sinks.jsonl  # its sink made for the new calls
    assert before.sink.jsonl_path in made.sinks.jsonl  # the old one kept for the calls in progress
    assert metrics.CALLS.labels("completed", "support")._value.get() == 0  # its series exists
    await made.sinks.aclose(1.0)


async def test_a_file_broken_since_the_supervisors_check_keeps_the_old_routes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    made, endpoint, path = worker(tmp_path, {"routes": [{"name": "sales", "match": {"to": "1001"}}]})
    path.write_text("routes:\n  - name: sales\n    match: {to: '('}\n")
    with caplog.at_level(logging.ERROR, "bridge.worker"):
        await made._reload()
    assert endpoint.tables == [] and [r.name for r in made.cfg.routes] == ["sales"]
    assert "reload refused, the old routes stay" in caplog.text and "routes.0.match.to" in caplog.text
    await made.sinks.aclose(1.0)

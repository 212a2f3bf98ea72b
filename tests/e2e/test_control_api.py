"""The control API against a live pool (2 workers, the stand-in over a real WebSocket, real SIP calls):
authentication, every error path (the supervisor and the workers live on: same PIDs, no restart), a
worker that does not answer (503 in time, never a hang), the CLI clients, and a schemathesis run of
the OpenAPI document.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from bridge.control import server as control_server
from tests.e2e.conftest import Bridge, end_bridge, new_bridge, run_standin
from tests.fixtures.control import call_api, held_call
from tests.fixtures.harness import free_port_block, wait_until

TOKEN = "desk-token-0123456789abcdef"
OTHER = "ops-token-fedcba9876543210"
TOKEN_ENV = "VBLAZE_TEST_CONTROL_TOKEN_DESK"
OTHER_ENV = "VBLAZE_TEST_CONTROL_TOKEN_OPS"
TOKENS = [{"name": "desk", "env": TOKEN_ENV}, {"name": "ops", "env": OTHER_ENV}]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bridge, int]]:
    engine = run_standin("--recognizer", "vad-only", "--max-streams", "16")
    port = free_port_block(1, low=28000, high=29000)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TOKEN_ENV, TOKEN)
        env.setenv(OTHER_ENV, OTHER)
        bridge = new_bridge(
            tmp_path_factory.mktemp("control"),
            0,
            engine.url,
            workers=2,
            control={"port": port, "tokens": TOKENS, "timeout_seconds": 0.5},
            pause={"reason_max_length": 20},
            metrics={"port": free_port_block(1, low=29000, high=30000)},
        )
        try:
            wait_until(lambda: call_api(port, "GET", "/v1/calls", TOKEN).status == 200, 20, "control API up")
            yield bridge, port
        finally:
            end_bridge(bridge)
            engine.stop()


def pids(bridge: Bridge) -> tuple[int, int, int]:
    assert bridge.proc is not None and bridge.proc.poll() is None
    return bridge.proc.pid, bridge.worker_pid(0), bridge.worker_pid(1)


def events_of(bridge: Bridge, call_id: str) -> list[dict[str, Any]]:
    return bridge.calls().get(call_id, [])


def restarts(bridge: Bridge) -> float:
    """Worker restarts the supervisor counted, all reasons."""
    port = yaml.safe_load(bridge.config_path.read_text())["metrics"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r"^vblaze_bridge_worker_restarts_total\{[^}]*\} (\S+)$", text, re.M)
    assert found, "no restart counter in the scrape"
    return sum(float(value) for value in found)


def lived_on(bridge: Bridge, before: tuple[int, int, int]) -> None:
    assert pids(bridge) == before
    assert restarts(bridge) == 0
    log = bridge.log()
    assert "starting it again" not in log, log[-2000:]
    assert TOKEN not in log and OTHER not in log  # the tokens never reach a log


ENDPOINTS = [
    ("GET", "/v1/calls"),
    ("GET", "/v1/calls/{id}"),
    ("POST", "/v1/calls/{id}/pause"),
    ("POST", "/v1/calls/{id}/resume"),
    ("POST", "/v1/calls/{id}/hangup"),
]


def test_every_endpoint_refuses_a_missing_or_wrong_token_and_does_nothing(pool: tuple[Bridge, int]) -> None:
    bridge, port = pool
    before = pids(bridge)
    with held_call(bridge.sip_port) as call:
        wait_until(
            lambda: call_api(port, "GET", f"/v1/calls/{call.call_id}", TOKEN).status == 200, 10, "call"
        )
        for method, path in ENDPOINTS:
            for auth in (
                None,
                f"Bearer {TOKEN}x",
                f"Bearer {TOKEN[:-1]}",
                f"Basic {TOKEN}",
                TOKEN,
                "Bearer ",
            ):
                body = {"reason": "card"} if path.endswith("pause") else None
                answer = call_api(port, method, path.format(id=call.call_id), body=body, authorization=auth)
                assert answer.status == 401, (method, path, auth, answer)
                assert answer.headers.get("WWW-Authenticate") == "Bearer"
                assert TOKEN not in str(answer.body)
        state = call_api(port, "GET", f"/v1/calls/{call.call_id}", OTHER)  # the other token works too
        assert (
            state.status == 200 and state.body["call"]["paused"] is False and not state.body["call"]["ending"]
        )
        kinds = [e["kind"] for e in events_of(bridge, call.call_id)]
        assert "call.paused" not in kinds and "call.ended" not in kinds
    lived_on(bridge, before)


def engine_of(port: int, path: str) -> object:
    """The call's engine streams' states as the API lists them, or None while it is not listed."""
    answer = call_api(port, "GET", path, TOKEN)
    return answer.body["call"]["engine"] if answer.status == 200 else None


def test_the_api_controls_a_call_and_every_error_leaves_the_pool_alive(pool: tuple[Bridge, int]) -> None:
    bridge, port = pool
    before = pids(bridge)
    with held_call(bridge.sip_port) as call:
        path = f"/v1/calls/{call.call_id}"
        # Listed as soon as SIP answers; its engine stream is "connecting" until the WebSocket is up.
        wait_until(lambda: engine_of(port, path) == ["streaming"], 10, "call listed, streaming")
        (listed,) = [
            c for c in call_api(port, "GET", "/v1/calls", TOKEN).body["calls"] if c["call_id"] == call.call_id
        ]
        assert listed["worker"] == 0 and listed["route"] == "default" and listed["paused"] is False
        assert listed["from"].startswith("<sip:tester@") and listed["engine"] == ["streaming"]
        first = call_api(port, "POST", f"{path}/pause", TOKEN, {"reason": "card number"})
        assert (first.status, first.body["changed"], first.body["call"]["paused_by"]) == (
            200,
            True,
            "api:desk",
        )
        again = call_api(port, "POST", f"{path}/pause", OTHER, {"reason": "again"})
        assert (again.status, again.body["changed"]) == (200, False)  # idempotent: no second event
        for body, field in (
            (b"{", "body"),
            (b"[]", "body"),
            (b'{"reason": 5}', "reason"),
            (b'{"reason": "' + b"x" * 21 + b'"}', "reason"),  # beyond the call's pause.reason_max_length
            (b'{"why": "x"}', "why"),
        ):
            bad = call_api(port, "POST", f"{path}/pause", TOKEN, body)
            assert (bad.status, bad.body["field"]) == (400, field), (body, bad)
        assert call_api(port, "POST", f"{path}/resume", TOKEN, {"reason": "x"}).status == 400
        assert call_api(port, "POST", f"{path}/resume", TOKEN).body["changed"] is True
        assert call_api(port, "POST", f"{path}/resume", TOKEN).body["changed"] is False
        for method, template in ENDPOINTS[1:]:
            assert call_api(port, method, template.format(id="no-such-call%40x"), TOKEN).status == 404
        assert call_api(port, "GET", "/v1/nothing", TOKEN).status == 404
        huge = call_api(port, "POST", f"{path}/pause", TOKEN, b'{"reason": "' + b"x" * 20_000 + b'"}')
        assert (huge.status, huge.body["field"]) == (413, "body")
        wrong = call_api(port, "DELETE", path, TOKEN)
        assert wrong.status == 405 and "error" in wrong.body

        # A worker that does not answer: 503 within the bound, never a hang; the call's own worker answers.
        silent = bridge.worker_pid(1)
        os.kill(silent, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert call_api(port, "GET", "/v1/calls", TOKEN).status == 503
            assert call_api(port, "GET", "/v1/calls/no-such-call", TOKEN).status == 503
            assert call_api(port, "GET", path, TOKEN).status == 200
            assert time.monotonic() - started < 2.0  # three requests of at most 0.5 s each
        finally:
            os.kill(silent, signal.SIGCONT)

        # The CLI clients, against the same live pool.
        env = {**os.environ, "VBLAZE_CONTROL_TOKEN": TOKEN}
        cli = [sys.executable, "-m", "bridge"]
        config = ["--config", str(bridge.config_path)]
        listed_cli = subprocess.run(
            [*cli, "calls", *config], capture_output=True, text=True, env=env, check=False
        )
        assert listed_cli.returncode == 0 and call.call_id in listed_cli.stdout, listed_cli.stderr
        paused = subprocess.run(
            [*cli, "pause", call.call_id, "--reason", "card", *config],
            capture_output=True,
            text=True,
            env=env,
        )
        assert paused.returncode == 0 and '"changed": true' in paused.stdout, paused
        resumed = subprocess.run(
            [*cli, "resume", call.call_id, *config], capture_output=True, text=True, env=env
        )
        assert resumed.returncode == 0, resumed
        unknown = subprocess.run([*cli, "hangup", "nope", *config], capture_output=True, text=True, env=env)
        assert unknown.returncode == 1 and "404" in unknown.stderr
        no_token = subprocess.run(
            [*cli, "calls", *config], capture_output=True, text=True, env={**env, "VBLAZE_CONTROL_TOKEN": ""}
        )
        assert no_token.returncode == 2 and "VBLAZE_CONTROL_TOKEN" in no_token.stderr
        hung = subprocess.run(
            [*cli, "hangup", call.call_id, *config], capture_output=True, text=True, env=env
        )
        assert hung.returncode == 0, hung
        wait_until(
            lambda: any(e["kind"] == "call.ended" for e in events_of(bridge, call.call_id)), 20, "hung up"
        )
    events = events_of(bridge, call.call_id)
    control = [(e["kind"], e["data"]["by"]) for e in events if e["kind"] in ("call.paused", "call.resumed")]
    assert control == [("call.paused", "api:desk"), ("call.resumed", "api:desk")] * 2
    assert [e["data"]["reason"] for e in events if e["kind"] == "call.paused"] == ["card number", "card"]
    assert [e["seq"] for e in events] == list(range(len(events)))
    ended = events[-1]["data"]
    assert ended["reason"] == "local_hangup"
    assert [g["cause"] for g in ended["gaps"]] == ["paused", "paused"]
    lived_on(bridge, before)


def test_a_token_whose_variable_is_unset_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    port = free_port_block(1, low=28000, high=29000)
    config.write_text(
        yaml.safe_dump({"control": {"port": port, "tokens": [{"name": "desk", "env": "VBLAZE_TEST_UNSET"}]}})
    )
    env = {k: v for k, v in os.environ.items() if k != "VBLAZE_TEST_UNSET"}
    run = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert run.returncode == 2
    assert "control.tokens.0.env: environment variable VBLAZE_TEST_UNSET" in run.stderr


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_spec(pool: tuple[Bridge, int]) -> None:
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    bridge, port = pool
    before = pids(bridge)
    schema = schemathesis.openapi.from_path(str(control_server.OPENAPI))
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    base = f"http://127.0.0.1:{port}"
    requests_before = bridge.log().count("control ")
    with held_call(bridge.sip_port) as call:
        wait_until(
            lambda: call_api(port, "GET", f"/v1/calls/{call.call_id}", TOKEN).status == 200, 10, "call"
        )
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/v1/events":
                continue  # an endless stream by design: tests/e2e/test_monitor.py reads it
            modes = [GenerationMode.POSITIVE]
            if "{" in operation.path:  # something to get wrong: the Call-ID, the body
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:

                @settings(
                    max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
                )
                @given(case=operation.as_strategy(mode))
                def run(case: Any) -> None:
                    case.call_and_validate(
                        base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks
                    )

                run()
        state = call_api(port, "GET", f"/v1/calls/{call.call_id}", TOKEN)
        assert state.status == 200  # random Call-IDs never reached the real call
    assert bridge.log().count("control ") - requests_before > 150  # the examples did reach the API
    lived_on(bridge, before)


def test_a_call_of_a_draining_pool_can_still_be_paused(
    make_bridge: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After SIGTERM the calls go on for drain.timeout_seconds: they stay listed and pausable."""
    engine = run_standin("--recognizer", "vad-only")
    try:
        port = free_port_block(1, low=28000, high=29000)
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        bridge = make_bridge(
            engine.url, control={"port": port, "tokens": TOKENS[:1]}, drain={"timeout_seconds": 20}
        )
        with held_call(bridge.sip_port) as call:
            path = f"/v1/calls/{call.call_id}"
            wait_until(lambda: call_api(port, "GET", path, TOKEN).status == 200, 20, "call listed")
            assert bridge.proc is not None
            bridge.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: "draining" in bridge.log(), 10, "the worker drains")
            answer = call_api(port, "POST", f"{path}/pause", TOKEN, {"reason": "card"})
            assert answer.status == 200 and answer.body["changed"], answer
            assert call_api(port, "POST", f"{path}/hangup", TOKEN).status == 200
            wait_until(
                lambda: any(e["kind"] == "call.ended" for e in events_of(bridge, call.call_id)), 20, "ended"
            )
        kinds = [e["kind"] for e in events_of(bridge, call.call_id)]
        assert kinds.index("call.paused") < kinds.index("call.ended")
        assert bridge.proc.wait(timeout=30) == 0
    finally:
        engine.stop()

"""Per-line routes end to end, with real peers: sipp callers to two DIDs reach the stand-in with their
route's tags and their events reach their route's webhook receiver; an unknown DID gets the route's
404 from the same worker, which goes on taking calls; SIGHUP switches new calls to new routes while a
call in progress keeps its own, and a broken file keeps the old routes (same processes); a SIPREC
call takes the route its participant's AOR matches, with that route's SIPREC rules."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bridge.webhook.receiver import SECRET, Answer, Receiver
from tests.e2e.conftest import Bridge, SippResult, Standin, free_port_block, run_sipp, speech
from tests.e2e.test_bad_input import metric, scrape
from tests.e2e.test_siprec import AGENT_TEXT, CALLER_TEXT
from tests.e2e.test_webhook_call import ThreadedReceiver
from tests.fixtures import rawsip
from tests.fixtures.audio import speech_wav
from tests.fixtures.harness import wait_until
from tests.fixtures.siprec_caller import run_siprec_call

SENTENCE = "Please send the invoice for order four seven two nine to my office."


@pytest.fixture
def receiver_a(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("VBLAZE_BRIDGE_WEBHOOK_SECRET", SECRET.decode())
    with ThreadedReceiver(lambda request: Answer()) as running:
        yield running


@pytest.fixture(scope="module")
def voices() -> tuple[Path, Path]:
    """The caller's and the agent's recordings of a SIPREC call (as tests/e2e/test_siprec.py's)."""
    return (
        speech_wav(CALLER_TEXT, voice="en-us", encoding="u-law"),
        speech_wav(AGENT_TEXT, voice="en-gb+f3", encoding="u-law"),
    )


@pytest.fixture
def receiver_b() -> Iterator[Receiver]:
    with ThreadedReceiver(lambda request: Answer()) as running:
        yield running


def write_routes(bridge: Bridge, routes: list[dict[str, Any]] | str) -> None:
    """Put `routes` (or, as a string, raw YAML for it) into the bridge's config file."""
    config = yaml.safe_load(bridge.config_path.read_text())
    if isinstance(routes, str):
        config.pop("routes", None)
        bridge.config_path.write_text(yaml.safe_dump(config) + routes)
    else:
        config["routes"] = routes
        bridge.config_path.write_text(yaml.safe_dump(config))


def route(name: str, did: str, model: str, receiver: Receiver) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"to": did},
        "engine": {"tags": {"model": model}},
        "webhook": {"urls": [receiver.url]},
    }


def routed_bridge(
    make_bridge: Any, standin: Standin, default: Receiver, routes: list[dict[str, Any]], metrics_port: int = 0
) -> Bridge:
    bridge: Bridge = make_bridge(
        standin.url,
        start=False,
        metrics={"port": metrics_port},
        sink={"kind": "webhook"},
        webhook={"urls": [default.url], "backoff_initial_seconds": 0.1, "backoff_max_seconds": 1.0},
    )
    write_routes(bridge, routes)
    bridge.start()
    return bridge


def stream_tags(standin: Standin) -> dict[str, dict[str, str]]:
    """requestid (the SIP Call-ID) -> the tags the stand-in was given, from its /status."""
    url = standin.url.replace("ws://", "http://").rsplit("/", 1)[0] + "/status"
    with urllib.request.urlopen(url, timeout=5) as answer:
        status = json.load(answer)["status"]
    return {item["requestid"]: item["tags"] for item in status["recent"]}


def calls_of(receiver: Receiver) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for envelope in receiver.processed:
        out.setdefault(envelope["call_id"], []).append(envelope)
    return out


def ended(receiver: Receiver, count: int) -> bool:
    return sum(env["type"] == "call.ended" for env in receiver.processed) >= count


def started_route(receiver: Receiver, call_id: str) -> str:
    (started,) = [e for e in calls_of(receiver)[call_id] if e["type"] == "call.started"]
    return str(started["data"]["route"])


def call(bridge: Bridge, audio: Path, workdir: Path, did: str, hold_ms: int = 4500) -> SippResult:
    result = run_sipp(bridge.sip_port, audio, workdir, hold_ms=hold_ms, service=did)
    assert result.returncode == 0, result.stdout
    return result


def refused_unknown_did(bridge: Bridge) -> int | None:
    message = rawsip.invite(bridge.sip_port).replace(b"sip:svc@", b"sip:9999@")
    reply = rawsip.send(bridge.sip_port, message)
    return None if reply is None else reply.status


@pytest.mark.slow
def test_two_routes_end_to_end_and_an_unknown_did_refused(
    standin_vad: Standin,
    make_bridge: Any,
    receiver_a: Receiver,
    receiver_b: Receiver,
    speech_dir: Path,
    tmp_path: Path,
) -> None:
    routes = [
        route("sales", "1001", "eng1:sales", receiver_a),
        route("support", "2002", "spa1:support", receiver_b),
        {"name": "default", "reject": 404},
    ]
    port = free_port_block(1, low=29000, high=30000)
    bridge = routed_bridge(make_bridge, standin_vad, receiver_a, routes, port)
    audio = speech(SENTENCE, speech_dir, "routes")
    pid = bridge.worker_pid()
    call(bridge, audio, tmp_path, "1001")
    call(bridge, audio, tmp_path, "2002")
    wait_until(
        lambda: ended(receiver_a, 1) and ended(receiver_b, 1), 60, "both calls ended at their receivers"
    )
    (sales,) = calls_of(receiver_a)  # receiver A has the sales call only, B the support call only
    (support,) = calls_of(receiver_b)
    assert started_route(receiver_a, sales) == "sales" and started_route(receiver_b, support) == "support"
    for receiver, call_id in ((receiver_a, sales), (receiver_b, support)):
        events = calls_of(receiver)[call_id]
        assert [e["seq"] for e in events] == list(range(len(events)))  # in order, nothing missing
        assert all(r.signature_ok for r in receiver.requests)
    tags = stream_tags(standin_vad)
    assert tags[sales]["model"] == "eng1:sales" and tags[support]["model"] == "spa1:support"
    assert tags[sales]["vadtype"] == "level"  # the route's tags are merged over engine.tags

    assert refused_unknown_did(bridge) == 404
    assert "404 Not Found (route default rejects)" in bridge.log()
    assert bridge.worker_pid() == pid  # the same worker, which still takes calls
    call(bridge, audio, tmp_path, "1001")
    wait_until(lambda: ended(receiver_a, 2), 60, "the next sales call ended at receiver A")
    assert len(calls_of(receiver_b)) == 1 and bridge.worker_pid() == pid
    text = scrape(port)  # the route label: each route's calls, and the refusal by the default route
    assert metric(text, "vblaze_bridge_calls_total", 'result="completed",route="sales"') == 2
    assert metric(text, "vblaze_bridge_calls_total", 'result="completed",route="support"') == 1
    assert metric(text, "vblaze_bridge_calls_total", 'result="rejected_route",route="default"') == 1
    assert metric(text, "vblaze_bridge_invite_responses_total", 'code="404"') == 1
    assert metric(text, "vblaze_bridge_worker_restarts_total", 'reason="exit"') == 0


@pytest.mark.slow
def test_sighup_new_calls_get_new_routes_calls_in_progress_keep_theirs_broken_files_are_refused(
    standin_vad: Standin,
    make_bridge: Any,
    receiver_a: Receiver,
    receiver_b: Receiver,
    speech_dir: Path,
    tmp_path: Path,
) -> None:
    bridge = routed_bridge(
        make_bridge, standin_vad, receiver_a, [route("sales", "1001", "eng1:sales", receiver_a)]
    )
    assert bridge.proc is not None
    supervisor, worker = bridge.proc.pid, bridge.worker_pid()
    audio = speech(SENTENCE, speech_dir, "routes")
    long_call: list[SippResult] = []
    caller = threading.Thread(
        target=lambda: long_call.append(call(bridge, audio, tmp_path, "1001", hold_ms=12_000)), daemon=True
    )
    caller.start()
    wait_until(lambda: len(calls_of(receiver_a)) == 1, 20, "the long call started on route sales")
    (in_progress,) = calls_of(receiver_a)

    write_routes(bridge, [route("sales2", "1001", "eng1:new", receiver_b), {"name": "rest", "reject": 480}])
    config = yaml.safe_load(bridge.config_path.read_text())
    config["drain"]["timeout_seconds"] = 7  # not a route: ignored by the reload, and said so
    bridge.config_path.write_text(yaml.safe_dump(config))
    bridge.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: "reload: routes now sales2, rest" in bridge.log(), 10, "the worker took the new routes"
    )
    call(bridge, audio, tmp_path, "1001")
    wait_until(lambda: ended(receiver_b, 1), 60, "the new call ended at receiver B")
    assert "only routes are reloaded; changes to drain are ignored until a restart" in bridge.log()
    (new,) = calls_of(receiver_b)
    assert started_route(receiver_b, new) == "sales2"
    caller.join(60)
    wait_until(lambda: ended(receiver_a, 1), 60, "the call in progress ended at its own receiver")
    assert in_progress not in calls_of(receiver_b)  # its events all went to its route's receiver
    tags = stream_tags(standin_vad)
    assert tags[in_progress]["model"] == "eng1:sales" and tags[new]["model"] == "eng1:new"
    assert refused_unknown_did(bridge) == 480

    write_routes(bridge, '\nroutes:\n  - name: sales3\n    match: {to: "("}\n')
    bridge.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "routes.0.match.to" in bridge.log(), 10, "the broken file refused, naming the key")
    assert "config refused, the workers keep their routes" in bridge.log()
    unsigned = route("sales4", "1001", "eng1:unsigned", receiver_a)  # a route that could not sign its events
    unsigned["webhook"] = {"urls": ["http://127.0.0.1:9/unsigned"], "secret_env": "VBLAZE_TEST_UNSET_SECRET"}
    write_routes(bridge, [unsigned])
    bridge.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: (
            "routes.sales4: webhook.secret_env: environment variable VBLAZE_TEST_UNSET_SECRET" in bridge.log()
        ),
        10,
        "the route whose secret is unset refused, naming it",
    )
    time.sleep(0.5)
    call(bridge, audio, tmp_path, "1001")  # the old (reloaded) routes are still in force
    wait_until(lambda: ended(receiver_b, 2), 60, "the call after the broken file ended at receiver B")
    assert all(started_route(receiver_b, c) == "sales2" for c in calls_of(receiver_b))
    assert bridge.proc.poll() is None and bridge.proc.pid == supervisor and bridge.worker_pid() == worker


@pytest.mark.slow
def test_a_siprec_call_routed_by_its_participant_with_the_routes_siprec_rules(
    standin_vad: Standin, make_bridge: Any, receiver_a: Receiver, voices: tuple[Path, Path]
) -> None:
    recorder = {
        "name": "recorder",
        "match": {"participant": r"sip:\+1555.*@carrier\.example\.net"},
        "engine": {"tags": {"model": "eng1:srs"}},
        "siprec": {"order": ["mline"], "mline_order": ["agent", "caller"]},  # a guess, on purpose
        "webhook": {"urls": [receiver_a.url]},
    }
    bridge = routed_bridge(make_bridge, standin_vad, receiver_a, [recorder, {"name": "rest", "reject": 404}])
    result = run_siprec_call(bridge.sip_port, voices[0], voices[1], metadata_style="rfc")
    assert result.status == 200 and result.bye_status == 200, result.invite_response
    wait_until(lambda: ended(receiver_a, 1), 60, "the SIPREC call ended at the recorder's receiver")
    (started,) = [e for e in receiver_a.processed if e["type"] == "call.started"]
    assert started["call_id"] == result.call_id and started["data"]["route"] == "recorder"
    roles = started["data"]["siprec"]["roles"]
    assert [(r["role"], r["decided_by"]) for r in roles] == [("agent", "mline"), ("caller", "mline")]
    assert stream_tags(standin_vad)[result.call_id]["model"] == "eng1:srs"
    assert refused_unknown_did(bridge) == 404  # no participant: not the recorder's

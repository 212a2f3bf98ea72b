"""Metric names, bounded labels, and the multiprocess aggregation rendered and checked by promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge import metrics
from bridge.errors import MetricsDirInUse
from bridge.vblaze.buffer import GapCause
from bridge.vblaze.session import ConnectCause, LostCause
from bridge.webhook.policy import outcome

REPO = Path(__file__).resolve().parents[2]

WORKER_SCRIPT = textwrap.dedent(
    """
    import sys
    from bridge import metrics as m
    from bridge.webhook.policy import outcome
    n = int(sys.argv[1])
    m.WorkerMetrics().started(4)
    calls = m.CallMetrics()
    for _ in range(n):
        calls.invite_response(100)
        calls.invite_response(200)
        calls.call_answered()
    calls.call_ended("completed")
    calls.call_rejected("rejected_full")
    calls.invite_response(503)
    calls.invite_response(415)
    calls.audio_in(50, 5.0)
    calls.frames_dropped(2, "buffer_full")
    engine = m.EngineMetrics()
    engine.connected()
    engine.connect_failed("timeout")
    engine.connect_failed("a free-text error that must not become a label")
    engine.reconnected()
    engine.frame_sent(3200, 0.0008)
    engine.utterance(1.3)
    engine.gap(2.5, "buffer_overflow")
    engine.connection_lost("send_timeout")
    hook = m.WebhookMetrics()
    hook.attempt("ok", 0.02)
    hook.attempt(outcome(503), 0.01)
    hook.sent(0.002)
    hook.delivered(0.04)
    hook.spool_depth(n)
    hook.spool_size(1000 * n, 4096)
    hook.rejected(404)
    hook.dropped("spool_full")
    print("done", flush=True)
    """
)


def _run_worker(directory: Path, n: int) -> None:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(directory), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, str(n)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    # The real worker runs on; here the process is gone, but nobody marked it dead, so its live gauges count.


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    directory = metrics.setup_multiprocess_dir(tmp_path / "prom")
    _run_worker(directory, 1)
    _run_worker(directory, 2)
    return directory


def test_engine_gauges_are_absent_before_the_first_probe(pool: Path) -> None:
    sup = metrics.SupervisorMetrics()
    sup.set_state(ready=False, draining=False)
    names = {name for name, _ in _samples(generate_latest(metrics.registry_for_scrape(pool, sup)).decode())}
    assert "vblaze_bridge_ready" in names
    assert not {"vblaze_bridge_engine_up", "vblaze_bridge_engine_full"} & names


def test_pool_scrape_sums_two_workers(pool: Path) -> None:
    sup = metrics.SupervisorMetrics()
    sup.worker_restarted("exit", calls_lost=3)
    sup.set_state(ready=True, draining=False, engine_reachable=False, engine_full=True)
    text = generate_latest(metrics.registry_for_scrape(pool, sup)).decode()
    s = _samples(text)
    assert s[("vblaze_bridge_calls_active", ())] == 1 + 2 - 2  # one call ended in each process
    assert s[("vblaze_bridge_capacity_calls", ())] == 8
    assert s[("vblaze_bridge_workers_up", ())] == 2
    assert s[("vblaze_bridge_calls_total", (("result", "completed"), ("route", "default")))] == 2
    assert s[("vblaze_bridge_calls_total", (("result", "rejected_full"), ("route", "none")))] == 2
    assert s[("vblaze_bridge_calls_total", (("result", "worker_lost"), ("route", "none")))] == 3
    assert s[("vblaze_bridge_invite_responses_total", (("code", "200"),))] == 3
    assert s[("vblaze_bridge_invite_responses_total", (("code", "4xx"),))] == 2
    assert s[("vblaze_bridge_engine_connect_failures_total", (("cause", "other"),))] == 2
    assert s[("vblaze_bridge_engine_connect_failures_total", (("cause", "timeout"),))] == 2
    assert s[("vblaze_bridge_webhook_attempts_total", (("outcome", "http_5xx"),))] == 2
    assert s[("vblaze_bridge_audio_seconds_total", ())] == 10.0
    assert s[("vblaze_bridge_audio_gap_seconds_total", (("cause", "buffer_overflow"),))] == 5.0
    assert s[("vblaze_bridge_engine_streams_lost_total", (("cause", "send_timeout"),))] == 2
    assert s[("vblaze_bridge_webhook_spool_events", ())] == 3
    assert s[("vblaze_bridge_webhook_events_rejected_total", ())] == 2
    assert s[("vblaze_bridge_webhook_events_dropped_total", (("reason", "spool_full"),))] == 2
    assert s[("vblaze_bridge_worker_restarts_total", (("reason", "exit"),))] == 1
    assert s[("vblaze_bridge_ready", ())] == 1
    assert s[("vblaze_bridge_draining", ())] == 0
    assert s[("vblaze_bridge_engine_up", ())] == 0
    assert s[("vblaze_bridge_engine_full", ())] == 1
    # One spool file shared by the workers: the pool's size is the largest any of them saw, not a sum.
    assert s[("vblaze_bridge_webhook_spool_bytes", ())] == 2000
    assert s[("vblaze_bridge_webhook_spool_limit_bytes", ())] == 4096
    for hist in (
        "audio_to_socket",
        "speech_end_to_utterance",
        "utterance_to_webhook_sent",
        "utterance_to_webhook_ack",
    ):
        assert s[(f"vblaze_bridge_{hist}_seconds_count", ())] == 2, hist
    assert s[("vblaze_bridge_audio_to_socket_seconds_bucket", (("le", "0.001"),))] == 2
    assert s[("vblaze_bridge_speech_end_to_utterance_seconds_bucket", (("le", "1.0"),))] == 0
    assert s[("vblaze_bridge_speech_end_to_utterance_seconds_bucket", (("le", "1.5"),))] == 2


def test_mark_process_dead_drops_live_gauges_only(tmp_path: Path) -> None:
    directory = metrics.setup_multiprocess_dir(tmp_path / "prom")
    _run_worker(directory, 2)
    pids = {p.stem.rsplit("_", 1)[-1] for p in directory.glob("gauge_livesum_*.db")}
    assert len(pids) == 1
    assert metrics.read_pool_gauges(directory) == metrics.PoolGauges(calls_active=1, capacity=4, workers_up=1)
    assert metrics.retire_process(int(pids.pop()), directory) == 1
    assert metrics.read_pool_gauges(directory) == metrics.PoolGauges(0, 0, 0)
    assert metrics.retire_process(999_999_999, directory) == 0
    s = _samples(generate_latest(metrics.registry_for_scrape(directory)).decode())
    assert s[("vblaze_bridge_calls_total", (("result", "completed"), ("route", "default")))] == 1


def test_setup_empties_an_old_directory(tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"stale")
    metrics.setup_multiprocess_dir(directory)
    assert [p.name for p in directory.iterdir()] == [".owner"]
    assert os.environ[metrics.MULTIPROC_ENV] == str(directory)


def test_a_directory_another_process_owns_is_refused_and_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    script = (
        "import sys, time; from bridge import metrics as m; m.setup_multiprocess_dir(sys.argv[1]); "
        "print('owned', flush=True); time.sleep(60)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(metrics.MULTIPROC_ENV, None)
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(directory)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "owned\n"
        (directory / "counter_1.db").write_bytes(b"a worker's live counters")
        files = ["counter_1.db"]
        with pytest.raises(MetricsDirInUse, match=f"another running bridge \\(pid {owner.pid}\\)"):
            metrics.setup_multiprocess_dir(directory)
        assert sorted(p.name for p in directory.glob("*.db")) == files
        assert metrics.MULTIPROC_ENV not in os.environ
    finally:
        owner.kill()
        owner.wait(10)
    metrics.setup_multiprocess_dir(directory)  # the kernel dropped the dead owner's lock
    assert list(directory.glob("*.db")) == []
    metrics.setup_multiprocess_dir(directory)  # and this process may set up its own directory again


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_pool_scrape(pool: Path) -> None:
    sup = metrics.SupervisorMetrics()
    sup.worker_restarted("signal", calls_lost=1)
    body = generate_latest(metrics.registry_for_scrape(pool, sup))
    proc = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_names_follow_the_convention(pool: Path) -> None:
    text = generate_latest(metrics.registry_for_scrape(pool)).decode()
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("vblaze_bridge_"), family.name
        assert family.type in ("counter", "gauge", "histogram"), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
        for s in family.samples:
            assert "call" not in "".join(s.labels)  # never a call id
            if family.type == "counter":
                assert s.name.endswith("_total")


def test_label_values_are_bounded() -> None:
    assert metrics.bounded("timeout", metrics.CONNECT_FAILURE_CAUSES) == "timeout"
    assert metrics.bounded("Connection refused by 10.0.0.1", metrics.CONNECT_FAILURE_CAUSES) == "other"
    assert metrics.sip_code_label(503) == "503"
    assert metrics.sip_code_label(415) == "4xx"
    assert metrics.sip_code_label(699) == "6xx"
    assert metrics.sip_code_label(42) == "other"
    assert outcome(204) == "ok"
    assert outcome(429) == "http_429"
    assert outcome(404) == "http_4xx"
    assert outcome(502) == "http_5xx"
    assert outcome(302) == "other"
    for values in (
        metrics.CALL_RESULTS,
        metrics.DROP_CAUSES,
        metrics.CONNECT_FAILURE_CAUSES,
        metrics.GAP_CAUSES,
        metrics.STREAM_LOST_CAUSES,
        metrics.WEBHOOK_OUTCOMES,
        metrics.WEBHOOK_DROP_REASONS,
        metrics.RESTART_REASONS,
    ):
        assert "other" in values
        # a call's result names every refusal the gate can give (13 today); the causes stay within 12
        assert len(values) <= (16 if values is metrics.CALL_RESULTS else 12)


ENGINE_LABELS = [
    (ConnectCause, "CONNECT_FAILURE_CAUSES"),
    (LostCause, "STREAM_LOST_CAUSES"),
    (GapCause, "GAP_CAUSES"),
]


@pytest.mark.parametrize(("causes", "name"), ENGINE_LABELS)
def test_every_engine_cause_is_a_declared_label_value_and_the_reverse(causes: type, name: str) -> None:
    """The engine's causes are enums its code emits (typed, see bridge/vblaze/session.py and buffer.py);
    each must be a label value of its own (not folded into "other"), and each label value but "other"
    must be a cause some code can emit."""
    labels = getattr(metrics, name)
    for cause in causes:
        assert cause.value in labels, f"{causes.__name__}.{cause.name} is not in metrics.{name}"
        assert metrics.bounded(cause, labels) == cause.value
    for label in labels:
        assert label == metrics.OTHER or label in {c.value for c in causes}, f"{name}: {label!r} is no cause"
    assert len(labels) == len(set(labels))


def test_a_connect_failure_is_classified_into_a_declared_cause() -> None:
    from websockets.datastructures import Headers
    from websockets.exceptions import InvalidStatus
    from websockets.http11 import Response

    from bridge.vblaze.client import classify_connect_error

    for exc in (
        InvalidStatus(Response(503, "Service Unavailable", Headers(), b"")),
        InvalidStatus(Response(400, "Bad Request", Headers(), b"")),
        ConnectionRefusedError(),
        TimeoutError(),
        OSError("no route"),
    ):
        _, cause = classify_connect_error(exc)
        assert isinstance(cause, ConnectCause) and cause.value in metrics.CONNECT_FAILURE_CAUSES


def test_histogram_buckets_increase_and_cover_their_hop() -> None:
    def upper(h: object) -> list[float]:
        return list(h._upper_bounds)  # type: ignore[attr-defined]

    for h, low, high in (
        (metrics.AUDIO_TO_SOCKET, 0.0005, 0.5),
        (metrics.SPEECH_END_TO_UTTERANCE, 0.1, 30.0),
        (metrics.UTTERANCE_TO_WEBHOOK_SENT, 0.001, 5.0),
        (metrics.UTTERANCE_TO_WEBHOOK_ACK, 0.0025, 60.0),
    ):
        bounds = upper(h)
        assert bounds == sorted(bounds)
        assert bounds[0] == low
        assert high in bounds
    assert 0.02 in upper(metrics.UTTERANCE_TO_WEBHOOK_ACK)  # the benchmark's goal is read at a bound


def test_registry_needs_a_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        metrics.registry_for_scrape()


@pytest.mark.parametrize(
    ("module", "protocol", "adapter"),
    [
        ("bridge.vblaze.client", "EngineObserver", metrics.EngineMetrics),
        ("bridge.webhook.delivery", "DeliveryObserver", metrics.WebhookMetrics),
        ("sip.settings", "CallObserver", metrics.CallMetrics),
    ],
)
def test_adapters_implement_the_observer_protocols(module: str, protocol: str, adapter: type) -> None:
    import inspect

    proto = getattr(pytest.importorskip(module), protocol)
    for name, member in vars(proto).items():
        if name.startswith("_") or not callable(member):
            continue
        assert hasattr(adapter, name), f"{adapter.__name__} lacks {name}()"
        wanted = list(inspect.signature(member).parameters)
        assert list(inspect.signature(getattr(adapter, name)).parameters) == wanted, name

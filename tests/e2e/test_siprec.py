"""SIPREC through the real bridge: a recording client sends two voices on two streams, each sentence
comes back on its own channel with its role and participant.

The caller says one sentence in one espeak-ng voice, the agent another sentence in another voice, at
the same time, each on its own RTP stream. One bridge (stereo delivery) serves the stereo cases, so the
stand-in loads its model once and calls do not wait for a bridge to start.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Bridge, Standin, free_port_block
from tests.fixtures.audio import speech_wav
from tests.fixtures.siprec_caller import AGENT_AOR, CALLER_AOR, SiprecCallResult, run_siprec_call

CALLER_TEXT = "I would like to cancel my subscription today."
AGENT_TEXT = "Certainly, may I have your account number please."
CALLER_WORDS = {"cancel", "subscription", "today"}
AGENT_WORDS = {"certainly", "account", "number"}
SIPREC = {"agent_patterns": [r"@pbx\.callcentre\.example$"]}


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def voices() -> tuple[Path, Path]:
    return (
        speech_wav(CALLER_TEXT, voice="en-us", encoding="u-law"),
        speech_wav(AGENT_TEXT, voice="en-gb+f3", encoding="u-law"),
    )


def start_bridge(directory: Path, engine_url: str, **sections: dict[str, Any]) -> Bridge:
    directory.mkdir(parents=True, exist_ok=True)
    sip_port = free_port_block(1)
    rtp_port = free_port_block(40, low=30000, high=60000)
    config: dict[str, Any] = {
        "sip": {"first_port": sip_port, "workers": 1, "rtp_first_port": rtp_port},
        "engine": {"url": engine_url, "final_timeout_seconds": 30},
        "sink": {"kind": "jsonl", "jsonl_path": str(directory / "events.jsonl")},
        "metrics": {"port": 0},
        "control": {"port": 0},
        "drain": {"timeout_seconds": 5},
        "state": {"directory": str(directory / "state")},
        "webhook": {"spool_path": str(directory / "spool.sqlite3")},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    config_path = directory / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    bridge = Bridge(config_path, directory / "events.jsonl", sip_port, 1, log_path=directory / "bridge.log")
    bridge.start()
    return bridge


def stop_bridge(bridge: Bridge) -> None:
    bridge.stop(signal.SIGTERM, timeout=15)
    subprocess.run(["pkill", "-9", "-f", f"bridge worker --config {bridge.config_path}"], check=False)


@pytest.fixture(scope="module")
def stereo_bridge(standin_whisper: Standin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    bridge = start_bridge(tmp_path_factory.mktemp("siprec-stereo"), standin_whisper.url, siprec=SIPREC)
    yield bridge
    stop_bridge(bridge)


def events_of(bridge: Bridge, call_id: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The events of one call, once it ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = bridge.calls().get(call_id, [])
        if any(e["kind"] == "call.ended" for e in events):
            return events
        time.sleep(0.2)
    raise AssertionError(f"call {call_id} did not end within {timeout} s:\n{bridge.log()[-3000:]}")


def utterances(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["kind"] == "utterance"]


def heard(events: list[dict[str, Any]], **match: Any) -> set[str]:
    """Words of the utterances whose data match all of `match`."""
    found: set[str] = set()
    for data in utterances(events):
        if all(data.get(key) == value for key, value in match.items()):
            found |= words_of(data["text"])
    return found


def check_two_voices(events: list[dict[str, Any]], caller_channel: int = 0) -> None:
    """Each sentence came back on its role's channel only, with its participant."""
    agent_channel = 1 - caller_channel
    caller = heard(events, role="caller", channel=caller_channel)
    agent = heard(events, role="agent", channel=agent_channel)
    assert len(caller & CALLER_WORDS) >= 2, (caller, utterances(events))
    assert len(agent & AGENT_WORDS) >= 2, (agent, utterances(events))
    assert not caller & AGENT_WORDS and not agent & CALLER_WORDS, utterances(events)
    for data in utterances(events):
        assert data["role"] in ("caller", "agent")
        aor = CALLER_AOR if data["role"] == "caller" else AGENT_AOR
        participant = data["participant"]
        assert participant is not None and aor in (participant["aor"], participant["name"]), data


def call(
    bridge: Bridge, voices: tuple[Path, Path], **kwargs: Any
) -> tuple[SiprecCallResult, list[dict[str, Any]]]:
    result = run_siprec_call(bridge.sip_port, voices[0], voices[1], **kwargs)
    assert result.status == 200, result.invite_response
    assert result.bye_status == 200
    return result, events_of(bridge, result.call_id)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("style", "require"),
    [("rfc", False), ("cisco", True), ("oracle", False), ("avaya", False)],
)
def test_each_voice_on_its_channel(
    stereo_bridge: Bridge, voices: tuple[Path, Path], style: str, require: bool
) -> None:
    result, events = call(stereo_bridge, voices, metadata_style=style, require_siprec=require)
    assert [m.direction for m in result.media] == ["recvonly", "recvonly"]
    assert all(m.port for m in result.media)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "call.started" and kinds[-1] == "call.ended"
    siprec = events[0]["data"]["siprec"]
    assert siprec["delivery"] == "stereo"
    assert [(r["index"], r["role"], r["channel"]) for r in siprec["roles"]] == [
        (0, "caller", 0),
        (1, "agent", 1),
    ]
    assert all(r["reason"].startswith("metadata:") for r in siprec["roles"]), siprec["roles"]
    if require:
        assert "Require: siprec" in siprec["evidence"]
    check_two_voices(events)
    for data in utterances(events):
        assert data["engine"]["metadata"]["channel"] == data["channel"]
    ended = events[-1]["data"]
    assert ended["gaps"] == []
    assert [r["role"] for r in ended["streams"]] == ["caller", "agent"]


@pytest.mark.slow
def test_swapped_mlines_follow_the_metadata(stereo_bridge: Bridge, voices: tuple[Path, Path]) -> None:
    """The agent's stream comes first in the SDP: the metadata still makes it the agent, on channel 1."""
    _, events = call(stereo_bridge, voices, metadata_style="rfc", swap_mlines=True)
    roles = events[0]["data"]["siprec"]["roles"]
    assert [(r["index"], r["role"], r["channel"]) for r in roles] == [(0, "agent", 1), (1, "caller", 0)]
    check_two_voices(events)
    assert {d["stream"] for d in utterances(events) if d["role"] == "agent"} == {0}


@pytest.mark.slow
def test_one_mixed_stream(stereo_bridge: Bridge, voices: tuple[Path, Path]) -> None:
    result = run_siprec_call(stereo_bridge.sip_port, voices[0], None, metadata_style="rfc", one_stream=True)
    assert result.status == 200, result.invite_response
    assert [m.direction for m in result.media] == ["recvonly"]
    events = events_of(stereo_bridge, result.call_id)
    siprec = events[0]["data"]["siprec"]
    assert siprec["delivery"] == "mono"
    assert [(r["role"], r["channel"]) for r in siprec["roles"]] == [("mixed", 0)]
    assert len(heard(events, role="mixed", channel=0) & CALLER_WORDS) >= 2, utterances(events)


@pytest.mark.slow
def test_metadata_update_and_hold_keep_the_call(stereo_bridge: Bridge, voices: tuple[Path, Path]) -> None:
    """New metadata by re-INVITE and UPDATE, then hold (a=inactive) and resume; speech after resume."""
    actions = [(0.3, "metadata:cisco"), (0.6, "update:oracle"), (1.0, "hold"), (2.0, "resume")]
    result, events = call(stereo_bridge, voices, metadata_style="rfc", actions=actions, lead_silence=2.5)
    assert [status for _, status in result.actions] == [200, 200, 200, 200], result.actions
    kinds = [e["kind"] for e in events]
    assert kinds.count("call.started") == 1 and kinds.count("call.ended") == 1
    check_two_voices(events)
    assert min(d["start"] for d in utterances(events)) >= 1.5
    ended = events[-1]["data"]
    assert ended["reason"] == "remote_bye"
    assert [r["role"] for r in ended["streams"]] == ["caller", "agent"]
    assert ended["remaps"] == 0  # the new metadata names the same people in other SBC styles
    lines = [line for line in stereo_bridge.log().splitlines() if result.call_id in line]
    assert any("re-INVITE with rs-metadata" in line for line in lines), lines
    assert any("UPDATE with rs-metadata" in line for line in lines), lines


def test_offer_hidden_by_missing_close_delimiter_is_refused(
    standin_vad: Standin, make_bridge: Any, voices: tuple[Path, Path]
) -> None:
    bridge = make_bridge(standin_vad.url)
    result = run_siprec_call(
        bridge.sip_port, voices[0], voices[1], metadata_style="rfc", close_delimiter=False
    )
    assert result.status == 488, result.invite_response
    assert bridge.calls() == {}


@pytest.mark.slow
def test_streams_delivery(standin_whisper: Standin, tmp_path: Path, voices: tuple[Path, Path]) -> None:
    """delivery=streams: one engine stream per audio stream, each utterance tagged with its stream's role."""
    bridge = start_bridge(tmp_path / "bridge", standin_whisper.url, siprec={**SIPREC, "delivery": "streams"})
    try:
        _, events = call(bridge, voices, metadata_style="cisco")
    finally:
        stop_bridge(bridge)
    assert events[0]["data"]["siprec"]["delivery"] == "streams"
    check_two_voices(events)
    for data in utterances(events):
        assert data["stream"] == (0 if data["role"] == "caller" else 1)
        assert data["engine"]["metadata"]["channel"] == 0
    transcript = events[-1]["data"]["transcript"]
    assert [(s["stream"], s["role"]) for s in transcript["streams"]] == [(0, "caller"), (1, "agent")]
    assert all(s["transcript"] for s in transcript["streams"])


# --- the default rules: roles follow the metadata, or are unknown ------------------------------------


@pytest.fixture(scope="module")
def default_bridge(standin_whisper: Standin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """No patterns, no labels configured: the metadata's address forms decide."""
    bridge = start_bridge(tmp_path_factory.mktemp("siprec-default"), standin_whisper.url)
    yield bridge
    stop_bridge(bridge)


@pytest.mark.slow
@pytest.mark.parametrize("style", ["rfc", "cisco", "oracle", "avaya"])
@pytest.mark.parametrize("swap", [False, True])
def test_default_rules_follow_the_metadata(
    default_bridge: Bridge, voices: tuple[Path, Path], style: str, swap: bool
) -> None:
    """Whichever stream comes first in the SDP, each voice comes back on its role's channel."""
    _, events = call(default_bridge, voices, metadata_style=style, swap_mlines=swap)
    roles = events[0]["data"]["siprec"]["roles"]
    expected = [(0, "agent", 1), (1, "caller", 0)] if swap else [(0, "caller", 0), (1, "agent", 1)]
    assert [(r["index"], r["role"], r["channel"]) for r in roles] == expected, roles
    assert [r["decided_by"] for r in roles] == ["metadata", "metadata"]
    check_two_voices(events)


def test_default_rules_live(standin_vad: Standin, tmp_path: Path, voices: tuple[Path, Path]) -> None:
    """Through the live bridge with the default siprec settings: CUBE-style metadata with the agent's
    stream first decides by the senders' address forms; an INVITE without metadata gets roles unknown
    (channels by m-line), and call.started says so rather than guessing."""
    bridge = start_bridge(tmp_path / "bridge", standin_vad.url)
    try:
        _, swapped = call(bridge, voices, metadata_style="cisco", swap_mlines=True)
        _, bare = call(bridge, voices, metadata_style=None)
    finally:
        stop_bridge(bridge)
    assert utterances(swapped) and utterances(bare)
    roles = swapped[0]["data"]["siprec"]["roles"]
    assert [(r["index"], r["role"], r["channel"], r["decided_by"]) for r in roles] == [
        (0, "agent", 1, "metadata"),
        (1, "caller", 0, "metadata"),
    ]
    assert "agent by its address form (extension 2001)" in roles[0]["reason"]
    assert [p["aor"] for p in roles[0]["participants"]] == [AGENT_AOR]
    for data in utterances(swapped):
        assert (data["role"], data["participant"]["aor"]) == (
            ("agent", AGENT_AOR) if data["channel"] == 1 else ("caller", CALLER_AOR)
        )
    roles = bare[0]["data"]["siprec"]["roles"]
    assert [(r["index"], r["role"], r["channel"], r["decided_by"]) for r in roles] == [
        (0, "unknown", 0, "undecided"),
        (1, "unknown", 1, "undecided"),
    ]
    assert roles[0]["reason"].startswith("no rule decided, roles unknown, channels by m-line")
    assert all(d["role"] == "unknown" for d in utterances(bare))

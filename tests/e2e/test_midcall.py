"""Mid-call events: RFC 4733 DTMF, hold and resume by re-INVITE, a codec change."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.e2e import sipp_steps
from tests.e2e.conftest import Standin, run_sipp, speech
from tests.e2e.test_calls import kinds
from tests.fixtures import sipua


def test_dtmf_digits_become_events(standin_vad: Standin, make_bridge: Any) -> None:
    """RFC 4733 telephone-events (sent from the RTP port the offer named) become `dtmf` events."""
    bridge = make_bridge(standin_vad.url)
    answer = sipua.invite(bridge.sip_port, hangup=False)
    assert answer.status == 200 and answer.dialog is not None
    answer.dialog.send_silence(0.5)
    answer.dialog.send_dtmf("159#")
    answer.dialog.send_silence(0.5)
    answer.dialog.bye()
    (events,) = bridge.wait_ended(1).values()
    dtmf = [e["data"] for e in events if e["kind"] == "dtmf"]
    assert [d["digit"] for d in dtmf] == ["1", "5", "9", "#"]
    assert all(d["at"] >= 0 for d in dtmf)
    assert [d["at"] for d in dtmf] == sorted(d["at"] for d in dtmf)


def test_hold_resume_and_codec_change_keep_the_call_and_its_socket(
    standin_vad: Standin, make_bridge: Any, speech_dir: Path, tmp_path: Path
) -> None:
    bridge = make_bridge(standin_vad.url)
    audio = speech("one two three four five six seven eight nine ten", speech_dir, "count")
    alaw = speech("one two three four five six seven eight nine ten", speech_dir, "count-alaw")
    alaw_file = alaw.with_suffix(".al")
    subprocess.run(
        ["sox", "-t", "ul", "-r", "8000", "-c", "1", str(alaw), "-t", "al", str(alaw_file)], check=True
    )
    steps = (
        sipp_steps.reinvite(10, "sendonly")  # hold
        + sipp_steps.pause(1500)
        + sipp_steps.reinvite(11, "sendrecv", pt=8)  # resume, now in A-law
        + sipp_steps.stream(str(alaw_file), 8)
        + sipp_steps.pause(6000)
    )
    result = run_sipp(bridge.sip_port, audio, tmp_path, hold_ms=5500, after_audio=steps)
    assert result.returncode == 0, result.stdout
    (events,) = bridge.wait_ended(1).values()
    assert kinds(events).count("call.started") == 1  # one call, one socket, through both re-INVITEs
    ended = events[-1]["data"]
    assert ended["reason"] == "remote_bye"
    assert ended["gaps"] == []
    utterances = [e["data"] for e in events if e["kind"] == "utterance"]
    assert any(u["start"] < 5 for u in utterances), utterances  # before the hold
    assert any(u["start"] > 6 for u in utterances), utterances  # after the A-law resume
    log = bridge.log()
    assert "PCMA" in log  # the media change was seen
    assert log.count("engine stream established") == 1

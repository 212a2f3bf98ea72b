"""The control API's rules (bridge/control/api.py) and a worker's side of a request (commands.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import ControlConfig
from bridge.control import api, commands
from bridge.control.lines import Op, Reply, Request
from bridge.errors import ConfigError

TOKENS = {"desk": "s3cret-desk-token", "ops": "another-token-value"}


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Bearer s3cret-desk-token", "desk"),
        ("bearer another-token-value", "ops"),
        ("Bearer  s3cret-desk-token ", "desk"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer s3cret-desk-toke", None),
        ("Basic s3cret-desk-token", None),
        ("s3cret-desk-token", None),
        ("Bearer s3cret-desk-tokenX", None),
        ("Bearer ünïcode", None),
    ],
)
def test_authenticate(header: str | None, name: str | None) -> None:
    assert api.authenticate(header, TOKENS) == name


def test_no_tokens_configured_lets_nobody_in() -> None:
    assert api.authenticate("Bearer anything", {}) is None


@pytest.mark.parametrize(
    ("op", "raw", "expected"),
    [
        (Op.PAUSE, b"", {}),
        (Op.PAUSE, b"  ", {}),
        (Op.PAUSE, b'{"reason": "card"}', {"reason": "card"}),
        (Op.PAUSE, b'{"reason": null}', {"reason": None}),
        (Op.RESUME, b"{}", {}),
    ],
)
def test_good_bodies(op: Op, raw: bytes, expected: dict[str, Any]) -> None:
    assert api.read_body(op, raw) == expected


@pytest.mark.parametrize(
    ("op", "raw", "field_name"),
    [
        (Op.PAUSE, b"{", "body"),
        (Op.PAUSE, b"\xff\xfe", "body"),
        (Op.PAUSE, b"[1]", "body"),
        (Op.PAUSE, b'{"reason": 5}', "reason"),
        (Op.PAUSE, b'{"reason": "' + b"x" * 1001 + b'"}', "reason"),
        (Op.PAUSE, b'{"why": "x"}', "why"),
        (Op.RESUME, b'{"reason": "x"}', "reason"),
        (Op.HANGUP, b'{"now": true}', "now"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(op: Op, raw: bytes, field_name: str) -> None:
    answer = api.read_body(op, raw)
    assert isinstance(answer, api.Answer)
    assert answer.status == 400 and answer.body["field"] == field_name


def test_combine() -> None:
    found = Reply(1, 200, {"call": {"call_id": "c"}, "changed": True})
    missing = Reply(2, 404, {"error": "no"})
    assert api.combine(Op.PAUSE, [missing, found]) == api.Answer(200, found.body)
    assert api.combine(Op.PAUSE, [missing, missing]).status == 404
    assert api.combine(Op.PAUSE, [missing, None]).status == 503
    assert api.combine(Op.PAUSE, [None, found]).status == 200  # the holder answered
    assert api.combine(Op.PAUSE, []).status == 404
    lists = [Reply(1, 200, {"calls": [{"call_id": "a"}]}), Reply(2, 200, {"calls": [{"call_id": "b"}]})]
    assert api.combine(Op.LIST, lists).body == {"calls": [{"call_id": "a"}, {"call_id": "b"}]}
    assert api.combine(Op.LIST, [lists[0], None]).status == 503  # never a partial list


def test_tokens_come_from_the_environment() -> None:
    control = ControlConfig.model_validate({"tokens": [{"name": "desk", "env": "DESK_TOKEN"}]})
    assert api.load_tokens(control, {"DESK_TOKEN": "abc"}) == {"desk": "abc"}
    with pytest.raises(ConfigError, match=r"control.tokens.0.env: environment variable DESK_TOKEN"):
        api.load_tokens(control, {})
    with pytest.raises(ConfigError, match="DESK_TOKEN"):
        api.load_tokens(control, {"DESK_TOKEN": "  "})
    disabled = ControlConfig.model_validate({"port": 0, "tokens": [{"name": "desk", "env": "DESK_TOKEN"}]})
    assert api.load_tokens(disabled, {}) == {}


@dataclass
class FakeCall:
    call_id: str
    reason_max_length: int = 10
    ending: bool = False
    paused: bool = False
    log: list[tuple[str, str | None]] = field(default_factory=list)

    def pause(self, by: str, reason: str | None = None) -> bool:
        self.log.append((by, reason))
        changed, self.paused = not self.paused, True
        return changed

    def resume(self, by: str) -> bool:
        changed, self.paused = self.paused, False
        return changed

    def snapshot(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "paused": self.paused}


def test_commands_on_a_worker() -> None:
    calls = [FakeCall("a"), FakeCall("b")]
    hung: list[str] = []

    def run(request: Request) -> Reply:
        return commands.execute(request, calls, lambda call: hung.append(call.call_id))

    assert run(Request(1, Op.LIST)).body == {
        "calls": [{"call_id": "a", "paused": False}, {"call_id": "b", "paused": False}]
    }
    assert run(Request(2, Op.GET, "zz")).status == 404
    reply = run(Request(3, Op.PAUSE, "b", "api:desk", "card"))
    assert (reply.id, reply.status, reply.body["changed"], reply.body["call"]["paused"]) == (
        3,
        200,
        True,
        True,
    )
    assert run(Request(4, Op.PAUSE, "b", "api:desk", None)).body["changed"] is False
    too_long = run(Request(5, Op.PAUSE, "a", "api:desk", "x" * 11))  # the call's own limit
    assert (too_long.status, too_long.body["field"]) == (400, "reason") and not calls[0].paused
    assert run(Request(6, Op.RESUME, "b", "api:desk")).body["changed"] is True
    assert run(Request(7, Op.HANGUP, "a")).body["changed"] is True and hung == ["a"]
    calls[0].ending = True
    assert run(Request(8, Op.PAUSE, "a", "api:desk")).status == 409
    assert run(Request(9, Op.HANGUP, "a")).body["changed"] is False and hung == ["a"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.sampled_from([Op.PAUSE, Op.RESUME, Op.HANGUP]),
    st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)),
)
def test_any_body_is_read_or_refused_with_400(op: Op, raw: bytes) -> None:
    answer = api.read_body(op, raw)
    if isinstance(answer, api.Answer):
        assert answer.status == 400 and answer.body["field"]
    else:
        assert set(answer) <= {"reason"} and isinstance(answer.get("reason", ""), str | None)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.none(), st.text(max_size=80), st.text(max_size=40).map(lambda t: "Bearer " + t)))
def test_any_authorization_header_is_a_name_or_none(header: str | None) -> None:
    assert api.authenticate(header, TOKENS) in (None, "desk", "ops")

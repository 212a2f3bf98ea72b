"""The `siprec:` config section: defaults, mapping onto SiprecRules, errors that name the key."""

from __future__ import annotations

import pytest

from bridge.config import Config, parse_config
from bridge.errors import ConfigError
from sip.siprec import DEFAULT_ORDER, SiprecRules


def test_defaults_are_the_rules_defaults() -> None:
    cfg = Config().siprec
    assert cfg.accept_require is True and cfg.delivery == "stereo"
    assert cfg.rules() == SiprecRules()
    assert tuple(cfg.order) == DEFAULT_ORDER == ("metadata", "label")  # no m-line guess by default
    assert cfg.number_forms is True


def test_rules_carry_every_key() -> None:
    cfg = parse_config(
        {
            "siprec": {
                "order": ["label", "mline"],
                "agent_patterns": ["^sip:2"],
                "caller_patterns": ["carrier"],
                "agent_labels": ["2"],
                "caller_labels": ["1"],
                "mline_order": ["agent", "caller"],
                "delivery": "streams",
            }
        }
    ).siprec
    assert cfg.rules() == SiprecRules(
        order=("label", "mline"),
        agent_patterns=("^sip:2",),
        caller_patterns=("carrier",),
        agent_labels=("2",),
        caller_labels=("1",),
        mline_order=("agent", "caller"),
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"order": ["metadata", "guess"]}, "siprec.order"),
        ({"order": []}, "siprec.order"),
        ({"mline_order": ["caller", "caller"]}, "siprec.mline_order"),
        ({"agent_patterns": ["(unclosed"]}, "siprec.agent_patterns"),
        ({"delivery": "quad"}, "siprec.delivery"),
        ({"bogus": 1}, "siprec.bogus"),
    ],
)
def test_bad_values_name_the_key(section: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")) as info:
        parse_config({"siprec": section}, "test.yaml")
    assert "test.yaml" in str(info.value)

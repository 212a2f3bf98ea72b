"""redaction.* and recording.*: defaults, the engine tags they map to, and the checks that name the keys."""

from __future__ import annotations

import pytest

from bridge.config import Config, RecordingConfig, RedactionConfig, parse_config
from bridge.errors import ConfigError


def test_off_by_default_and_no_tags() -> None:
    cfg = Config()
    assert cfg.redaction == RedactionConfig() and not cfg.redaction.text and not cfg.redaction.audio
    assert cfg.redaction.tags() == []
    assert cfg.recording == RecordingConfig(enabled=False, directory="var/recordings", format="wav")


def test_each_key_maps_to_its_engine_tag() -> None:
    cfg = parse_config(
        {
            "redaction": {
                "text": True,
                "audio": True,
                "rules": [{"regex": r"\d{4,}", "repl": "X"}, {"regex": "a"}],
            },
            "recording": {"enabled": True},
        }
    )
    assert cfg.redaction.tags() == [
        ("scrubtext", True),
        ("scrubaudio", True),
        ("scruboutfmt", "wav"),
        ("scrubconf", '[{"regex":"\\\\d{4,}","repl":"X"},{"regex":"a","repl":"#"}]'),
    ]
    assert ("scrubaudio", True) not in cfg.redaction.tags(scrub_audio=False)


def test_a_recording_needs_redacted_audio_and_the_error_names_both_keys() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"recording": {"enabled": True}, "redaction": {"text": True}}, "bridge.yaml")
    message = str(err.value)
    assert (
        message.startswith("bridge.yaml: ")
        and "recording.enabled" in message
        and "redaction.audio" in message
    )


@pytest.mark.parametrize(
    ("tag", "hint"),
    [
        ("scrubtext", "use redaction.text"),
        ("ScrubAudio", "use redaction.audio"),
        ("scrubconf", "use redaction.rules"),
        ("scruboutfmt", "always wav"),
    ],
)
def test_engine_tags_may_not_contradict_the_redaction_keys(tag: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=rf"engine\.tags: .*{tag.lower()} set by the bridge.*{hint}"):
        parse_config({"engine": {"tags": {tag: True}}})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"redaction": {"rules": [{"regex": "("}]}}, "redaction.rules.0.regex"),
        ({"redaction": {"rules": [{"regex": ""}]}}, "redaction.rules.0.regex"),
        ({"redaction": {"rules": [{"regex": "a", "group": 1}]}}, "redaction.rules.0.group"),
        ({"redaction": {"rules": [{"regex": "a"}] * 33}}, "redaction.rules"),
        ({"recording": {"format": "mp3"}}, "recording.format"),
        ({"redaction": {"audit": True}}, "redaction.audit"),
    ],
)
def test_bad_values_name_their_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"<config>: {key}: "):
        parse_config(raw)

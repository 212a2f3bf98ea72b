"""Number translation and scrubbing on synthetic word lists and signals (standin/redaction.py)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from standin.recognizer import Word
from standin.redaction import (
    ScrubConfError,
    merge_spans,
    parse_scrubconf,
    scrub_words,
    translate_numbers,
)


def words(text: str, step: float = 0.5) -> tuple[Word, ...]:
    return tuple(Word(w, i * step, i * step + step * 0.8, 0.9) for i, w in enumerate(text.split()))


def texts(ws: tuple[Word, ...]) -> str:
    return " ".join(w.word for w in ws)


CARD = "my card number is four one one one one one one one one one one one one one one one, thank you"


def test_a_spoken_card_number_becomes_one_word_of_digits_timed_from_first_to_last() -> None:
    spoken = words(CARD)
    out = translate_numbers(spoken)
    assert texts(out) == "my card number is 4111111111111111, thank you"
    card = out[4]
    assert (card.start, card.end) == (spoken[4].start, spoken[19].end)


@pytest.mark.parametrize(
    ("said", "written"),
    [
        ("twenty one pilots", "21 pilots"),
        ("thirteen and forty", "13 and 40"),
        ("one question", "one question"),  # a lone unit word stays a word
        ("one two", "12"),
        ("4111 1111 1111 1111", "4111111111111111"),
        ("41, 41, 33, 2160. Thank", "4141332160. Thank"),
        ("before one, one, one, one. Thank", "before 1111. Thank"),
        ("twenty, one", "20, one"),
        ("oh seven, nine", "079"),
        ("a hundred", "a hundred"),
        ("Four One.", "41."),
    ],
)
def test_number_translation(said: str, written: str) -> None:
    assert texts(translate_numbers(words(said))) == written


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("my card is 4111111111111111, thanks", "my card is ################, thanks"),
        ("ssn 123456789", "ssn #########"),
        ("the 1st of them", "the 1st of them"),
        ("up 50% today", "up 50% today"),
        ("up 50 percent", "up 50 percent"),
        ("at 10:30 sharp", "at 10:30 sharp"),
        ("at 10 am", "at 10 am"),
        ("costs $5 now", "costs $5 now"),
        ("costs 5 dollars", "costs 5 dollars"),
        ("about 2.5 times", "about 2.5 times"),
        ("pin 4321", "pin ####"),
        ("cvv 123.", "cvv ###."),
        ("no numbers here", "no numbers here"),
    ],
)
def test_default_rules(text: str, scrubbed: str) -> None:
    out, changed = scrub_words(words(text))
    assert texts(out) == scrubbed
    assert [texts(words(text))] and all(out[i].word != words(text)[i].word for i in changed)
    assert len(changed) == sum(a != b for a, b in zip(text.split(), scrubbed.split(), strict=True))


def test_scrubconf_rules_replace_the_defaults_and_keep_the_word_times() -> None:
    rules = parse_scrubconf(json.dumps([{"regex": "\\d", "repl": "#"}, {"regex": "secret", "repl": "[x]"}]))
    spoken = words("the 1st secret is 50%")
    out, changed = scrub_words(spoken, rules)
    assert texts(out) == "the #st [x] is ##%"
    assert changed == (1, 2, 4)
    assert [(w.start, w.end) for w in out] == [(w.start, w.end) for w in spoken]


def test_a_replacement_is_literal() -> None:
    rules = parse_scrubconf(json.dumps([{"regex": "(\\d+)", "repl": "\\1-\\g<0>"}]))
    assert texts(scrub_words(words("pin 42"), rules)[0]) == "pin \\1-\\g<0>"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not json",
        "{}",
        "[]",
        '[{"repl": "#"}]',
        '[{"regex": 1}]',
        '[{"regex": "("}]',
        '[{"regex": "a", "repl": 3}]',
        json.dumps([{"regex": "a"}] * 33),
        "[" * 100_000,
    ],
)
def test_a_bad_scrubconf_is_refused(bad: str) -> None:
    with pytest.raises(ScrubConfError):
        parse_scrubconf(bad)


@given(st.text(max_size=300))
def test_parse_scrubconf_raises_only_its_error(text: str) -> None:
    try:
        parse_scrubconf(text)
    except ScrubConfError:
        pass


TOKENS = st.one_of(
    st.sampled_from(["four", "one", "twenty", "oh", "1st", "50%", "$5", "10:30", "am", "dollars", "2.5"]),
    st.from_regex(r"[0-9]{1,6}[.,%]?", fullmatch=True),
    st.text(min_size=1, max_size=10).filter(lambda w: not any(c.isspace() for c in w)),
)


@given(st.lists(TOKENS, max_size=30))
def test_scrubbing_keeps_times_removes_every_digit_it_touches_and_is_idempotent(tokens: list[str]) -> None:
    spoken = translate_numbers(tuple(Word(t, i, i + 0.5, 0.5) for i, t in enumerate(tokens)))
    assert len(spoken) <= len(tokens)
    assert all(a.end <= b.start for a, b in itertools.pairwise(spoken))
    out, changed = scrub_words(spoken)
    assert [(w.start, w.end) for w in out] == [(w.start, w.end) for w in spoken]
    assert all(not re.search("[0-9]", out[i].word) for i in changed)
    assert scrub_words(out) == (out, ())


def test_spans_merge_when_they_overlap_touch_or_lie_closer_than_mindist() -> None:
    assert merge_spans([(2.0, 3.0), (0.0, 1.0), (1.2, 1.5)], 0.3) == ((0.0, 1.5), (2.0, 3.0))
    assert merge_spans([(0.0, 1.0), (1.3, 2.0)], 0.3) == ((0.0, 1.0), (1.3, 2.0))
    assert merge_spans([(0.0, 1.0), (1.0, 2.0), (3.0, 3.0)], 0.0) == ((0.0, 2.0),)

"""Number translation and scrubbing of recognised words and of audio, as V-Blaze documents it. No I/O.

- :func:`translate_numbers` (``numtrans``, default true): runs of spoken digits ("four one one one"),
  teens and tens ("twenty one") become one word of digits, timed from the run's first word to its last.
  Runs of digit words the recogniser already wrote as digits ("4111 1111") are joined the same way,
  and so are digits and digit groups between commas ("one, one, one", "41, 41, 33").
  Words for hundreds, thousands and "double"/"triple" are left alone.
- :func:`scrub_words` (``scrubtext``): the default rules redact every number except ordinals ("1st"),
  percentages ("50%", "50 percent"), times ("10:30", "10 am", "10 o'clock"), prices ("$5", "5 dollars")
  and short decimals ("2.5", at most two decimals); each digit of a redacted word becomes ``#``. With
  ``scrubconf`` (a JSON list of ``{"regex", "repl"}``) those rules replace the defaults, applied in order.
- :func:`merge_spans`: for ``scrubaudio`` (standin/scrubber.py), the scrubbed words' times merged
  where closer than ``scrubmindist`` seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from standin.recognizer import Recognition, Word

MAX_RULES = 32
MAX_RULE_CHARS = 512
SCRUB_CHAR = "#"

_UNITS = {"zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4}
_UNITS |= {"five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
_TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15}
_TEENS |= {"sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70}
_TENS |= {"eighty": 80, "ninety": 90}

Span = tuple[float, float]  # seconds

_EDGE = re.compile(r"^([^\w$]*)(.*?)([^\w%]*)$", re.S)  # leading / core / trailing punctuation
_DIGITS = re.compile(r"[0-9]+")
_ORDINAL = re.compile(r"[0-9]+(st|nd|rd|th)", re.I)
_TIME = re.compile(r"[0-9]{1,2}:[0-9]{2}(:[0-9]{2})?")
_SHORT_DECIMAL = re.compile(r"[0-9]+\.[0-9]{1,2}")
_PERCENT_WORDS = {"percent", "per", "%"}
_TIME_WORDS = {"am", "pm", "a.m.", "p.m.", "o'clock", "oclock"}
_PRICE_WORDS = {"dollar", "dollars", "cent", "cents", "euro", "euros", "pound", "pounds", "bucks"}


class ScrubConfError(ValueError):
    """``scrubconf`` is not a JSON list of ``{"regex": str, "repl": str}`` with valid patterns."""


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    repl: str

    def literal(self, _match: re.Match[str]) -> str:
        """The replacement as written: no group references, whatever backslashes it holds."""
        return self.repl


def parse_scrubconf(text: str) -> tuple[Rule, ...]:
    """The rules of a ``scrubconf`` value; :class:`ScrubConfError` is the only exception it raises."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ScrubConfError(f"not JSON: {exc}") from None
    if not isinstance(doc, list) or not doc:
        raise ScrubConfError('must be a non-empty JSON list of {"regex", "repl"} objects')
    if len(doc) > MAX_RULES:
        raise ScrubConfError(f"at most {MAX_RULES} rules")
    rules = []
    for index, item in enumerate(doc):
        if not isinstance(item, dict) or not isinstance(item.get("regex"), str):
            raise ScrubConfError(f'rule {index}: needs a string "regex"')
        repl = item.get("repl", SCRUB_CHAR)
        if not isinstance(repl, str) or len(item["regex"]) > MAX_RULE_CHARS or len(repl) > MAX_RULE_CHARS:
            raise ScrubConfError(f'rule {index}: "repl" must be a string; {MAX_RULE_CHARS} chars at most')
        try:
            pattern = re.compile(item["regex"])
        except (re.error, RecursionError, OverflowError) as exc:
            raise ScrubConfError(f"rule {index}: bad regex: {exc}") from None
        rules.append(Rule(pattern, repl))
    return tuple(rules)


# --- numtrans ------------------------------------------------------------------------------------------


def _split(word: str) -> tuple[str, str, str]:
    match = _EDGE.match(word)
    assert match is not None  # the pattern matches every string
    return match.group(1), match.group(2), match.group(3)


def _spoken_digits(words: Sequence[Word], at: int) -> tuple[str, int] | None:
    """The digits spoken from ``words[at]`` on (one number word, or tens + unit) and how many words."""
    core = _split(words[at].word)[1].lower()
    if core in _UNITS:
        return str(_UNITS[core]), 1
    if core in _TEENS:
        return str(_TEENS[core]), 1
    if core in _TENS:
        following = _split(words[at + 1].word) if at + 1 < len(words) else None
        unit = _UNITS.get(following[1].lower(), 0) if following and not _split(words[at].word)[2] else 0
        if unit:
            return str(_TENS[core] + unit), 2
        return str(_TENS[core]), 1
    if _DIGITS.fullmatch(core):
        return core, 1
    return None


def _digit_group(word: Word) -> bool:
    core = _split(word.word)[1]
    return bool(_DIGITS.fullmatch(core)) or core.lower() in _UNITS


def _joins(before: Word, after: Word) -> bool:
    """Whether a number run goes on from `before` to `after`: no punctuation between them, or a comma
    between two digits or digit groups ("one, one, one", "41, 41, 33": how the recogniser writes a card
    number read out digit by digit)."""
    trail = _split(before.word)[2]
    return not trail or (trail == "," and _digit_group(before) and _digit_group(after))


def translate_numbers(words: Sequence[Word]) -> tuple[Word, ...]:
    """``numtrans``: each run of number words becomes one word of digits (see the module docstring)."""
    out: list[Word] = []
    at = 0
    while at < len(words):
        first = _spoken_digits(words, at)
        if first is None:
            out.append(words[at])
            at += 1
            continue
        digits, used, begin = first[0], first[1], at
        at += used
        while at < len(words) and _joins(words[at - 1], words[at]):
            more = _spoken_digits(words, at)
            if more is None:
                break
            digits += more[0]
            at += more[1]
        run = words[begin:at]
        if len(run) == 1 and _split(run[0].word)[1].lower() in _UNITS:
            out.append(run[0])  # "one question": a lone unit word stays a word
            continue
        lead, trail = _split(run[0].word)[0], _split(run[-1].word)[2]
        confidence = min(w.confidence for w in run)
        out.append(Word(f"{lead}{digits}{trail}", run[0].start, run[-1].end, confidence))
    return tuple(out)


# --- scrubtext -----------------------------------------------------------------------------------------


def _kept_by_default(words: Sequence[Word], at: int) -> bool:
    """Whether the default rules leave the number ``words[at]`` as it is (see the module docstring)."""
    core = _split(words[at].word)[1]
    after = _split(words[at + 1].word)[1].lower() if at + 1 < len(words) else ""
    return bool(
        _ORDINAL.fullmatch(core)
        or _TIME.fullmatch(core)
        or _SHORT_DECIMAL.fullmatch(core)
        or core.endswith("%")
        or core.startswith("$")
        or after in _PERCENT_WORDS | _TIME_WORDS | _PRICE_WORDS
    )


def scrub_words(
    words: Sequence[Word], rules: Sequence[Rule] | None = None
) -> tuple[tuple[Word, ...], tuple[int, ...]]:
    """``scrubtext``: the words with sensitive numbers redacted, and the indexes of the words changed."""
    out: list[Word] = []
    changed: list[int] = []
    for at, word in enumerate(words):
        if rules:
            text = word.word
            for rule in rules:
                text = rule.pattern.sub(rule.literal, text)
        elif _DIGITS.search(word.word) and not _kept_by_default(words, at):
            text = _DIGITS.sub(lambda m: SCRUB_CHAR * len(m.group()), word.word)
        else:
            text = word.word
        if text != word.word:
            changed.append(at)
            word = replace(word, word=text)
        out.append(word)
    return tuple(out), tuple(changed)


def apply(
    recognition: Recognition, numtrans: bool, scrubtext: bool, scrubaudio: bool, rules: Sequence[Rule] | None
) -> tuple[Recognition, tuple[Span, ...]]:
    """What the recogniser heard as the tags ask for it, and the times of the words to scrub (for
    ``scrubaudio``, whether or not the text is scrubbed too), relative to the utterance."""
    spoken = translate_numbers(recognition.words) if numtrans else recognition.words
    if not (scrubtext or scrubaudio):
        return Recognition(tuple(spoken)), ()
    scrubbed, changed = scrub_words(spoken, rules)
    spans = tuple((spoken[i].start, spoken[i].end) for i in changed)
    return Recognition(scrubbed if scrubtext else tuple(spoken)), spans


# --- scrubaudio ----------------------------------------------------------------------------------------


def merge_spans(spans: Iterable[Span], mindist: float) -> tuple[Span, ...]:
    """Spans sorted and merged where they overlap or lie closer than ``mindist`` seconds."""
    merged: list[Span] = []
    for start, end in sorted((s, e) for s, e in spans if e > s):
        if merged and (start <= merged[-1][1] or start - merged[-1][1] < mindist):
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)

"""A call's PCI pause, without I/O: whether its audio may reach the engine, and the DTMF that toggles it.

While a call is paused no audio of it reaches the engine: the call pipeline (`bridge/call.py`) sends
silence of the same length instead, on every engine stream of the call, and the audio buffer
(`bridge/vblaze/buffer.py`) keeps only that silence, so a replay after a reconnect replays silence. The
paused span is a gap with cause ``paused``.

`PauseState` is the call's switch. `pause(at, now, by, reason)` and `resume(at, now, by)` return the
`PauseChange` to announce (``call.paused`` / ``call.resumed``), or None when nothing changed (pausing a
paused call, resuming a running one: idempotent). ``at`` is the call's timeline (`bridge/call.py`),
``now`` `time.monotonic()`. `silences(start)` says whether a frame whose capture began at ``start``
(monotonic) must go out as silence: every frame while paused, and after a resume every frame whose
capture began before it (fail closed: a frame straddling the resume point is silenced whole).
`auto_resume_at` is when `auto_resume_seconds` ends the pause (None: never).

`DtmfSequencer` recognises the configured pause and resume sequences (``pause.dtmf_pause``,
``pause.dtmf_resume``) in the call's RFC 4733 digits. Digits that may still become a sequence are held
back; `feed(digit, at, now)` returns the digits released as ordinary ``dtmf`` events (with the time
they were pressed) and the action a completed sequence asks for; a held digit is released once
``hold_seconds`` pass without the next one (`expire(now)`, at `deadline`), so a lone ``*`` is never held
forever. The digits of a sequence are never released.

`check_reason` validates the free text of an API pause; `ReasonError` is the only error this module
raises (a `ValueError`).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum

DTMF_DIGITS = "0123456789*#ABCD"


class PauseAction(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"


class ReasonError(ValueError):
    """A pause reason that is not acceptable; the message says why."""


@dataclass(frozen=True)
class PauseChange:
    """What `call.paused` / `call.resumed` announce."""

    paused: bool
    at: float  # call timeline, seconds
    by: str  # "api:<token name>", "dtmf" or "auto"
    reason: str | None


@dataclass
class PauseState:
    """See the module docstring."""

    auto_resume_seconds: float = 0.0
    paused: bool = False
    by: str | None = None
    reason: str | None = None
    since_at: float | None = None  # timeline second of the pause in force
    _since_mono: float | None = None
    _resumed_mono: float = float("-inf")
    pauses: int = 0

    def pause(self, at: float, now: float, by: str, reason: str | None = None) -> PauseChange | None:
        if self.paused:
            return None
        self.paused, self.by, self.reason = True, by, reason
        self.since_at, self._since_mono = at, now
        self.pauses += 1
        return PauseChange(True, at, by, reason)

    def resume(self, at: float, now: float, by: str) -> PauseChange | None:
        if not self.paused:
            return None
        self.paused, self.by, self.reason = False, None, None
        self.since_at, self._since_mono = None, None
        self._resumed_mono = now
        return PauseChange(False, at, by, None)

    def silences(self, start: float) -> bool:
        """Whether a frame whose capture began at `start` (monotonic) must go out as silence."""
        return self.paused or start < self._resumed_mono

    @property
    def auto_resume_at(self) -> float | None:
        """Monotonic time at which the pause in force ends by itself (None: it does not)."""
        if not self.paused or self._since_mono is None or self.auto_resume_seconds <= 0:
            return None
        return self._since_mono + self.auto_resume_seconds


def check_reason(reason: object, max_length: int) -> str | None:
    """The reason of a pause as given (None or a string of at most `max_length` characters, no control
    characters); `ReasonError` otherwise."""
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise ReasonError("reason must be a string")
    if len(reason) > max_length:
        raise ReasonError(f"reason is longer than {max_length} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in reason):
        raise ReasonError("reason contains control characters")
    return reason


def check_sequence(value: str) -> str:
    """A DTMF sequence of the config: "" (off) or up to 8 digits of 0-9 * # A-D; ValueError otherwise."""
    if len(value) > 8 or any(ch not in DTMF_DIGITS for ch in value.upper()):
        raise ValueError(f"{value!r} is not a DTMF sequence (up to 8 of {DTMF_DIGITS})")
    return value.upper()


@dataclass
class DtmfSequencer:
    """See the module docstring. `sequences` maps a sequence ("*1") to its action; "" entries are off."""

    sequences: dict[str, PauseAction]
    hold_seconds: float
    held: list[tuple[str, float]] = field(default_factory=list)  # (digit, at) held back
    deadline: float | None = None  # monotonic time at which the held digits are released

    def __post_init__(self) -> None:
        self.sequences = {seq: action for seq, action in self.sequences.items() if seq}

    def feed(self, digit: str, at: float, now: float) -> tuple[list[tuple[str, float]], PauseAction | None]:
        """One digit pressed at `at` (timeline); the digits released and the action of a sequence."""
        self.held.append((digit.upper(), at))
        released: list[tuple[str, float]] = []
        while self.held and not self._prefix(self._text()):
            released.append(self.held.pop(0))
        action = self.sequences.get(self._text()) if self.held else None
        if action is not None:
            self.held.clear()
        self.deadline = now + self.hold_seconds if self.held else None
        return released, action

    def expire(self, now: float) -> list[tuple[str, float]]:
        """The held digits, released, once the deadline has passed (else nothing)."""
        if self.deadline is None or now < self.deadline:
            return []
        return self.flush()

    def flush(self) -> list[tuple[str, float]]:
        """Every held digit, released (the call ended)."""
        released, self.held, self.deadline = self.held, [], None
        return released

    def _text(self) -> str:
        return "".join(digit for digit, _ in self.held)

    def _prefix(self, text: str) -> bool:
        return any(seq.startswith(text) for seq in self.sequences)

"""Fault switches for the bridge's reliability tests (a stand-in-only extension, not V-Blaze). No I/O.

- `close_after`: seconds of audio after which the server drops the TCP connection, no close frame,
  no final result (None: off);
- `delay_ms`: every result message and callback POST is held back this long;
- `refuse`: every new /transcribe stream gets 503;
- `refuse_scrubaudio`: a stream asking for `scrubaudio=true` gets 400 naming the tag, as a V-Blaze
  without scrubbed audio support would answer (`invalid tag value: scrubaudio: ...`); others go on.

Set per run with `--fault-close-after`, `--fault-delay-ms`, `--fault-refuse`, `--fault-refuse-scrubaudio`,
or at runtime with `POST /_faults` and a JSON object holding any of those keys (null turns
`close_after` off).
A stream takes a snapshot of the switches when it starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


class FaultError(ValueError):
    """A /_faults body that cannot be applied; the message names the key."""


@dataclass(frozen=True)
class Faults:
    close_after: float | None = None
    delay_ms: int = 0
    refuse: bool = False
    refuse_scrubaudio: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, body: object) -> Faults:
        """A copy with the keys of a `POST /_faults` body applied; raises `FaultError`."""
        if not isinstance(body, dict):
            raise FaultError("body must be a JSON object")
        unknown = set(body) - {"close_after", "delay_ms", "refuse", "refuse_scrubaudio"}
        if unknown:
            raise FaultError(f"unknown keys: {', '.join(sorted(unknown))}")
        new = self
        if "close_after" in body:
            value = body["close_after"]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise FaultError("close_after must be a number of seconds >= 0 or null")
            new = replace(new, close_after=None if value is None else float(value))
        if "delay_ms" in body:
            value = body["delay_ms"]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 600_000:
                raise FaultError("delay_ms must be an integer between 0 and 600000")
            new = replace(new, delay_ms=value)
        for key in ("refuse", "refuse_scrubaudio"):
            if key in body:
                if not isinstance(body[key], bool):
                    raise FaultError(f"{key} must be true or false")
                new = replace(new, **{key: body[key]})
        return new

"""How often a line a peer can make us write gets logged (no I/O).

The SIP thread logs each refused INVITE's source and cause through a `Throttle`, so a flood of refusals
costs one line per source and cause every few seconds, each saying how many were held back.
"""

from __future__ import annotations


class Throttle:
    """At most one log line per key every `interval` seconds, for lines a peer can make us write at any
    rate (refused INVITEs): `allow(key, now)` is the count suppressed since the key's last line, or None
    to suppress this one. Keys are forgotten once quiet; at most `max_keys` are remembered."""

    def __init__(self, interval: float = 10.0, max_keys: int = 1024) -> None:
        self.interval = interval
        self._max_keys = max_keys
        self._keys: dict[str, tuple[float, int]] = {}  # key -> (last line at, suppressed since)

    def allow(self, key: str, now: float) -> int | None:
        last = self._keys.get(key)
        if last is not None and now - last[0] < self.interval:
            self._keys[key] = (last[0], last[1] + 1)
            return None
        if len(self._keys) >= self._max_keys:
            self._keys = {k: v for k, v in self._keys.items() if now - v[0] < self.interval}
        self._keys[key] = (now, 0)
        return 0 if last is None else last[1]

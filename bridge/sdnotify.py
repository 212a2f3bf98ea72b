"""The systemd notify protocol (sd_notify(3)) over an AF_UNIX datagram socket, without libsystemd.

The supervisor uses it:

- ``notify("READY=1")`` once the metrics port is bound and at least one worker serves (the others are
  retried in the background; see :mod:`bridge.app`);
- ``notify("STOPPING=1")`` when the first SIGTERM or SIGINT starts the drain;
- ``notify("STATUS=...")`` for a human-readable line in ``systemctl status``;
- :func:`run_watchdog` as a task on its event loop: it sends ``WATCHDOG=1`` every half of
  ``WATCHDOG_USEC`` from that loop, so if the loop stalls the pings stop and systemd restarts the unit.
  The supervisor also passes its own checks as `healthy` (``bridge.app.checks_pass``: every worker
  answers its pings or is being replaced within a bound), so a supervisor stuck on a worker stops too.

Every function is a no-op when ``NOTIFY_SOCKET`` is unset (not under systemd, or ``Type=simple``).
Sending never blocks: the socket is non-blocking and a full or missing peer is logged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

NOTIFY_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def _address(raw: str) -> str | bytes | None:
    """The socket address for a NOTIFY_SOCKET value: a path, or an abstract name given as ``@name``."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock: and other forms are not supported


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one notification (e.g. ``"READY=1"``). Return whether a datagram was sent."""
    environ = os.environ if env is None else env
    raw = environ.get(NOTIFY_ENV)
    if not raw:
        return False
    address = _address(raw)
    if address is None:
        logger.warning("unsupported %s address %r; not notifying", NOTIFY_ENV, raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        logger.warning("sd_notify %r to %s failed: %s", state.split("\n", 1)[0], raw, exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None if no watchdog is asked for.

    As sd_watchdog_enabled(3) does, a ``WATCHDOG_PID`` naming another process means the watchdog is not
    ours (a worker inheriting the supervisor's environment must not ping).
    """
    environ = os.environ if env is None else env
    raw = environ.get(WATCHDOG_USEC_ENV)
    if not raw:
        return None
    pid = environ.get(WATCHDOG_PID_ENV)
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        logger.warning("ignoring %s=%r: not an integer", WATCHDOG_USEC_ENV, raw)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


async def run_watchdog(
    interval: float | None = None,
    healthy: Callable[[], bool] = lambda: True,
    env: Mapping[str, str] | None = None,
) -> None:
    """Ping ``WATCHDOG=1`` from the running loop every `interval` seconds, until cancelled.

    `interval` defaults to :func:`watchdog_interval`; with no watchdog configured this returns at once.
    `healthy` is asked before each ping: a False answer skips the ping, so a supervisor that knows it
    is wedged (for instance a worker it can no longer replace) lets systemd restart it.
    """
    if interval is None:
        interval = watchdog_interval(env)
    if interval is None:
        return
    while True:
        if healthy():
            notify("WATCHDOG=1", env)
        else:
            logger.warning("skipping the watchdog ping: the supervisor reports itself unhealthy")
        await asyncio.sleep(interval)


def clean_child_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` without the notify variables, for child processes that must not talk to systemd."""
    return {k: v for k, v in env.items() if k not in (NOTIFY_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV)}

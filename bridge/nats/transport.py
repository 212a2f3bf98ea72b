"""JetStream publishing, the transport of the `nats:` destinations of webhook delivery.

`bridge/webhook/delivery.py` owns the spool, the per-call lanes, the order and the retries; for a lane
whose destination is ``nats:<stream>:<prefix>:<route>`` (`policy.destination`) it calls `send`, which
publishes one event and says whether JetStream acked it. So an event of a NATS destination is delivered
exactly as a webhook is: spooled first, one call's events in ``seq`` order, retried with backoff until
acked, the row deleted only then.

- Subject: `subject.subject` (``<prefix>.<route>.<encoded call id>.<type>``); header ``Nats-Msg-Id``
  is the event's `event_id`, so a republished event (a lost ack, a restart after kill -9) is stored
  once within the stream's duplicate window (outcome ``duplicate``: vblaze_bridge_nats_duplicates_total).
- Connection: one per worker, to `nats.servers`, kept by nats-py (reconnects for ever, every
  `reconnect_wait_seconds`). The first connection is made in the background: a worker starts and takes
  calls with every server down; its events wait in the spool. A publish while disconnected waits for
  the connection at most `connect_timeout_seconds`, then fails as ``not_connected`` and is retried.
- Stream: before the first publish to a stream, its info is read; a missing stream is created
  (subjects ``<prefix>.>``, `replicas`, `retention`, `max_age_seconds`, `duplicate_window_seconds`). A
  stream that cannot be created (too few servers for the replicas, a subject overlap) is logged as an
  error naming ``nats.stream`` and counted (``stream_error``), and retried like any failed publish:
  events stay spooled until it exists.
- Files (credentials, TLS) are checked when the settings are built (`NatsSettings.from_config`): a
  missing or unreadable one is a ConfigError naming its key, and the worker does not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import nats
import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client

from bridge.config import NatsConfig
from bridge.errors import ConfigError
from bridge.nats import policy, subject
from bridge.nats.policy import Outcome
from bridge.webhook.delivery import TransportResult
from bridge.webhook.queue import DropReason

logger = logging.getLogger(__name__)

ERROR_LOG_INTERVAL = 30.0  # at most one log line of each connection complaint per interval
CLOSE_TIMEOUT = 5.0


class NatsObserver(Protocol):
    """Metrics hooks (`bridge.metrics.NatsMetrics`). Never raise, never block."""

    def attempt(self, outcome: Outcome, seconds: float) -> None: ...
    def sent(self, latency_seconds: float) -> None: ...
    def delivered(self, latency_seconds: float) -> None: ...
    def rejected(self, status: int) -> None: ...
    def dropped(self, reason: DropReason) -> None: ...
    def connected(self, up: bool) -> None: ...


@dataclass(frozen=True)
class NatsSettings:
    """The connection and stream settings, files checked. Build with `from_config`."""

    nats: NatsConfig
    user: str | None = None
    password: str | None = None

    @classmethod
    def from_config(cls, config: NatsConfig) -> NatsSettings:
        """Check the files `config` names; ConfigError naming the key if one cannot be read."""
        for key in (
            "creds_file",
            "nkey_seed_file",
            "user_password_file",
            "tls_ca_file",
            "tls_cert_file",
            "tls_key_file",
        ):
            path = getattr(config, key)
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"nats.{key}: cannot read {path}")
        if not config.servers:
            raise ConfigError("nats.servers: empty")
        user = password = None
        if config.user_password_file:
            with open(config.user_password_file, encoding="utf-8") as file:
                user, sep, password = file.read().strip().partition(":")
            if not sep or not user:
                raise ConfigError(
                    f"nats.user_password_file: {config.user_password_file} must hold user:password"
                )
        return cls(config, user, password)

    def tls(self) -> ssl.SSLContext | None:
        c = self.nats
        if not (c.tls_ca_file or c.tls_cert_file or any(s.startswith("tls://") for s in c.servers)):
            return None
        context = ssl.create_default_context(cafile=c.tls_ca_file)
        if c.tls_cert_file and c.tls_key_file:
            context.load_cert_chain(c.tls_cert_file, c.tls_key_file)
        return context

    def connect_options(self) -> dict[str, Any]:
        c = self.nats
        options: dict[str, Any] = {
            "servers": list(c.servers),
            "connect_timeout": c.connect_timeout_seconds,
            "reconnect_time_wait": c.reconnect_wait_seconds,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
            "name": f"vblaze-bridge pid {os.getpid()}",
        }
        if c.creds_file:
            options["user_credentials"] = c.creds_file
        if c.nkey_seed_file:
            options["nkeys_seed"] = c.nkey_seed_file
        if self.user is not None:
            options["user"], options["password"] = self.user, self.password
        tls = self.tls()
        if tls is not None:
            options["tls"] = tls
        return options


class _Throttle:
    """Whether a log line of one kind may be written now (at most every ERROR_LOG_INTERVAL)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def __call__(self, kind: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(kind, -ERROR_LOG_INTERVAL) < ERROR_LOG_INTERVAL:
            return False
        self._last[kind] = now
        return True


class NatsTransport:
    """Publishes events to JetStream for `WebhookSink` (see the module docstring)."""

    scheme = "nats"

    def __init__(
        self,
        settings: NatsSettings,
        observer: NatsObserver,
        *,
        connect: Callable[..., Any] = nats.connect,
    ) -> None:
        self._s = settings
        self._observer = observer
        self._connect = connect
        self._nc: Client | None = None
        self._connector: asyncio.Task[None] | None = None
        self._streams: set[str] = set()  # streams known to exist
        self._up = asyncio.Event()  # connected now
        self._ensuring = asyncio.Lock()  # one stream check at a time: lanes start together
        self._closing = False
        self._throttle = _Throttle()
        self.duplicates = 0  # publishes JetStream acked as duplicates

    @property
    def observer(self) -> NatsObserver:
        return self._observer

    # --- lifecycle -----------------------------------------------------------------------------------

    def begin(self) -> None:
        """Start connecting in the background (on the loop)."""
        if self._connector is None:
            self._connector = asyncio.create_task(self._connect_loop(), name="nats-connect")

    async def _connect_loop(self) -> None:
        c = self._s.nats
        bound = c.connect_timeout_seconds * (len(c.servers) + 1) + 1.0
        while self._nc is None:
            try:
                async with asyncio.timeout(bound):
                    self._nc = await self._connect(
                        **self._s.connect_options(),
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                    )
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                if self._throttle("connect"):
                    logger.error(
                        "nats.servers: cannot connect to any of %s (%s: %s); events stay spooled, retrying",
                        ", ".join(c.servers),
                        type(exc).__name__,
                        exc,
                    )
                await asyncio.sleep(c.reconnect_wait_seconds)  # as nats-py between reconnect rounds
        logger.info(
            "connected to NATS at %s", self._nc.connected_url.netloc if self._nc.connected_url else "?"
        )
        self._up.set()
        self.observer.connected(True)

    async def _on_error(self, exc: Exception) -> None:
        if self._throttle("error"):
            logger.warning("nats connection: %s: %s", type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        self._up.clear()
        self.observer.connected(False)
        if not self._closing and self._throttle("disconnected"):
            logger.warning("disconnected from NATS; reconnecting (events stay spooled)")

    async def _on_reconnected(self) -> None:
        self._up.set()
        self.observer.connected(True)
        url = self._nc.connected_url if self._nc is not None else None
        logger.info("reconnected to NATS at %s", url.netloc if url else "?")

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound for the close)
        self._closing = True
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.wait({self._connector}, timeout=1.0)
        if self._nc is not None and not self._nc.is_closed:
            try:
                async with asyncio.timeout(max(0.1, min(timeout, CLOSE_TIMEOUT))):
                    await self._nc.close()
            except TimeoutError:
                logger.error("NATS connection did not close within %.1f s", timeout)
            self.observer.connected(False)

    # --- one attempt ---------------------------------------------------------------------------------

    async def send(
        self, destination: str, call_id: str, kind: str, event_id: str, body: bytes
    ) -> TransportResult:
        """Publish one event and wait for JetStream's ack; never raises but CancelledError."""
        started = time.monotonic()
        outcome, reason = await self._publish(destination, call_id, kind, event_id, body)
        self.observer.attempt(outcome, time.monotonic() - started)
        if outcome is Outcome.DUPLICATE:
            self.duplicates += 1
            logger.info(
                "event %s (%s) of call %s was in the stream already: a duplicate publish, stored once",
                event_id,
                kind,
                call_id,
                extra={"call_id": call_id},
            )
        status = policy.STATUS_TOO_LARGE if outcome is Outcome.TOO_LARGE else 0
        return TransportResult(policy.verdict(outcome), reason, status)

    async def _publish(
        self, destination: str, call_id: str, kind: str, event_id: str, body: bytes
    ) -> tuple[Outcome, str]:
        parsed = policy.parse_destination(destination)
        if parsed is None:
            return Outcome.OTHER, f"not a NATS destination: {destination!r}"
        stream, prefix, route = parsed
        if not self._up.is_set():  # connecting or reconnecting: wait for it, bounded
            with contextlib.suppress(TimeoutError):  # still down: not_connected, below
                async with asyncio.timeout(self._s.nats.connect_timeout_seconds):
                    await self._up.wait()
        nc = self._nc
        if nc is None or not nc.is_connected:
            return Outcome.NOT_CONNECTED, "not connected to any of nats.servers"
        timeout = self._s.nats.publish_timeout_seconds
        js = nc.jetstream(timeout=timeout)
        try:
            async with asyncio.timeout(timeout * 3):  # stream check, create, publish: each bounded by nats-py
                if stream not in self._streams:
                    async with self._ensuring:
                        failure = (
                            None if stream in self._streams else await self._ensure_stream(js, stream, prefix)
                        )
                    if failure is not None:
                        return Outcome.STREAM_ERROR, failure
                ack = await js.publish(
                    subject.subject(prefix, route, call_id, kind),
                    body,
                    timeout=timeout,
                    stream=stream,
                    headers={"Nats-Msg-Id": event_id},
                )
        except (TimeoutError, nats.errors.TimeoutError):
            return Outcome.TIMEOUT, f"no ack within {timeout:g}s"
        except nats.errors.NoRespondersError:
            return Outcome.NO_RESPONDERS, "no JetStream responders (no quorum, or JetStream off)"
        except nats.errors.MaxPayloadError as exc:
            return Outcome.TOO_LARGE, f"larger than the server's max_payload: {exc}"
        except nats.js.errors.NotFoundError as exc:
            self._streams.discard(stream)
            return Outcome.STREAM_ERROR, f"nats.stream {stream}: {exc}"
        except nats.js.errors.APIError as exc:
            return Outcome.API_ERROR, f"JetStream refused the publish: {exc}"
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.StaleConnectionError,
            nats.errors.OutboundBufferLimitError,
            OSError,
        ) as exc:
            return Outcome.NOT_CONNECTED, f"{type(exc).__name__}: {exc}"
        except nats.errors.Error as exc:
            return Outcome.OTHER, f"{type(exc).__name__}: {exc}"
        return (Outcome.DUPLICATE if ack.duplicate else Outcome.OK), ""

    async def _ensure_stream(self, js: Any, stream: str, prefix: str) -> str | None:
        """Make sure `stream` exists (create it if missing); None, or why it cannot be used (logged)."""
        c = self._s.nats
        wanted = f"{prefix}.>"
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            info = None
        if info is None:
            config = nats.js.api.StreamConfig(
                name=stream,
                subjects=[wanted],
                retention=nats.js.api.RetentionPolicy(c.retention),
                max_age=c.max_age_seconds or None,
                num_replicas=c.replicas,
                duplicate_window=c.duplicate_window_seconds,
                storage=nats.js.api.StorageType.FILE,
            )
            try:
                await js.add_stream(config)
            except nats.js.errors.APIError as exc:
                why = (
                    f"nats.stream: stream {stream} does not exist and cannot be created "
                    f"(nats.replicas {c.replicas}): {exc}"
                )
                if self._throttle("stream"):
                    logger.error("%s; events stay spooled", why)
                return why
            logger.info(
                "created JetStream stream %s (subjects %s, %d replica(s))", stream, wanted, c.replicas
            )
        elif wanted not in (info.config.subjects or []):
            why = f"nats.stream: stream {stream} does not take {wanted} (it takes {info.config.subjects})"
            if self._throttle("stream"):
                logger.error("%s; events stay spooled", why)
            return why
        self._streams.add(stream)
        return None


def make_transport(config: NatsConfig, observer: NatsObserver | None = None) -> NatsTransport:
    """The worker's NATS transport (ConfigError if a file it names cannot be read)."""
    if observer is None:
        from bridge.metrics import NatsMetrics

        observer = NatsMetrics()
    return NatsTransport(NatsSettings.from_config(config), observer)

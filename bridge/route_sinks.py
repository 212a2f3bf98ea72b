"""A worker's sinks when routes send events to different places: one sink per distinct sink
configuration, and each call handed its route's.

- webhook: one `WebhookSink` for the whole worker (one spool, one owner, one set of lanes: per-call
  ordering, retries and metrics as without routes), knowing every URL of every route with that route's
  secret and bearer token (`WebhookSettings.credentials`); a route's calls get a view of it that
  submits to the route's URLs only (`webhook.urls`). The spool-wide keys (spool path and size,
  timeouts, backoff, claim interval, basic auth) are the top level's: a route may not set them.
- nats (`sink.kind: nats`, or `sink.also_nats` next to the webhook): the same `WebhookSink`, whose
  destinations are then the route's webhook URLs and its NATS destination
  (``nats:<stream>:<prefix>:<route>``, `bridge.nats.policy.destination`), delivered through one
  `NatsTransport` (one connection a worker, the top level's `nats` settings; a route may name its
  own stream and subject prefix). Spool, order per call, retries and claims are the webhook's.
- jsonl: one `JsonLinesSink` per distinct `sink.jsonl_path` (one writer thread each).

`sink_for(config)` takes a call's effective config (`Config.for_route`); `update(config)` (a reload)
adds what new routes need and never closes a sink a call may still use. `ordered_after` runs its
function once every sink has written what was submitted before (the call ledger's `end` lines wait for
that, whichever sink the call used); `for_route` gives a lost call's route its sink (`bridge.ledger`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from bridge.config import Config
from bridge.events import BridgeEvent, EventSink
from bridge.sinks import JsonLinesSink
from sip.routing import DEFAULT_ROUTE

if TYPE_CHECKING:  # webhook delivery (aiohttp) is imported only by a worker that has a webhook route
    from bridge.webhook.delivery import Credentials, DeliveryObserver, Transport, WebhookSink


class _RouteView:
    """The shared webhook sink as one route's calls see it: its URLs only. Started and closed with the
    shared sink, by `RouteSinks`."""

    def __init__(self, sink: WebhookSink, urls: Sequence[str]) -> None:
        self._sink = sink
        self.urls = tuple(urls)

    async def start(self) -> None:
        """The shared sink is started by `RouteSinks.start`."""

    def submit(self, event: BridgeEvent) -> None:
        self._sink.submit(event, self.urls)

    def submit_lost(self, event: BridgeEvent) -> None:
        self._sink.submit_lost(event, self.urls)

    def ordered_after(self, fn: Callable[[], None]) -> None:
        self._sink.ordered_after(fn)

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 (the EventSink contract)
        """The shared sink is closed by `RouteSinks.aclose`."""


class RouteSinks:
    """Every sink the worker's routes use (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        observer: DeliveryObserver | None = None,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._observer = observer
        self._config = config
        self.webhook: WebhookSink | None = None
        self.jsonl: dict[str, JsonLinesSink] = {}
        self._add(config)

    @staticmethod
    def _effective(config: Config) -> list[tuple[str, Config]]:
        return [
            (DEFAULT_ROUTE, config),
            *((route.name, config.for_route(route.name)) for route in config.routes),
        ]

    @classmethod
    def check_credentials(cls, config: Config, environ: Mapping[str, str]) -> None:
        """ConfigError if the webhooks of some route name a secret or bearer variable that `environ`
        lacks: the supervisor refuses to start then, rather than start workers that each fail on it."""
        from bridge.errors import ConfigError
        from bridge.webhook.delivery import credentials_from_config

        for route, effective in cls._effective(config):
            if "webhook" in effective.sink.destinations:
                try:
                    credentials_from_config(effective.webhook, environ)
                except ConfigError as exc:
                    raise ConfigError(
                        str(exc) if route == DEFAULT_ROUTE else f"routes.{route}: {exc}"
                    ) from exc

    @staticmethod
    def destinations(config: Config, route: str) -> list[str]:
        """Where the events of `route`'s calls (effective config `config`) are spooled for."""
        out: list[str] = []
        if "webhook" in config.sink.destinations:
            out += config.webhook.urls
        if "nats" in config.sink.destinations:
            from bridge.nats.policy import destination

            out.append(destination(config.nats.stream, config.nats.subject_prefix, route))
        return out

    def _add(self, config: Config) -> list[EventSink]:
        """Make the sinks `config`'s routes need and do not have yet; return the new ones."""
        new: list[EventSink] = []
        hooks: list[tuple[str, Config]] = []  # the effective configs whose sink is the spooled one
        for route, effective in self._effective(config):
            if effective.sink.destinations:
                hooks.append((route, effective))
            elif effective.sink.jsonl_path not in self.jsonl:
                sink = self.jsonl[effective.sink.jsonl_path] = JsonLinesSink(effective.sink.jsonl_path)
                new.append(sink)
        if hooks:
            new += self._add_webhook(hooks)
        return new

    def _add_webhook(self, hooks: list[tuple[str, Config]]) -> list[EventSink]:
        """The one webhook sink, made (its spool-wide keys from the first of `hooks`, which all share
        them) or told of the destinations of `hooks` and how to sign for each URL."""
        from bridge.webhook.delivery import WebhookSettings, WebhookSink, credentials_from_config

        urls: list[str] = []
        credentials: dict[str, Credentials] = {}
        for route, effective in hooks:
            if "webhook" in effective.sink.destinations:
                signer = credentials_from_config(effective.webhook, self._environ)
                for url in effective.webhook.urls:
                    credentials.setdefault(url, signer)
            urls += self.destinations(effective, route)
        nats = [effective for _, effective in hooks if "nats" in effective.sink.destinations]
        if self.webhook is not None:
            self.webhook.add_receivers(urls, credentials)
            if nats and self.webhook.transport("nats") is None:
                self.webhook.add_transport(self._nats_transport(nats[0]))
            return []
        base = WebhookSettings.from_config(hooks[0][1].webhook, self._environ, signed=bool(credentials))
        settings = dataclasses.replace(base, urls=tuple(dict.fromkeys(urls)), credentials=credentials)
        if self._observer is None:
            from bridge.metrics import WebhookMetrics

            self._observer = WebhookMetrics()
        transports = [self._nats_transport(nats[0])] if nats else []
        self.webhook = WebhookSink(settings, observer=self._observer, transports=transports)
        self.webhook.begin()
        return [self.webhook]

    @staticmethod
    def _nats_transport(config: Config) -> Transport:
        """The worker's one NATS connection, with the top level's settings (a route sets only its
        stream and subject prefix, which travel in the destination)."""
        from bridge.nats.transport import make_transport

        return make_transport(config.nats)

    def sink_for(self, config: Config, route: str = DEFAULT_ROUTE) -> EventSink:
        """The sink of the calls of `route`, whose effective config is `config`."""
        if not config.sink.destinations:
            return self.jsonl[config.sink.jsonl_path]
        assert self.webhook is not None, "RouteSinks was built without this route's config"
        return _RouteView(self.webhook, self.destinations(config, route))

    def for_route(self, name: str) -> EventSink:
        """The sink of route `name` in the current config (the top level's for an unknown name)."""
        return self.sink_for(self._config.for_route(name), name)

    async def update(self, config: Config) -> None:
        """A reload: make what `config`'s routes need; calls keep the sinks they have."""
        new = self._add(config)
        self._config = config
        for sink in new:
            await sink.start()

    # --- as one EventSink ------------------------------------------------------------------------------

    def all(self) -> list[EventSink]:
        sinks: list[EventSink] = list(self.jsonl.values())
        if self.webhook is not None:
            sinks.append(self.webhook)
        return sinks

    async def start(self) -> None:
        for sink in self.all():
            await sink.start()

    def submit(self, event: BridgeEvent) -> None:
        """A call whose route is unknown: the top level's sink."""
        self.sink_for(self._config).submit(event)

    def ordered_after(self, fn: Callable[[], None]) -> None:
        """Run `fn` once every sink has written what was submitted to it so far."""
        sinks = self.all()
        left = [len(sinks)]
        lock = threading.Lock()

        def one_done() -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                fn()

        if not sinks:
            fn()
        for sink in sinks:
            sink.ordered_after(one_done)  # type: ignore[attr-defined]

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 (the EventSink contract)
        """Close every sink within `timeout` in all (the webhook first: it has the most to flush)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        for sink in reversed(self.all()):
            await sink.aclose(max(0.0, deadline - loop.time()))

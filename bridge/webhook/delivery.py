"""Webhook delivery: the `EventSink` that POSTs each event to every receiver, in order, at least once.

This module is the driver. The package: `payload.py` builds and signs the bytes, `policy.py` gives the
verdict on one attempt (delivered, retry, reject) and the backoff, `queue.py` holds the ordering rules
(which event goes next, when to retry, what to do when the spool is full, when a row has vanished or
belongs to a dead owner), `spool.py` is the disk; all four but the spool do no I/O. Here are the asyncio
tasks, the HTTP session and the spool thread, doing what `queue.py` decides.

A destination is a receiver URL, or ``<scheme>:...`` delivered by the `Transport` of that scheme
(``nats:<stream>:<prefix>:<route>``, `bridge/nats/transport.py`): the lanes, the spool, the order, the
claims and the retries below are the same for both; only the attempt differs (a POST answered 2xx, a
publish acked by JetStream), and a transport's events are counted by its own observer.

For every (url, call) there is one lane, ordered by `seq`, and while it has events one asyncio task
sending its head. The head is retried until the receiver answers 2xx (delivered) or a final 4xx
(rejected, recorded); only then does the next event of that call go out to that URL. Other calls and
other URLs have their own lanes and never wait for it.

Across owners (worker processes, and each worker's earlier lives), one rule keeps a call in order: an
event is sent only once this sink has finished its predecessor (seq - 1), or, when it has not (the
first event a sink holds of a call it took over, or a lost call's ``call.ended``), once the spool
holds no earlier event of that call for that URL under another owner, alive or dead. While one does,
the event waits, and this sink claims the rows of dead owners at once, so that they come into its
lane ahead of it. So who writes an event does not matter for order:

- a lost call's ``call.ended`` (reason ``worker_lost``) is written by the replacement worker of the
  same index, which holds the dead worker's ledger (`bridge/ledger.py`), into the spool as its own
  row, behind whatever of the call is still spooled; it goes out after those, whoever holds them;
- if the spool already holds that ``seq`` of the call (the real ``call.ended`` made it to disk
  before the worker died), the ledger's copy is not written and not sent.

Lifecycle::

    sink = make_webhook_sink(config)   # or WebhookSink(WebhookSettings.from_config(...), observer=...)
    await sink.start()        # open the spool, claim dead owners' events, resume their delivery
    sink.submit(event)        # from the call pipeline, on the loop: never blocks
    await sink.aclose(10.0)   # flush within the bound; what is left stays spooled for the next start

`make_webhook_sink` has already called `begin()`, so `submit` works before `start()` has returned; its
events are sent once the spool is open.

Durability: `submit` hands the event to the spool thread at once; the first attempt waits for that
write. Every spool operation runs on one thread of this sink's own (SQLite writes are small but
fsync'ed), so the event loop never waits on the disk. A 2xx deletes the row before the call's next
event is sent, so after a crash the receiver may see the last delivered event again (same
`event_id`) but never an older event after a newer one of the same call.

The spool is bounded: above `spool_warn_fraction` of `spool_max_bytes` (checked after every write and
every claim, so every `claim_interval_seconds` at least) a warning is logged every 30 s; at the
limit an event is refused, logged as an error and counted (`observer.dropped`), and the receiver sees
a hole in that call's `seq`. `claim_interval_seconds` is also how often a running sink adopts the
events of dead owners.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yarl

from bridge.config import (
    DEFAULT_CLAIM_INTERVAL,
    DEFAULT_SPOOL_MAX_BYTES,
    DEFAULT_SPOOL_WARN_FRACTION,
    DEFAULT_WEBHOOK_BACKOFF_INITIAL,
    DEFAULT_WEBHOOK_BACKOFF_MAX,
    DEFAULT_WEBHOOK_TIMEOUT,
    Config,
    WebhookConfig,
)
from bridge.errors import BridgeError, ConfigError
from bridge.events import BridgeEvent
from bridge.webhook import crashpoint, payload, policy, queue
from bridge.webhook.http import HttpClient
from bridge.webhook.spool import InsertResult, LostEndResult, NewEvent, Spool, SpooledEvent

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_SPOOL_OP_TIMEOUT = 15.0  # one SQLite operation on the spool thread
DETAIL_BYTES = 512  # of a rejecting answer's body, kept for the record
CLOSE_TIMEOUT = 5.0  # each transport's connection


def shown_url(url: str) -> str:
    """`url` without user and password, for logs (a transport's destination as it is: no secrets)."""
    if not url.startswith(("http://", "https://")):
        return url
    try:
        return str(yarl.URL(url).with_user(None))
    except (ValueError, TypeError):
        return "<invalid url>"


class SinkStateError(BridgeError):
    """`submit` or `start` called in a state that does not allow it."""


class DeliveryObserver(Protocol):
    """Metrics hooks; `bridge/metrics.py` implements them. Never raise, never block."""

    def attempt(self, outcome: policy.Outcome, seconds: float) -> None:
        """One attempt ended."""

    def sent(self, latency_seconds: float) -> None:
        """An utterance's first request went out, `latency_seconds` after the bridge produced it."""

    def delivered(self, latency_seconds: float) -> None:
        """An utterance was answered 2xx, `latency_seconds` after the bridge produced it."""

    def spool_depth(self, n: int) -> None:
        """Events this process has waiting (queued in memory and spooled)."""

    def spool_size(self, used: int, limit: int) -> None:
        """The spool uses `used` of its `limit` bytes (after a write or a claim)."""

    def rejected(self, status: int) -> None:
        """An event was answered with a final status and will not be retried."""

    def dropped(self, reason: queue.DropReason) -> None:
        """An event was refused before any attempt."""


class LaneObserver(Protocol):
    """The hooks of one destination's events (a transport's own, or the webhook observer's)."""

    def sent(self, latency_seconds: float) -> None: ...
    def delivered(self, latency_seconds: float) -> None: ...
    def rejected(self, status: int) -> None: ...
    def dropped(self, reason: queue.DropReason) -> None: ...


@dataclass(frozen=True)
class TransportResult:
    """One attempt of a transport: its verdict, a reason for the log, the status a rejection records."""

    verdict: policy.Verdict
    reason: str
    status: int = 0


class Transport(Protocol):
    """Another way than an HTTP POST to deliver a destination's events (`bridge/nats/transport.py`).

    A destination ``<scheme>:...`` goes to the transport of that `scheme`; the lanes, the spool, the
    order and the retries are this module's. `send` makes one attempt, bounded, and records its own
    attempt metrics; it raises nothing but CancelledError.
    """

    scheme: str

    @property
    def observer(self) -> LaneObserver: ...

    def begin(self) -> None: ...

    async def send(
        self, destination: str, call_id: str, kind: str, event_id: str, body: bytes
    ) -> TransportResult: ...

    async def aclose(self, timeout: float) -> None: ...  # noqa: ASYNC109 (a bound)


class NullObserver:
    def attempt(self, outcome: policy.Outcome, seconds: float) -> None:
        pass

    def sent(self, latency_seconds: float) -> None:
        pass

    def delivered(self, latency_seconds: float) -> None:
        pass

    def spool_depth(self, n: int) -> None:
        pass

    def spool_size(self, used: int, limit: int) -> None:
        pass

    def rejected(self, status: int) -> None:
        pass

    def dropped(self, reason: queue.DropReason) -> None:
        pass


@dataclass(frozen=True)
class Credentials:
    """How requests to one URL are signed and authorised (a route may name its own variables)."""

    secret: bytes
    bearer_token: str | None = None


def credentials_from_config(config: WebhookConfig, environ: Mapping[str, str]) -> Credentials:
    """The secret and bearer token `config` names, from `environ`; ConfigError naming the key if unset."""
    settings = WebhookSettings.from_config(config, environ)
    return Credentials(settings.secret, settings.bearer_token)


@dataclass(frozen=True)
class WebhookSettings:
    """Everything delivery needs, secrets resolved. Build it with `from_config` at startup."""

    urls: tuple[str, ...]
    secret: bytes
    spool_path: Path
    timeout_seconds: float = DEFAULT_WEBHOOK_TIMEOUT
    backoff_initial_seconds: float = DEFAULT_WEBHOOK_BACKOFF_INITIAL
    backoff_max_seconds: float = DEFAULT_WEBHOOK_BACKOFF_MAX
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    spool_warn_fraction: float = DEFAULT_SPOOL_WARN_FRACTION
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None
    claim_interval_seconds: float = DEFAULT_CLAIM_INTERVAL  # how often dead owners' events are adopted
    spool_op_timeout_seconds: float = DEFAULT_SPOOL_OP_TIMEOUT
    # routes: URLs signed with another secret or bearer token than the above (a route's webhook section)
    credentials: Mapping[str, Credentials] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls, config: WebhookConfig, environ: Mapping[str, str], *, signed: bool = True
    ) -> WebhookSettings:
        """Resolve secrets from `environ`; raise ConfigError naming the key if one is missing.

        Reads ``basic_auth_env`` (a variable holding ``user:password``) if the config has that key.
        `signed` False: no HTTP receiver (only NATS destinations), no secret needed.
        """
        secret = environ.get(config.secret_env, "")
        if not secret and signed:
            raise ConfigError(
                f"webhook.secret_env: environment variable {config.secret_env} is not set or empty "
                "(webhooks are always signed)"
            )
        bearer: str | None = None
        if config.bearer_env:
            bearer = environ.get(config.bearer_env, "")
            if not bearer:
                raise ConfigError(f"webhook.bearer_env: environment variable {config.bearer_env} is not set")
        basic: tuple[str, str] | None = None
        basic_env: str | None = getattr(config, "basic_auth_env", None)
        if basic_env:
            user, sep, password = environ.get(basic_env, "").partition(":")
            if not sep or not user:
                raise ConfigError(
                    f"webhook.basic_auth_env: environment variable {basic_env} must hold user:password"
                )
            basic = (user, password)
        return cls(
            urls=tuple(config.urls),
            secret=secret.encode(),
            spool_path=Path(config.spool_path),
            timeout_seconds=config.timeout_seconds,
            backoff_initial_seconds=config.backoff_initial_seconds,
            backoff_max_seconds=config.backoff_max_seconds,
            spool_max_bytes=config.spool_max_bytes,
            spool_warn_fraction=config.spool_warn_fraction,
            claim_interval_seconds=config.claim_interval_seconds,
            bearer_token=bearer,
            basic_auth=basic,
        )


class _State(enum.IntEnum):
    NEW = 0
    STARTING = 1  # spool opening; submit queues, nothing is sent yet
    RUNNING = 2
    CLOSING = 3  # aclose: submit still spools, nothing new is sent
    CLOSED = 4


_Write = asyncio.Future[InsertResult]  # an event's pending spool write
_Item = queue.Item[_Write]
_Lane = queue.Lane[_Write]


class WebhookSink:
    """Ordered, durable, signed webhook delivery to every URL in `settings.urls`.

    The rules are `bridge.webhook.queue`'s (`queue.Book` holds the lanes); this class runs one task per
    lane, the spool thread and the HTTP session, and does what the rules say.
    """

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        observer: DeliveryObserver | None = None,
        http: HttpClient | None = None,
        rand: random.Random | None = None,
        transports: Sequence[Transport] = (),
    ) -> None:
        if not settings.urls:
            raise ConfigError("webhook.urls: empty")
        self._transports = {t.scheme: t for t in transports}  # destinations that are not HTTP URLs
        self._s = settings
        self._urls = list(settings.urls)  # every URL a submit may name (routes: add_receivers)
        self._credentials = dict(settings.credentials)
        self._observer: DeliveryObserver = observer if observer is not None else NullObserver()
        self._http = http
        self._own_http = http is None
        self._rand = rand if rand is not None else random.Random()
        self._state = _State.NEW
        self._spool = Spool(settings.spool_path, settings.spool_max_bytes)
        self._executor: ThreadPoolExecutor | None = None
        self._book: queue.Book[_Write] = queue.Book(claim_interval=settings.claim_interval_seconds)
        self._tasks: dict[_Lane, asyncio.Task[None]] = {}  # the task sending each lane's head
        self._watch = queue.SpoolWatch(settings.spool_max_bytes, settings.spool_warn_fraction)
        self._claimer: asyncio.Task[None] | None = None
        self._startup: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    def begin(self) -> None:
        """Start without waiting (on the loop): `submit` may be called at once; its events are spooled
        after the spool opens and sent once spooled events are resumed. Prefer `await start()`, which
        raises if the spool cannot be opened; after `begin()` such a failure is logged and `submit`
        then raises SinkStateError."""
        if self._state is not _State.NEW:
            raise SinkStateError(f"begin() in state {self._state.name}")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook-spool")
        self._state = _State.STARTING
        self._startup = asyncio.create_task(self._startup_sequence(), name="webhook-start")
        self._startup.add_done_callback(self._startup_done)

    async def start(self) -> None:
        """Open the spool, claim the events of dead owners (a crashed worker, this worker's previous
        life) and start delivering every spooled event this sink now owns. Idempotent after `begin()`."""
        if self._state is _State.NEW:
            self.begin()
        if self._startup is None:
            raise SinkStateError(f"start() in state {self._state.name}")
        async with asyncio.timeout(self._s.spool_op_timeout_seconds * 2):
            await asyncio.shield(self._startup)

    async def _startup_sequence(self) -> None:
        spooled = await self._spool_op(self._spool_startup)
        if self._http is None:
            self._http = HttpClient(detail_bytes=DETAIL_BYTES)  # each attempt bounded by asyncio.timeout
        if self._state is not _State.STARTING:
            return  # closed meanwhile
        for transport in self._transports.values():
            transport.begin()
        self._state = _State.RUNNING
        if spooled:
            logger.info("resuming delivery of %d spooled webhook events", len(spooled))
            self._load(spooled)
        for lane in list(self._book.lanes.values()):  # events submitted while starting
            self._ensure_task(lane)
        self._claimer = asyncio.create_task(self._claim_loop(), name="webhook-claim")
        logger.info(
            "webhook delivery started: %d receiver(s), spool %s (owner %s)",
            len(self._s.urls),
            self._s.spool_path,
            self._spool.owner,
        )

    def _spool_startup(self) -> list[SpooledEvent]:
        """On the spool thread: open, claim orphans (then ours), list what is ours to send."""
        self._spool.open()
        try:
            self._spool.claim_orphans()
            return self._spool.pending()
        except BaseException:
            self._spool.close()
            raise

    def _startup_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        logger.error("webhook delivery could not start", exc_info=task.exception())
        if self._state is _State.STARTING:
            self._state = _State.CLOSED
            if self._executor is not None:
                self._executor.shutdown(wait=False)

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 (the EventSink interface)
        """Deliver what can be delivered within `timeout` seconds, then stop. Undelivered events stay in
        the spool and are claimed by the next sink that starts on it."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            return
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        if self._state is _State.STARTING and self._startup is not None:
            await asyncio.wait({self._startup}, timeout=max(self._s.spool_op_timeout_seconds, timeout))
        if self._state is not _State.RUNNING:  # start failed, or still stuck
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSING
        if self._claimer is not None:
            self._claimer.cancel()
        await self._stop_lanes(max(0.0, deadline - loop.time()))
        if self._claimer is not None:
            await asyncio.wait({self._claimer}, timeout=1.0)
        try:
            # Writes submitted so far finish first (the spool thread is FIFO), whatever the timeout.
            await self._spool_op(self._spool.close, bound=max(self._s.spool_op_timeout_seconds, timeout))
        except TimeoutError:
            logger.error("webhook spool did not close in time; its last writes may be lost")
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            self._state = _State.CLOSED
            for transport in self._transports.values():
                await transport.aclose(CLOSE_TIMEOUT)
            if self._own_http and self._http is not None:
                await self._http.aclose()

    async def _stop_lanes(self, seconds: float) -> None:
        """Let the lanes' tasks finish for `seconds`, then cancel those still running."""
        tasks = set(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=seconds)
        if pending:
            logger.warning(
                "webhook delivery stopped with %d event(s) undelivered; they stay in the spool",
                self._book.undelivered(),
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)

    # --- routes: receivers per route, one spool -------------------------------------------------------

    def add_receivers(self, urls: Sequence[str], credentials: Mapping[str, Credentials]) -> None:
        """Let `submit` name these URLs too (a reload's new routes); `credentials` as in the settings."""
        self._urls += [url for url in urls if url not in self._urls]
        self._credentials.update(credentials)

    def add_transport(self, transport: Transport) -> None:
        """Deliver the destinations of `transport.scheme` through it too (a reload's first NATS route)."""
        if transport.scheme in self._transports:
            return
        self._transports[transport.scheme] = transport
        if self._state is _State.RUNNING:
            transport.begin()

    def transport(self, scheme: str) -> Transport | None:
        return self._transports.get(scheme)

    def _transport_of(self, destination: str) -> Transport | None:
        scheme, sep, _ = destination.partition(":")
        return self._transports.get(scheme) if sep else None

    def _observer_of(self, lane: _Lane) -> LaneObserver:
        transport = self._transport_of(lane.url)
        return self._observer if transport is None else transport.observer

    # --- the EventSink side --------------------------------------------------------------------------

    def submit(self, event: BridgeEvent, urls: Sequence[str] | None = None) -> None:
        """Queue `event` for every receiver (or those of `urls`, a route's) and have it written to the
        spool. Never blocks.

        During `aclose` the event is still spooled (for the next start) but not sent.
        """
        if self._state not in (_State.STARTING, _State.RUNNING, _State.CLOSING):
            raise SinkStateError(f"submit() in state {self._state.name}")
        body = payload.encode(event)
        eid = payload.event_id(event.call_id, event.seq)
        wanted, urls = (self._s.urls if urls is None else urls), []
        for url in wanted:
            if not self._book.accepts(url, event.call_id, event.seq):
                logger.error(
                    "event %s of call %s submitted twice; ignoring the second", event.seq, event.call_id
                )
                continue
            urls.append(url)
        if not urls:
            return
        rows = [NewEvent(url, event.call_id, event.seq, eid, event.kind, event.time, body) for url in urls]
        future = self._spool_future(self._spool.insert, rows)
        if self._state is _State.CLOSING:
            future.add_done_callback(functools.partial(self._persisted, []))
            return
        items = []
        for row, url in enumerate(urls):
            item = _Item(event.seq, eid, event.kind, event.time, body, future, row=row)
            items.append((self._enqueue(url, event.call_id, item), item))
        future.add_done_callback(functools.partial(self._persisted, items))

    def submit_lost(self, event: BridgeEvent, urls: Sequence[str] | None = None) -> None:
        """Spool and send the call.ended (worker_lost) of a call whose worker died (`bridge.ledger`).

        The spool numbers it after the call's last spooled event if that is past `event.seq`, and drops
        it if the real call.ended is spooled already; it is sent after the call's earlier events, which
        ever owner holds them (see the module docstring). Call once the sink is started.
        """
        if self._state is not _State.RUNNING:
            raise SinkStateError(f"submit_lost() in state {self._state.name}")
        urls = list(self._s.urls if urls is None else urls)

        def encode(seq: int) -> tuple[str, bytes]:
            numbered = dataclasses.replace(event, seq=seq)
            return payload.event_id(event.call_id, seq), payload.encode(numbered)

        future = self._spool_future(
            self._spool.insert_lost_end, urls, event.call_id, event.seq, event.time, encode
        )
        future.add_done_callback(functools.partial(self._lost_persisted, event, urls))

    def _lost_persisted(
        self, event: BridgeEvent, urls: list[str], future: asyncio.Future[LostEndResult]
    ) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            logger.error(
                "webhook spool: cannot write the call.ended of lost call %s: %r", event.call_id, error
            )
            return
        result = future.result()
        verdict = queue.lost_end(result.already_ended, result.seq)
        self._check_size(result.used_bytes, refused=verdict is queue.LostEnd.DROP)
        if verdict is queue.LostEnd.ALREADY_ENDED:
            logger.info("lost call %s: its call.ended is spooled already; that one is sent", event.call_id)
            return
        if verdict is queue.LostEnd.DROP or result.seq is None:
            logger.error("webhook spool full: call.ended of lost call %s dropped", event.call_id)
            self._observer.dropped(queue.DropReason.SPOOL_FULL)
            return
        eid = payload.event_id(event.call_id, result.seq)
        if self._state is not _State.RUNNING:
            return  # spooled: the next start sends it
        for url in urls:
            self._enqueue(url, event.call_id, _Item(result.seq, eid, event.kind, event.time, None, None))

    def ordered_after(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the spool thread once every spool write submitted so far is done (the call ledger
        records a call's end only after its call.ended is on disk). Runs it at once if the sink is not
        open. `fn` must be short; an exception is logged."""

        def guarded() -> None:
            try:
                fn()
            except Exception:
                logger.exception("webhook spool thread: a function run after the writes failed")

        if self._executor is None or self._state not in (_State.STARTING, _State.RUNNING, _State.CLOSING):
            guarded()
            return
        try:
            self._executor.submit(guarded)
        except RuntimeError:  # shut down meanwhile
            guarded()

    async def wait_persisted(self, seconds: float) -> None:
        """Wait, at most `seconds`, until every event submitted so far is spooled (or refused)."""
        await self._spool_op(lambda: None, bound=seconds)

    @property
    def pending(self) -> int:
        """Events this process has not finished with."""
        return self._book.depth

    # --- lanes ---------------------------------------------------------------------------------------

    def _load(self, spooled: list[SpooledEvent]) -> None:
        for row in spooled:
            if not self._book.accepts(row.url, row.call_id, row.seq):
                continue
            if row.url not in self._urls:
                logger.warning(
                    "spooled event for %s, no longer configured: delivering it anyway", shown_url(row.url)
                )
            self._enqueue(
                row.url, row.call_id, _Item(row.seq, row.event_id, row.kind, row.event_time, None, None)
            )

    def _enqueue(self, url: str, call_id: str, item: _Item) -> _Lane:
        lane = self._book.enqueue(url, call_id, item)
        self._depth_changed()
        self._ensure_task(lane)
        return lane

    def _ensure_task(self, lane: _Lane) -> None:
        if lane not in self._tasks and lane.items and self._state is _State.RUNNING:
            task = asyncio.create_task(self._run(lane), name=f"webhook {lane.call_id} {shown_url(lane.url)}")
            task.add_done_callback(self._lane_done)
            self._tasks[lane] = task

    @staticmethod
    def _lane_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error(
                "%s: its task failed; its events stay spooled, and go out with the call's next event "
                "or at the next start",
                task.get_name(),
                exc_info=error,
            )

    def _depth_changed(self) -> None:
        self._observer.spool_depth(self._book.depth)

    def _persisted(self, items: list[tuple[_Lane, _Item]], future: asyncio.Future[InsertResult]) -> None:
        """On the loop, once an insert is done: check the spool's size, settle the events not in flight."""
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            logger.error("webhook spool write failed: %r; the event is kept in memory only", error)
            return
        result = future.result()
        self._check_size(result.used_bytes, refused=not result.accepted)
        for lane, item in items:
            verdict = queue.written(result.accepted, result.inserted, item.row)
            if self._book.settle(lane, item, verdict):
                self._depth_changed()
                if verdict is queue.Written.DUPLICATE:
                    self._duplicate(lane, item)
                else:
                    self._dropped(lane, item)

    def _dropped(self, lane: _Lane, item: _Item) -> None:
        logger.error(
            "webhook spool full: event %d (%s) of call %s for %s dropped",
            item.seq,
            item.kind,
            lane.call_id,
            shown_url(lane.url),
            extra={"call_id": lane.call_id},
        )
        self._observer_of(lane).dropped(queue.DropReason.SPOOL_FULL)

    def _duplicate(self, lane: _Lane, item: _Item) -> None:
        logger.warning(
            "event %d (%s) of call %s for %s is already spooled by another owner; that one is sent",
            item.seq,
            item.kind,
            lane.call_id,
            shown_url(lane.url),
            extra={"call_id": lane.call_id},
        )

    def _check_size(self, used: int, *, refused: bool = False) -> None:
        """Log loudly, at most every SPOOL_WARN_INTERVAL each: near the limit, and at it."""
        alarm = self._watch.check(used, time.monotonic(), refused=refused)
        limit = self._watch.limit
        self._observer.spool_size(used, limit)
        if alarm is queue.Alarm.FULL:
            logger.error(
                "webhook spool FULL (%d of %d bytes): new events are refused until receivers catch up",
                used,
                limit,
            )
        elif alarm is queue.Alarm.NEAR:
            logger.warning(
                "webhook spool at %.0f%% of its limit (%d of %d bytes): receivers are not keeping up; "
                "events will be refused when it is full",
                100.0 * used / limit,
                used,
                limit,
            )

    # --- one lane's task -----------------------------------------------------------------------------

    async def _run(self, lane: _Lane) -> None:
        """Send the lane's head until it is done, then the next, until the lane is empty."""
        try:
            while lane.items:
                item = lane.items[0]
                if not await self._in_order(lane, item):
                    continue  # look at the head again: a claim may have queued earlier events
                self._book.start(lane)
                await self._deliver(lane, item)
                self._book.finish(lane)
                self._depth_changed()
        finally:
            self._tasks.pop(lane, None)
            self._book.release(lane)

    async def _in_order(self, lane: _Lane, item: _Item) -> bool:
        """Whether `item` may go now (`queue.Book.order`); if not, wait as told and say False."""
        if self._book.order(lane) is queue.Order.SEND:
            return True
        hold = self._book.order_checked(lane, await self._check_order(lane, item), time.monotonic())
        if hold is None:
            return True
        if hold.first:
            logger.info(
                "event %d (%s) of call %s waits for its earlier events, held by another owner",
                item.seq,
                item.kind,
                lane.call_id,
                extra={"call_id": lane.call_id},
            )
        if hold.claim:
            await self._claim_once()
            if lane.moved(item):
                return False
        await asyncio.sleep(hold.seconds)
        return False

    async def _check_order(self, lane: _Lane, item: _Item) -> queue.Check:
        """Ask the spool whether another owner holds an earlier event of the lane."""
        try:
            held = await self._spool_op(self._spool.earlier_elsewhere, lane.url, lane.call_id, item.seq)
        except TimeoutError:
            logger.error(
                "webhook spool busy: cannot check what precedes event %d of call %s", item.seq, lane.call_id
            )
            return queue.Check.BUSY
        except Exception:
            logger.exception(
                "webhook spool: cannot check what precedes event %d of call %s; sending it",
                item.seq,
                lane.call_id,
            )
            return queue.Check.FAILED
        return queue.Check.HELD if held else queue.Check.CLEAR

    async def _deliver(self, lane: _Lane, item: _Item) -> None:
        """Return when `item` is delivered, rejected, dropped or vanished. Only cancellation raises."""
        if item.write is not None and not await self._wait_written(lane, item):
            return
        retry = queue.Retry(self._s.backoff_initial_seconds, self._s.backoff_max_seconds, self._rand)
        while True:
            retry_after: float | None = None
            read, body = await self._read(lane, item)
            if read is queue.Read.VANISHED:
                return
            if read is queue.Read.RETRY:
                reason = "spool read failed"
            else:
                verdict, retry_after, reason = await self._attempt(lane, item, body)
                if verdict != "retry":
                    return
            now = time.monotonic()
            delay = retry.failed(now, retry_after) - now
            logger.warning(
                "webhook %s: event %d (%s) of call %s failed (%s), attempt %d; retrying in %.1fs",
                shown_url(lane.url),
                item.seq,
                item.kind,
                lane.call_id,
                reason,
                item.attempts,
                delay,
                extra={"call_id": lane.call_id},
            )
            await asyncio.sleep(delay)

    async def _wait_written(self, lane: _Lane, item: _Item) -> bool:
        """Wait for the spool write of `item`; False if it is not to be sent (`queue.written`)."""
        assert item.write is not None
        try:
            async with asyncio.timeout(self._s.spool_op_timeout_seconds):
                result = await asyncio.shield(item.write)
        except TimeoutError:
            logger.error(
                "webhook spool write of event %d of call %s is slow; sending it from memory",
                item.seq,
                lane.call_id,
            )
            verdict = queue.written(None)
        except Exception:
            verdict = queue.written(None)  # logged by _persisted
        else:
            verdict = queue.written(result.accepted, result.inserted, item.row)
        if verdict is queue.Written.DROP:
            self._dropped(lane, item)
            return False
        if verdict is queue.Written.DUPLICATE:
            self._duplicate(lane, item)
            return False
        return True

    async def _read(self, lane: _Lane, item: _Item) -> tuple[queue.Read, bytes]:
        """The body of `item`, from memory or read back from the spool (`queue.read_back`)."""
        if item.body is not None:
            return queue.Read.SEND, item.body
        try:
            body = await self._spool_op(self._spool.body, lane.url, lane.call_id, item.seq)
        except Exception:
            logger.exception("cannot read event %d of call %s from the spool", item.seq, lane.call_id)
            return queue.read_back(False, None), b""
        read = queue.read_back(True, body)
        if read is queue.Read.VANISHED:
            logger.error("event %d of call %s vanished from the spool", item.seq, lane.call_id)
        return read, body or b""

    async def _attempt(
        self, lane: _Lane, item: _Item, body: bytes
    ) -> tuple[policy.Verdict, float | None, str]:
        """One POST of `item`; the verdict, a Retry-After delay if any, and a reason for the log."""
        transport = self._transport_of(lane.url)
        if transport is not None:
            return await self._attempt_by(transport, lane, item, body)
        item.attempts += 1
        now = time.time()
        if item.attempts == 1 and item.kind == "utterance":
            self._observer.sent(now - item.event_time)
        signer = self._credentials.get(lane.url, Credentials(self._s.secret, self._s.bearer_token))
        headers = payload.request_headers(
            secret=signer.secret,
            timestamp=int(now),
            body=body,
            event_id=item.event_id,
            event_type=item.kind,
            attempt=item.attempts,
            bearer_token=signer.bearer_token,
            basic_auth=self._s.basic_auth,
        )
        crashpoint.reached("delivery.before_post")
        started = time.monotonic()
        try:
            status, retry_after, detail = await self._post(lane.url, body, headers)
        except TimeoutError:
            self._observer.attempt(policy.Outcome.TIMEOUT, time.monotonic() - started)
            return "retry", None, f"no answer within {self._s.timeout_seconds:g}s"
        except OSError as exc:  # the socket's, TLS's, and HttpError for an answer that is not HTTP
            self._observer.attempt(policy.Outcome.CONNECT_ERROR, time.monotonic() - started)
            return "retry", None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a defect of the client, not the receiver's doing: shown, and retried
            logger.exception("webhook %s: the HTTP client failed", shown_url(lane.url))
            self._observer.attempt(policy.Outcome.CONNECT_ERROR, time.monotonic() - started)
            return "retry", None, f"HTTP client failed: {type(exc).__name__}"
        elapsed = time.monotonic() - started
        answer = queue.answer(status, retry_after, time.time())
        self._observer.attempt(answer.outcome, elapsed)
        if answer.verdict == "delivered":
            await self._delivered(lane, item)
        elif answer.verdict == "reject":
            await self._rejected(lane, item, status, detail.decode("utf-8", errors="replace").strip())
        return answer.verdict, answer.retry_after, f"HTTP {status}"

    async def _attempt_by(
        self, transport: Transport, lane: _Lane, item: _Item, body: bytes
    ) -> tuple[policy.Verdict, float | None, str]:
        """One attempt of `item` through `transport` (a publish, for NATS)."""
        item.attempts += 1
        if item.attempts == 1 and item.kind == "utterance":
            transport.observer.sent(time.time() - item.event_time)
        crashpoint.reached("delivery.before_post")
        result = await transport.send(lane.url, lane.call_id, item.kind, item.event_id, body)
        if result.verdict == "delivered":
            await self._delivered(lane, item)
        elif result.verdict == "reject":
            await self._rejected(lane, item, result.status, result.reason)
        return result.verdict, None, result.reason

    async def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str | None, bytes]:
        """POST `body`; the status, the Retry-After header and the start of the answer's body."""
        assert self._http is not None
        async with asyncio.timeout(self._s.timeout_seconds):
            answer = await self._http.post(url, body, headers)
        return answer.status, answer.retry_after, answer.detail

    async def _delivered(self, lane: _Lane, item: _Item) -> None:
        crashpoint.reached("delivery.after_2xx")
        await self._finish(lane, item, self._spool.delete, lane.url, lane.call_id, item.seq)
        if item.kind == "utterance":
            self._observer_of(lane).delivered(time.time() - item.event_time)

    async def _rejected(self, lane: _Lane, item: _Item, status: int, text: str) -> None:
        logger.error(
            "webhook %s rejected event %d (%s) of call %s with HTTP %d, final: %s",
            shown_url(lane.url),
            item.seq,
            item.kind,
            lane.call_id,
            status,
            text[:200],
            extra={"call_id": lane.call_id},
        )
        self._observer_of(lane).rejected(status)
        await self._finish(lane, item, self._spool.reject, lane.url, lane.call_id, item.seq, status, text)

    async def _finish(self, lane: _Lane, item: _Item, fn: Callable[..., None], *args: Any) -> None:
        """Record the end of `item` in the spool before the call's next event goes out."""
        try:
            await self._spool_op(fn, *args)
        except Exception:
            # Sent but still spooled: after a restart the receiver sees this event_id once more.
            logger.exception(
                "webhook spool: cannot record event %d of call %s as done", item.seq, lane.call_id
            )

    # --- spool thread --------------------------------------------------------------------------------

    def _spool_future(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        assert self._executor is not None
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _spool_op(self, fn: Callable[..., T], *args: Any, bound: float | None = None) -> T:
        """Run `fn(*args)` on the spool thread; TimeoutError after `bound` (the operation still runs)."""
        seconds = self._s.spool_op_timeout_seconds if bound is None else bound
        future: Awaitable[T] = self._spool_future(fn, *args)
        async with asyncio.timeout(seconds):
            return await future

    async def _claim_loop(self) -> None:
        while True:
            await asyncio.sleep(self._s.claim_interval_seconds)
            await self._claim_once()

    async def _claim_once(self) -> None:
        """Adopt the rows of dead owners and queue them; check the spool's size."""
        try:
            claimed = await self._spool_op(self._spool.claim_orphans)
            used = await self._spool_op(self._spool.used_bytes)
        except TimeoutError:
            logger.error("webhook spool busy: orphan claim skipped")
            return
        except Exception:
            logger.exception("webhook spool: orphan claim failed")
            return
        self._check_size(used)
        if claimed and self._state is _State.RUNNING:
            self._load(claimed)


def make_webhook_sink(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    observer: DeliveryObserver | None = None,
) -> WebhookSink:
    """The worker's webhook sink, already begun (call on the worker's loop; see `WebhookSink.begin`).

    Raises ConfigError if a secret is missing. Metrics go to `bridge.metrics.WebhookMetrics` unless
    `observer` is given. The worker should still `await sink.start()` before taking calls, so that a
    spool that cannot be opened stops the worker instead of its calls.
    """
    settings = WebhookSettings.from_config(config.webhook, os.environ if environ is None else environ)
    if observer is None:
        from bridge.metrics import WebhookMetrics

        observer = WebhookMetrics()
    sink = WebhookSink(settings, observer=observer)
    sink.begin()
    return sink

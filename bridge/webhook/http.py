"""The webhook's HTTP/1.1 client: h11 holds the protocol (no I/O), this module drives it over asyncio
streams, and does nothing a webhook POST does not need.

Why not aiohttp's client: memory. A worker is forked from the zygote and shares its pages until it
writes to them, and Python writes the reference count of every object a code path touches. aiohttp's
request path copies about 2.5 MB of shared pages into each worker on its first POSTs, this one about
0.5 MB (bench/fork_memory.py, docs/benchmarks.md): at four calls a worker, 0.5 MB a call.

What it does:

- ``POST`` of a body of known length (``Content-Length``) to an ``http`` or ``https`` URL; ``https``
  with the default context (certificates verified against the system's store, or ``SSL_CERT_FILE``).
  Credentials in the URL (``http://user:pw@host/``) become ``Authorization: Basic`` unless the request
  carries an ``Authorization`` header of its own.
- keep-alive: a connection is kept for the next POST to the same origin only when both the request
  and the answer were read to their end and neither side asked to close; an idle one is closed after
  `idle_seconds`, or at once when the peer has closed it. At most `limit` connections are in use at
  once; a POST beyond that waits for one (under its caller's bound).
- the answer: its status, its ``Retry-After`` header and at most `detail_bytes` of its body. A body
  longer than `body_limit` is not read further and its connection is closed. ``1xx`` answers are
  skipped. Redirects are not followed: a ``3xx`` is the answer.
- no proxy, no cookies, no compression, no retry: the delivery decides what a failure means.

Errors: `HttpError` (an `OSError`) for a URL it cannot send to and for anything the peer sends that is
not HTTP/1.1 or that ends before the answer does; `OSError` from the socket and TLS (`ssl.SSLError`
is one). Nothing else escapes, but `CancelledError`: every await is bounded by the caller
(`asyncio.timeout`), and a POST cancelled midway closes its connection.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import h11
import yarl

READ_SIZE = 65536
DEFAULT_LIMIT = 64  # connections in use at once, every origin together
DEFAULT_IDLE_SECONDS = 15.0  # a kept connection unused this long is closed
DEFAULT_BODY_LIMIT = 1 << 16  # of an answer's body read before its connection is given up


class HttpError(OSError):
    """The URL cannot be sent to, or the peer's bytes are not an HTTP/1.1 answer, or end too soon."""


@dataclass(frozen=True)
class Target:
    """Where a URL's POST goes: the origin connected to, the Host header, the request target."""

    tls: bool
    host: str  # the ASCII (IDNA) host name or address, no brackets
    port: int
    host_header: str
    path: str
    basic: str | None  # the URL's credentials as an Authorization value

    @property
    def origin(self) -> tuple[bool, str, int]:
        return (self.tls, self.host, self.port)


@functools.lru_cache(
    maxsize=256
)  # a sink's receivers are a few URLs from its config, POSTed to again and again
def target_of(url: str) -> Target:
    """Parse `url`; HttpError if it is not an absolute http(s) URL with a host."""
    try:
        parsed = yarl.URL(url)
        host = parsed.raw_host
        port = parsed.port
    except (ValueError, UnicodeError) as exc:
        raise HttpError(f"not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not host or port is None:
        raise HttpError("not an http:// or https:// URL with a host")
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if parsed.is_default_port() else f"{shown}:{port}"
    basic = None
    if parsed.user is not None:
        pair = f"{parsed.user}:{parsed.password or ''}".encode()
        basic = "Basic " + base64.b64encode(pair).decode("ascii")
    return Target(parsed.scheme == "https", host, port, host_header, parsed.raw_path_qs or "/", basic)


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: str | None
    detail: bytes  # the first `detail_bytes` of the body


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    expiry: asyncio.TimerHandle | None = None

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
        self.writer.transport.abort()  # nothing of ours is left to send; no wait for the peer


class HttpClient:
    """POSTs over kept-alive connections; one per sink, used on one event loop."""

    def __init__(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        detail_bytes: int = 512,
        body_limit: int = DEFAULT_BODY_LIMIT,
    ) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._idle_seconds = idle_seconds
        self._detail_bytes = detail_bytes
        self._body_limit = body_limit
        self._ssl: ssl.SSLContext | None = None  # the default context, made on the first https POST
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._closed = False

    @property
    def idle_connections(self) -> int:
        return sum(len(kept) for kept in self._idle.values())

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST `body` to `url` with `headers` (Host and Content-Length are added); the answer."""
        if self._closed:
            raise HttpError("the HTTP client is closed")
        target = target_of(url)
        async with self._slots:
            connection = self._take_idle(target.origin) or await self._connect(target)
            try:
                answer, reusable = await self._exchange(connection, target, body, headers)
            except BaseException:
                connection.close()
                raise
            if reusable and not self._closed:
                self._keep(target.origin, connection)
            else:
                connection.close()
            return answer

    async def aclose(self) -> None:
        """Close every kept connection; a POST under way closes its own when it ends."""
        self._closed = True
        for kept in self._idle.values():
            for connection in kept:
                connection.close()
        self._idle.clear()

    def _take_idle(self, origin: tuple[bool, str, int]) -> _Connection | None:
        kept = self._idle.get(origin, [])
        while kept:
            connection = kept.pop()
            if connection.expiry is not None:
                connection.expiry.cancel()
                connection.expiry = None
            if connection.usable():
                return connection
            connection.close()
        return None

    def _keep(self, origin: tuple[bool, str, int], connection: _Connection) -> None:
        connection.protocol.start_next_cycle()
        kept = self._idle.setdefault(origin, [])
        kept.append(connection)
        connection.expiry = asyncio.get_running_loop().call_later(
            self._idle_seconds, self._expire, origin, connection
        )

    def _expire(self, origin: tuple[bool, str, int], connection: _Connection) -> None:
        kept = self._idle.get(origin, [])
        if connection in kept:
            kept.remove(connection)
        connection.expiry = None
        connection.close()

    async def _connect(self, target: Target) -> _Connection:
        context = None
        if target.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            reader, writer = await asyncio.open_connection(
                target.host,
                target.port,
                ssl=context,
                limit=READ_SIZE,  # addresses tried in turn (uvloop has no happy eyeballs)
            )
        except UnicodeError as exc:  # a host name IDNA cannot encode
            raise HttpError(f"cannot connect to {target.host!r}: {exc}") from None
        return _Connection(reader, writer)

    async def _exchange(
        self, connection: _Connection, target: Target, body: bytes, headers: Mapping[str, str]
    ) -> tuple[Answer, bool]:
        """Send the request, read the answer; the answer, and whether the connection may be kept."""
        protocol = connection.protocol
        fields = [("Host", target.host_header), ("Content-Length", str(len(body)))]
        fields += [(name, value) for name, value in headers.items()]
        if target.basic is not None and not any(name.lower() == "authorization" for name in headers):
            fields.append(("Authorization", target.basic))
        try:
            request = protocol.send(h11.Request(method="POST", target=target.path, headers=fields))
            data = protocol.send(h11.Data(data=body))
            end = protocol.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:  # a header name or value HTTP cannot carry
            raise HttpError(f"cannot send this request: {exc}") from None
        connection.writer.write(b"".join((request or b"", data or b"", end or b"")))
        await connection.writer.drain()
        status = 0
        retry_after: str | None = None
        detail = bytearray()
        read = 0
        while True:
            try:
                event = protocol.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpError(f"not an HTTP/1.1 answer: {exc}") from None
            if event is h11.NEED_DATA:
                protocol.receive_data(await connection.reader.read(READ_SIZE))  # b"": the peer closed
            elif isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    if name == b"retry-after":
                        retry_after = value.decode("latin-1")
            elif isinstance(event, h11.Data):
                detail += event.data[: max(0, self._detail_bytes - len(detail))]
                read += len(event.data)
                if read > self._body_limit:
                    return Answer(status, retry_after, bytes(detail)), False
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError("the connection closed before the answer")
            # h11.InformationalResponse (1xx): the final answer follows
        kept = protocol.our_state is h11.DONE and protocol.their_state is h11.DONE
        return Answer(status, retry_after, bytes(detail)), kept

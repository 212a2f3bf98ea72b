"""The webhook's HTTP client (bridge/webhook/http.py) against real servers on 127.0.0.1: aiohttp's server,
and raw sockets that answer exactly the bytes a test gives them, hostile ones included."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.webhook.http import Answer, HttpClient, HttpError, target_of
from tests.fixtures.edge import make_pki

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEADERS = {"Content-Type": "application/json", "X-Test": "1"}


class RawServer:
    """Reads whole requests (headers, then Content-Length bytes) and answers each with `answer(n)`;
    with `close_after`, closes the connection after its first answer."""

    def __init__(self, answer: Callable[[int], bytes], *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.ended = 0  # connections whose client closed or that this server closed
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?x=1"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"(?im)^content-length: *(\d+)", head)
                body = await reader.readexactly(int(found.group(1)) if found else 0)
                self.requests.append(head + body)
                writer.write(self.answer(len(self.requests)))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            self.ended += 1
            writer.close()


async def aiohttp_server(ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int, list[int]]:
    """A real HTTP server; the client port of every request it received."""
    ports: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        assert request.transport is not None
        ports.append(request.transport.get_extra_info("peername")[1])
        body = await request.read()
        return web.Response(status=200, body=body[::-1], headers={"X-Host": request.headers["Host"]})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    assert site._server is not None
    return runner, site._server.sockets[0].getsockname()[1], ports  # type: ignore[union-attr]


async def test_posts_in_turn_share_one_kept_connection() -> None:
    runner, port, ports = await aiohttp_server()
    client = HttpClient()
    try:
        for n in range(5):
            answer = await client.post(f"http://127.0.0.1:{port}/hook", f"body {n}".encode(), HEADERS)
            assert (answer.status, answer.detail) == (200, f"body {n}".encode()[::-1])
        assert len(set(ports)) == 1 and len(ports) == 5
        assert client.idle_connections == 1
    finally:
        await client.aclose()
        await runner.cleanup()


async def test_the_request_carries_host_length_and_the_given_headers() -> None:
    async with RawServer(lambda n: OK) as server:
        client = HttpClient()
        await client.post(server.url, b'{"a":1}', HEADERS)
        await client.aclose()
    head, body = server.requests[0].split(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /hook?x=1 HTTP/1.1" and body == b'{"a":1}'
    assert {f"host: 127.0.0.1:{server.port}", "content-length: 7", "x-test: 1"} <= {x.lower() for x in lines}


async def test_an_answer_that_says_close_is_not_kept() -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(lambda n: answer) as server:
        client = HttpClient()
        for _ in range(3):
            assert (await client.post(server.url, b"x", HEADERS)).status == 200
        assert client.idle_connections == 0 and server.connections == 3
        await client.aclose()


async def test_a_kept_connection_the_peer_closed_is_not_used_again() -> None:
    async with RawServer(lambda n: OK, close_after=True) as server:
        client = HttpClient()
        assert (await client.post(server.url, b"x", HEADERS)).status == 200
        assert client.idle_connections == 1  # nothing said close: kept
        await asyncio.sleep(0.1)  # the server's FIN arrives
        assert (await client.post(server.url, b"y", HEADERS)).status == 200  # no error: a new connection
        assert server.connections == 2
        await client.aclose()


async def test_an_idle_connection_is_closed_after_idle_seconds() -> None:
    async with RawServer(lambda n: OK) as server:
        client = HttpClient(idle_seconds=0.2)
        await client.post(server.url, b"x", HEADERS)
        assert client.idle_connections == 1
        await asyncio.sleep(0.5)
        assert client.idle_connections == 0 and server.ended == 1  # closed, and the server saw it
        await client.aclose()


async def test_status_retry_after_and_a_bounded_detail_of_a_chunked_body() -> None:
    chunk = b"e" * 1000
    answer = (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3e8\r\n" + chunk + b"\r\n3e8\r\n" + chunk + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    async with RawServer(lambda n: answer) as server:
        client = HttpClient(detail_bytes=512)
        first = await client.post(server.url, b"x", HEADERS)
        assert first == Answer(503, "7", b"e" * 512)
        await client.post(server.url, b"x", HEADERS)
        assert server.connections == 1  # the chunked body was read to its end: kept
        await client.aclose()


async def test_a_body_beyond_the_limit_is_not_read_and_its_connection_is_closed() -> None:
    answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 100000\r\n\r\n" + b"b" * 100000
    async with RawServer(lambda n: answer) as server:
        client = HttpClient(body_limit=1000, detail_bytes=10)
        assert await client.post(server.url, b"x", HEADERS) == Answer(400, None, b"b" * 10)
        assert client.idle_connections == 0
        await client.aclose()


async def test_an_informational_answer_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    async with RawServer(lambda n: answer) as server:
        client = HttpClient()
        assert (await client.post(server.url, b"x", HEADERS)).status == 204
        await client.aclose()


async def test_url_credentials_become_basic_auth_unless_the_request_has_its_own() -> None:
    async with RawServer(lambda n: OK) as server:
        client = HttpClient()
        url = server.url.replace("http://", "http://user:p%40ss@")
        await client.post(url, b"x", HEADERS)
        await client.post(url, b"x", {**HEADERS, "Authorization": "Bearer t"})
        await client.aclose()
    first, second = (r.decode() for r in server.requests)
    assert "Authorization: Basic dXNlcjpwQHNz\r\n" in first  # user:p@ss
    assert "Authorization: Bearer t\r\n" in second and "Basic" not in second


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/hook", "http://", "/hook", "hook", "http://[::1/hook", "ws://127.0.0.1/"]
)
async def test_a_url_it_cannot_send_to_is_an_http_error(url: str) -> None:
    client = HttpClient()
    with pytest.raises(HttpError):
        await client.post(url, b"x", HEADERS)
    await client.aclose()


def test_targets() -> None:
    assert target_of("https://hooks.example.com/a/b?c=d").origin == (True, "hooks.example.com", 443)
    assert target_of("https://hooks.example.com/a/b?c=d").host_header == "hooks.example.com"
    assert target_of("https://hooks.example.com/a/b?c=d").path == "/a/b?c=d"
    assert target_of("http://[::1]:8080").host_header == "[::1]:8080"
    assert target_of("http://[::1]:8080").path == "/"
    assert target_of("http://bücher.example/").host == "xn--bcher-kva.example"


async def test_https_is_verified_against_the_trusted_authorities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path / "pki")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki.cert, pki.key)
    runner, port, ports = await aiohttp_server(server_context)
    url = f"https://127.0.0.1:{port}/hook"
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))  # what the default context trusts
        trusting = HttpClient()
        answer = await trusting.post(url, b"secret", HEADERS)
        await trusting.post(url, b"again", HEADERS)
        assert answer.status == 200 and answer.detail == b"terces" and len(set(ports)) == 1
        await trusting.aclose()
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.other_ca))
        wary = HttpClient()
        with pytest.raises(ssl.SSLCertVerificationError):
            await wary.post(url, b"secret", HEADERS)
        assert wary.idle_connections == 0 and len(ports) == 2  # the refused one never got a request
        await wary.aclose()
    finally:
        await runner.cleanup()


async def test_a_peer_that_never_answers_is_bounded_by_the_caller_and_closed() -> None:
    async with RawServer(lambda n: b"") as server:
        client = HttpClient()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.post(server.url, b"x", HEADERS)
        await asyncio.sleep(0.1)
        assert client.idle_connections == 0 and server.ended == 1  # the connection was closed
        await client.aclose()


async def test_a_closed_client_refuses_to_post() -> None:
    client = HttpClient()
    await client.aclose()
    with pytest.raises(HttpError, match="closed"):
        await client.post("http://127.0.0.1:9/hook", b"x", HEADERS)


# --- hostile answers: only HttpError or an OSError escapes, and the client serves on ------------------

VALID = [
    OK,
    b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nbusy",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.0 204 No Content\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nConnection: close\r\n\r\ndone",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 10))]
        else:
            del data[at:]
    return bytes(data)


async def exchange(answer: bytes) -> Answer | OSError:
    """One POST to a server that answers `answer` and closes; then one to a server that answers well."""
    client = HttpClient(detail_bytes=64, body_limit=256)
    try:
        async with RawServer(lambda n: answer, close_after=True) as hostile:
            try:
                async with asyncio.timeout(5):
                    outcome: Answer | OSError = await client.post(hostile.url, b"x", HEADERS)
            except OSError as exc:  # HttpError is one
                outcome = exc
        async with RawServer(lambda n: OK) as good:
            assert (await client.post(good.url, b"x", HEADERS)).status == 200
    finally:
        await client.aclose()
    return outcome


@settings(max_examples=150, deadline=None)
@given(answer=st.one_of(mutated(), st.binary(max_size=300)))
def test_a_hostile_answer_raises_only_http_error_or_os_error(answer: bytes) -> None:
    outcome = asyncio.run(exchange(answer))
    if isinstance(outcome, Answer):
        assert 100 <= outcome.status <= 999 and len(outcome.detail) <= 64

"""The control API over aiohttp: carries out what `bridge.control.api` decides, nothing more.

`ControlServer(tokens, ask)`: ``ask(op, call_id, by, reason)`` sends one request to every serving
worker and returns their replies (None for a worker silent past ``control.timeout_seconds``; see
`bridge.control.link`). The token is never logged: each request is logged with its method, path,
status and the token's *name*.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from importlib import resources

from aiohttp import web

from bridge.control import api, live, sse
from bridge.control.hub import EventHub
from bridge.control.lines import Op, Reply
from bridge.control.live import LivePool

logger = logging.getLogger(__name__)

Ask = Callable[[Op, str | None, str | None, str | None], Awaitable[Sequence[Reply | None]]]
OPENAPI = resources.files("bridge.control").joinpath("openapi.yaml")


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own answers (an unknown path, a wrong method) in the API's JSON error form."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
        return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)


class ControlServer:
    def __init__(
        self,
        tokens: Mapping[str, str],
        ask: Ask,
        *,
        actors: Collection[str] | None = None,
        hub: EventHub | None = None,
        pool: LivePool | None = None,
    ) -> None:
        self._tokens = dict(tokens)
        self._ask = ask
        self._actors = set(self._tokens if actors is None else actors)  # names that may act on calls
        self._hub = hub if hub is not None else EventHub()
        self._pool = pool
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=api.MAX_BODY_BYTES, middlewares=[_json_errors])
        app.router.add_get("/v1/openapi.yaml", self._openapi)
        app.router.add_get("/v1/whoami", self._whoami)
        app.router.add_get("/v1/events", self._events)
        app.router.add_get("/v1/pool", self._pool_figures)
        live.add_page(app, self._hub)
        app.router.add_get("/v1/calls", self._list)
        app.router.add_get("/v1/calls/{call_id}", self._get)
        for op in (Op.PAUSE, Op.RESUME, Op.HANGUP):
            app.router.add_post(f"/v1/calls/{{call_id}}/{op.value}", self._action(op))
        return app

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        logger.info("control API on http://%s:%d/v1/ (%d tokens)", host, self.port, len(self._tokens))

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- handlers -----------------------------------------------------------------------------------
    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=OPENAPI.read_text(encoding="utf-8"), content_type="application/yaml")

    async def _list(self, request: web.Request) -> web.Response:
        name = self._who(request)
        if name is None:
            return self._respond(request, api.UNAUTHORIZED, None)
        answer = api.combine(Op.LIST, await self._ask(Op.LIST, None, None, None))
        return self._respond(request, answer, name)

    async def _get(self, request: web.Request) -> web.Response:
        name = self._who(request)
        if name is None:
            return self._respond(request, api.UNAUTHORIZED, None)
        call_id = request.match_info["call_id"]
        answer = api.check_call_id(call_id) or api.combine(
            Op.GET, await self._ask(Op.GET, call_id, None, None)
        )
        return self._respond(request, answer, name)

    def _action(self, op: Op) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            name = self._who(request)
            if name is None:
                return self._respond(request, api.UNAUTHORIZED, None)
            if name not in self._actors:
                return self._respond(request, api.error(403, f"token {name!r} may watch but not act"), name)
            return self._respond(request, await self._act(op, request, name), name)

        return handle

    async def _act(self, op: Op, request: web.Request, name: str) -> api.Answer:
        call_id = request.match_info["call_id"]
        bad = api.check_call_id(call_id)
        if bad is not None:
            return bad
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return api.error(413, f"the body is larger than {api.MAX_BODY_BYTES} bytes", "body")
        body = api.read_body(op, raw)
        if isinstance(body, api.Answer):
            return body
        by = f"api:{name}" if op is not Op.HANGUP else None
        replies = await self._ask(op, call_id, by, body.get("reason"))
        return api.combine(op, replies)

    async def _whoami(self, request: web.Request) -> web.Response:
        name = self._who(request)
        if name is None:
            return self._respond(request, api.UNAUTHORIZED, None)
        return self._respond(request, api.Answer(200, {"name": name, "can_act": name in self._actors}), name)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """The live feed (`bridge/control/sse.py`), for as long as the watcher stays."""
        name = self._who(request)
        if name is None:
            return self._respond(request, api.UNAUTHORIZED, None)
        logger.info("control GET /v1/events: live feed opened (token %s)", name)
        return await sse.stream_events(request, self._hub)

    async def _pool_figures(self, request: web.Request) -> web.Response:
        name = self._who(request)
        if name is None:
            return self._respond(request, api.UNAUTHORIZED, None)
        if self._pool is None:
            return self._respond(request, api.error(404, "no pool figures here"), name)
        return web.json_response(await self._pool.figures())

    def _who(self, request: web.Request) -> str | None:
        return api.authenticate(request.headers.get("Authorization"), self._tokens)

    def _respond(self, request: web.Request, answer: api.Answer, name: str | None) -> web.Response:
        logger.info(
            "control %s %s -> %d (%s)",
            request.method,
            request.rel_url.path,
            answer.status,
            f"token {name}" if name else "no valid token",
        )
        headers = {"WWW-Authenticate": "Bearer"} if answer.status == 401 else None
        return web.json_response(answer.body, status=answer.status, headers=headers)

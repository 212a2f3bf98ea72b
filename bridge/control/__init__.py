"""The control API (served by the supervisor) and the control-channel requests it sends to workers.

- `lines`: the request/reply lines of the supervisor-worker control channel, formatted and parsed (no I/O);
- `commands`: what a worker does with a request, over its calls (no I/O);
- `link`: the supervisor's side of the requests: ids, waiting with a bound;
- `api`: the HTTP API's rules: authentication, routes, bodies, answers from the workers' replies (no I/O);
- `server`: the aiohttp server that carries them out; `openapi.yaml`: its OpenAPI 3 document;
- `cli`: `vblaze-bridge calls|pause|resume|hangup`, a thin client of the API.
"""

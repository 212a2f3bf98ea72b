"""The supervisor's side of control requests: an id per request, its reply awaited with a bound.

`ControlLink.ask(index, write, request_of)` numbers a request for worker `index`, writes its line with
`write`, and returns the worker's `Reply`, or None when none came within `timeout` seconds (the API
then answers 503; nothing waits longer). `heard(index, line)` hands over a ``reply`` line read from
worker `index`'s channel; a reply nobody waits for (late, or from another worker) is dropped. A worker
that goes away resolves nothing: its requests time out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from bridge.control.lines import MAX_ID, LineError, Reply, Request, format_request, parse_reply

logger = logging.getLogger(__name__)


class ControlLink:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[int, asyncio.Future[Reply]]] = {}

    def _next_id(self) -> int:
        line_id = next(self._ids)
        if line_id > MAX_ID:
            self._ids = itertools.count(2)
            line_id = 1
        return line_id

    async def ask(
        self, index: int, write: Callable[[bytes], None], request_of: Callable[[int], Request]
    ) -> Reply | None:
        line_id = self._next_id()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[line_id] = (index, future)
        try:
            write(format_request(request_of(line_id)))
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            logger.warning(
                "worker %d did not answer control request %d in %.1f s", index, line_id, self.timeout
            )
            return None
        except OSError as exc:
            logger.warning("control request %d to worker %d not sent: %s", line_id, index, exc)
            return None
        finally:
            self._waiting.pop(line_id, None)

    def heard(self, index: int, line: bytes) -> None:
        try:
            reply = parse_reply(line)
        except LineError as exc:
            logger.warning("worker %d sent a control reply that cannot be read: %s", index, exc)
            return
        waiting = self._waiting.get(reply.id)
        if waiting is None or waiting[0] != index or waiting[1].done():
            logger.info("control reply %d of worker %d came when nobody waited for it", reply.id, index)
            return
        waiting[1].set_result(reply)

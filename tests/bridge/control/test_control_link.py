"""The supervisor's side of control requests (bridge/control/link.py): replies by id, bounded waits."""

from __future__ import annotations

import asyncio
import time

from bridge.control.lines import Op, Reply, Request, format_reply, parse_request
from bridge.control.link import ControlLink


async def test_a_reply_resolves_its_request_and_silence_is_bounded() -> None:
    link = ControlLink(timeout=0.2)
    sent: list[bytes] = []

    async def answer_later() -> None:
        await asyncio.sleep(0.02)
        request = parse_request(sent[0])
        link.heard(1, format_reply(Reply(request.id + 1000, 200, {})))  # an id nobody waits for
        link.heard(0, format_reply(Reply(request.id, 200, {"calls": []})))  # another worker's channel
        link.heard(1, b"reply nonsense")
        link.heard(1, format_reply(Reply(request.id, 200, {"calls": []})))

    task = asyncio.create_task(answer_later())
    reply = await link.ask(1, sent.append, lambda line_id: Request(line_id, Op.LIST))
    await task
    assert reply is not None and reply.status == 200 and reply.body == {"calls": []}
    started = time.monotonic()
    assert await link.ask(1, sent.append, lambda line_id: Request(line_id, Op.LIST)) is None
    assert 0.15 < time.monotonic() - started < 1.0
    link.heard(1, format_reply(Reply(parse_request(sent[1]).id, 200, {})))  # too late: dropped


async def test_a_channel_that_cannot_be_written_is_no_answer() -> None:
    link = ControlLink(timeout=5)

    def broken(line: bytes) -> None:
        raise BrokenPipeError("gone")

    started = time.monotonic()
    assert await link.ask(0, broken, lambda line_id: Request(line_id, Op.LIST)) is None
    assert time.monotonic() - started < 1.0

"""A plain `websockets` client for the stand-in tests: send audio in given pieces, collect every message."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosedError

TIMEOUT = 30.0


@dataclass
class Session:
    messages: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def final(self) -> str:
        last = self.messages[-1]
        assert isinstance(last, str)
        return last

    def final_json(self) -> dict[str, Any]:
        doc = json.loads(self.final)
        assert isinstance(doc, dict)
        return doc

    @property
    def streamed(self) -> list[str]:
        """Utterance messages before the empty separator (asserts the separator is there)."""
        texts = [m for m in self.messages if isinstance(m, str)]
        assert texts[-2] == "", texts
        return texts[:-2]


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def connect(url: str, query: str = "", headers: Mapping[str, str] | None = None) -> ClientConnection:
    async with asyncio.timeout(TIMEOUT):
        return await websockets.connect(url + (f"?{query}" if query else ""), additional_headers=headers)


async def collect(ws: ClientConnection, session: Session | None = None) -> Session:
    session = session or Session()
    async with asyncio.timeout(TIMEOUT):
        try:
            async for message in ws:
                session.messages.append(message)
        except ConnectionClosedError:
            pass  # close_code says how
        finally:
            session.close_code = ws.close_code
            session.close_reason = ws.close_reason or ""
    return session


async def transcribe(
    url: str, chunks: Iterable[bytes], query: str = "", headers: Mapping[str, str] | None = None
) -> Session:
    """Send every chunk, then the empty frame; return all messages and the close code."""
    ws = await connect(url, query, headers)
    async with asyncio.timeout(TIMEOUT):
        for chunk in chunks:
            await ws.send(chunk)
        await ws.send(b"")
    return await collect(ws)

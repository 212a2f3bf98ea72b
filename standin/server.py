"""The stand-in's HTTP/WebSocket server: `/transcribe`, `/status`, `/maxstreamscheck`, `/_faults`.

Built on aiohttp rather than `websockets`: the `/_faults` control endpoint takes a JSON body, and the
`websockets` HTTP parser refuses request bodies. Every refusal (400 bad tag, 503 at capacity or by
fault switch) is a plain HTTP answer before the upgrade.

One stream (`_Stream`) reads audio frames, feeds `StreamAudio`, starts one recognition task per cut
and hands them, in cut order, to a sender task that streams / POSTs / keeps them. After the empty
frame it sends the separator and the final result (or POSTs it to `callback`) and closes with 1000.

In-process use:

    async with running(ServerOptions(port=0), VadOnlyRecognizer()) as srv:
        ...connect to srv.url...
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import numpy as np
from aiohttp import web

from standin import redaction
from standin.energy import EnergyMeter
from standin.faults import FaultError, Faults
from standin.recognizer import Recognizer
from standin.results import Final, Utterance, now, timestamp, utterance_message
from standin.stream import ChannelCut, StreamAudio
from standin.tags import Format, TagError, Tags, collect_tags, parse_tags

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 17171
DEFAULT_MAX_STREAMS = 16
DEFAULT_MAX_FRAME_BYTES = 1 << 20
DEFAULT_MAX_STREAM_SECS = 4 * 3600.0
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_CALLBACK_TIMEOUT = 10.0
DEFAULT_CLOSE_TIMEOUT = 5.0
DEFAULT_SHUTDOWN_GRACE = 5.0
ENERGY_STREAMS_KEPT = 64  # --record-energy: the latest streams whose energy /status shows
RECENT_STREAMS = 32  # streams whose tags GET /status lists (`recent`)


@dataclass(frozen=True)
class ServerOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_streams: int = DEFAULT_MAX_STREAMS
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_stream_secs: float = DEFAULT_MAX_STREAM_SECS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    faults: Faults = field(default_factory=Faults)
    record_energy: bool = False  # /status shows each stream's peak per second and channel (tests)

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")


@dataclass
class Status:
    """Counters behind GET /status (V-Blaze's field names where one fits)."""

    started: datetime = field(default_factory=now)
    streams: int = 0
    done: int = 0
    stream_audiosecs: float = 0.0
    stream_errors: int = 0
    stream_warnings: int = 0
    utt_count: int = 0
    utt_audiosecs: float = 0.0
    responses: dict[str, int] = field(default_factory=dict)
    lasterror: datetime | None = None
    lasterrormsg: str | None = None
    idle_since: float = field(default_factory=time.monotonic)
    # Stand-in extension: the tags of the last RECENT_STREAMS streams accepted, oldest first.
    recent: collections.deque[dict[str, object]] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_STREAMS)
    )

    def count(self, response: str) -> None:
        self.responses[response] = self.responses.get(response, 0) + 1

    def error(self, message: str) -> None:
        self.lasterror, self.lasterrormsg = now(), message


# What the refuse_scrubaudio fault switch answers (after "invalid tag value: "), like a V-Blaze without it.
SCRUBAUDIO_REFUSAL = "scrubaudio: scrubbed audio is not supported by this engine (fault switch)"


class StandinServer:
    """Serves ws://HOST:PORT/transcribe and the status endpoints until `stop()`."""

    def __init__(self, options: ServerOptions, recognizer: Recognizer) -> None:
        self.options = options
        self.recognizer = recognizer
        self.faults = options.faults
        self.status = Status()
        self.port = options.port
        self._streams: set[asyncio.Task[object]] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._http: aiohttp.ClientSession | None = None
        self.energy: list[tuple[str, EnergyMeter]] = []  # --record-energy: (requestid, meter), latest last

    @property
    def url(self) -> str:
        return f"ws://{self.options.host}:{self.port}/transcribe"

    @property
    def http_url(self) -> str:
        return f"http://{self.options.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/transcribe", self._transcribe)
        app.router.add_get("/status", self._status)
        app.router.add_get("/maxstreamscheck", self._maxstreamscheck)
        app.router.add_get("/_faults", self._get_faults)
        app.router.add_post("/_faults", self._post_faults)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.options.host, self.options.port)
        await self._site.start()
        if self._runner.addresses:  # the port bound, for port 0 (whichever event loop serves it)
            self.port = int(self._runner.addresses[0][1])
        self._http = aiohttp.ClientSession()
        await self.recognizer.start()
        logger.info(
            "listening on %s (max %d streams, recognizer %s)",
            self.url,
            self.options.max_streams,
            self.recognizer.name,
        )

    async def stop(self) -> None:
        """Stop listening, let open streams finish for `shutdown_grace` seconds, cancel the rest."""
        if self._site is not None:
            await self._site.stop()
        if self._streams:
            logger.info(
                "waiting up to %.1f s for %d streams", self.options.shutdown_grace, len(self._streams)
            )
            _done, pending = await asyncio.wait(set(self._streams), timeout=self.options.shutdown_grace)
            for task in pending:
                task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()
        await self.recognizer.close()

    # -- plain HTTP endpoints ---------------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.Response:
        st = self.status
        n = len(self._streams)
        body = {
            "#active": self.recognizer.busy,
            "#conns": n,
            "#done": st.done,
            "#queued": max(0, self.recognizer.busy - self.recognizer.workers),
            "#streams": n,
            "maxconns": self.options.max_streams,
            "maxdecoders": self.recognizer.workers,
            "maxstreams": self.options.max_streams,
            "idlefor": 0.0 if n else round(time.monotonic() - st.idle_since, 3),
            "started": timestamp(st.started),
            "lasterror": timestamp(st.lasterror) if st.lasterror else None,
            "lasterrormsg": st.lasterrormsg,
            "responses": dict(st.responses),
            "stream.count": st.streams,
            "stream.audiosecs": round(st.stream_audiosecs, 3),
            "stream.errors": st.stream_errors,
            "stream.warnings": st.stream_warnings,
            "utt.count": st.utt_count,
            "utt.audiosecs": round(st.utt_audiosecs, 3),
            "recognizer": self.recognizer.name,
            "stream.energy": self._energy() if self.options.record_energy else None,
            "recent": list(st.recent),  # stand-in extension: the tags of recent streams
        }
        return web.json_response({"status": {k: v for k, v in body.items() if v is not None}})

    def _energy(self) -> list[dict[str, object]]:
        """--record-energy: per stream (oldest first), its requestid and per channel the peak absolute
        sample of each second it received."""
        return [{"requestid": label, "peaks": meter.peaks()} for label, meter in self.energy]

    def record(self, label: str) -> EnergyMeter | None:
        """A meter for a new stream, if --record-energy; the oldest beyond ENERGY_STREAMS_KEPT go."""
        if not self.options.record_energy:
            return None
        meter = EnergyMeter()
        self.energy = [*self.energy[-(ENERGY_STREAMS_KEPT - 1) :], (label, meter)]
        return meter

    async def _maxstreamscheck(self, request: web.Request) -> web.Response:
        n = len(self._streams)
        full = n >= self.options.max_streams
        return web.json_response(
            {"#streams": n, "maxstreams": self.options.max_streams}, status=429 if full else 200
        )

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_json())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults = self.faults.updated(await request.json())
        except (FaultError, json.JSONDecodeError) as exc:
            return web.Response(status=400, text=f"invalid /_faults body: {exc}\n")
        logger.warning("fault switches now %s", self.faults)
        return web.json_response(self.faults.to_json())

    # -- /transcribe ----------------------------------------------------------------------------

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = collect_tags(request.query.items(), request.headers.items())
            tags = parse_tags(raw)
        except TagError as exc:
            self.status.count("http-400")
            logger.info("refused stream: %s", exc)
            return web.Response(status=400, text=f"invalid tag value: {exc}\n")
        if self.faults.refuse_scrubaudio and tags.redaction.scrubaudio:
            self.status.count("http-400")
            logger.info("refused stream: scrubaudio (fault switch)")
            return web.Response(status=400, text=f"invalid tag value: {SCRUBAUDIO_REFUSAL}\n")
        if self.faults.refuse or len(self._streams) >= self.options.max_streams:
            self.status.count("http-503")
            reason = "refusing new streams (fault switch)" if self.faults.refuse else "all streams are busy"
            logger.info("refused stream: %s", reason)
            return web.Response(
                status=503, text=f"{reason}: {len(self._streams)} of {self.options.max_streams}\n"
            )
        ws = web.WebSocketResponse(max_msg_size=self.options.max_frame_bytes, timeout=DEFAULT_CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            self.status.count("http-400")
            return web.Response(status=400, text="/transcribe needs a WebSocket upgrade\n")
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        self.status.streams += 1
        try:
            try:
                await ws.prepare(request)
            except ConnectionError as exc:  # aiohttp's ClientConnectionResetError among them
                self.status.count("client-gone")
                logger.warning(
                    "stream %s: the client closed before its upgrade was answered (%s)", tags.requestid, exc
                )
                return web.Response(status=499)  # never sent: aiohttp finds the connection gone
            self.status.count("http-101")
            self.status.recent.append({"requestid": tags.requestid, "tags": dict(raw)})
            await _Stream(self, tags, ws, request, self.faults).run()
        finally:
            self._streams.discard(task)
            self.status.done += 1
            if not self._streams:
                self.status.idle_since = time.monotonic()
        return ws

    async def post(self, url: str, body: str | bytes, content_type: str) -> None:
        """One callback POST: no retry, status logged, never raises (V-Blaze does not retry)."""
        assert self._http is not None
        try:
            async with asyncio.timeout(self.options.callback_timeout):
                async with self._http.post(
                    url,
                    data=body.encode() if isinstance(body, str) else body,
                    headers={"Content-Type": content_type},
                ) as r:
                    await r.read()
                    if r.status >= 300:
                        logger.warning("callback %s answered %d", url, r.status)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            logger.warning("callback %s failed: %r", url, exc)
            self.status.error(f"callback failed: {exc!r}")


class _ClientGone(Exception):
    """The client closed or dropped the socket."""


@dataclass(frozen=True)
class _Release:
    """In the sender's queue: send the scrubbed audio up to frame `upto` (None: all of it, and end)."""

    upto: int | None


RELEASE_SECONDS = 0.1  # scrubbed audio goes out in pieces of at least this much


class _Stream:
    """One /transcribe connection from first audio frame to close."""

    def __init__(
        self,
        server: StandinServer,
        tags: Tags,
        ws: web.WebSocketResponse,
        request: web.Request,
        faults: Faults,
    ) -> None:
        self.server = server
        self.tags = tags
        self.ws = ws
        self.request = request
        self.faults = faults
        self.audio = StreamAudio(tags)
        self.started = now()
        self.warnings: list[str] = []
        self.utterances: list[Utterance] = []
        self._held: list[str] = []
        self._queue: asyncio.Queue[asyncio.Task[Utterance] | _Release | None] = asyncio.Queue()
        self._released_upto = 0  # the settled frame of the last _Release queued
        self._tasks: set[asyncio.Task[Utterance]] = set()
        self._next_uttid = 0
        self._label = tags.requestid or f"{request.remote}"
        self.audio.meter = server.record(self._label)

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_utterances())
        try:
            if not await self._read_audio():
                return
            self._queue.put_nowait(None)
            await sender
            await self._finish()
        except _ClientGone as exc:
            logger.warning("stream %s: client went away before the final result (%s)", self._label, exc)
            self.server.status.count("broken pipe")
            self.server.status.stream_errors += 1
        finally:
            sender.cancel()
            if sender.done() and not sender.cancelled() and sender.exception() is not None:
                logger.info("stream %s: utterance sender ended with %r", self._label, sender.exception())
            for task in self._tasks:
                task.cancel()
            self.server.status.stream_audiosecs += self.audio.audiosecs

    async def _read_audio(self) -> bool:
        """Read frames until the empty one; False when the stream is over without a final result."""
        ws = self.ws
        while True:
            try:
                async with asyncio.timeout(self.server.options.idle_timeout):
                    msg = await ws.receive()
            except TimeoutError:
                self.warnings.append(f"no audio for {self.server.options.idle_timeout:g} s; stream ended")
                break
            if msg.type is aiohttp.WSMsgType.BINARY or msg.type is aiohttp.WSMsgType.TEXT:
                data: bytes = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                if not data:
                    break
                if msg.type is aiohttp.WSMsgType.TEXT:
                    if "text frames are not audio; ignored" not in self.warnings:
                        self.warnings.append("text frames are not audio; ignored")
                    continue
                for cut in self.audio.feed(data):
                    self._submit(cut)
                self._release_settled()
                if self.faults.close_after is not None and self.audio.audiosecs >= self.faults.close_after:
                    logger.warning(
                        "stream %s: fault switch: dropping the connection after %.1f s of audio",
                        self._label,
                        self.audio.audiosecs,
                    )
                    self.server.status.count("fault close")
                    if self.request.transport is not None:
                        self.request.transport.abort()
                    return False
                if self.audio.audiosecs > self.server.options.max_stream_secs:
                    self.warnings.append(
                        f"stream longer than {self.server.options.max_stream_secs:g} s; the rest was ignored"
                    )
                    break
            elif msg.type is aiohttp.WSMsgType.ERROR:
                logger.warning("stream %s: socket error: %r (code %s)", self._label, msg.data, ws.close_code)
                self.server.status.count("broken pipe")
                self.server.status.stream_errors += 1
                return False
            else:
                code = ws.close_code
                logger.warning(
                    "stream %s: client closed before the end of audio (%s, code %s)",
                    self._label,
                    msg.type.name,
                    code,
                )
                self.server.status.count("broken pipe")
                self.server.status.stream_errors += 1
                return False
        for cut in self.audio.finish():
            self._submit(cut)
        if self.audio.scrubber is not None and self.tags.streams_scrubbed_audio:
            self._queue.put_nowait(_Release(None))
        return True

    def _release_settled(self) -> None:
        """Queue the scrubbed audio up to the settled point, behind the cuts before it (so their
        scrubbed words are known when it goes out); in pieces of at least RELEASE_SECONDS."""
        scrubber = self.audio.scrubber
        if scrubber is None or not self.tags.streams_scrubbed_audio:
            return
        settled = self.audio.settled_frames
        if settled - self._released_upto >= RELEASE_SECONDS * scrubber.format.samprate:
            self._released_upto = settled
            self._queue.put_nowait(_Release(settled))

    def _submit(self, cut: ChannelCut) -> None:
        uttid, self._next_uttid = self._next_uttid, self._next_uttid + 1
        task = asyncio.create_task(self._recognize(cut, uttid, now()))
        self._tasks.add(task)
        self._queue.put_nowait(task)

    async def _recognize(self, cut: ChannelCut, uttid: int, recvdate: datetime) -> Utterance:
        samples = cut.cut.audio.astype(np.float32) / 32768.0
        heard = await self.server.recognizer.recognize(samples, cut.samprate)
        r = self.tags.redaction
        scrubber = self.audio.scrubber
        recognition, scrub = redaction.apply(heard, r.numtrans, r.scrubtext, scrubber is not None, r.rules)
        if scrubber is not None:
            at = cut.start_s
            spoken = ((at + w.start, at + w.end) for w in recognition.words)
            scrubber.add(cut.channel, ((at + s, at + e) for s, e in scrub), spoken)
        st = self.server.status
        st.utt_count += 1
        st.utt_audiosecs += cut.end_s - cut.start_s
        return Utterance(uttid, cut.channel, cut.start_s, cut.end_s, recvdate, now(), recognition)

    async def _send_utterances(self) -> None:
        tags = self.tags
        while (task := await self._queue.get()) is not None:
            if isinstance(task, _Release):
                await self._send_scrubbed(task)
                continue
            utt = await task
            self.utterances.append(utt)
            message = utterance_message(utt, tags)
            if tags.utterance_callback is not None:
                await self._delay()
                await self.server.post(tags.utterance_callback, message, _content_type(tags.utterance_fmt))
            if tags.streams_utterances:
                if tags.realtime:
                    await self._send(message)
                else:
                    self._held.append(message)

    async def _finish(self) -> None:
        tags = self.tags
        if tags.streams_utterances:
            for message in self._held:
                await self._send(message)
            await self._send("")
        if self.audio.warning:
            self.warnings.insert(0, self.audio.warning)
        final = Final(
            tags=tags,
            started=self.started,
            donedate=now(),
            audiosecs=None if self.audio.format is None else self.audio.audiosecs,
            utterances=tuple(self.utterances),
            warning="; ".join(self.warnings) or None,
        )
        if final.warning:
            self.server.status.stream_warnings += 1
            self.server.status.error(final.warning)
            logger.info("stream %s: warning: %s", self._label, final.warning)
        result: str | bytes | None = final.render()
        if tags.zipped:
            scrubber = self.audio.scrubber
            result = final.zipped(scrubber.finish() if scrubber is not None else None)
        elif tags.redaction.notext:
            result = None  # streamed scrubbed audio only: no transcript at all
        if result is None:
            reason = "done"
        elif tags.callback is not None:
            await self._delay()
            content_type = "application/zip" if isinstance(result, bytes) else _content_type(tags.output)
            await self.server.post(tags.callback, result, content_type)
            reason = "result delivered to callback"
        else:
            await self._send(result)
            reason = "done"
        await self.ws.close(code=aiohttp.WSCloseCode.OK, message=reason.encode())
        logger.info(
            "stream %s: done, %.1f s of audio, %d utterances",
            self._label,
            self.audio.audiosecs,
            len(self.utterances),
        )

    async def _send_scrubbed(self, release: _Release) -> None:
        scrubber = self.audio.scrubber
        assert scrubber is not None
        data = scrubber.finish() if release.upto is None else scrubber.release(release.upto)
        if data:
            await self._send(data)

    async def _send(self, message: str | bytes) -> None:
        await self._delay()
        if self.ws.closed:
            raise _ClientGone("socket closed")
        try:
            async with asyncio.timeout(self.server.options.idle_timeout):
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_str(message)
        except ConnectionResetError as exc:
            raise _ClientGone(str(exc)) from exc
        except TimeoutError:
            raise _ClientGone("the client stopped reading") from None

    async def _delay(self) -> None:
        if self.faults.delay_ms:
            await asyncio.sleep(self.faults.delay_ms / 1000)


def _content_type(fmt: Format) -> str:
    return "application/json" if fmt is Format.JSON else "text/plain; charset=utf-8"


@asynccontextmanager
async def running(options: ServerOptions, recognizer: Recognizer) -> AsyncIterator[StandinServer]:
    """Start a stand-in for the duration of the block (in-process, for tests)."""
    server = StandinServer(options, recognizer)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()

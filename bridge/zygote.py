"""Workers forked from a warm parent: the zygote, and the supervisor's link to it.

A worker is a whole Python interpreter with pjsua2, uvloop, websockets, prometheus-client and pydantic
imported, for at most four calls (`sip.limits.PJSUA_MAX_CALLS`). Imported once in the zygote and
forked, those pages are shared copy-on-write by every worker instead of being built again in each
(docs/benchmarks.md has the figures). With ``sip.spawn: exec`` the supervisor starts each worker as
``python -m bridge worker`` instead, as it always did.

The processes:

- the first zygote is forked from the supervisor's own process (:func:`prefork`, from
  ``vblaze-bridge run``) once it has parsed its config and imported :data:`PREFORK_MODULES`, and
  before anything else: one thread, no event loop, no socket. The interpreter, pydantic's models,
  uvloop, aiohttp, websockets and pjsua2 are then pages shared by the supervisor, the zygote and every
  worker (docs/benchmarks.md). Its own session, one end of a ``SOCK_SEQPACKET`` socketpair; it waits
  for an ``env`` message (the supervisor's environment for its children, ``PROMETHEUS_MULTIPROC_DIR``
  set, which prometheus_client reads when imported) and then goes on as an exec'd zygote does.
- a zygote started again (after a crash or kill) is exec'd: ``python -m bridge zygote``, its own
  session, that environment, the channel's end passed.
- either imports :data:`WARM_MODULES` (the worker and what a worker imports late), and nothing else:
  no pjsua2 endpoint, no event loop, no socket but its channel, no thread. It says ``ready`` and waits
  for requests.
- ``spawn N``, with the worker's end of its control channel attached (SCM_RIGHTS): the zygote forks an
  intermediate child, which calls setsid() and forks the worker, then exits at once; the zygote reaps
  the intermediate and answers ``pid N PID`` (``failed N`` if a fork failed). With the intermediate
  gone, the worker is re-parented to the supervisor, which has made itself a child subreaper
  (``PR_SET_CHILD_SUBREAPER``): every worker is the supervisor's own child, whose exit status it
  reaps itself (:class:`ForkedProcess`, through a pidfd), whatever becomes of the zygote.
- the worker (:func:`_become_worker`): closes the zygote's channel, sets the default signal
  handlers, reseeds `random`, takes the title ``vblaze-bridge worker --config PATH --index N
  --control-fd FD`` (setproctitle: ps, pgrep -f and /proc/PID/cmdline show it), takes its config
  (the zygote's parsed copy if the file holds the same bytes as when the zygote read it, else the file
  loaded afresh, as an exec'd worker would), and runs `bridge.worker.main`, which leaves with os._exit.
  Stopping, it logs the modules it imported after the fork (each one its own memory, not shared):
  none, as long as WARM_MODULES holds what a worker imports late.
- memory: the zygote runs with the garbage collector off and calls `gc.freeze()` before each fork, so
  that the workers' collections do not write to (and so copy) the pages of the objects they share;
  the worker turns its collector on.
- metrics: prometheus_client's multiprocess values are keyed by pid and re-keyed on the first write
  after a fork, so each worker writes its own ``*_PID.db`` files. The zygote deletes the empty files
  its imports created for its own pid, so that only workers' files are in the directory.
- a zygote that exits (crash, kill) is logged and started again by :meth:`ZygoteLink.run`; running
  workers are not its children and go on. A spawn asked while it is down waits for the new one (at
  most ZYGOTE_READY_TIMEOUT_SECONDS); one that fails counts as a failed start of that worker. A
  zygote whose supervisor is gone reads the end of its channel and exits.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import importlib
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bridge.supervision import restart_delay

if TYPE_CHECKING:
    from bridge.config import Config

logger = logging.getLogger(__name__)

WARM_MODULES = (
    "bridge.worker",
    "bridge.webhook.delivery",
    "bridge.webhook.spool",
    "bridge.nats.policy",
    "bridge.nats.transport",
    "encodings.idna",  # and stringprep: a request to a host name encodes it (a first webhook POST)
)
# Imported by `prefork` before it forks: what the workers need that does not read the environment the
# supervisor sets later (prometheus_client takes PROMETHEUS_MULTIPROC_DIR when imported, so neither it
# nor a module importing it is here), and opens no socket or thread when imported.
PREFORK_MODULES = ("uvloop", "aiohttp", "websockets", "pjsua2", "yaml", "h11")
ZYGOTE_READY_TIMEOUT_SECONDS = 30.0  # the zygote's imports; a spawn waits at most this for a zygote
SPAWN_TIMEOUT_SECONDS = 5.0  # a spawn request not answered by then fails (the worker's start failed)
STOP_TIMEOUT_SECONDS = 5.0
WORKER_TITLE = "vblaze-bridge worker --config {config} --index {index} --control-fd {fd}"
ZYGOTE_TITLE = "vblaze-bridge zygote --config {config}"
PR_SET_CHILD_SUBREAPER = 36


class ZygoteGone(OSError):
    """The zygote's channel closed, or the zygote could not fork a worker."""


ENV_MESSAGE_MAX = 1 << 20  # the environment a pre-forked zygote is sent (a SEQPACKET message)


def env_message(env: dict[str, str]) -> bytes:
    return b"env " + json.dumps(env).encode()


def parse_env(message: bytes) -> dict[str, str] | None:
    """The environment in an `env` message; None for anything else."""
    if not message.startswith(b"env "):
        return None
    try:
        env = json.loads(message[4:])
    except ValueError:
        return None
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        return None  # JSON object keys are strings already
    return env


# --- the channel's lines (no I/O) --------------------------------------------------------------------


def spawn_request(index: int) -> bytes:
    return b"spawn %d" % index


def parse_request(message: bytes) -> int | None:
    """The worker index of a ``spawn N`` request, None for anything else."""
    word, _, arg = message.strip().partition(b" ")
    return int(arg) if word == b"spawn" and arg.isdigit() else None


def parse_reply(message: bytes) -> tuple[int, int | None] | None:
    """``pid N PID`` -> (N, PID); ``failed N`` -> (N, None); anything else None."""
    parts = message.split()
    if len(parts) == 3 and parts[0] == b"pid" and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    if len(parts) == 2 and parts[0] == b"failed" and parts[1].isdigit():
        return int(parts[1]), None
    return None


# --- the zygote process ------------------------------------------------------------------------------


@dataclass
class PreForked:
    """The first zygote, forked by `prefork` from the supervisor's process; the supervisor's end of its
    channel. ZygoteLink sends it its environment, then it goes on as an exec'd zygote would."""

    pid: int
    sock: socket.socket


def prefork(config: Config, config_path: str) -> PreForked | None:
    """Fork the first zygote from this process while it has imported no more than its config (pydantic
    and the parsed models) and PREFORK_MODULES, and runs one thread: those pages are then shared by
    the supervisor, the zygote and every worker instead of being built twice. The child waits for
    its environment (`env` message: the supervisor sets PROMETHEUS_MULTIPROC_DIR later, and
    prometheus_client reads it when imported), then imports WARM_MODULES and serves. None if it
    cannot fork: the supervisor then starts the zygote by exec, as it does on every restart."""
    for name in PREFORK_MODULES:
        importlib.import_module(name)
    if threading.active_count() > 1:  # a fork would copy a thread's locks, not the thread
        return None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        logger.exception("could not fork the first zygote; it is started by exec")
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        try:
            ours.close()
            os.setsid()
            _set_title(ZYGOTE_TITLE.format(config=config_path))
            _serve_preforked(config, config_path, theirs)
        except BaseException:
            traceback.print_exc()  # to the supervisor's stderr: logging is not set up before the env
        finally:
            os._exit(1)
    theirs.close()
    return PreForked(pid, ours)


def _serve_preforked(config: Config, config_path: str, channel: socket.socket) -> NoReturn:
    try:
        message = channel.recv(ENV_MESSAGE_MAX)
    except OSError:
        os._exit(1)
    env = parse_env(message)
    if env is None:  # b"": the supervisor is gone before it started the zygote (a bad token file, ...)
        os._exit(0 if not message else 1)
    os.environ.clear()
    os.environ.update(env)
    from bridge.logs import setup_logging

    setup_logging(config.logging, "zygote")
    serve(config_path, channel.detach())


def serve(config_path: str, channel_fd: int) -> NoReturn:
    """The zygote's life: import, say ready, fork a worker for each request until the channel closes."""
    gc.disable()  # no collection leaves holes in the pages the workers share (see `gc.freeze`)
    for name in WARM_MODULES:
        importlib.import_module(name)
    from bridge.config import load_config
    from bridge.errors import ConfigError

    try:  # parsed here once: a worker whose file has not changed since takes it as it is
        warm = WarmConfig(Path(config_path).read_bytes(), load_config(config_path))
    except (OSError, ConfigError):
        warm = None  # each worker reads the file itself and fails on it as a fresh one would
    if warm is not None and warm.config.sip.memory_merge:
        _mark_mergeable()
    _drop_own_metric_files()
    _set_title(ZYGOTE_TITLE.format(config=config_path))
    channel = socket.socket(fileno=channel_fd)
    if threading.active_count() > 1:  # a fork would copy a thread's locks, not the thread
        logger.error("zygote has %d threads after its imports", threading.active_count())
    channel.send(b"ready")
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(channel, 256, 1)
        except OSError:
            logger.exception("zygote channel failed")
            os._exit(1)
        if not message:  # the supervisor is gone
            os._exit(0)
        index = parse_request(message)
        if index is None or len(fds) != 1:
            logger.error("zygote: bad request %r with %d fds", message[:40], len(fds))
            for fd in fds:
                os.close(fd)
            continue
        pid = _fork_worker(index, fds[0], config_path, channel, warm)
        os.close(fds[0])
        channel.send(b"failed %d" % index if pid is None else b"pid %d %d" % (index, pid))


def _fork_worker(
    index: int, control_fd: int, config_path: str, channel: socket.socket, warm: WarmConfig | None
) -> int | None:
    """Fork an intermediate that forks the worker and exits; return the worker's pid (None: failed)."""
    read_end, write_end = os.pipe()
    gc.freeze()  # the workers' collections never write to the objects they share with the zygote
    try:
        middle = os.fork()
    except OSError:
        logger.exception("zygote could not fork worker %d", index)
        os.close(read_end)
        os.close(write_end)
        return None
    if middle == 0:
        code = 1
        try:
            os.close(read_end)
            os.setsid()
            worker = os.fork()
            if worker == 0:
                os.close(write_end)
                _become_worker(index, control_fd, config_path, channel, warm)
            os.write(write_end, b"%d" % worker)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read()
    os.waitpid(middle, 0)
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class WarmConfig:
    """The config file's bytes when the zygote parsed them, and what they parsed to."""

    data: bytes
    config: Config

    def current(self, path: str) -> Config | None:
        """The parsed config if the file still holds the same bytes (so a worker need not parse it
        again: parsing would write to, and copy, about 2 MB of the pages it shares); else None."""
        try:
            return self.config if Path(path).read_bytes() == self.data else None
        except OSError:
            return None


def _become_worker(
    index: int, control_fd: int, config_path: str, channel: socket.socket, warm: WarmConfig | None
) -> NoReturn:
    """In the forked worker: set the process up as a fresh one, then run the worker. Never returns."""
    forked_with = frozenset(sys.modules)
    code = 1
    try:
        channel.close()
        gc.enable()
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        random.seed()  # os.fork() reseeds it too (random's at-fork hook); said here, where it matters
        _set_title(WORKER_TITLE.format(config=config_path, index=index, fd=control_fd))
        from bridge.config import load_config
        from bridge.errors import ConfigError
        from bridge.worker import main as worker_main

        try:
            config = (warm and warm.current(config_path)) or load_config(Path(config_path))
        except ConfigError as exc:
            print(f"vblaze-bridge: invalid configuration:\n{exc}", file=sys.stderr)
            code = 2
        else:
            worker_main(config, index, control_fd, config_path, forked_with)  # leaves with os._exit
    except BaseException:
        logger.exception("forked worker %d failed to start", index)
    finally:
        os._exit(code)


def _mark_mergeable() -> None:
    """Before the first fork: the zygote's memory and every worker's mergeable by the host's KSM."""
    from bridge.memory_merge import mark_and_log

    mark_and_log(logger, "zygote")


def _set_title(title: str) -> None:
    import setproctitle

    setproctitle.setproctitle(title)


def _drop_own_metric_files() -> None:
    """Remove the (empty) multiprocess files the imports created for the zygote's own pid."""
    from bridge.metrics import multiprocess_dir

    directory = multiprocess_dir()
    if directory is not None:
        for path in directory.glob(f"*_{os.getpid()}.db"):
            path.unlink(missing_ok=True)


# --- the supervisor's side --------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux); False if it cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class ForkedProcess:
    """A worker the zygote forked, now the supervisor's child: the parts of asyncio's Process the
    supervisor uses (pid, returncode, wait, send_signal), through a pidfd on the running loop."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._exited = asyncio.Event()
        self._fd: int | None = os.pidfd_open(pid)
        self._loop.add_reader(self._fd, self._reap)

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # not our child (no subreaper): its status is lost
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        self.returncode = os.waitstatus_to_exitcode(status)
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self._fd is None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._fd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ZygoteLink:
    """The supervisor's zygote: keeps one running (`run`), asks it for workers (`spawn`)."""

    def __init__(
        self, command: Callable[[int], list[str]], env: dict[str, str], first: PreForked | None = None
    ) -> None:
        self._command = command  # the zygote's command line for its end of the channel
        self._env = env
        self._first = first  # the zygote `prefork` made, used for the first start; restarts exec
        self._up = asyncio.Event()
        self._sock: socket.socket | None = None
        self._process: asyncio.subprocess.Process | ForkedProcess | None = None
        self._pending: dict[int, asyncio.Future[int | None]] = {}
        self._lock = asyncio.Lock()
        self._strays: set[asyncio.Task[None]] = set()
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def run(self) -> None:
        """Keep a zygote running until cancelled; start it again whenever it exits."""
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self._live()
                assert self._process is not None
                code = await self._process.wait()
                logger.error("zygote (pid %d) exited with %d; starting it again", self._process.pid, code)
            except OSError:
                logger.exception("zygote could not be started")
            finally:
                self._down()
            failures = 1 if time.monotonic() - started > 5.0 else failures + 1
            await asyncio.sleep(restart_delay(failures))

    async def _live(self) -> None:
        """Start a zygote, wait until it is ready, then read its replies until its channel closes."""
        loop = asyncio.get_running_loop()
        first, self._first = self._first, None
        if first is not None:
            ours = first.sock
            self._process = ForkedProcess(first.pid)
            ours.setblocking(False)
            self._sock = ours
            await loop.sock_sendall(ours, env_message(self._env))
        else:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self._process = await asyncio.create_subprocess_exec(
                    *self._command(theirs.fileno()),
                    pass_fds=(theirs.fileno(),),
                    env=self._env,
                    start_new_session=True,
                )
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            ours.setblocking(False)
            self._sock = ours
        self.starts += 1
        try:
            async with asyncio.timeout(ZYGOTE_READY_TIMEOUT_SECONDS):
                hello = await loop.sock_recv(ours, 64)
        except TimeoutError:
            self._process.kill()
            raise
        if hello != b"ready":
            raise ZygoteGone(f"zygote (pid {self._process.pid}) ended before it was ready")
        how = "forked from the supervisor" if first is not None else "started by exec"
        logger.info("zygote ready (pid %d, %s)", self._process.pid, how)
        self._up.set()
        await self._read_replies(ours)

    async def _read_replies(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while message := await loop.sock_recv(sock, 256):
            reply = parse_reply(message)
            if reply is None:
                logger.error("zygote sent %r", message[:40])
                continue
            index, pid = reply
            waiter = self._pending.pop(index, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(pid)
            elif pid is not None:  # its spawn gave up waiting: the worker is nobody's
                logger.error("worker %d (pid %d) forked too late; killing it", index, pid)
                stray = asyncio.create_task(_kill(ForkedProcess(pid)))
                self._strays.add(stray)
                stray.add_done_callback(self._strays.discard)

    def _down(self) -> None:
        self._up.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(ZygoteGone("the zygote went away"))
        self._pending.clear()

    async def spawn(self, index: int, control_fd: int) -> ForkedProcess:
        """Fork worker `index` with `control_fd` as its control channel; OSError if it cannot be."""
        async with asyncio.timeout(ZYGOTE_READY_TIMEOUT_SECONDS):
            await self._up.wait()
        async with self._lock:  # one request at a time: a reply answers the one in flight
            sock = self._sock
            if sock is None:
                raise ZygoteGone("the zygote went away")
            waiter = asyncio.get_running_loop().create_future()
            self._pending[index] = waiter
            socket.send_fds(sock, [spawn_request(index)], [control_fd])
            async with asyncio.timeout(SPAWN_TIMEOUT_SECONDS):
                pid = await waiter
        if pid is None:
            raise ZygoteGone(f"the zygote could not fork worker {index}")
        return ForkedProcess(pid)

    def kill(self) -> None:
        """SIGKILL the zygote (tests; a crash)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def stop(self) -> None:
        """Close the channel (the zygote exits on it) and wait for the zygote, bounded."""
        process = self._process
        self._down()
        if process is not None and process.returncode is None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def _kill(process: ForkedProcess) -> None:
    try:
        process.kill()
    except ProcessLookupError:
        pass
    await process.wait()

"""Each worker's record of its calls in progress, so that a worker that dies still ends its calls.

The record is a journal, ``<state.directory>/worker-<sip port>.calls.jsonl``, one JSON object a line,
appended with a single ``write`` to a descriptor kept open (a SIGKILL cannot tear a line; a line a
power cut tore is skipped):

- ``{"op": "life", "pid": …, "ppid": …}`` opens each worker life (and each compacted file);
- ``{"op": "call", …}`` after each event a call emits: call id, the next ``seq``, when the call
  started, its utterance count and where its last utterance ended;
- ``{"op": "end", "call_id": …}`` once the call's ``call.ended`` is in the sink.

Every `COMPACT_EVERY` lines the file is rewritten with only the calls still up (written to a temporary
file, then renamed over the journal: a kill at any point leaves one whole journal). While calls are up
the worker touches the file every `HEARTBEAT_SECONDS`, so its modification time says when the worker
was last alive. The file is named after the worker's SIP port, which no two bridges on one host share.
It is not fsynced: a power loss may lose its last lines.

Order against the sink. A ``call`` line is written at once (right after the event was submitted, before
the sink has it on disk); an ``end`` line only after the sink has written the ``call.ended``
(`ordered_after`, on the webhook spool's thread). So after a kill at any point, for a call still in
the journal, either its ``call.ended`` is in the sink (and the lost-call copy is recognised as a
duplicate and dropped), or it is not and the lost call's ``seq`` is at least one past every event the
sink may have.

Lost calls (`end_lost_calls`). The replacement worker of the same index reads the journal at start and,
for each call it lists, submits a ``call.ended`` with reason ``worker_lost``: its duration counts up to
when the worker was lost (the journal's last write or heartbeat, at most `HEARTBEAT_SECONDS` before the
death), and the audio after the last utterance is reported as a gap. Through the webhook sink, that
event is numbered and ordered by the spool (`WebhookSink.submit_lost`): it is never sent before the
call's events still spooled, whichever worker holds them. The calls are forgotten only once their
``call.ended`` is written, so a worker that dies again before that ends them on its next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from bridge import event_data
from bridge.events import BridgeEvent, EventSink
from bridge.webhook import crashpoint
from sip.routing import DEFAULT_ROUTE

logger = logging.getLogger(__name__)

COMPACT_EVERY = 1000  # journal lines between rewrites
HEARTBEAT_SECONDS = 5.0  # while calls are up, the journal's mtime is at most this old


@dataclass
class LedgerEntry:
    call_id: str
    next_seq: int
    started_at: float  # unix time the call was answered
    utterances: int = 0
    last_end: float = 0.0  # end of the last utterance on the call's timeline
    audio_started_at: float | None = None  # unix time of the call timeline's second 0 (its first audio)
    route: str = DEFAULT_ROUTE  # the call's route: a lost call's call.ended goes to its sinks


@dataclass(frozen=True)
class LostCall:
    """A call a previous worker of this index left unfinished."""

    entry: LedgerEntry
    lost_at: float  # unix time the worker was last known alive (journal written or touched)
    same_supervisor: bool  # that worker's supervisor is ours: it saw the death and counted the call


@runtime_checkable
class OrderedSink(Protocol):
    """A sink that can run a function after everything submitted so far is written (webhook, jsonl)."""

    def ordered_after(self, fn: Callable[[], None]) -> None: ...


@runtime_checkable
class LostCallSink(Protocol):
    """A sink that numbers a lost call's call.ended itself, after the call's events it holds."""

    def submit_lost(self, event: BridgeEvent) -> None: ...


@runtime_checkable
class RoutedSink(Protocol):
    """Sinks by route (`bridge.route_sinks.RouteSinks`): a lost call's events go to its route's."""

    def for_route(self, name: str) -> EventSink: ...


class CallLedger:
    def __init__(self, directory: str | Path, sip_port: int) -> None:
        self.path = Path(directory) / f"worker-{sip_port}.calls.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, LedgerEntry] = {}
        self._lock = threading.Lock()  # `end` lines are written from the sink's thread
        self._fd: int | None = None
        self._lines = 0
        self._sink: OrderedSink | None = None
        self._heartbeat: asyncio.TimerHandle | None = None

    # --- a worker's start --------------------------------------------------------------------------

    def take_orphans(self) -> list[LostCall]:
        """Calls a previous worker of this index left unfinished. They stay in the journal (a new life
        begins, compacted) until `forget` is called for each once its call.ended is written."""
        lost_at = time.time()
        ppid: int | None = None
        orphans: dict[str, LedgerEntry] = {}
        try:
            lost_at = min(lost_at, self.path.stat().st_mtime)
            with self.path.open("rb") as f:
                for raw in f:
                    ppid = self._replay(raw, orphans, ppid)
        except FileNotFoundError:
            pass
        except OSError:
            logger.exception("unreadable call ledger %s; its calls cannot be ended", self.path)
        legacy = self.path.with_suffix(".json")  # the single-document ledger of earlier versions
        try:
            for item in json.loads(legacy.read_text()).get("calls", []):
                orphans.setdefault(item["call_id"], LedgerEntry(**item))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            logger.exception("unreadable call ledger %s; its calls cannot be ended", legacy)
        with self._lock:
            self._entries = dict(orphans)
            self._compact()
        legacy.unlink(missing_ok=True)  # its calls are in the journal now
        return [
            LostCall(e, max(e.started_at, lost_at), ppid is not None and ppid == os.getppid())
            for e in orphans.values()
        ]

    def _replay(self, raw: bytes, entries: dict[str, LedgerEntry], ppid: int | None) -> int | None:
        try:
            record = json.loads(raw)
            op = record.pop("op")
            if op == "life":
                return int(record["ppid"])
            if op == "call":
                names = {f.name for f in fields(LedgerEntry)}
                entry = LedgerEntry(**{k: v for k, v in record.items() if k in names})
                entries[entry.call_id] = entry
            elif op == "end":
                entries.pop(record["call_id"], None)
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("call ledger %s: skipping a damaged line", self.path)
        return ppid

    def write_behind(self, sink: object) -> None:
        """From now on write `end` lines only once `sink` has written what was submitted before."""
        self._sink = sink if isinstance(sink, OrderedSink) else None

    # --- from the calls, on the loop ---------------------------------------------------------------

    def update(self, entry: LedgerEntry) -> None:
        line = self._line({"op": "call", **asdict(entry)})
        with self._lock:
            self._entries[entry.call_id] = entry
            self._append(line)
        self._arm_heartbeat()

    def forget(self, call_id: str) -> None:
        """The call's call.ended was submitted: record its end once the sink has written it."""
        with self._lock:
            if self._entries.pop(call_id, None) is None:
                return
        line = self._line({"op": "end", "call_id": call_id})

        def write() -> None:
            with self._lock:
                if call_id not in self._entries:  # not back meanwhile (never expected)
                    self._append(line)

        if self._sink is not None:
            self._sink.ordered_after(write)
        else:
            write()

    # --- the file ------------------------------------------------------------------------------------

    @staticmethod
    def _line(record: dict[str, Any]) -> bytes:
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()

    def _append(self, line: bytes) -> None:
        """Under the lock: one write of one line; compact when the journal has grown."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            self._lines = 0  # without take_orphans (tests): the journal so far is kept
        crashpoint.reached("ledger.write")
        os.write(self._fd, line)
        self._lines += 1
        if self._lines >= COMPACT_EVERY:
            self._compact()

    def _compact(self) -> None:
        """Under the lock: rewrite the journal with a life line and the calls still up."""
        tmp = self.path.with_suffix(".tmp")
        life = {"op": "life", "pid": os.getpid(), "ppid": os.getppid(), "at": time.time()}
        data = b"".join(
            [self._line(life)] + [self._line({"op": "call", **asdict(e)}) for e in self._entries.values()]
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        crashpoint.reached("ledger.compact")
        os.replace(tmp, self.path)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._lines = 1 + len(self._entries)

    def _arm_heartbeat(self) -> None:
        if self._heartbeat is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._heartbeat = loop.call_later(HEARTBEAT_SECONDS, self._beat)

    def _beat(self) -> None:
        self._heartbeat = None
        if not self._entries:
            return
        try:
            os.utime(self.path)
        except OSError:
            logger.exception("cannot touch the call ledger %s", self.path)
        self._arm_heartbeat()


def lost_call_ended(entry: LedgerEntry, lost_at: float) -> dict[str, Any]:
    """The `call.ended` data for a call whose worker died at `lost_at` (unix time)."""
    return event_data.as_data(
        event_data.lost_call_ended(
            entry.started_at, lost_at, entry.utterances, entry.last_end, entry.audio_started_at
        )
    )


def end_lost_calls(
    ledger: CallLedger, sink: EventSink, now: float | None = None
) -> list[tuple[LostCall, dict[str, Any]]]:
    """Submit `call.ended` (worker_lost) to `sink` for every call the previous worker of this index left.

    Call once, after ``await sink.start()`` and before any call starts: it also makes the ledger write
    behind `sink` from then on. `now` is the events' time. Returns each lost call with its call.ended
    data, for logs and metrics: a call whose `same_supervisor` is False was not counted by the
    supervisor (it died with the pool), so the caller counts it.
    """
    ledger.write_behind(sink)
    now = time.time() if now is None else now
    out = []
    for lost in ledger.take_orphans():
        entry = lost.entry
        data = lost_call_ended(entry, lost.lost_at)
        event = BridgeEvent("call.ended", entry.call_id, entry.next_seq, now, data)
        target = sink.for_route(entry.route) if isinstance(sink, RoutedSink) else sink
        if isinstance(target, LostCallSink):
            target.submit_lost(event)
        else:
            target.submit(event)
        ledger.forget(entry.call_id)
        out.append((lost, data))
    return out

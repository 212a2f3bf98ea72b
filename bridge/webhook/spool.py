"""The webhook spool, the disk side of delivery: one SQLite file (WAL mode) shared by every worker process.

An event is written here, once per receiver URL, before its first attempt, and removed only when the
receiver answers 2xx (or moved to the `rejected` table on a final 4xx). So at any moment the spool holds,
for each (url, call), the undelivered suffix of that call's events.

Ownership. Each open `Spool` is an *owner* with a random token, and holds an exclusive `flock` on
``<spool>.owners/<token>.lock`` for as long as it is open. The kernel drops that lock when the process
dies, SIGKILL included, so "owner alive" is "its lock file is locked" — no pid reuse to worry about.
Every row names its owner; a process only delivers its own rows. `claim_orphans` takes over the rows of
owners whose lock is free (dead, or closed cleanly with events left) and returns them in order; which
owners those are is `queue.claim_candidates` / `queue.may_claim`, this module only reads the locks. The
lock file is renamed into place only once locked, so a live owner is never mistaken for a dead one.

First open. Switching a new file to WAL takes an exclusive lock that SQLite does not wait for (its busy
handler is not called there), so several processes opening a fresh spool at once used to fail with
"database is locked". Every open, and `prepare` (which the supervisor calls once before it spawns the
workers), therefore creates the file, switches it to WAL and creates the schema while holding an
exclusive `flock` on ``<spool>.init.lock``, waiting at most the busy timeout for it. Once the file is
in WAL mode the opens that follow only read the mode and go on.

Durability: WAL with ``synchronous=FULL`` survives a killed process and a power cut. The size bound is
the database's used pages; an insert that would pass `max_bytes` is refused as a whole.

The class is synchronous and not thread-safe: `delivery.py` drives it from a single thread of its own,
so the event loop never waits on the disk. It decides nothing about order; `queue.py` does.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.webhook import crashpoint, queue

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_BUSY_TIMEOUT = 10.0
INIT_LOCK_POLL = 0.005  # seconds between attempts at the first-open lock
REJECTED_KEEP = 10_000  # rejected events kept for inspection, oldest dropped first

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,
    call_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    event_time REAL NOT NULL,
    spooled_at REAL NOT NULL,
    owner TEXT NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (url, call_id, seq)
);
CREATE INDEX IF NOT EXISTS events_owner ON events (owner, url, call_id, seq);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,
    call_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    event_time REAL NOT NULL,
    rejected_at REAL NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT NOT NULL,
    body BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class NewEvent:
    """One event for one receiver, to be spooled."""

    url: str
    call_id: str
    seq: int
    event_id: str
    kind: str
    event_time: float
    body: bytes


@dataclass(frozen=True)
class SpooledEvent:
    """A spooled event without its body (bodies are read one at a time, when sent)."""

    url: str
    call_id: str
    seq: int
    event_id: str
    kind: str
    event_time: float


@dataclass(frozen=True)
class RejectedEvent:
    url: str
    call_id: str
    seq: int
    event_id: str
    status: int
    detail: str


@dataclass(frozen=True)
class InsertResult:
    accepted: bool  # False: the spool is full and nothing was written
    used_bytes: int
    # One per event, in order: False where the spool already held that (url, call_id, seq), written
    # by another owner (a lost call's call.ended whose real one is spooled): that copy is not sent.
    inserted: tuple[bool, ...] = ()


@dataclass(frozen=True)
class LostEndResult:
    """What `insert_lost_end` did."""

    seq: int | None  # the seq the call.ended was written with; None: not written (see `written`)
    written: bool  # False: the spool is full, or already holds a call.ended of this call
    already_ended: bool
    used_bytes: int


@contextlib.contextmanager
def _init_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on ``<path>.init.lock``; sqlite3.OperationalError after `timeout`."""
    fd = os.open(path.with_name(path.name + ".init.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError(
                        f"{path}: another process held the spool's first-open lock for {timeout:g} s"
                    ) from None
                time.sleep(INIT_LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def _connect(path: Path, busy_timeout: float) -> tuple[sqlite3.Connection, str]:
    """Open `path`, make it a WAL spool with the current schema; the connection and its schema version.

    Holds the first-open lock throughout, so any number of processes may call it at once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _init_lock(path, busy_timeout):
        db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            (mode,) = db.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA journal_size_limit=16777216")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                (version,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except BaseException:
            db.close()
            raise
    return db, str(version)


def prepare(path: str | Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
    """Create the spool at `path` (WAL, schema) once, before any worker opens it; a no-op if it exists.

    The supervisor calls it before spawning the workers. Raises sqlite3.Error if the file cannot be
    made a spool of this version (the bridge should not start then).
    """
    db, version = _connect(Path(path), busy_timeout)
    db.close()
    if int(version) != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"{path}: spool schema {version}, expected {SCHEMA_VERSION}")


def _token() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class Spool:
    """The spool file, seen by one owner. Open with `open()`, release with `close()`."""

    def __init__(self, path: str | Path, max_bytes: int, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.owner = _token()
        self.owners_dir = self.path.with_name(self.path.name + ".owners")
        self._busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the file if needed, take this owner's lock, and check the schema."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.owners_dir.mkdir(exist_ok=True)
        self._lock_fd = self._take_lock()
        try:
            db, version = _connect(self.path, self._busy_timeout)
        except BaseException:
            self._release_lock()
            raise
        if int(version) != SCHEMA_VERSION:
            db.close()
            self._release_lock()
            raise sqlite3.DatabaseError(f"{self.path}: spool schema {version}, expected {SCHEMA_VERSION}")
        self._db = db

    def close(self) -> None:
        """Close the file and release the lock: rows left become orphans for the next owner to claim."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._release_lock()

    def _take_lock(self) -> int:
        tmp = self.owners_dir / f".{self.owner}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, self.owners_dir / f"{self.owner}.lock")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is None:
            return
        try:
            (self.owners_dir / f"{self.owner}.lock").unlink(missing_ok=True)
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("spool is not open")
        return self._db

    # --- events --------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages not on the free list)."""
        (pages,) = self.db.execute("PRAGMA page_count").fetchone()
        (free,) = self.db.execute("PRAGMA freelist_count").fetchone()
        (size,) = self.db.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    def insert(self, events: Sequence[NewEvent]) -> InsertResult:
        """Write `events` in one transaction, owned by this owner, or none of them if the spool is full."""
        crashpoint.reached("spool.before_insert")
        db = self.db
        incoming = sum(len(e.body) + len(e.url) + len(e.call_id) + 128 for e in events)
        db.execute("BEGIN IMMEDIATE")
        try:
            used = self.used_bytes()
            if used + incoming > self.max_bytes:
                db.execute("ROLLBACK")
                return InsertResult(False, used)
            now = time.time()
            inserted = tuple(
                db.execute(
                    "INSERT OR IGNORE INTO events (url, call_id, seq, event_id, kind, event_time, "
                    "spooled_at, owner, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.url, e.call_id, e.seq, e.event_id, e.kind, e.event_time, now, self.owner, e.body),
                ).rowcount
                == 1
                for e in events
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return InsertResult(True, used + incoming, inserted)

    def insert_lost_end(
        self,
        urls: Sequence[str],
        call_id: str,
        seq: int,
        event_time: float,
        encode: Callable[[int], tuple[str, bytes]],
    ) -> LostEndResult:
        """Write a lost call's call.ended for every URL in one transaction, numbered after the call.

        Its seq is `seq` (the ledger's next one) or one past the call's last spooled event, whichever
        is larger; `encode(seq)` gives its event id and body. Nothing is written if the spool already
        holds a call.ended of the call (its worker wrote it before dying) or if it is full.
        """
        crashpoint.reached("spool.before_insert")
        db = self.db
        marks = ",".join("?" * len(urls))
        db.execute("BEGIN IMMEDIATE")
        try:
            (ended,) = db.execute(
                f"SELECT COUNT(*) FROM events WHERE call_id = ? AND kind = 'call.ended' AND url IN ({marks})",
                (call_id, *urls),
            ).fetchone()
            used = self.used_bytes()
            if ended:
                db.execute("ROLLBACK")
                return LostEndResult(None, False, True, used)
            (last,) = db.execute(
                f"SELECT MAX(seq) FROM events WHERE call_id = ? AND url IN ({marks})", (call_id, *urls)
            ).fetchone()
            final = seq if last is None else max(seq, int(last) + 1)
            event_id, body = encode(final)
            incoming = len(urls) * (len(body) + len(call_id) + 128) + sum(map(len, urls))
            if used + incoming > self.max_bytes:
                db.execute("ROLLBACK")
                return LostEndResult(None, False, False, used)
            now = time.time()
            db.executemany(
                "INSERT INTO events (url, call_id, seq, event_id, kind, event_time, spooled_at, owner, body) "
                "VALUES (?, ?, ?, ?, 'call.ended', ?, ?, ?, ?)",
                [(url, call_id, final, event_id, event_time, now, self.owner, body) for url in urls],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return LostEndResult(final, True, False, used + incoming)

    def body(self, url: str, call_id: str, seq: int) -> bytes | None:
        row = self.db.execute(
            "SELECT body FROM events WHERE url = ? AND call_id = ? AND seq = ?", (url, call_id, seq)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def delete(self, url: str, call_id: str, seq: int) -> None:
        """The receiver answered 2xx."""
        self.db.execute("DELETE FROM events WHERE url = ? AND call_id = ? AND seq = ?", (url, call_id, seq))

    def reject(self, url: str, call_id: str, seq: int, status: int, detail: str) -> None:
        """The receiver answered a final 4xx: keep the event in `rejected`, out of the queue."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO rejected (url, call_id, seq, event_id, kind, event_time, rejected_at, status, "
                "detail, body) SELECT url, call_id, seq, event_id, kind, event_time, ?, ?, ?, body "
                "FROM events WHERE url = ? AND call_id = ? AND seq = ?",
                (time.time(), status, detail, url, call_id, seq),
            )
            db.execute("DELETE FROM events WHERE url = ? AND call_id = ? AND seq = ?", (url, call_id, seq))
            db.execute(
                "DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - ?", (REJECTED_KEEP,)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def pending(self) -> list[SpooledEvent]:
        """This owner's events, ordered by (url, call_id, seq)."""
        return self._select("owner = ?", (self.owner,))

    def _select(self, where: str, args: tuple[object, ...]) -> list[SpooledEvent]:
        rows = self.db.execute(
            "SELECT url, call_id, seq, event_id, kind, event_time FROM events "
            f"WHERE {where} ORDER BY url, call_id, seq",
            args,
        ).fetchall()
        return [SpooledEvent(*row) for row in rows]

    def earlier_elsewhere(self, url: str, call_id: str, seq: int) -> bool:
        """Whether another owner, alive or dead, holds an event of (url, call_id) before `seq`."""
        row = self.db.execute(
            "SELECT 1 FROM events WHERE url = ? AND call_id = ? AND seq < ? AND owner != ? LIMIT 1",
            (url, call_id, seq, self.owner),
        ).fetchone()
        return row is not None

    def count(self) -> int:
        """Events waiting, over every owner."""
        (n,) = self.db.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(n)

    def rejected(self) -> list[RejectedEvent]:
        rows = self.db.execute(
            "SELECT url, call_id, seq, event_id, status, detail FROM rejected ORDER BY id"
        ).fetchall()
        return [RejectedEvent(*row) for row in rows]

    # --- orphans -------------------------------------------------------------------------------------

    def claim_orphans(self) -> list[SpooledEvent]:
        """Take over the rows of every dead owner; return them ordered by (url, call_id, seq)."""
        rows = self.db.execute("SELECT DISTINCT owner FROM events WHERE owner != ?", (self.owner,))
        owners = queue.claim_candidates(self.owner, (row[0] for row in rows), self._lock_file_owners())
        claimed: list[SpooledEvent] = []
        for owner in owners:
            claimed.extend(self._claim(owner))
        claimed.sort(key=lambda e: (e.url, e.call_id, e.seq))
        return claimed

    def _lock_file_owners(self) -> Iterable[str]:
        for entry in self.owners_dir.iterdir():
            name = entry.name
            if name.endswith(".lock"):
                yield name[: -len(".lock")]
            elif name.startswith(".") and name.endswith(".tmp"):
                # Left by an owner that died while opening. A young one may be an owner opening now.
                try:
                    stale = time.time() - entry.stat().st_mtime > 60
                except FileNotFoundError:
                    continue
                if stale:
                    self._remove_if_unlocked(entry)

    @staticmethod
    def _remove_if_unlocked(path: Path) -> bool:
        """Remove a lock file nobody holds; False if its owner is alive."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

    @staticmethod
    def _lock_state(fd: int) -> queue.Liveness:
        """ALIVE if another process holds the lock of `fd`, else DEAD (and the lock is now ours)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return queue.Liveness.ALIVE
        return queue.Liveness.DEAD

    def _claim(self, owner: str) -> list[SpooledEvent]:
        path = self.owners_dir / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None  # closed cleanly, or never got as far as its lock: dead either way
        try:
            if not queue.may_claim(queue.Liveness.GONE if fd is None else self._lock_state(fd)):
                return []
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._select("owner = ?", (owner,))
                db.execute("UPDATE events SET owner = ? WHERE owner = ?", (self.owner, owner))
                crashpoint.reached("spool.claim")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if fd is not None:
                path.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
        if rows:
            logger.warning(
                "claimed %d spooled webhook events of owner %s, which is gone; delivering them",
                len(rows),
                owner,
            )
        return rows

"""The on-disk outbox: events survive a broker outage and a daemon restart.

An event is written here (one SQLite transaction, ``synchronous=FULL``)
*before* it is handed to MQTT, and deleted only after the broker acknowledged
it (PUBACK). Whatever is still here when the process starts again is sent
again, in sequence order, so delivery is at-least-once; subscribers drop
duplicates by event id.

Sequence numbers: the per-device ``seq`` lives in the same database (table
``meta``, key ``next_seq``) and is taken in the same transaction that stores
the event, so it increases by exactly one per event across restarts, even
when the outbox is empty. Beside the database, ``<name>.seq`` holds a
reservation: a number no event has reached yet, moved :data:`SEQ_BLOCK`
ahead (one small atomic write) whenever events catch up with it. It is what
lets numbering continue after the database itself is lost.

Bounds and failures never stop recognition; :meth:`Outbox.append` does not
raise for them:

* When the outbox holds ``mqtt.outbox_max`` events, the *oldest* are dropped:
  on a door the newest events matter most, and a subscriber sees the loss as
  a gap in ``seq``.
* When the disk is full, a spare file kept beside the database
  (``<name>.reserve``) is given up, the oldest events are dropped to make
  room, and the event is stored; only when nothing can be freed is the new
  event itself lost. Every dropped or lost event is counted (:attr:`dropped`,
  :attr:`lost`) and the real error is logged and kept (:attr:`last_error`).
* When the database cannot be opened for lack of space, a read-only file
  system or an I/O error, the outbox runs without storage (every event
  counted as lost) and tries again every :data:`REOPEN_S` seconds.

Only real corruption (SQLite's CORRUPT or NOTADB) moves the database aside
(``<name>.corrupt-<time>``), and only when it is a regular file that starts
like an SQLite database: anything else at ``outbox_path`` (a folder, the
config file) is refused and never renamed. A new database then continues at
the reserved number from ``<name>.seq``; without it, at the highest number
that can still be read from the damaged file plus :data:`SEQ_BLOCK`; only
when both are gone does it continue from the wall clock in milliseconds (the
one other number known to exceed every earlier one). A database locked by
another process (BUSY/LOCKED) is retried for :data:`LOCK_WAIT_S`, then
refused with an error saying so; it is never taken for corruption.

The database, its ``-wal``/``-shm`` files and the reservation are created
0600 (events name people) in a 0700 folder, whatever the umask.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import FacegateError
from edge.files import make_private_dir, move_aside, write_atomic

log = logging.getLogger("facegate.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
"""
SQLITE_MAGIC = b"SQLite format 3\x00"
SEQ_BLOCK = 100
"""How far ahead of the events the ``.seq`` reservation is moved (at most this many
numbers are skipped when the database has to be started again)."""
RESERVE_BYTES = 256 * 1024
"""The spare file given up when the disk is full, so the oldest events can be dropped."""
LOCK_WAIT_S = 10.0
"""How long opening waits for another process's lock before giving up."""
BUSY_TIMEOUT_S = 2.0
"""How long one statement waits for a lock (the recognition loop waits at most this)."""
REOPEN_S = 30.0
"""How often an outbox without storage tries to open its database again."""
LOG_EVERY = 100
"""After the first few, storage errors are logged once per this many."""

_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_LOCKED = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_STORAGE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY}
_STORAGE_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


class OutboxError(FacegateError):
    """The outbox database cannot be opened (locked, not an outbox, no permission)."""


class _Corrupt(Exception):
    """The database is damaged (CORRUPT, NOTADB or a failed quick_check)."""


@dataclass(frozen=True)
class Row:
    """One stored event: its sequence number, id, topic and wire payload."""

    seq: int
    event_id: str
    topic: str
    payload: bytes


def _code(e: BaseException) -> int:
    """SQLite's primary result code of an exception (0 if it has none)."""
    return int(getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF


def _is_storage_failure(e: BaseException) -> bool:
    if isinstance(e, sqlite3.Error):
        return _code(e) in _STORAGE
    return isinstance(e, OSError) and e.errno in _STORAGE_ERRNO


class Outbox:
    """A bounded, durable FIFO of events keyed by sequence number (thread-safe)."""

    def __init__(self, path: Path | str, max_rows: int = 10000) -> None:
        if max_rows < 1:
            raise OutboxError(f"outbox: max_rows must be positive, got {max_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        self._seq_file = self.path.with_name(self.path.name + ".seq")
        self._reserve_file = self.path.with_name(self.path.name + ".reserve")
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._next_seq = 1
        self._reserved = self._read_reservation()
        self._lost = 0  # events never stored, not yet added to meta.dropped
        self._lost_total = 0
        self._errors = 0
        self._drop_logs = 0
        self._next_open = 0.0
        self._next_reserve = 0.0
        self._reserve_retry = 0.0
        self._tight = False  # the disk was full: keep free pages in the database
        self._closed = False
        self.last_error: str | None = None
        """The last storage error, for the state message (None while all is well)."""
        self._open_error = ""
        try:
            self._db = self._open()
        except (sqlite3.Error, OSError) as e:
            if not _is_storage_failure(e):
                raise OutboxError(f"outbox {self.path}: cannot open ({e})") from None
            self._no_storage(e)

    # -- opening --------------------------------------------------------------------

    def _read_reservation(self) -> int:
        try:
            text = self._seq_file.read_text(encoding="ascii").strip()
            return int(text) if text.isdigit() else 0
        except (OSError, UnicodeDecodeError):
            return 0

    def _check_file(self) -> None:
        """Refuse anything at the path but a regular file that may be an SQLite database."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            raise OutboxError(
                f"outbox {self.path}: exists and is not a regular file; refusing to touch it "
                "(set mqtt.outbox_path to a file name)"
            )
        if st.st_size:
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
            if head != SQLITE_MAGIC:
                raise OutboxError(
                    f"outbox {self.path}: is not an SQLite database (not an outbox); refusing "
                    "to touch it (set mqtt.outbox_path to a new file name)"
                )

    def _precreate(self) -> None:
        """Create the folder 0700 and the files 0600 before SQLite does (umask-proof)."""
        make_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            # SQLite gives -wal and -shm the mode of the database file.
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(self.path.with_name(self.path.name + suffix), 0o600)

    def _connect(self, first_seq: int) -> sqlite3.Connection:
        self._check_file()
        self._precreate()
        # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE).
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed event survives a power cut, not only a crash.
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('next_seq', ?)", (first_seq,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")
            ok = db.execute("PRAGMA quick_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise _Corrupt(f"quick_check: {ok[0] if ok else 'no answer'}")
            (seq,) = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        except BaseException:
            db.close()
            raise
        self._next_seq = max(self._next_seq, int(seq))
        return db

    def _open(self) -> sqlite3.Connection:
        """Open (or create) the database: wait out locks, move real corruption aside."""
        deadline = time.monotonic() + LOCK_WAIT_S
        first = max(1, self._reserved)
        moved = False
        while True:
            try:
                return self._connect(first)
            except sqlite3.Error as e:
                code = _code(e)
                if code in _LOCKED:
                    if time.monotonic() < deadline:
                        time.sleep(0.2)
                        continue
                    raise OutboxError(
                        f"outbox {self.path}: locked by another process for "
                        f"{LOCK_WAIT_S:g} s ({e}); is another facegate using this state_dir?"
                    ) from None
                if code not in _CORRUPT or moved:
                    raise
                first = self._move_aside(str(e))
                moved = True
            except _Corrupt as e:
                if moved:
                    raise OutboxError(f"outbox {self.path}: cannot recover ({e})") from None
                first = self._move_aside(str(e))
                moved = True

    def _move_aside(self, why: str) -> int:
        """Rename a damaged database (and its -wal/-shm); the number to continue at."""
        self._check_file()  # only ever a regular file that starts like SQLite
        salvaged = self._salvage()
        try:
            aside = move_aside(self.path)
        except OSError as e:
            raise OutboxError(f"outbox {self.path}: cannot move it aside ({e})") from None
        if self._reserved:
            first, source = self._reserved, "its sequence reservation"
        elif salvaged:
            first, source = salvaged + SEQ_BLOCK, "the numbers still readable in it"
        else:
            # Neither the reservation nor the damaged file says where numbering
            # was: the clock in ms is the one number known to exceed them all.
            first, source = int(time.time() * 1000), "the clock (nothing else was readable)"
        first = max(first, self._next_seq)
        log.error(
            "outbox %s is damaged (%s); moved to %s; numbering continues at %d from %s",
            self.path,
            why,
            aside.name,
            first,
            source,
        )
        return first

    def _salvage(self) -> int:
        """The highest sequence number readable from a damaged database (0 if none)."""
        best = 0
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=0.5)
        except sqlite3.Error:
            return 0
        try:
            for sql in (
                "SELECT value FROM meta WHERE key='next_seq'",
                "SELECT MAX(seq) + 1 FROM outbox",
            ):
                with contextlib.suppress(sqlite3.Error, TypeError, ValueError):
                    (v,) = db.execute(sql).fetchone()
                    best = max(best, int(v or 0))
        finally:
            db.close()
        return best

    def _no_storage(self, e: BaseException) -> None:
        self.last_error = self._open_error = str(e)
        self._next_open = time.monotonic() + REOPEN_S
        log.error(
            "outbox %s: cannot open its database (%s); events are counted as lost until it "
            "can be opened (retrying every %.0f s); recognition goes on",
            self.path,
            e,
            REOPEN_S,
        )

    def _ensure_open(self) -> sqlite3.Connection | None:
        """The database, reopened when it failed before and the wait is over."""
        if self._db is None and not self._closed and time.monotonic() >= self._next_open:
            try:
                self._db = self._open()
                log.warning("outbox %s: database opened again", self.path)
                self.last_error = None
            except (sqlite3.Error, OSError, FacegateError) as e:
                self._next_open = time.monotonic() + REOPEN_S
                self.last_error = self._open_error = str(e)
        return self._db

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise OutboxError(f"outbox {self.path}: closed")
        db = self._ensure_open()
        if db is None:
            raise OutboxError(f"outbox {self.path}: no database ({self.last_error})")
        return db

    # -- sequence reservation and spare space ------------------------------------------

    def _reserve(self, seq: int) -> None:
        """Make sure the ``.seq`` reservation lies above ``seq`` before it is handed out."""
        if seq < self._reserved or time.monotonic() < self._reserve_retry:
            return
        target = seq + SEQ_BLOCK
        try:
            write_atomic(self._seq_file, f"{target}\n".encode(), "sequence reservation")
            self._reserved = target
        except FacegateError as e:
            # Events go on (tried again in a minute); only a later corruption
            # of the database would then lack the reservation.
            self._reserve_retry = time.monotonic() + 60.0
            self._storage_error(f"cannot move the sequence reservation ({e})")

    def _keep_reserve(self) -> None:
        """(Re)create the spare file (tried once a minute); on a full disk it is not there."""
        now = time.monotonic()
        if now < self._next_reserve or self._reserve_file.exists():
            return
        self._next_reserve = now + 60.0
        try:
            fd = os.open(
                self._reserve_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except OSError:
            return
        try:
            os.write(fd, b"\0" * RESERVE_BYTES)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._reserve_file)
            return
        os.close(fd)

    # -- writing ----------------------------------------------------------------------

    def _storage_error(self, message: str) -> None:
        self.last_error = message
        self._errors += 1
        if self._errors <= 5 or self._errors % LOG_EVERY == 0:
            log.error("outbox %s: %s (error #%d)", self.path, message, self._errors)

    def _store(self, db: sqlite3.Connection, row: Row) -> int:
        """One transaction: the row, the next number, the bound; how many oldest were dropped."""
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO outbox VALUES (?, ?, ?, ?, ?)",
                (row.seq, row.event_id, row.topic, row.payload, time.time()),
            )
            db.execute("UPDATE meta SET value=MAX(value, ?) WHERE key='next_seq'", (row.seq + 1,))
            (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            dropped = 0
            if count > self.max_rows:
                dropped = self._drop_oldest(db, count - self.max_rows)
            if self._lost:
                db.execute("UPDATE meta SET value=value+? WHERE key='dropped'", (self._lost,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._lost = 0
        return dropped

    @staticmethod
    def _drop_oldest(db: sqlite3.Connection, n: int) -> int:
        dropped = db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (n,)
        ).rowcount
        if dropped:
            db.execute("UPDATE meta SET value=value+? WHERE key='dropped'", (dropped,))
        return int(dropped)

    def _make_room(self, db: sqlite3.Connection) -> int:
        """Disk full: make room inside the database; how many of the oldest events were dropped.

        In WAL mode a checkpoint that has to grow the database file cannot
        complete on a full disk, and the WAL then cannot be reused: every
        write fails. So the spare file is given up once (room for SQLite to
        copy its WAL back), then the oldest tenth of the events is dropped
        and copied back, which leaves their pages free inside the file for
        the events that follow; while the disk stays full this is repeated
        before the free pages run out (:meth:`_keep_free_pages`).
        """
        self._tight = True
        with contextlib.suppress(OSError):
            os.unlink(self._reserve_file)
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(RESTART)")
        (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        dropped = 0
        if count:
            db.execute("BEGIN IMMEDIATE")
            try:
                dropped = self._drop_oldest(db, max(1, count // 10))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(RESTART)")
        return dropped

    def _keep_free_pages(self, db: sqlite3.Connection) -> int:
        """While the disk is full: drop the oldest events before the free pages run out."""
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        return 0 if int(free) > 0 else self._make_room(db)

    def append(self, topic: str, build: Callable[[int], tuple[str, bytes]]) -> tuple[Row, int]:
        """Store a new event; ``build(seq) -> (event_id, payload)`` makes it.

        The sequence number is taken, the event stored and the bound enforced
        in one transaction. Returns the row and how many events were dropped
        for it (the oldest ones, or the event itself when it could not be
        stored at all). Storage failures are counted and logged, never
        raised: the recognition loop must go on.
        """
        with self._lock:
            if self._closed:
                raise OutboxError(f"outbox {self.path}: closed")
            db = self._ensure_open()
            seq = self._next_seq
            self._reserve(seq)
            event_id, payload = build(seq)
            self._next_seq = seq + 1
            row = Row(seq, event_id, topic, payload)
            if db is None:
                return row, self._lose(row, f"no database: {self._open_error}")
            dropped = 0
            try:
                if self._tight:
                    dropped = self._keep_free_pages(db)
                dropped += self._store(db, row)
            except sqlite3.Error as e:
                if _code(e) != sqlite3.SQLITE_FULL:
                    return row, self._lose(row, str(e))
                freed, error = 0, e
                for _ in range(3):  # each round frees the oldest tenth
                    try:
                        freed += self._make_room(db)
                        dropped += self._store(db, row)
                        break
                    except sqlite3.Error as e2:
                        error = e2
                else:
                    dropped += freed
                    return row, dropped + self._lose(row, f"disk full ({error})")
                dropped += freed
                self._storage_error(
                    f"disk full ({e}): dropped the {freed} oldest events to store seq {seq}"
                )
            self._keep_reserve()
        if dropped:
            self._drop_logs += 1
            if self._drop_logs <= 5 or self._drop_logs % LOG_EVERY == 0:
                log.warning(
                    "outbox: dropped the %d oldest events (%d so far; bound %d or a full disk); "
                    "subscribers see a seq gap",
                    dropped,
                    self.dropped,
                    self.max_rows,
                )
        return row, dropped

    def _lose(self, row: Row, why: str) -> int:
        self._lost += 1
        self._lost_total += 1
        self._storage_error(f"event seq {row.seq} lost: cannot store it ({why})")
        return 1

    # -- reading ----------------------------------------------------------------------

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query; [] when there is no database or it cannot be read (logged)."""
        with self._lock:
            if self._closed:
                raise OutboxError(f"outbox {self.path}: closed")
            db = self._ensure_open()
            if db is None:
                return []
            try:
                return list(db.execute(sql, args).fetchall())
            except sqlite3.Error as e:
                self._storage_error(f"cannot read ({e})")
                return []

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[Row]:
        """Up to ``limit`` stored events with ``seq > after_seq``, oldest first."""
        rows = self._read(
            "SELECT seq, event_id, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [Row(int(s), str(e), str(t), bytes(p)) for s, e, t, p in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged events (one transaction); how many were still stored."""
        batch = [(int(s),) for s in seqs]
        if not batch:
            return 0
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                before = db.total_changes
                db.executemany("DELETE FROM outbox WHERE seq = ?", batch)
                n = db.total_changes - before
                db.execute("COMMIT")
            except sqlite3.Error as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise OutboxError(f"outbox {self.path}: cannot delete events ({e})") from None
        return n

    def oldest_seq(self) -> int | None:
        """The smallest stored sequence number, or None when empty."""
        rows = self._read("SELECT MIN(seq) FROM outbox")
        s = rows[0][0] if rows else None
        return None if s is None else int(s)

    @property
    def next_seq(self) -> int:
        """The sequence number the next event will get."""
        with self._lock:
            if self._closed:
                raise OutboxError(f"outbox {self.path}: closed")
            return self._next_seq

    @property
    def dropped(self) -> int:
        """Events ever dropped: the oldest ones (bound, full disk) and those never stored."""
        rows = self._read("SELECT value FROM meta WHERE key='dropped'")
        return (int(rows[0][0]) if rows else 0) + self._lost

    @property
    def lost(self) -> int:
        """Events that could not be stored at all (full disk, I/O error) since start."""
        return self._lost_total

    def __len__(self) -> int:
        rows = self._read("SELECT COUNT(*) FROM outbox")
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None


__all__ = ["Outbox", "OutboxError", "Row"]

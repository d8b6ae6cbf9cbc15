"""The outbox's files: its SQLite database, the sequence reservation and the spare file.

:mod:`edge.delivery.outbox` is the outbox itself; here are the pieces it is
made of, each small enough to read alone:

* the database: refused unless it is a regular file that starts like SQLite
  (:func:`check_file`), created 0600 in a 0700 folder before SQLite opens it
  (:func:`precreate`), opened in WAL mode with ``synchronous=FULL`` and
  checked (:func:`connect`); a damaged one moved aside, numbering going on
  from the highest number it can still tell (:func:`move_damaged_aside`);
* the rows: stored with the next number and the bound in one transaction
  (:func:`store`), the oldest dropped (:func:`drop_oldest`), room made on a
  full disk (:func:`make_room`);
* ``<name>.seq``: a number no event has reached yet, moved :data:`SEQ_BLOCK`
  ahead whenever events catch up with it (:class:`SeqReservation`);
* ``<name>.reserve``: :data:`RESERVE_BYTES` given up when the disk is full
  (:class:`SpareFile`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

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
BUSY_TIMEOUT_S = 2.0
"""How long one statement waits for a lock (the recognition loop waits at most this)."""

CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
LOCKED = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_STORAGE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY}
_STORAGE_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


class OutboxError(FacegateError):
    """The outbox database cannot be opened (locked, not an outbox, no permission)."""


class Corrupt(Exception):
    """The database is damaged (CORRUPT, NOTADB or a failed quick_check)."""


@dataclass(frozen=True)
class Row:
    """One stored event: its sequence number, id, topic and wire payload."""

    seq: int
    event_id: str
    topic: str
    payload: bytes


def code(e: BaseException) -> int:
    """SQLite's primary result code of an exception (0 if it has none)."""
    return int(getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF


def is_storage_failure(e: BaseException) -> bool:
    """A full disk, an I/O error or a read-only file system (not the outbox's fault)."""
    if isinstance(e, sqlite3.Error):
        return code(e) in _STORAGE
    return isinstance(e, OSError) and e.errno in _STORAGE_ERRNO


# -- the database file ---------------------------------------------------------------


def check_file(path: Path) -> None:
    """Refuse anything at ``path`` but a regular file that may be an SQLite database."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise OutboxError(
            f"outbox {path}: exists and is not a regular file; refusing to touch it "
            "(set mqtt.outbox_path to a file name)"
        )
    if st.st_size:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
        if head != SQLITE_MAGIC:
            raise OutboxError(
                f"outbox {path}: is not an SQLite database (not an outbox); refusing "
                "to touch it (set mqtt.outbox_path to a new file name)"
            )


def precreate(path: Path) -> None:
    """Create the folder 0700 and the files 0600 before SQLite does (umask-proof)."""
    make_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        # SQLite gives -wal and -shm the mode of the database file.
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.chmod(path.with_name(path.name + suffix), 0o600)


def connect(path: Path, first_seq: int) -> tuple[sqlite3.Connection, int]:
    """Open (or create) the database; it and the next sequence number it records.

    A new database starts numbering at ``first_seq``. :class:`Corrupt` when
    ``PRAGMA quick_check`` fails; sqlite3 errors as they come.
    """
    check_file(path)
    precreate(path)
    # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE).
    db = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
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
            raise Corrupt(f"quick_check: {ok[0] if ok else 'no answer'}")
        (seq,) = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
    except BaseException:
        db.close()
        raise
    return db, int(seq)


def move_damaged_aside(path: Path, why: str, reserved: int, next_seq: int) -> int:
    """Rename a damaged database (and its -wal/-shm); the number to continue at.

    The reservation (``reserved``) if there is one; else the highest number
    still readable in the damaged file plus :data:`SEQ_BLOCK`; else the wall
    clock in milliseconds, the one number known to exceed them all. Never
    below ``next_seq``.
    """
    check_file(path)  # only ever a regular file that starts like SQLite
    salvaged = salvage(path)
    try:
        aside = move_aside(path)
    except OSError as e:
        raise OutboxError(f"outbox {path}: cannot move it aside ({e})") from None
    if reserved:
        first, source = reserved, "its sequence reservation"
    elif salvaged:
        first, source = salvaged + SEQ_BLOCK, "the numbers still readable in it"
    else:
        first, source = int(time.time() * 1000), "the clock (nothing else was readable)"
    first = max(first, next_seq)
    log.error(
        "outbox %s is damaged (%s); moved to %s; numbering continues at %d from %s",
        path,
        why,
        aside.name,
        first,
        source,
    )
    return first


def salvage(path: Path) -> int:
    """The highest sequence number readable from a damaged database (0 if none)."""
    best = 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
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


# -- rows ------------------------------------------------------------------------------


def store(db: sqlite3.Connection, row: Row, max_rows: int, lost: int) -> int:
    """One transaction: the row, the next number, the bound, ``lost`` counted as dropped.

    Returns how many of the oldest events were dropped for the bound.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "INSERT INTO outbox VALUES (?, ?, ?, ?, ?)",
            (row.seq, row.event_id, row.topic, row.payload, time.time()),
        )
        db.execute("UPDATE meta SET value=MAX(value, ?) WHERE key='next_seq'", (row.seq + 1,))
        (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        dropped = 0
        if count > max_rows:
            dropped = drop_oldest(db, count - max_rows)
        if lost:
            db.execute("UPDATE meta SET value=value+? WHERE key='dropped'", (lost,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return dropped


def drop_oldest(db: sqlite3.Connection, n: int) -> int:
    """Delete the ``n`` oldest events (inside the caller's transaction); how many went."""
    dropped = db.execute(
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (n,)
    ).rowcount
    if dropped:
        db.execute("UPDATE meta SET value=value+? WHERE key='dropped'", (dropped,))
    return int(dropped)


def make_room(db: sqlite3.Connection, spare: SpareFile) -> int:
    """Disk full: make room inside the database; how many of the oldest events were dropped.

    In WAL mode a checkpoint that has to grow the database file cannot
    complete on a full disk, and the WAL then cannot be reused: every write
    fails. So the spare file is given up (room for SQLite to copy its WAL
    back), then the oldest tenth of the events is dropped and copied back,
    which leaves their pages free inside the file for the events that follow.
    """
    spare.give_up()
    with contextlib.suppress(sqlite3.Error):
        db.execute("PRAGMA wal_checkpoint(RESTART)")
    (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    dropped = 0
    if count:
        db.execute("BEGIN IMMEDIATE")
        try:
            dropped = drop_oldest(db, max(1, count // 10))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    with contextlib.suppress(sqlite3.Error):
        db.execute("PRAGMA wal_checkpoint(RESTART)")
    return dropped


def free_pages(db: sqlite3.Connection) -> int:
    """Free pages inside the database file (room for events without growing it)."""
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    return int(free)


# -- the files beside the database ---------------------------------------------------------


class SeqReservation:
    """``<name>.seq``: a number above every one handed out, kept ahead by :data:`SEQ_BLOCK`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value = self._read()
        self._retry_at = 0.0

    def _read(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii").strip()
            return int(text) if text.isdigit() else 0
        except (OSError, UnicodeDecodeError):
            return 0

    def cover(self, seq: int) -> str | None:
        """Make sure the reservation lies above ``seq``; the error when it cannot be moved.

        A failed move is tried again a minute later; events go on meanwhile
        (only a later corruption of the database would then lack the reservation).
        """
        if seq < self.value or time.monotonic() < self._retry_at:
            return None
        target = seq + SEQ_BLOCK
        try:
            write_atomic(self.path, f"{target}\n".encode(), "sequence reservation")
        except FacegateError as e:
            self._retry_at = time.monotonic() + 60.0
            return f"cannot move the sequence reservation ({e})"
        self.value = target
        return None


class SpareFile:
    """``<name>.reserve``: space kept on disk, given up when the disk is full."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next_try = 0.0

    def give_up(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def keep(self) -> None:
        """(Re)create the spare file (tried once a minute); on a full disk it is not there."""
        now = time.monotonic()
        if now < self._next_try or self.path.exists():
            return
        self._next_try = now + 60.0
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        try:
            os.write(fd, b"\0" * RESERVE_BYTES)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.give_up()
            return
        os.close(fd)


__all__ = [
    "BUSY_TIMEOUT_S",
    "RESERVE_BYTES",
    "SEQ_BLOCK",
    "SQLITE_MAGIC",
    "Corrupt",
    "OutboxError",
    "Row",
    "SeqReservation",
    "SpareFile",
    "check_file",
    "code",
    "connect",
    "drop_oldest",
    "free_pages",
    "is_storage_failure",
    "make_room",
    "move_damaged_aside",
    "precreate",
    "salvage",
    "store",
]

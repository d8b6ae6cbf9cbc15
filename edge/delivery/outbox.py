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
0600 (events name people) in a 0700 folder, whatever the umask. The files
themselves are :mod:`edge.delivery.outbox_db`'s.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edge.delivery.outbox_db import (
    CORRUPT,
    LOCKED,
    SEQ_BLOCK,
    Corrupt,
    OutboxError,
    Row,
    SeqReservation,
    SpareFile,
    code,
    connect,
    free_pages,
    is_storage_failure,
    make_room,
    move_damaged_aside,
    store,
)
from edge.errors import FacegateError

log = logging.getLogger("facegate.outbox")

LOCK_WAIT_S = 10.0
"""How long opening waits for another process's lock before giving up."""
REOPEN_S = 30.0
"""How often an outbox without storage tries to open its database again."""
LOG_EVERY = 100
"""After the first few, storage errors are logged once per this many."""


class Outbox:
    """A bounded, durable FIFO of events keyed by sequence number (thread-safe)."""

    def __init__(self, path: Path | str, max_rows: int = 10000) -> None:
        if max_rows < 1:
            raise OutboxError(f"outbox: max_rows must be positive, got {max_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        self._reservation = SeqReservation(self.path.with_name(self.path.name + ".seq"))
        self._spare = SpareFile(self.path.with_name(self.path.name + ".reserve"))
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._next_seq = 1
        self._lost = 0  # events never stored, not yet added to meta.dropped
        self._lost_total = 0
        self._errors = 0
        self._drop_logs = 0
        self._next_open = 0.0
        self._tight = False  # the disk was full: keep free pages in the database
        self._closed = False
        self.last_error: str | None = None
        """The last storage error, for the state message (None while all is well)."""
        self._open_error = ""
        try:
            self._db = self._open()
        except (sqlite3.Error, OSError) as e:
            if not is_storage_failure(e):
                raise OutboxError(f"outbox {self.path}: cannot open ({e})") from None
            self._no_storage(e)

    # -- opening --------------------------------------------------------------------

    def _connect(self, first_seq: int) -> sqlite3.Connection:
        db, seq = connect(self.path, first_seq)
        self._next_seq = max(self._next_seq, seq)
        return db

    def _open(self) -> sqlite3.Connection:
        """Open (or create) the database: wait out locks, move real corruption aside."""
        deadline = time.monotonic() + LOCK_WAIT_S
        first = max(1, self._reservation.value)
        moved = False
        while True:
            try:
                return self._connect(first)
            except sqlite3.Error as e:
                if code(e) in LOCKED:
                    if time.monotonic() < deadline:
                        time.sleep(0.2)
                        continue
                    raise OutboxError(
                        f"outbox {self.path}: locked by another process for "
                        f"{LOCK_WAIT_S:g} s ({e}); is another facegate using this state_dir?"
                    ) from None
                if code(e) not in CORRUPT or moved:
                    raise
                first = self._move_aside(str(e))
                moved = True
            except Corrupt as e:
                if moved:
                    raise OutboxError(f"outbox {self.path}: cannot recover ({e})") from None
                first = self._move_aside(str(e))
                moved = True

    def _move_aside(self, why: str) -> int:
        """Rename a damaged database (:func:`~edge.delivery.outbox_db.move_damaged_aside`)."""
        return move_damaged_aside(self.path, why, self._reservation.value, self._next_seq)

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

    # -- writing ----------------------------------------------------------------------

    def _storage_error(self, message: str) -> None:
        self.last_error = message
        self._errors += 1
        if self._errors <= 5 or self._errors % LOG_EVERY == 0:
            log.error("outbox %s: %s (error #%d)", self.path, message, self._errors)

    def _store(self, db: sqlite3.Connection, row: Row) -> int:
        """The row stored (with the bound and the lost count); how many oldest were dropped."""
        dropped = store(db, row, self.max_rows, self._lost)
        self._lost = 0
        return dropped

    def _make_room(self, db: sqlite3.Connection) -> int:
        """Disk full: drop the oldest tenth (:func:`~edge.delivery.outbox_db.make_room`)."""
        self._tight = True
        return make_room(db, self._spare)

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
            error = self._reservation.cover(seq)
            if error is not None:
                self._storage_error(error)
            event_id, payload = build(seq)
            self._next_seq = seq + 1
            row = Row(seq, event_id, topic, payload)
            if db is None:
                return row, self._lose(row, f"no database: {self._open_error}")
            dropped, stored = self._write(db, row)
            if not stored:
                return row, dropped
            self._spare.keep()
        if dropped:
            self._log_dropped(dropped)
        return row, dropped

    def _write(self, db: sqlite3.Connection, row: Row) -> tuple[int, bool]:
        """Store ``row``: how many events were dropped for it, and whether it was stored.

        An event that could not be stored counts itself among the dropped.
        """
        dropped = 0
        try:
            # While the disk is full: drop the oldest before the free pages run out.
            if self._tight and free_pages(db) <= 0:
                dropped = self._make_room(db)
            return dropped + self._store(db, row), True
        except sqlite3.Error as e:
            if code(e) != sqlite3.SQLITE_FULL:
                return self._lose(row, str(e)), False
            return self._write_on_full_disk(db, row, e, dropped)

    def _write_on_full_disk(
        self, db: sqlite3.Connection, row: Row, e: sqlite3.Error, dropped: int
    ) -> tuple[int, bool]:
        """The disk is full: free the oldest tenth and try again, three times at most."""
        freed, error = 0, e
        for _ in range(3):
            try:
                freed += self._make_room(db)
                dropped += self._store(db, row)
                break
            except sqlite3.Error as e2:
                error = e2
        else:
            return dropped + freed + self._lose(row, f"disk full ({error})"), False
        self._storage_error(
            f"disk full ({e}): dropped the {freed} oldest events to store seq {row.seq}"
        )
        return dropped + freed, True

    def _log_dropped(self, dropped: int) -> None:
        self._drop_logs += 1
        if self._drop_logs <= 5 or self._drop_logs % LOG_EVERY == 0:
            log.warning(
                "outbox: dropped the %d oldest events (%d so far; bound %d or a full disk); "
                "subscribers see a seq gap",
                dropped,
                self.dropped,
                self.max_rows,
            )

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


__all__ = ["SEQ_BLOCK", "Outbox", "OutboxError", "Row"]

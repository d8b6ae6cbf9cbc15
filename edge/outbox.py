"""The on-disk outbox: events survive a broker outage and a daemon restart.

An event is written here (one SQLite transaction, ``synchronous=FULL``)
*before* it is handed to MQTT, and deleted only after the broker acknowledged
it (PUBACK). Whatever is still here when the process starts again is sent
again, in sequence order, so delivery is at-least-once; subscribers drop
duplicates by event id.

The per-device sequence number lives in the same database (table ``meta``,
key ``next_seq``) and is taken in the same transaction that stores the event,
so it increases by exactly one per event across restarts, even when the
outbox is empty.

The outbox is bounded (``mqtt.outbox_max`` rows). When full, the *oldest*
events are dropped: on a door the newest events matter most, and a
subscriber sees the loss as a gap in ``seq``. Drops are counted
(``meta.dropped``, reported in the state topic) and logged.

A database that SQLite cannot read is moved aside (``<name>.corrupt-<time>``)
and a new one is started whose sequence continues from the wall clock in
milliseconds, so numbers still increase and the gap shows the loss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import FacegateError

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


class OutboxError(FacegateError):
    """The outbox database cannot be opened or written."""


@dataclass(frozen=True)
class Row:
    """One stored event: its sequence number, id, topic and wire payload."""

    seq: int
    event_id: str
    topic: str
    payload: bytes


class Outbox:
    """A bounded, durable FIFO of events keyed by sequence number (thread-safe)."""

    def __init__(self, path: Path | str, max_rows: int = 10000) -> None:
        if max_rows < 1:
            raise OutboxError(f"outbox: max_rows must be positive, got {max_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and not self.path.exists():
                raise OutboxError(f"outbox {self.path}: cannot create ({e})") from None
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s is unreadable (%s); moved to %s", self.path, e, aside.name)
            try:
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    side = self.path.with_name(self.path.name + suffix)
                    if side.exists():
                        os.replace(side, aside.with_name(aside.name + suffix))
                self._db = self._open(first_seq=int(time.time() * 1000))
            except (OSError, sqlite3.DatabaseError) as e2:
                raise OutboxError(f"outbox {self.path}: cannot recover ({e2})") from None

    def _open(self, first_seq: int = 1) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE).
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed event survives a power cut, not only a crash.
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('next_seq', ?)", (first_seq,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")
            ok = db.execute("PRAGMA quick_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)  # events name people: keep them private
        return db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"outbox {self.path}: closed")
        return self._db

    def append(self, topic: str, build: Callable[[int], tuple[str, bytes]]) -> tuple[Row, int]:
        """Store a new event; ``build(seq) -> (event_id, payload)`` makes it.

        The sequence number is taken, the event stored and the bound enforced
        in one transaction. Returns the stored row and how many of the oldest
        rows were dropped to make room.
        """
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    (seq,) = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
                    event_id, payload = build(int(seq))
                    db.execute(
                        "INSERT INTO outbox VALUES (?, ?, ?, ?, ?)",
                        (seq, event_id, topic, payload, time.time()),
                    )
                    db.execute("UPDATE meta SET value=? WHERE key='next_seq'", (seq + 1,))
                    (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                    dropped = 0
                    if count > self.max_rows:
                        dropped = db.execute(
                            "DELETE FROM outbox WHERE seq IN "
                            "(SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                            (count - self.max_rows,),
                        ).rowcount
                    if dropped:
                        db.execute("UPDATE meta SET value=value+? WHERE key='dropped'", (dropped,))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise OutboxError(f"outbox {self.path}: cannot store event ({e})") from None
        if dropped:
            log.warning(
                "outbox full (%d events): dropped the %d oldest; subscribers see a seq gap",
                self.max_rows,
                dropped,
            )
        return Row(int(seq), event_id, topic, payload), dropped

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[Row]:
        """Up to ``limit`` stored events with ``seq > after_seq``, oldest first."""
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT seq, event_id, topic, payload FROM outbox WHERE seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (after_seq, limit),
                )
                .fetchall()
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
        with self._lock:
            (s,) = self._conn().execute("SELECT MIN(seq) FROM outbox").fetchone()
        return None if s is None else int(s)

    @property
    def next_seq(self) -> int:
        """The sequence number the next event will get."""
        with self._lock:
            (s,) = self._conn().execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        return int(s)

    @property
    def dropped(self) -> int:
        """How many events were ever dropped because the outbox was full."""
        with self._lock:
            (s,) = self._conn().execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
        return int(s)

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._conn().execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


__all__ = ["Outbox", "OutboxError", "Row"]

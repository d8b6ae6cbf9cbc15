"""The door's audit log: a local SQLite table that survives power loss and shows tampering.

Every access decision and door incident is one row: grants, denials with
their reason, requests to exit, held-open and forced doors, tamper, lockouts
and remote commands (the kinds in :data:`KINDS`, sorted into the ``access``
and ``input`` streams, :mod:`edge.door.entry`). The daemon only ever
*appends*: :class:`AuditLog` has no update and no delete of single rows, and
a trigger refuses ``UPDATE`` outright. Rows leave only through retention
(:meth:`AuditLog.prune`).

**Retention never reads the wall clock.** An entry's age is the device's
*running time* since it was written (``up``: the monotonic clock, carried
across restarts in ``audit_meta``), so a clock set from 1970 by NTP, or a
jump of a year, erases nothing; time the device is off does not count (it
errs on keeping evidence). Rows older than ``door.audit_max_age_days`` of
running time go; beyond ``door.audit_max_rows`` the oldest ``input`` rows
go first, and decisions only once no input row is left, so flapping never
evicts a grant or a denial.

**Durability.** A rollback journal with ``synchronous=EXTRA`` (a committed
row survives a power cut: the journal's deletion is synced too), one
transaction per row. No WAL: a committed row then lives in the database
file itself, never only in a WAL that SQLite would silently cut short at a
damaged frame. Row ids come from ``AUTOINCREMENT``: they increase by one
per entry and are never reused.

**Tamper evidence.** Each row is chained to the previous row of its stream
by a hash (:mod:`edge.door.chain`); ``facegate audit --verify`` checks the
chain, SQLite's own ``integrity_check`` and the header. At open,
``PRAGMA quick_check``; a database SQLite cannot read is moved aside
(``<name>.corrupt-<time>``, kept as evidence, reported by ``--verify``) and
a new log is begun.

Nothing here imports anything beyond the standard library,
:mod:`edge.errors` and :mod:`edge.files`, so ``facegate audit`` starts fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.door.chain import (
    APPLICATION_ID,
    GENESIS,
    SCHEMA_VERSION,
    STREAM_SQL,
    UP_SQL,
    VerifyReport,
    row_hash,
    verify_log,
)
from edge.door.entry import (
    ACCESS,
    DENIED,
    DOOR_TEST,
    EXIT,
    FORCED,
    GRANTED,
    HELD_OPEN,
    INPUT,
    KINDS,
    LOCKOUT,
    REMOTE_REFUSED,
    REMOTE_UNLOCK,
    STREAMS,
    TAMPER,
    AuditBusy,
    AuditEntry,
    AuditError,
    row_entry,
    stream_of,
)
from edge.door.export import CSV_COLUMNS, parse_since, read_entries, to_csv
from edge.files import move_aside

log = logging.getLogger("facegate.audit")

PRUNE_EVERY = 100
"""Retention runs at open and after every this many appends."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    clock_synced INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT,
    reason TEXT,
    detail TEXT NOT NULL,
    data TEXT NOT NULL,
    up REAL,
    stream TEXT,
    prev TEXT,
    hash TEXT
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TABLE IF NOT EXISTS audit_anchor (
    stream TEXT PRIMARY KEY,
    id INTEGER NOT NULL,
    up REAL NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value);
"""
_ADDED_COLUMNS = (("up", "REAL"), ("stream", "TEXT"), ("prev", "TEXT"), ("hash", "TEXT"))
"""Columns older logs lack; added at open (their rows stay unchained)."""


def _busy(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


class AuditLog:
    """The append-only, hash-chained audit table (thread-safe; one connection per instance).

    ``wall``: the clock stamped on entries; ``mono``: the monotonic clock
    whose running time ages them (:meth:`prune`); ``busy_timeout``: how long
    an append waits for another connection's write lock before it raises
    :class:`AuditBusy` (the door's writer thread then tries again).
    """

    def __init__(
        self,
        path: Path | str,
        max_age_days: float = 365.0,
        max_rows: int = 100_000,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        busy_timeout: float = 5.0,
    ) -> None:
        if max_rows < 1 or max_age_days <= 0:
            raise AuditError("audit: max_rows and max_age_days must be positive")
        self.path = Path(path)
        self.max_age_days = max_age_days
        self.max_rows = max_rows
        self._wall = wall
        self._mono = mono
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._appended = 0
        self._db: sqlite3.Connection | None = None
        self._db = self._open_or_recover()
        self._base_up = self._stored_uptime()
        self._mono0 = mono()
        self.prune()

    # -- opening ----------------------------------------------------------------------

    def _open_or_recover(self) -> sqlite3.Connection:
        try:
            return self._open()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError):  # cannot open: not a corrupt file
                raise AuditError(f"audit log {self.path}: cannot open ({e})") from None
            try:
                aside = move_aside(self.path)
                log.error("audit log %s is unreadable (%s); moved to %s", self.path, e, aside.name)
                return self._open()
            except (OSError, sqlite3.DatabaseError) as e2:
                raise AuditError(f"audit log {self.path}: cannot recover ({e2})") from None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opening may wait for a lock as long as a start may take; appends then
        # wait only busy_timeout (the door's writer retries on AuditBusy).
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            ok = db.execute("PRAGMA quick_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            db.execute("PRAGMA journal_mode=DELETE")  # leaves an older log's WAL mode
            # EXTRA: the journal's deletion is synced too, so a committed row
            # survives a power cut right after the commit.
            db.execute("PRAGMA synchronous=EXTRA")
            db.executescript(_SCHEMA)
            self._migrate(db)
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)  # entries name people: keep them private
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring an older log to the current schema; its rows stay as they were (unchained)."""
        have = {str(r[1]) for r in db.execute("PRAGMA table_info(audit)")}
        for name, sql_type in _ADDED_COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE audit ADD COLUMN {name} {sql_type}")
        if db.execute("SELECT 1 FROM audit_meta WHERE key = 'chain_from'").fetchone() is None:
            nxt = _next_id(db)
            db.execute("INSERT INTO audit_meta (key, value) VALUES ('chain_from', ?)", (nxt,))
            if nxt > 1:
                log.warning(
                    "audit log %s: rows before id %d predate the hash chain", self.path, nxt
                )
        if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _stored_uptime(self) -> float:
        db = self._conn()
        row = db.execute("SELECT value FROM audit_meta WHERE key = 'uptime'").fetchone()
        (top,) = db.execute(f"SELECT MAX({UP_SQL}) FROM audit").fetchone()
        return max(float(row[0]) if row else 0.0, float(top or 0.0))

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise AuditError(f"audit log {self.path}: closed")
        return self._db

    def uptime(self) -> float:
        """Running seconds of the device since the log began (across restarts)."""
        return self._base_up + max(0.0, self._mono() - self._mono0)

    # -- writing ----------------------------------------------------------------------

    def append(
        self,
        kind: str,
        *,
        name: str | None = None,
        reason: str | None = None,
        detail: str = "",
        data: dict[str, Any] | None = None,
        ts: float | None = None,
        clock_synced: bool = True,
    ) -> AuditEntry:
        """Store one entry, chained (its own transaction, durable on return); the stored entry.

        :class:`AuditBusy` when another connection held the write lock for
        longer than ``busy_timeout`` (nothing was written).
        """
        if kind not in KINDS:
            raise AuditError(f"audit: unknown entry kind {kind!r}")
        t = float(self._wall() if ts is None else ts)
        blob = json.dumps(data or {}, sort_keys=True, separators=(",", ":"), default=str)
        with self._lock:
            row_id = self._insert(kind, name, reason, detail, blob, t, int(clock_synced))
            self._appended += 1
            due = self._appended % PRUNE_EVERY == 0
        if due:
            try:
                self.prune()
            except AuditBusy:  # the entry is written; retention runs at the next turn
                log.debug("audit log: retention postponed (locked)")
        return AuditEntry(row_id, t, clock_synced, kind, name, reason, detail, json.loads(blob))

    def _insert(
        self, kind: str, name: str | None, reason: str | None, detail: str, blob: str,
        t: float, synced: int,
    ) -> int:  # fmt: skip
        db = self._conn()
        stream = stream_of(kind)
        up = self.uptime()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                row_id = _next_id(db)
                prev = _last_hash(db, stream)
                fields = (row_id, t, synced, kind, name, reason, detail, blob, up, stream)
                h = row_hash(prev, fields)
                db.execute(
                    "INSERT INTO audit (id, ts, clock_synced, kind, name, reason, detail, data,"
                    " up, stream, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*fields, prev, h),
                )
                _set_meta(db, {"uptime": up, f"head:{stream}": f"{row_id}:{h}"})
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            if _busy(e):
                raise AuditBusy(f"audit log {self.path}: busy, not written ({e})") from None
            raise AuditError(f"audit log {self.path}: cannot append ({e})") from None
        return row_id

    def prune(self) -> int:
        """Apply retention (running-time age, then the row bound); how many rows went.

        Each stream's oldest rows go as a block; the last one removed becomes
        the stream's anchor, so the chain stays verifiable.
        """
        with self._lock:
            db = self._conn()
            up = self.uptime()
            cutoff = up - self.max_age_days * 86400.0
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    n = sum(_prune_age(db, s, cutoff) for s in STREAMS)
                    n += _prune_rows(db, self.max_rows)
                    _set_meta(db, {"uptime": up})
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                if _busy(e):
                    raise AuditBusy(f"audit log {self.path}: busy, retention later ({e})") from None
                raise AuditError(f"audit log {self.path}: retention failed ({e})") from None
        if n:
            log.info("audit log: %d entries past retention removed", n)
        return n

    # -- reading ----------------------------------------------------------------------

    def entries(self, since: float | None = None) -> list[AuditEntry]:
        """Every stored entry (from ``since``, Unix seconds), oldest first."""
        with self._lock:
            return list(read_entries(self.path, since, self._conn()))

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._conn().execute("SELECT COUNT(*) FROM audit").fetchone()
        return int(n)

    def close(self) -> None:
        """Record the running time, close the database (idempotent)."""
        with self._lock:
            if self._db is None:
                return
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("BEGIN IMMEDIATE")
                _set_meta(self._db, {"uptime": self.uptime()})
                self._db.execute("COMMIT")
            self._db.close()
            self._db = None


# -- SQL helpers (inside the caller's transaction) ----------------------------------------


def _next_id(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
    (top,) = db.execute("SELECT MAX(id) FROM audit").fetchone()
    return max(int(row[0]) if row else 0, int(top or 0)) + 1


def _last_hash(db: sqlite3.Connection, stream: str) -> str:
    """The hash the next row of ``stream`` follows: its newest row's, its anchor's, or genesis."""
    row = db.execute(
        f"SELECT hash FROM audit WHERE {STREAM_SQL} = ? AND hash IS NOT NULL "
        "ORDER BY id DESC LIMIT 1",
        (stream,),
    ).fetchone()
    if row is not None:
        return str(row[0])
    anchor = db.execute("SELECT hash FROM audit_anchor WHERE stream = ?", (stream,)).fetchone()
    return str(anchor[0]) if anchor is not None else GENESIS


def _set_meta(db: sqlite3.Connection, values: dict[str, Any]) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO audit_meta (key, value) VALUES (?, ?)", list(values.items())
    )


def _remove_through(db: sqlite3.Connection, stream: str, last_id: int) -> int:
    """Delete ``stream``'s rows up to ``last_id``; the last one with a hash becomes the anchor."""
    row = db.execute(
        f"SELECT id, {UP_SQL}, hash FROM audit WHERE {STREAM_SQL} = ? AND id <= ? "
        "AND hash IS NOT NULL ORDER BY id DESC LIMIT 1",
        (stream, last_id),
    ).fetchone()
    if row is not None:
        db.execute(
            "INSERT OR REPLACE INTO audit_anchor (stream, id, up, hash) VALUES (?, ?, ?, ?)",
            (stream, int(row[0]), float(row[1]), str(row[2])),
        )
    return int(
        db.execute(
            f"DELETE FROM audit WHERE {STREAM_SQL} = ? AND id <= ?", (stream, last_id)
        ).rowcount
    )


def _prune_age(db: sqlite3.Connection, stream: str, cutoff: float) -> int:
    (last,) = db.execute(
        f"SELECT MAX(id) FROM audit WHERE {STREAM_SQL} = ? AND {UP_SQL} < ?", (stream, cutoff)
    ).fetchone()
    return 0 if last is None else _remove_through(db, stream, int(last))


def _prune_rows(db: sqlite3.Connection, max_rows: int) -> int:
    """Beyond ``max_rows``: the oldest ``input`` rows first, then the oldest ``access`` rows."""
    (count,) = db.execute("SELECT COUNT(*) FROM audit").fetchone()
    excess = int(count) - max_rows
    removed = 0
    for stream in (INPUT, ACCESS):
        if excess <= 0:
            break
        row = db.execute(
            f"SELECT id FROM audit WHERE {STREAM_SQL} = ? ORDER BY id LIMIT 1 OFFSET ?",
            (stream, excess - 1),
        ).fetchone()
        if row is None:  # fewer rows in this stream than the excess: all of them
            (top,) = db.execute(
                f"SELECT MAX(id) FROM audit WHERE {STREAM_SQL} = ?", (stream,)
            ).fetchone()
            if top is None:
                continue
            row = (top,)
        n = _remove_through(db, stream, int(row[0]))
        removed += n
        excess -= n
    return removed


__all__ = [
    "ACCESS",
    "CSV_COLUMNS",
    "DENIED",
    "DOOR_TEST",
    "EXIT",
    "FORCED",
    "GRANTED",
    "HELD_OPEN",
    "INPUT",
    "KINDS",
    "LOCKOUT",
    "PRUNE_EVERY",
    "REMOTE_REFUSED",
    "REMOTE_UNLOCK",
    "STREAMS",
    "TAMPER",
    "AuditBusy",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "VerifyReport",
    "parse_since",
    "read_entries",
    "row_entry",
    "stream_of",
    "to_csv",
    "verify_log",
]

"""The door's audit log: a local SQLite table that survives power loss.

Every access decision and door incident is one row: grants, denials with
their reason, requests to exit, held-open and forced doors, tamper, lockouts
and remote commands (the kinds in :data:`KINDS`). The daemon only ever
*appends*: :class:`AuditLog` has no update and no delete of single rows, and
a trigger refuses ``UPDATE`` outright. Rows leave only through retention
(:meth:`AuditLog.prune`): older than ``door.audit_max_age_days``, or the oldest
beyond ``door.audit_max_rows``.

Durability: WAL journal, ``synchronous=FULL`` (a committed row survives a
power cut, not only a crash), one transaction per row. Row ids come from
``AUTOINCREMENT``: they increase by one per entry and are never reused after
retention, so a gap in ids means rows were pruned, never rewritten.

A database SQLite cannot read is moved aside (``<name>.corrupt-<time>``,
kept as evidence) and a new log is started.

Nothing here imports anything beyond the standard library and
:mod:`edge.errors`, so ``facegate audit`` starts fast.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.errors import FacegateError
from edge.files import move_aside

log = logging.getLogger("facegate.audit")

GRANTED = "access_granted"
DENIED = "access_denied"
EXIT = "exit_request"
HELD_OPEN = "door_held_open"
FORCED = "door_forced"
TAMPER = "tamper"
LOCKOUT = "lockout"
REMOTE_UNLOCK = "remote_unlock"
REMOTE_REFUSED = "remote_refused"
DOOR_TEST = "door_test"
KINDS = (
    GRANTED,
    DENIED,
    EXIT,
    HELD_OPEN,
    FORCED,
    TAMPER,
    LOCKOUT,
    REMOTE_UNLOCK,
    REMOTE_REFUSED,
    DOOR_TEST,
)
"""Every kind of audit entry; each is also the ``type`` of its MQTT event."""

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
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
"""


class AuditError(FacegateError):
    """The audit log cannot be opened, written or read."""


def _iso(t: float) -> str:
    iso = datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds")
    return iso.replace("+00:00", "Z")


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log."""

    id: int
    ts: float
    clock_synced: bool
    kind: str
    name: str | None = None
    reason: str | None = None
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The entry as ``facegate audit`` prints it (one JSON object)."""
        return {
            "id": self.id,
            "ts": _iso(self.ts),
            "ts_unix": round(self.ts, 3),
            "clock_synced": self.clock_synced,
            "kind": self.kind,
            "name": self.name,
            "reason": self.reason,
            "detail": self.detail,
            "data": self.data,
        }

    def event_fields(self) -> dict[str, Any]:
        """This entry's fields in its MQTT event (beside the envelope: v, id, seq, ts, type)."""
        return {
            "audit_id": self.id,
            "name": self.name,
            "reason": self.reason,
            "detail": self.detail,
            **self.data,
        }


CSV_COLUMNS = ("id", "ts", "clock_synced", "kind", "name", "reason", "detail", "data")


def _row_entry(row: tuple[Any, ...]) -> AuditEntry:
    i, ts, synced, kind, name, reason, detail, data = row
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = {"unparsed": str(data)}
    return AuditEntry(
        int(i), float(ts), bool(synced), str(kind), name, reason, str(detail), dict(parsed)
    )


class AuditLog:
    """The append-only audit table (thread-safe; one connection per instance)."""

    def __init__(
        self,
        path: Path | str,
        max_age_days: float = 365.0,
        max_rows: int = 100_000,
        wall: Any = time.time,
    ) -> None:
        if max_rows < 1 or max_age_days <= 0:
            raise AuditError("audit: max_rows and max_age_days must be positive")
        self.path = Path(path)
        self.max_age_days = max_age_days
        self.max_rows = max_rows
        self._wall = wall
        self._lock = threading.Lock()
        self._appended = 0
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError):  # cannot open: not a corrupt file
                raise AuditError(f"audit log {self.path}: cannot open ({e})") from None
            try:
                aside = move_aside(self.path)
                log.error("audit log %s is unreadable (%s); moved to %s", self.path, e, aside.name)
                self._db = self._open()
            except (OSError, sqlite3.DatabaseError) as e2:
                raise AuditError(f"audit log {self.path}: cannot recover ({e2})") from None
        self.prune()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed entry survives a power cut, not only a crash.
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            ok = db.execute("PRAGMA quick_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)  # entries name people: keep them private
        return db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise AuditError(f"audit log {self.path}: closed")
        return self._db

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
        """Store one entry (its own transaction, durable on return); the stored entry."""
        if kind not in KINDS:
            raise AuditError(f"audit: unknown entry kind {kind!r}")
        t = self._wall() if ts is None else ts
        blob = json.dumps(data or {}, sort_keys=True, separators=(",", ":"), default=str)
        with self._lock:
            db = self._conn()
            try:
                cur = db.execute(
                    "INSERT INTO audit (ts, clock_synced, kind, name, reason, detail, data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (t, int(clock_synced), kind, name, reason, detail, blob),
                )
            except sqlite3.Error as e:
                raise AuditError(f"audit log {self.path}: cannot append ({e})") from None
            row_id = int(cur.lastrowid or 0)
            self._appended += 1
            due = self._appended % PRUNE_EVERY == 0
        if due:
            self.prune()
        return AuditEntry(row_id, t, clock_synced, kind, name, reason, detail, json.loads(blob))

    def prune(self, now: float | None = None) -> int:
        """Apply retention (age, then row count) in one transaction; how many rows went."""
        t = self._wall() if now is None else now
        cutoff = t - self.max_age_days * 86400.0
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                n = db.execute("DELETE FROM audit WHERE ts < ?", (cutoff,)).rowcount
                (count,) = db.execute("SELECT COUNT(*) FROM audit").fetchone()
                if count > self.max_rows:
                    n += db.execute(
                        "DELETE FROM audit WHERE id IN (SELECT id FROM audit ORDER BY id LIMIT ?)",
                        (count - self.max_rows,),
                    ).rowcount
                db.execute("COMMIT")
            except sqlite3.Error as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise AuditError(f"audit log {self.path}: retention failed ({e})") from None
        if n:
            log.info("audit log: %d entries past retention removed", n)
        return int(n)

    def entries(self, since: float | None = None) -> list[AuditEntry]:
        """Every stored entry (from ``since``, Unix seconds), oldest first."""
        with self._lock:
            rows = self._conn().execute(*_select(since)).fetchall()
        return [_row_entry(r) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._conn().execute("SELECT COUNT(*) FROM audit").fetchone()
        return int(n)

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _select(since: float | None) -> tuple[str, tuple[Any, ...]]:
    cols = "id, ts, clock_synced, kind, name, reason, detail, data"
    if since is None:
        return f"SELECT {cols} FROM audit ORDER BY id", ()
    return f"SELECT {cols} FROM audit WHERE ts >= ? ORDER BY id", (since,)


def read_entries(path: Path | str, since: float | None = None) -> Iterator[AuditEntry]:
    """The entries of an audit log opened read-only (``facegate audit``), oldest first."""
    p = Path(path)
    if not p.exists():
        raise AuditError(f"{p}: no audit log there (is [door] enabled?)")
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        raise AuditError(f"{p}: cannot open audit log ({e})") from None
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit'").fetchone() is None:
            return  # created this instant, the table not yet: nothing logged so far
        for row in db.execute(*_select(since)):
            yield _row_entry(row)
    except sqlite3.Error as e:
        raise AuditError(f"{p}: cannot read audit log ({e})") from None
    finally:
        db.close()


def parse_since(text: str, now: float | None = None) -> float:
    """``--since`` as Unix seconds.

    An ISO date or time (the device's local time unless it names a zone), or
    an age: ``90s``, ``15m``, ``2h``, ``7d``.
    """
    t = time.time() if now is None else now
    s = text.strip()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    if s and s[-1] in units:
        try:
            return t - float(s[:-1]) * units[s[-1]]
        except ValueError:
            pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(
            f"--since: {text!r} is neither a date/time (2026-01-02, 2026-01-02T08:00) "
            "nor an age (90s, 15m, 2h, 7d)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # the device's local time
    return dt.timestamp()


def to_csv(entries: Iterator[AuditEntry] | list[AuditEntry]) -> str:
    """Entries as CSV with a header row (``data`` as compact JSON)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for e in entries:
        j = e.to_json()
        w.writerow(
            [
                j["id"],
                j["ts"],
                str(e.clock_synced).lower(),
                e.kind,
                e.name or "",
                e.reason or "",
                e.detail,
                json.dumps(e.data, sort_keys=True, separators=(",", ":")),
            ]
        )
    return buf.getvalue()


__all__ = [
    "CSV_COLUMNS",
    "DENIED",
    "DOOR_TEST",
    "EXIT",
    "FORCED",
    "GRANTED",
    "HELD_OPEN",
    "KINDS",
    "LOCKOUT",
    "REMOTE_REFUSED",
    "REMOTE_UNLOCK",
    "TAMPER",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "parse_since",
    "read_entries",
    "to_csv",
]

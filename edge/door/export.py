"""Reading the audit log out: ``facegate audit`` (JSON lines or CSV) and ``--since``.

:func:`read_entries` reads in chunks (the daemon's writer is never held up
for the length of a listing) and asks SQLite for bytes, so a row written
behind the daemon's back (undecodable text, a ``ts`` that is no number, a
``data`` that is no JSON object) is shown as odd (:func:`edge.door.entry.row_entry`)
and the listing goes on. :func:`to_csv` neutralises cells a spreadsheet
would run as a formula.

Standard library and :mod:`edge.door.entry` only.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.door.entry import AuditEntry, AuditError, row_entry

CSV_COLUMNS = ("id", "ts", "clock_synced", "kind", "name", "reason", "detail", "data", "odd")
CHUNK = 500
"""Rows read per query: each query holds SQLite's read lock only that long."""
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection)."""

_COLS = "id, ts, clock_synced, kind, name, reason, detail, data"


def _chunks(db: sqlite3.Connection, since: float | None) -> Iterator[tuple[Any, ...]]:
    after = -(2**63)
    where = "" if since is None else " AND typeof(ts) IN ('real', 'integer') AND ts >= ?"
    while True:
        args: tuple[Any, ...] = (after,) if since is None else (after, since)
        rows = db.execute(
            f"SELECT {_COLS} FROM audit WHERE id > ?{where} ORDER BY id LIMIT {CHUNK}", args
        ).fetchall()
        yield from rows
        if len(rows) < CHUNK:
            return
        after = rows[-1][0]


def read_entries(
    path: Path | str, since: float | None = None, db: sqlite3.Connection | None = None
) -> Iterator[AuditEntry]:
    """The entries of an audit log, oldest first (opened read-only unless ``db`` is given).

    Rows whose ``ts`` is no number are left out only when ``since`` is given.
    """
    if db is not None:
        old = db.text_factory
        db.text_factory = bytes
        try:
            return iter([row_entry(r) for r in _chunks(db, since)])
        finally:
            db.text_factory = old
    return _read_file(Path(path), since)


def _read_file(p: Path, since: float | None) -> Iterator[AuditEntry]:
    if not p.exists():
        raise AuditError(f"{p}: no audit log there (is [door] enabled?)")
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        raise AuditError(f"{p}: cannot open audit log ({e})") from None
    db.text_factory = bytes
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit'").fetchone() is None:
            return  # created this instant, the table not yet: nothing logged so far
        for row in _chunks(db, since):
            yield row_entry(row)
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


def neutralise(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading ``'`` before a formula's first character.

    OWASP's advice against CSV injection: a cell starting with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return is prefixed with a single quote.
    """
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def to_csv(entries: Iterable[AuditEntry]) -> str:
    """Entries as CSV with a header row (``data`` as compact JSON; text cells neutralised)."""
    buf = io.StringIO()
    # RFC 4180's CRLF: a CR or LF inside a cell is then quoted, never a row break.
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for e in entries:
        j = e.to_json()
        text = [
            e.kind,
            e.name or "",
            e.reason or "",
            e.detail,
            json.dumps(e.data, sort_keys=True, separators=(",", ":")),
            "; ".join(e.odd),
        ]
        w.writerow(
            [
                j["id"],
                neutralise(j["ts"] or e.ts_raw or ""),
                str(e.clock_synced).lower(),
                *(neutralise(c) for c in text),
            ]
        )
    return buf.getvalue()


__all__ = [
    "CHUNK",
    "CSV_COLUMNS",
    "FORMULA_START",
    "neutralise",
    "parse_since",
    "read_entries",
    "to_csv",
]

"""The audit log's hash chain, and :func:`verify_log` (``facegate audit --verify``).

Each row stores ``prev``, the hash of the row before it in its stream
(:data:`edge.door.entry.STREAMS`), and ``hash``::

    hash = sha256(prev + "\\n" + json([id, ts, clock_synced, kind, name, reason,
                                       detail, data, up, stream]))

(compact JSON, UTF-8). The first row of a stream follows :data:`GENESIS`, or,
once retention removed the oldest rows, the stream's *anchor*: the id and
hash of the last row removed (table ``audit_anchor``). ``audit_meta`` holds
each stream's *head* (the id and hash of its newest row). So an altered or
back-dated row no longer matches its hash, a row removed from the middle
breaks the link to the next, rows removed from the start no longer start
at the anchor, and rows removed from the end no longer reach the head.

What a chain without a secret cannot do: someone who can write the file and
knows this scheme can rewrite the whole chain (and its anchors and heads)
consistently. The device's MQTT events carry each entry's ``audit_id``:
the broker's subscribers keep an outside record to compare with.

:func:`verify_log` also checks what SQLite checks (``PRAGMA
integrity_check``: pages, b-trees, indexes, the free list), every header
field whose value facegate's log fixes (journal mode, text encoding,
application id, schema version, sizes), and reports a log an earlier start
found unreadable and moved aside.

Standard library and :mod:`edge.door.entry` only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.door.entry import INPUT_KINDS, STREAMS, row_entry

GENESIS = "0" * 64
"""The ``prev`` of a stream's first row when nothing was ever removed from it."""
APPLICATION_ID = 0x66676174  # "fgat": this file is a facegate audit log
SCHEMA_VERSION = 3
"""``PRAGMA user_version`` of the current schema (with streams and the chain)."""
HEADER_UNCHECKED = frozenset(range(40, 44)) | frozenset(range(96, 100))
"""Header bytes whose value no reader can know (the schema cookie, the version of the
SQLite that last wrote): a change there changes no entry and is not detected."""

# Rows of older versions (no stream column value) are sorted into a stream by kind.
_KIND_LIST = ", ".join(f"'{k}'" for k in sorted(INPUT_KINDS))
STREAM_SQL = f"COALESCE(stream, CASE WHEN kind IN ({_KIND_LIST}) THEN 'input' ELSE 'access' END)"
UP_SQL = "COALESCE(up, 0.0)"
CHAIN_COLUMNS = "id, ts, clock_synced, kind, name, reason, detail, data, up, stream"


def row_hash(prev: str, fields: tuple[Any, ...]) -> str:
    """The hash of one row: sha256 over ``prev``, a newline and the row as compact JSON.

    ``fields`` is ``(id, ts, clock_synced, kind, name, reason, detail, data,
    up, stream)`` exactly as stored (``data`` is the stored JSON text).
    """
    body = json.dumps(list(fields), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(prev.encode("ascii") + b"\n" + body.encode("utf-8")).hexdigest()


@dataclass
class VerifyReport:
    """What :func:`verify_log` found: problems (the log is not intact) and notes."""

    path: Path
    entries: int = 0
    legacy: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """The last line of ``facegate audit --verify``."""
        if self.ok:
            older = f", {self.legacy} from before the hash chain" if self.legacy else ""
            return f"{self.path}: ok: {self.entries} entries, hash chain intact{older}"
        return (
            f"{self.path}: NOT intact: {len(self.problems)} problem(s), {self.entries} entries read"
        )


# -- the header -----------------------------------------------------------------------------


def _u32(h: bytes, off: int) -> int:
    return int(struct.unpack(">I", h[off : off + 4])[0])


def check_header(h: bytes, size: int) -> list[str]:
    """Problems with the 100-byte SQLite header of a facegate audit log of ``size`` bytes."""
    if len(h) < 100 or h[:16] != b"SQLite format 3\x00":
        return ["header: not an SQLite database (its first bytes were changed or lost)"]
    out = []
    page = struct.unpack(">H", h[16:18])[0]
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1) or size % page:
        out.append(f"header: page size {page} does not fit the file ({size} bytes)")
    fixed = {
        18: (1, "write version (1: rollback journal)"),
        19: (1, "read version (1: rollback journal)"),
        20: (0, "reserved space per page"),
        21: (64, "maximum embedded payload fraction"),
        22: (32, "minimum embedded payload fraction"),
        23: (32, "leaf payload fraction"),
    }
    for off, (want, what) in fixed.items():
        if h[off] != want:
            out.append(f"header: byte {off} ({what}) is {h[off]}, not {want}")
    words = {
        44: (4, "schema format"),
        48: (0, "default cache size"),
        52: (0, "largest root page (auto-vacuum)"),
        56: (1, "text encoding (1: UTF-8)"),
        60: (SCHEMA_VERSION, "user version (facegate's schema)"),
        64: (0, "incremental vacuum"),
        68: (APPLICATION_ID, "application id (facegate)"),
    }
    for off, (want, what) in words.items():
        if _u32(h, off) != want:
            out.append(f"header: bytes {off}-{off + 3} ({what}) are {_u32(h, off)}, not {want}")
    if any(h[72:92]):
        out.append("header: bytes 72-91 (reserved, always zero) were changed")
    if _u32(h, 24) != _u32(h, 92):
        out.append("header: the change counter (24-27) and version-valid-for (92-95) differ")
    elif page and _u32(h, 28) * page != size:
        out.append(f"header: {_u32(h, 28)} pages of {page} bytes, the file has {size} bytes")
    if not 3_000_000 <= _u32(h, 96) < 4_000_000:
        out.append(f"header: SQLite version number {_u32(h, 96)} is no SQLite 3 version")
    return out


def is_legacy_header(h: bytes) -> bool:
    """A log written by facegate before the hash chain (no application id, no user version)."""
    return len(h) >= 100 and _u32(h, 60) == 0 and _u32(h, 68) == 0


# -- the chain -----------------------------------------------------------------------------


def _str(v: Any) -> Any:
    return v.decode("utf-8") if isinstance(v, bytes) else v


class _Walk:
    """The chain walk over the rows of an open log (text columns read as bytes)."""

    def __init__(self, db: sqlite3.Connection, report: VerifyReport) -> None:
        self.db = db
        self.r = report
        anchors = {
            str(_str(s)): (int(i), str(_str(h)))
            for s, i, h in db.execute("SELECT stream, id, hash FROM audit_anchor")
        }
        meta = {str(_str(k)): _str(v) for k, v in db.execute("SELECT key, value FROM audit_meta")}
        self.chain_from = int(meta.get("chain_from", 1) or 1)
        self.heads = {s: meta.get(f"head:{s}") for s in STREAMS}
        self.expected = {s: anchors[s][1] if s in anchors else GENESIS for s in STREAMS}
        self.last: dict[str, int | None] = {s: None for s in STREAMS}
        self.anchored = {s: anchors[s][0] for s in anchors}
        self.max_id = max([0, *self.anchored.values()])
        self.last_ts: float | None = None

    def run(self) -> None:
        cols = f"{CHAIN_COLUMNS.replace('stream', STREAM_SQL + ' AS stream')}, prev, hash"
        for row in self.db.execute(f"SELECT {cols} FROM audit ORDER BY id"):
            self.row(row[:10], _str(row[10]), _str(row[11]))
        self.tails()

    def row(self, fields: tuple[Any, ...], prev: str | None, stored: str | None) -> None:
        r = self.r
        r.entries += 1
        entry = row_entry(fields[:8])
        rid = entry.id
        self.max_id = max(self.max_id, rid)
        if stored is None:
            if rid < self.chain_from:
                r.legacy += 1
            else:
                r.problems.append(f"row {rid}: no hash: not written by facegate")
            return
        stream = str(_str(fields[9]))
        if stream not in STREAMS:
            r.problems.append(f"row {rid}: unknown stream {stream[:20]!r}")
            return
        if entry.odd:
            r.problems.append(f"row {rid}: " + "; ".join(entry.odd))
        self.link(rid, stream, prev)
        try:
            computed = row_hash(str(prev), tuple(_str(v) for v in fields))
        except (UnicodeDecodeError, TypeError, ValueError):
            computed = ""
        if computed != stored:
            r.problems.append(f"row {rid}: its content does not match its hash (altered)")
        self.expected[stream], self.last[stream] = stored, rid
        self.clock(rid, entry.ts)

    def link(self, rid: int, stream: str, prev: str | None) -> None:
        if prev == self.expected[stream]:
            return
        before = self.last[stream]
        if before is None:
            self.r.problems.append(
                f"row {rid}: the {stream} chain does not start at its anchor "
                "(rows before it were removed, not by retention)"
            )
        else:
            self.r.problems.append(
                f"row {rid}: does not follow row {before} of the {stream} chain "
                "(a row between them was removed, or rows were reordered)"
            )

    def clock(self, rid: int, ts: float) -> None:
        if self.last_ts is not None and ts < self.last_ts - 1.0:
            self.r.notes.append(
                f"row {rid}: its time is {self.last_ts - ts:.0f} s before the row above "
                "(the clock was set back, or the row is back-dated)"
            )
        if ts == ts:  # not NaN
            self.last_ts = ts

    def tails(self) -> None:
        for s in STREAMS:
            head = self.heads[s]
            if not head:
                continue
            hid, _, hhash = str(head).partition(":")
            last = self.last[s]
            if last is None and int(hid) <= self.anchored.get(s, 0):
                continue  # every row of the stream went by retention
            if last is None or int(hid) != last or self.expected[s] != hhash:
                after = f"after row {last}" if last is not None else "of it"
                self.r.problems.append(
                    f"the {s} chain ends at row {last}, but row {hid} was written: "
                    f"rows {after} are missing"
                )
        seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        if seq is not None and int(seq[0]) > self.max_id:
            self.r.problems.append(
                f"rows after row {self.max_id} are missing: ids up to {int(seq[0])} were written"
            )


def _aside(p: Path, r: VerifyReport) -> None:
    for other in sorted(p.parent.glob(f"{p.name}.corrupt-*")):
        if not other.name.endswith(("-wal", "-shm", "-journal")):
            r.problems.append(
                f"{other.name}: an earlier audit log was unreadable at a start and was kept "
                "aside there (a new log was begun)"
            )


def verify_log(path: Path | str) -> VerifyReport:
    """Check an audit log's file, pages and hash chain; never raises for what it finds."""
    p = Path(path)
    r = VerifyReport(p)
    _aside(p, r)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        r.problems.append("no audit log there (deleted, or the door never ran)")
        return r
    except OSError as e:
        r.problems.append(f"cannot read it ({e.strerror or e})")
        return r
    if size == 0:
        r.problems.append("the file is empty: the log was truncated to nothing")
        return r
    if is_legacy_header(header):
        r.problems.append(
            "written by a facegate without the hash chain: nothing to verify it by; the "
            "service converts it at its next start (rows before then stay unchained)"
        )
        return r
    r.problems += check_header(header, size)
    journal = p.with_name(p.name + "-journal")
    if journal.exists() and journal.stat().st_size > 0:
        r.problems.append(
            f"{journal.name}: a write was interrupted (a hot journal); the service rolls it "
            "back at its next start: verify again then"
        )
        return r
    _verify_db(p, r)
    return r


def _verify_db(p: Path, r: VerifyReport) -> None:
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        r.problems.append(f"SQLite cannot open it ({e})")
        return
    db.text_factory = bytes
    try:
        found = [_str(x[0]) for x in db.execute("PRAGMA integrity_check(20)")]
        if found != ["ok"]:
            r.problems += [f"SQLite: {x}" for x in found]
        tables = {_str(x[0]) for x in db.execute("SELECT name FROM sqlite_master")}
        missing = {"audit", "audit_anchor", "audit_meta"} - tables
        if missing:
            r.problems.append(f"tables missing: {', '.join(sorted(missing))}")
            return
        _Walk(db, r).run()
    except sqlite3.DatabaseError as e:
        r.problems.append(f"SQLite cannot read it ({e})")
    except (TypeError, ValueError, UnicodeDecodeError) as e:
        # A value facegate never writes (a NULL id, a hash that is no text): damage.
        r.problems.append(f"the log's tables hold a value facegate never writes ({e})")
    finally:
        db.close()


__all__ = [
    "APPLICATION_ID",
    "CHAIN_COLUMNS",
    "GENESIS",
    "HEADER_UNCHECKED",
    "SCHEMA_VERSION",
    "STREAM_SQL",
    "UP_SQL",
    "VerifyReport",
    "check_header",
    "is_legacy_header",
    "row_hash",
    "verify_log",
]

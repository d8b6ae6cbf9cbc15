"""The audit log's corruption matrix: every damage is reported by ``--verify``, or changes nothing.

A log of a few hundred chained entries (both streams, some retention) is
copied and damaged in every way the attack run tried: a flipped byte at
every offset of the header, flipped bytes across every page, a hot journal
(a write interrupted by SIGKILL) flipped or deleted, the file truncated,
rows deleted behind the daemon's back, the file deleted. After each,
:func:`edge.door.audit.verify_log` (``facegate audit --verify``) runs, and
the entries are read back. The rule, for every case:

    not verify_log(path).ok  or  the entries read back are exactly the originals

so nothing is ever lost or altered silently. What passes as intact is
counted per kind and must be damage that changes no entry: the header
fields no reader can know (:data:`edge.door.chain.HEADER_UNCHECKED`: the
schema cookie and the SQLite version number), and bytes SQLite does not use
(free space inside a page, free pages). README ("The audit log") says so.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.door.audit import DENIED, EXIT, GRANTED, TAMPER, AuditLog, read_entries, verify_log
from edge.door.chain import HEADER_UNCHECKED

T0 = 1_767_780_000.0
ROOT = Path(__file__).resolve().parents[1]


def _entries(p: Path) -> list[tuple[object, ...]] | None:
    try:
        return [
            (e.id, e.ts, e.kind, e.name, e.reason, e.detail, tuple(sorted(e.data.items())), e.odd)
            for e in read_entries(p)
        ]
    except Exception:
        return None


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[object, ...]]]:
    d = tmp_path_factory.mktemp("pristine")
    p = d / "audit.sqlite"
    mono = [0.0]
    log = AuditLog(p, max_rows=300, wall=lambda: T0 + mono[0], mono=lambda: mono[0])
    for i in range(400):
        kind = (GRANTED, DENIED, TAMPER, EXIT)[i % 4]
        log.append(
            kind,
            name=f"person {i}" if kind in (GRANTED, DENIED) else None,
            reason="unknown" if kind == DENIED else None,
            detail=f"entry {i} " + "x" * (i % 50),
            data={"i": i, "active": i % 2 == 0},
        )
        mono[0] += 1.0
    log.prune()
    log.close()
    assert verify_log(p).ok
    entries = _entries(p)
    assert entries is not None and len(entries) == 300
    return p, entries


class Matrix:
    """Runs damage on copies of the pristine log and checks the rule for each."""

    def __init__(self, pristine: tuple[Path, list[tuple[object, ...]]], work: Path) -> None:
        self.src, self.original = pristine
        self.work = work
        self.n = 0
        self.outcomes: Counter[str] = Counter()

    def copy(self) -> Path:
        self.n += 1
        d = self.work / f"case{self.n}"
        d.mkdir()
        p = d / "audit.sqlite"
        shutil.copyfile(self.src, p)
        return p

    def check(self, what: str, p: Path, harmless: bool = True) -> str:
        report = verify_log(p)
        if not report.ok:
            self.outcomes[f"{what}: detected"] += 1
            return "detected"
        got = _entries(p)
        assert got == self.original, f"{what}: verify said ok, yet entries changed: {report}"
        assert harmless, f"{what}: not detected, though this damage is not documented as harmless"
        self.outcomes[f"{what}: changed nothing"] += 1
        return "intact"


@pytest.fixture
def matrix(pristine: tuple[Path, list[tuple[object, ...]]], tmp_path: Path) -> Matrix:
    return Matrix(pristine, tmp_path)


def flip(p: Path, offset: int, mask: int = 0xFF) -> None:
    with p.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def test_every_header_byte(matrix: Matrix) -> None:
    """Each of the 100 header bytes, all bits flipped, then its lowest bit alone."""
    for mask in (0xFF, 0x01):
        for off in range(100):
            p = matrix.copy()
            flip(p, off, mask)
            matrix.check(f"header byte {off}", p, harmless=off in HEADER_UNCHECKED)
    print(dict(matrix.outcomes))


def _page_size(p: Path) -> int:
    db = sqlite3.connect(p)
    try:
        return int(db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


def test_flips_across_every_page(matrix: Matrix) -> None:
    """Bytes in every page: its header, cell pointers, the middle, cell content at the end."""
    size = matrix.src.stat().st_size
    page = _page_size(matrix.src)
    pages = size // page
    detected = 0
    for n in range(1, pages):  # page 1 holds the header (tested above) and the schema
        base = n * page
        for off in (0, 1, 3, 5, 7, 8, 12, page // 2, page - 200, page - 60, page - 7, page - 1):
            p = matrix.copy()
            flip(p, base + off)
            detected += matrix.check(f"page {n + 1}+{off}", p) == "detected"
    p = matrix.copy()  # and the schema in page 1
    flip(p, page - 40)
    detected += matrix.check("schema page", p) == "detected"
    # Most flips land in data the log uses; a few in unused space change nothing.
    total = sum(matrix.outcomes.values())
    assert detected >= total * 0.7, dict(matrix.outcomes)
    print(f"{pages} pages: {detected} of {total} flips detected, the rest changed nothing")


HOT_WRITER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=DELETE")
db.execute("PRAGMA synchronous=EXTRA")
db.execute("PRAGMA cache_size=1")  # spill to the file before the commit
db.execute("BEGIN IMMEDIATE")
db.execute("DELETE FROM audit WHERE id % 3 = 0")
db.execute("INSERT INTO audit_meta (key, value) VALUES ('x', zeroblob(20000))")
print("ready", flush=True)
time.sleep(60)
"""


def _hot_journal(p: Path) -> Path:
    """Interrupt a big write with SIGKILL: the file holds half of it, the journal the rest."""
    before = p.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOT_WRITER, str(p)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    journal = p.with_name(p.name + "-journal")
    assert journal.stat().st_size > 0
    assert p.read_bytes() != before  # pages of the unfinished write reached the file
    return journal


def _restart(p: Path) -> None:
    """What the service does at its next start: open (rolling a hot journal back), close."""
    AuditLog(p).close()


def test_hot_journal_intact_flipped_and_deleted(matrix: Matrix) -> None:
    # As left by the crash: --verify says so; the next start rolls it back, all intact.
    p = matrix.copy()
    _hot_journal(p)
    assert "hot journal" in " ".join(verify_log(p).problems)
    _restart(p)
    assert matrix.check("hot journal, rolled back", p, harmless=True) == "intact"
    # Flipped journal bytes: the rollback restores damaged pages, or stops early.
    journal_size = 0
    for i, off in enumerate((0, 8, 12, 20, 28, 512, 600, 2000, 4100, 8000, 12000, 20000)):
        p = matrix.copy()
        journal = _hot_journal(p)
        journal_size = journal.stat().st_size
        if off >= journal_size:
            continue
        flip(journal, off)
        try:
            _restart(p)
        except Exception as e:  # the service refuses to start on it: reported, not silent
            matrix.outcomes[f"journal flip {i}: refused at start ({type(e).__name__})"] += 1
            continue
        matrix.check(f"journal flip at {off}", p, harmless=True)
    assert journal_size > 0
    # The journal deleted before the restart: the half-done write stays in the file.
    p = matrix.copy()
    _hot_journal(p).unlink()
    _restart(p)
    assert matrix.check("hot journal deleted", p, harmless=False) == "detected"
    print(dict(matrix.outcomes))


def test_truncation(matrix: Matrix) -> None:
    size = matrix.src.stat().st_size
    page = _page_size(matrix.src)
    for keep in (0, 50, 100, page, size // 2, size - page, size - 1):
        p = matrix.copy()
        os.truncate(p, keep)
        matrix.check(f"truncated to {keep}", p, harmless=False)
    print(dict(matrix.outcomes))


def _sql(p: Path, *statements: str) -> None:
    db = sqlite3.connect(p)
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


DELETIONS: list[tuple[str, Callable[[Path], None]]] = [
    ("the file", lambda p: p.unlink()),
    ("a middle row", lambda p: _sql(p, "DELETE FROM audit WHERE id = (SELECT id FROM audit "
                                       "ORDER BY id LIMIT 1 OFFSET 150)")),
    ("the oldest rows", lambda p: _sql(p, "DELETE FROM audit WHERE id IN (SELECT id FROM audit "
                                          "ORDER BY id LIMIT 5)")),
    ("the newest row", lambda p: _sql(p, "DELETE FROM audit WHERE id = (SELECT MAX(id) "
                                         "FROM audit)")),
    ("the newest rows and the sequence", lambda p: _sql(
        p, "DELETE FROM audit WHERE id > (SELECT MAX(id) - 3 FROM audit)",
        "UPDATE sqlite_sequence SET seq = (SELECT MAX(id) FROM audit) WHERE name = 'audit'")),
    ("every input row", lambda p: _sql(p, "DELETE FROM audit WHERE stream = 'input'")),
    ("the anchors", lambda p: _sql(p, "DELETE FROM audit_anchor")),
]  # fmt: skip


@pytest.mark.parametrize("what", [d[0] for d in DELETIONS])
def test_deletion(matrix: Matrix, what: str) -> None:
    p = matrix.copy()
    dict(DELETIONS)[what](p)
    assert matrix.check(f"deleted {what}", p, harmless=False) == "detected"


def test_a_planted_wal_is_ignored(matrix: Matrix) -> None:
    """The log never uses WAL: a ``-wal`` beside it (planted, or flipped) is never read."""
    p = matrix.copy()
    wal = p.with_name(p.name + "-wal")
    wal.write_bytes(b"\x37\x7f\x06\x82" + os.urandom(8188))
    assert matrix.check("planted WAL", p, harmless=True) == "intact"
    _restart(p)  # the service opens it with the WAL beside it
    assert matrix.check("planted WAL after a start", p, harmless=True) == "intact"


def test_the_service_keeps_an_unreadable_log_as_evidence(matrix: Matrix) -> None:
    """A log SQLite cannot read is moved aside at the start; --verify keeps reporting it."""
    p = matrix.copy()
    flip(p, 0)  # the magic string: not a database any more
    _restart(p)  # moved aside, a new (empty) log begun
    report = verify_log(p)
    assert not report.ok and any("kept aside" in x for x in report.problems), report

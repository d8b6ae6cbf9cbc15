"""The door's audit log: append-only, durable, retained by age and size, readable by the CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.door.audit import DENIED, GRANTED, AuditError, AuditLog, parse_since, read_entries, to_csv

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 7, 10, 0, tzinfo=UTC).timestamp()


def test_append_and_read_back(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite", wall=lambda: T0)
    a = log.append(GRANTED, name="Alice", data={"track_id": 3, "age_ms": 120})
    b = log.append(DENIED, reason="unknown", detail="face not recognized", clock_synced=False)
    assert (a.id, b.id) == (1, 2)
    got = log.entries()
    assert got == [a, b]
    assert got[0].to_json() == {
        "id": 1,
        "ts": "2026-01-07T10:00:00.000Z",
        "ts_unix": T0,
        "clock_synced": True,
        "kind": "access_granted",
        "name": "Alice",
        "reason": None,
        "detail": "",
        "data": {"age_ms": 120, "track_id": 3},
    }
    assert b.event_fields() == {
        "audit_id": 2,
        "name": None,
        "reason": "unknown",
        "detail": "face not recognized",
    }
    with pytest.raises(AuditError, match="unknown entry kind"):
        log.append("opened_by_magic")
    log.close()
    assert [e.id for e in read_entries(tmp_path / "audit.sqlite")] == [1, 2]
    assert oct(os.stat(tmp_path / "audit.sqlite").st_mode & 0o777) == "0o600"


def test_the_table_refuses_updates(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.sqlite")
    log.append(DENIED, name="Bob", reason="not_allowed")
    log.close()
    db = sqlite3.connect(tmp_path / "a.sqlite")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET reason = NULL")
    db.close()


def test_durability_settings(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.sqlite")
    db = log._conn()
    # A rollback journal, not WAL: a committed row is in the database file itself.
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 3  # EXTRA
    log.close()


def test_retention_by_age_and_by_rows(tmp_path: Path) -> None:
    mono = [0.0]
    log = AuditLog(tmp_path / "a.sqlite", max_age_days=30, max_rows=5, mono=lambda: mono[0])
    for _ in range(3):
        log.append(DENIED, reason="unknown")
    mono[0] = 10 * 86400.0
    for _ in range(4):
        log.append(GRANTED, name="Alice")
    mono[0] = 30 * 86400.0 + 1  # the first three have been written 30 days of running ago
    assert log.prune() == 3  # the old ones go first, then there are 4 <= 5
    for _ in range(4):
        log.append(GRANTED, name="Alice")
    assert log.prune() == 3  # 8 rows, the 3 oldest beyond 5 go
    ids = [e.id for e in log.entries()]
    assert ids == [7, 8, 9, 10, 11]  # never reused, never renumbered
    assert log.append(GRANTED, name="Alice").id == 12
    log.close()
    # Retention also runs at open (the running time goes on across the restart).
    mono[0] = 5.0
    mono_now = [5.0 + 40 * 86400]
    log = AuditLog(tmp_path / "a.sqlite", max_age_days=30, mono=lambda: mono_now[0])
    mono_now[0] += 0.0
    assert len(log) == 6
    log.close()


def test_an_unreadable_log_is_kept_aside(tmp_path: Path) -> None:
    p = tmp_path / "audit.sqlite"
    p.write_bytes(b"this is not a database" * 100)
    log = AuditLog(p)
    assert log.append(GRANTED, name="Alice").id == 1
    aside = list(tmp_path.glob("audit.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")


def test_parse_since() -> None:
    assert parse_since("2h", now=T0) == T0 - 7200
    assert parse_since("90s", now=T0) == T0 - 90
    assert parse_since("7d", now=T0) == T0 - 7 * 86400
    assert parse_since("2026-01-07T10:00:00Z") == T0
    assert parse_since("2026-01-07T11:00:00+01:00") == T0
    local = datetime(2026, 1, 7).astimezone().timestamp()
    assert parse_since("2026-01-07") == local
    with pytest.raises(AuditError, match="--since"):
        parse_since("yesterday")


def test_csv(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.sqlite", wall=lambda: T0)
    log.append(DENIED, name="Bob, Jr.", reason="not_allowed", detail='said "hi"', data={"k": 1})
    text = to_csv(log.entries())
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "id", "ts", "clock_synced", "kind", "name", "reason", "detail", "data", "odd",
    ]  # fmt: skip
    assert rows[1] == [
        "1",
        "2026-01-07T10:00:00.000Z",
        "true",
        "access_denied",
        "Bob, Jr.",
        "not_allowed",
        'said "hi"',
        '{"k":1}',
        "",
    ]


def test_facegate_audit_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    state = tmp_path / "state"
    config = tmp_path / "c.toml"
    config.write_text(f'[service]\nstate_dir = "{state}"\n[door]\naudit_path = "door.sqlite"\n')
    assert main(["audit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facegate: error:") and "no audit log" in err and "Traceback" not in err
    log = AuditLog(state / "door.sqlite")
    import time

    log.append(DENIED, reason="unknown", ts=time.time() - 7200)
    log.append(GRANTED, name="Alice")
    log.close()
    assert main(["audit", "--config", str(config)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["kind"] for x in lines] == ["access_denied", "access_granted"]
    assert main(["audit", "--config", str(config), "--since", "1h", "--csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].split(",")[3] == "access_granted"
    assert main(["audit", "--config", str(config), "--since", "soon"]) == 2
    assert "--since" in capsys.readouterr().err


# -- kill -9 during writes --------------------------------------------------------------------

WRITER = r"""
import sys
from edge.door.audit import AuditLog
log = AuditLog(sys.argv[1])
i = 0
while True:
    e = log.append("access_denied", name="n%d" % i, reason="unknown", detail="x" * 200,
                   data={"i": i, "pad": "y" * 300})
    sys.stdout.write("%d\n" % e.id)
    sys.stdout.flush()
    i += 1
"""


@pytest.mark.slow  # hundreds of processes killed mid-write
def test_kill_9_during_writes_never_corrupts_the_log(tmp_path: Path) -> None:
    """120 writers SIGKILLed mid-stream on the same log: every committed row is intact."""
    path = tmp_path / "audit.sqlite"
    rng = random.Random(14)
    committed = 0
    trials = 120
    for trial in range(trials):
        # -S: no site-packages needed (edge.door.audit is standard library only): fast start.
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", WRITER, str(path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        want = rng.randint(1, 10)
        last = committed
        for _ in range(want):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            last = int(line)
        proc.send_signal(signal.SIGKILL)  # while it is writing the next rows
        proc.wait(timeout=10)
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = db.execute("SELECT id, name, detail, data FROM audit ORDER BY id").fetchall()
        finally:
            db.close()
        ids = [r[0] for r in rows]
        # Every row the writer reported as written is there; ids have no holes.
        assert ids == list(range(1, len(ids) + 1)), trial
        assert len(ids) >= last, (trial, len(ids), last)
        for _, name, detail, data in rows:
            d = json.loads(data)
            assert name == f"n{d['i']}" and detail == "x" * 200 and d["pad"] == "y" * 300
        committed = len(ids)
    assert committed >= trials
    # The daemon's own open (quick_check) accepts it; nothing was moved aside.
    log = AuditLog(path)
    assert len(log) == committed
    log.close()
    assert not list(tmp_path.glob("*.corrupt-*"))


# -- issue 19: odd rows, CSV injection ---------------------------------------------------------


def _odd_log(path: Path) -> None:
    """A log with a good row and the odd rows the attack run wrote behind the daemon's back."""
    log = AuditLog(path, wall=lambda: T0)
    log.append(GRANTED, name="Alice")
    log.close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TRIGGER IF EXISTS audit_append_only;"
        "INSERT INTO audit (ts, clock_synced, kind, name, reason, detail, data) VALUES "
        f"({T0}, 1, 'access_denied', 'Bob', 'not_allowed', '', '[1, 2, 3]');"
        "INSERT INTO audit (ts, clock_synced, kind, name, reason, detail, data) VALUES "
        "('yesterday', 1, 'access_denied', 'Eve', 'unknown', '', '{}');"
        "INSERT INTO audit (ts, clock_synced, kind, name, reason, detail, data) VALUES "
        "(1e20, 1, 'access_denied', 'Mallory', 'unknown', '', '{}');"
        "INSERT INTO audit (ts, clock_synced, kind, name, reason, detail, data) VALUES "
        f"({T0}, 1, 'access_denied', CAST(X'416cff6365' AS TEXT), 'unknown', '', '{{}}');"
    )
    db.commit()
    db.close()
    log = AuditLog(path, wall=lambda: T0)
    log.append(GRANTED, name="Carol")
    log.close()


@pytest.mark.parametrize("csv_out", [False, True])
def test_facegate_audit_shows_odd_rows_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], csv_out: bool
) -> None:
    """D10: a JSON-list data, a text ts, ts 1e20, undecodable bytes: shown as odd, no traceback."""
    from edge.cli import main

    config = tmp_path / "c.toml"
    config.write_text(f'[service]\nstate_dir = "{tmp_path}"\n')
    _odd_log(tmp_path / "audit.sqlite")
    rc = main(["audit", "--config", str(config), *(["--csv"] if csv_out else [])])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err
    if csv_out:
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO(captured.out)))
        assert [r["name"] for r in rows] == [
            "Alice",
            "Bob",
            "Eve",
            "Mallory",
            "Al\ufffdce",
            "Carol",
        ]
        assert [bool(r["odd"]) for r in rows] == [False, True, True, True, True, False]
        return
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert [x["name"] for x in lines] == ["Alice", "Bob", "Eve", "Mallory", "Al\ufffdce", "Carol"]
    assert "odd" not in lines[0] and "odd" not in lines[-1]
    bob, eve, mallory, undecodable = lines[1:5]
    assert any("data" in o for o in bob["odd"]) and bob["data"] == {"unparsed": "[1, 2, 3]"}
    assert any("ts" in o for o in eve["odd"]) and eve["ts"] is None and eve["ts_raw"] == "yesterday"
    assert any("ts" in o for o in mallory["odd"]) and mallory["ts"] is None
    assert any("UTF-8" in o for o in undecodable["odd"])


def test_csv_neutralises_formula_cells(tmp_path: Path) -> None:
    """Cells starting with = + - @ tab or CR get a leading ' (OWASP, CSV injection)."""
    import csv
    import io

    log = AuditLog(tmp_path / "a.sqlite", wall=lambda: T0)
    evil = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "Zoë"]
    for name in evil:
        log.append(DENIED, name=name, reason="not_allowed", detail=name, data={"n": name})
    rows = list(csv.DictReader(io.StringIO(to_csv(log.entries()))))
    assert [r["name"] for r in rows] == ["'" + n for n in evil[:-1]] + ["Zoë"]
    assert [r["detail"] for r in rows] == [r["name"] for r in rows]
    for r in rows:
        for cell in r.values():
            assert not cell or cell[0] not in "=+-@\t\r", r


# -- issue 19, D4: retention never deletes by the wall clock ------------------------------------


class Clocks:
    """The wall clock and the monotonic clock an AuditLog reads, moved by hand."""

    def __init__(self, wall: float, mono: float = 100.0) -> None:
        self.wall = wall
        self.mono = mono

    def log(self, path: Path, **kw: object) -> AuditLog:
        return AuditLog(path, wall=lambda: self.wall, mono=lambda: self.mono, **kw)  # type: ignore[arg-type]


def test_rows_stamped_in_1970_survive_the_clock_being_set(tmp_path: Path) -> None:
    """D4: a Pi without RTC logs in 1970 until NTP runs; setting the clock deletes nothing."""
    c = Clocks(wall=86400.0 * 3)  # 4 January 1970
    log = c.log(tmp_path / "a.sqlite", max_age_days=30)
    for _ in range(50):
        log.append(DENIED, reason="unknown", clock_synced=False)
    c.wall = T0  # NTP sets the clock: the rows now look 56 years old
    c.mono += 60.0
    assert log.prune() == 0 and len(log) == 50
    log.close()
    assert len(c.log(tmp_path / "a.sqlite", max_age_days=30)) == 50  # nor at the next open


def test_a_clock_jump_deletes_nothing(tmp_path: Path) -> None:
    """D4: +400 days by the wall clock (a bad NTP server) is not 400 days of age."""
    c = Clocks(wall=T0)
    log = c.log(tmp_path / "a.sqlite", max_age_days=365)
    for _ in range(50):
        log.append(GRANTED, name="Alice")
    c.wall = T0 + 400 * 86400
    assert log.prune() == 0 and len(log) == 50
    c.wall = T0 - 400 * 86400  # and back again
    log.append(GRANTED, name="Alice")  # a row "from the past": kept, in order
    assert log.prune() == 0 and len(log) == 51
    log.close()
    assert len(c.log(tmp_path / "a.sqlite", max_age_days=365)) == 51


def test_age_is_running_time_and_survives_restarts(tmp_path: Path) -> None:
    """What ages an entry is the device's running time since it was written (monotonic)."""
    p = tmp_path / "a.sqlite"
    c = Clocks(wall=T0)
    log = c.log(p, max_age_days=30)
    old = [log.append(DENIED, reason="unknown") for _ in range(3)]
    c.mono += 20 * 86400  # 20 days running
    log.close()
    c.mono = 5.0  # a reboot: the monotonic clock starts again
    log = c.log(p, max_age_days=30)
    new = log.append(GRANTED, name="Alice")
    c.mono += 10 * 86400 + 1  # 30 days and a second since the first three
    assert log.prune() == 3
    assert [e.id for e in log.entries()] == [new.id]
    assert [e.id for e in old] == [1, 2, 3]


# -- issue 19, D5: access decisions are never evicted by input noise ------------------------------


def test_flapping_never_evicts_grants_and_denials(tmp_path: Path) -> None:
    """D5: the row bound removes input noise (tamper, contact, exit, refused commands) first."""
    from edge.door.audit import TAMPER

    c = Clocks(wall=T0)
    log = c.log(tmp_path / "a.sqlite", max_rows=200)
    grant = log.append(GRANTED, name="Alice")
    denial = log.append(DENIED, name="Bob", reason="not_allowed")
    for i in range(1000):
        log.append(TAMPER, detail="tamper switch", data={"active": i % 2 == 0})
    log.prune()
    kinds = [e.kind for e in log.entries()]
    assert len(kinds) == 200
    assert {grant.id, denial.id} <= {e.id for e in log.entries()}
    assert kinds.count(TAMPER) == 198
    # Decisions alone beyond the bound: the oldest decisions go (never the newest).
    for _ in range(300):
        log.append(DENIED, reason="unknown")
    log.prune()
    left = log.entries()
    assert len(left) == 200 and all(e.kind == DENIED for e in left)
    assert left[-1].id == 1302


# -- the hash chain and facegate audit --verify -------------------------------------------------


def _chained_log(path: Path, n: int = 20) -> list[int]:
    from edge.door.audit import EXIT

    log = AuditLog(path, wall=lambda: T0)
    ids = []
    for i in range(n):
        kind = (GRANTED, DENIED, EXIT)[i % 3]
        ids.append(log.append(kind, name=f"p{i}", reason="unknown" if kind == DENIED else None).id)
    log.close()
    return ids


def _tamper(path: Path, *sql: str) -> None:
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS audit_append_only")
    for s in sql:
        db.execute(s)
    db.commit()
    db.close()


def test_an_intact_log_verifies(tmp_path: Path) -> None:
    from edge.door.audit import verify_log

    p = tmp_path / "a.sqlite"
    _chained_log(p)
    report = verify_log(p)
    assert report.ok and report.entries == 20 and not report.problems, report


@pytest.mark.parametrize(
    ("sql", "expect"),
    [
        ("UPDATE audit SET name = 'Mallory' WHERE id = 7", "row 7"),  # altered
        (f"UPDATE audit SET ts = {T0 - 86400} WHERE id = 9", "row 9"),  # back-dated
        # Deleted in the middle: the next row of its stream (13) no longer follows (10).
        ("DELETE FROM audit WHERE id = 11", "row 13: does not follow row 10"),
        ("DELETE FROM audit WHERE id <= 2", "anchor"),  # the head, not by retention
        ("DELETE FROM audit WHERE id >= 19", "after row 18"),  # the tail
        (
            "INSERT INTO audit (ts, clock_synced, kind, name, reason, detail, data, up, stream)"
            f" VALUES ({T0 - 999}, 1, 'access_granted', 'Eve', NULL, '', '{{}}', 0, 'access')",
            "row 21",
        ),  # a back-dated row added
    ],
    ids=["altered", "back-dated", "deleted", "head", "tail", "inserted"],
)
def test_verify_finds_altered_deleted_and_back_dated_rows(
    tmp_path: Path, sql: str, expect: str
) -> None:
    from edge.door.audit import verify_log

    p = tmp_path / "a.sqlite"
    _chained_log(p)
    _tamper(p, sql)
    report = verify_log(p)
    assert not report.ok, report
    assert any(expect in line for line in report.problems), report.problems


def test_retention_keeps_the_chain_verifiable(tmp_path: Path) -> None:
    from edge.door.audit import TAMPER, verify_log

    c = Clocks(wall=T0)
    p = tmp_path / "a.sqlite"
    log = c.log(p, max_rows=50, max_age_days=1)
    for i in range(120):
        log.append(TAMPER if i % 4 else GRANTED, name=None if i % 4 else "Alice")
    log.prune()
    c.mono += 86400 / 2
    for _ in range(10):
        log.append(DENIED, reason="unknown")
    c.mono += 86400 / 2 + 1  # the first 120 are now a day old
    assert log.prune() > 0
    log.close()
    report = verify_log(p)
    assert report.ok and report.entries == 10, report
    _tamper(p, "DELETE FROM audit WHERE id = (SELECT MIN(id) FROM audit)")
    assert not verify_log(p).ok


def test_facegate_audit_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    config = tmp_path / "c.toml"
    config.write_text(f'[service]\nstate_dir = "{tmp_path}"\n')
    _chained_log(tmp_path / "audit.sqlite")
    assert main(["audit", "--config", str(config), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "20 entries" in out and "ok" in out
    _tamper(tmp_path / "audit.sqlite", "UPDATE audit SET name = 'Mallory' WHERE id = 7")
    assert main(["audit", "--config", str(config), "--verify"]) == 1
    captured = capsys.readouterr()
    assert "row 7" in captured.out and "Traceback" not in captured.err

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
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    log.close()


def test_retention_by_age_and_by_rows(tmp_path: Path) -> None:
    now = [T0]
    log = AuditLog(tmp_path / "a.sqlite", max_age_days=30, max_rows=5, wall=lambda: now[0])
    for i in range(3):
        log.append(DENIED, reason="unknown", ts=T0 - (40 - i) * 86400)  # 38-40 days old
    for _ in range(4):
        log.append(GRANTED, name="Alice")
    assert log.prune() == 3  # the old ones go first, then there are 4 <= 5
    for _ in range(4):
        log.append(GRANTED, name="Alice")
    assert log.prune() == 3  # 8 rows, the 3 oldest beyond 5 go
    ids = [e.id for e in log.entries()]
    assert ids == [7, 8, 9, 10, 11]  # never reused, never renumbered
    assert log.append(GRANTED, name="Alice").id == 12
    log.close()
    # Retention also runs at open.
    now[0] = T0 + 31 * 86400
    assert len(AuditLog(tmp_path / "a.sqlite", max_age_days=30, wall=lambda: now[0])) == 0


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
    assert rows[0] == ["id", "ts", "clock_synced", "kind", "name", "reason", "detail", "data"]
    assert rows[1] == [
        "1",
        "2026-01-07T10:00:00.000Z",
        "true",
        "access_denied",
        "Bob, Jr.",
        "not_allowed",
        'said "hi"',
        '{"k":1}',
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

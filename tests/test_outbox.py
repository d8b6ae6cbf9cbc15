"""The on-disk outbox: durable sequence numbers, ordering, acks, bound, corruption."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import edge.delivery.outbox as outbox_mod
from edge.delivery.outbox import SEQ_BLOCK, Outbox, OutboxError


def add(box: Outbox, n: int = 1, topic: str = "t/event") -> list[int]:
    seqs = []
    for _ in range(n):
        row, _ = box.append(topic, lambda s: (f"id{s}", f'{{"seq":{s}}}'.encode()))
        seqs.append(row.seq)
    return seqs


def test_sequence_survives_reopen_even_when_empty(tmp_path: Path) -> None:
    p = tmp_path / "ob.sqlite"
    box = Outbox(p)
    assert add(box, 3) == [1, 2, 3]
    assert box.ack([1, 2, 3]) == 3 and len(box) == 0
    box.close()
    box = Outbox(p)
    assert box.next_seq == 4 and add(box) == [4]
    assert p.stat().st_mode & 0o077 == 0  # private: events name people
    box.close()


def test_pending_in_order_after_cursor_and_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "ob.sqlite")
    add(box, 5)
    rows = box.pending(0, 10)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].event_id == "id1" and rows[0].payload == b'{"seq":1}'
    assert rows[0].topic == "t/event"
    assert [r.seq for r in box.pending(2, 2)] == [3, 4]
    assert box.ack([2, 4, 99]) == 2  # 99 was never there
    assert [r.seq for r in box.pending(0, 10)] == [1, 3, 5]
    assert box.oldest_seq() == 1
    box.close()


def test_unacked_events_survive_a_crash(tmp_path: Path) -> None:
    p = tmp_path / "ob.sqlite"
    box = Outbox(p)
    add(box, 3)
    box.ack([1])
    # No close(): like a SIGKILL, the next process opens the same file.
    box2 = Outbox(p)
    assert [r.seq for r in box2.pending()] == [2, 3]
    box2.close()
    box.close()


def test_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "ob.sqlite", max_rows=3)
    add(box, 3)
    box.ack([2])  # room for one: nothing dropped
    _, dropped = box.append("t", lambda s: ("x", b"x"))
    assert dropped == 0 and len(box) == 3
    _, dropped = box.append("t", lambda s: ("y", b"y"))
    assert dropped == 1 and box.dropped == 1
    assert [r.seq for r in box.pending()] == [3, 4, 5]
    box.close()


def test_failed_build_takes_no_sequence_number(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "ob.sqlite")

    def boom(seq: int) -> tuple[str, bytes]:
        raise ValueError("bad payload")

    with pytest.raises(ValueError):
        box.append("t", boom)
    assert add(box) == [1] and len(box) == 1
    box.close()


def test_concurrent_appends_get_dense_unique_numbers(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "ob.sqlite")
    got: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        s = add(box, 50)
        with lock:
            got.extend(s)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == list(range(1, 151))
    box.close()


def _damage(p: Path) -> None:
    """Overwrite every page after the header page with garbage: a really corrupt database."""
    data = bytearray(p.read_bytes())
    assert data[:16] == b"SQLite format 3\x00"
    for i in range(4096, len(data)):
        data[i] = (i * 7 + 13) & 0xFF
    p.write_bytes(bytes(data))


def test_real_corruption_is_moved_aside_and_numbering_continues_without_a_jump(
    tmp_path: Path,
) -> None:
    p = tmp_path / "ob.sqlite"
    box = Outbox(p)
    add(box, 5)
    box.close()  # checkpointed: the events are in the main file
    _damage(p)
    box = Outbox(p)
    aside = list(tmp_path.glob("ob.sqlite.corrupt-*"))
    assert [a.name for a in aside if "-wal" not in a.name and "-shm" not in a.name]
    (seq,) = add(box)
    # Above every number handed out before, and no wall-clock jump.
    assert 5 < seq <= 5 + SEQ_BLOCK + 1
    box.close()


def test_after_corruption_without_reservation_the_readable_numbers_are_used(
    tmp_path: Path,
) -> None:
    p = tmp_path / "ob.sqlite"
    box = Outbox(p)
    add(box, 5)
    box.close()
    (tmp_path / "ob.sqlite.seq").unlink()
    # Damage one page but leave the meta table readable: quick_check fails.
    with sqlite3.connect(p) as db:
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name='outbox'").fetchone()
    data = bytearray(p.read_bytes())
    start = (root - 1) * 4096
    data[start : start + 4096] = bytes(range(256)) * 16
    p.write_bytes(bytes(data))
    box = Outbox(p)
    (seq,) = add(box)
    assert 5 < seq <= 6 + SEQ_BLOCK
    box.close()


def test_a_locked_outbox_is_waited_for_and_never_taken_for_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds a write lock: retry, then a clear error; the file is untouched."""
    p = tmp_path / "ob.sqlite"
    box = Outbox(p)
    add(box, 4)  # four undelivered events
    box.close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(p)!r}, isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(outbox_mod, "LOCK_WAIT_S", 1.0)
        with pytest.raises(OutboxError, match="locked by another process"):
            Outbox(p)
        assert not list(tmp_path.glob("*corrupt*"))
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=10)
    box = Outbox(p)
    assert [r.seq for r in box.pending()] == [1, 2, 3, 4]
    assert add(box) == [5]  # no jump
    box.close()


def test_what_is_not_an_sqlite_file_is_never_renamed(tmp_path: Path) -> None:
    config = tmp_path / "facegate.toml"
    config.write_text("[device]\nid = 'door'\n")
    with pytest.raises(OutboxError, match="not an SQLite database"):
        Outbox(config)
    assert config.read_text() == "[device]\nid = 'door'\n"
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    with pytest.raises(OutboxError, match="not a regular file"):
        Outbox(folder)
    assert (folder / "keep.txt").exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["facegate.toml", "state"]


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        state = tmp_path / "state"
        box = Outbox(state / "ob.sqlite")
        add(box, 2)
        modes = {
            q.name: stat.S_IMODE(q.stat().st_mode)
            for q in state.iterdir()
            if q.name.startswith("ob.sqlite")
        }
        box.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert {"ob.sqlite", "ob.sqlite-wal", "ob.sqlite-shm"} <= set(modes)
    assert all(m == 0o600 for m in modes.values()), modes


def test_storage_errors_are_counted_never_raised(tmp_path: Path) -> None:
    """An I/O failure while storing (here: a read-only database) loses the event, counted."""
    p = tmp_path / "ob.sqlite"
    box = Outbox(p)
    add(box, 2)
    box._db.execute("PRAGMA query_only=1")  # type: ignore[union-attr]
    row, dropped = box.append("t", lambda s: ("x", b"x"))
    assert row.seq == 3 and dropped == 1
    assert box.lost == 1 and box.dropped == 1 and box.last_error
    box._db.execute("PRAGMA query_only=0")  # type: ignore[union-attr]
    assert add(box) == [4]  # the lost number stays a gap
    assert box.dropped == 1
    box.close()


def test_closed_and_invalid(tmp_path: Path) -> None:
    with pytest.raises(OutboxError):
        Outbox(tmp_path / "x.sqlite", max_rows=0)
    box = Outbox(tmp_path / "x.sqlite")
    box.close()
    box.close()
    with pytest.raises(OutboxError):
        len(box)

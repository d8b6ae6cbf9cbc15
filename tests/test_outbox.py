"""The on-disk outbox: durable sequence numbers, ordering, acks, bound, corruption."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edge.outbox import Outbox, OutboxError


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


def test_corrupt_database_is_moved_aside_and_numbers_keep_increasing(tmp_path: Path) -> None:
    p = tmp_path / "ob.sqlite"
    p.write_bytes(b"this is not a database" * 100)
    box = Outbox(p)
    aside = list(tmp_path.glob("ob.sqlite.corrupt-*"))
    assert len(aside) == 1
    (seq,) = add(box)
    assert seq >= int(time.time() * 1000) - 60_000  # continues from the clock
    box.close()


def test_closed_and_invalid(tmp_path: Path) -> None:
    with pytest.raises(OutboxError):
        Outbox(tmp_path / "x.sqlite", max_rows=0)
    box = Outbox(tmp_path / "x.sqlite")
    box.close()
    box.close()
    with pytest.raises(OutboxError):
        len(box)

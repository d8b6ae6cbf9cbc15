"""The unknown-visitor ring (edge.review.ring): encrypted at rest, bounded by count and age with
expired visits gone from disk, recurring strangers as one entry, and whole after a ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from broker import wait_for

from edge.errors import ReviewError
from edge.review.cluster import assign, centroids
from edge.review.ring import MAGIC, ReviewRing

KEY = b"r" * 32
ROOT = Path(__file__).resolve().parents[1]


def _ring(folder: Path, key: bytes = KEY, **kw: float) -> ReviewRing:
    args: dict[str, float] = {"max_visits": 50, "max_age_s": 7 * 86400.0, "cluster_threshold": 0.5}
    args.update(kw)
    return ReviewRing(
        folder,
        key,
        max_visits=int(args["max_visits"]),
        max_age_s=args["max_age_s"],
        cluster_threshold=args["cluster_threshold"],
    )


def _emb(seed: int, near: np.ndarray | None = None, spread: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=128) if near is None else near + spread * rng.normal(size=128)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _add(ring: ReviewRing, e: np.ndarray, ts: float, jpeg: bytes = b"\xff\xd8crop\xff\xd9") -> int:
    return ring.add(e, jpeg, distance=0.8, track_length=4, model_sha256="m" * 64, ts=ts).id


def test_centroid_assignment_formula() -> None:
    a, b = _emb(1), _emb(2)
    c = centroids([(1, a), (1, _emb(3, a)), (7, b)])
    s = a + _emb(3, a)
    assert np.allclose(c[1], s / np.linalg.norm(s), atol=1e-6)
    assert assign(_emb(4, a), c, 0.3) == 1
    assert assign(_emb(5, b), c, 0.3) == 7
    assert assign(_emb(6), c, 0.3) is None  # a new stranger
    assert assign(a, {}, 0.3) is None


def test_visits_are_encrypted_at_rest_and_bound_to_their_id(tmp_path: Path) -> None:
    ring = _ring(tmp_path / "u")
    e = _emb(1)
    jpeg = b"\xff\xd8" + b"FACE-PIXELS" * 20 + b"\xff\xd9"
    t0 = time.time()
    vid = ring.add(e, jpeg, distance=0.71, track_length=5, model_sha256="m" * 64, ts=t0).id
    (path,) = [p for p in (tmp_path / "u").iterdir() if p.suffix == ".fgu"]
    blob = path.read_bytes()
    assert blob[:4] == MAGIC
    assert b"FACE-PIXELS" not in blob and e.tobytes()[:16] not in blob  # neither crop nor embedding
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "u").stat().st_mode & 0o777) == "0o700"
    (v,) = _ring(tmp_path / "u").visits()
    assert v.id == vid and v.jpeg == jpeg and np.allclose(v.embedding, e) and v.ts == t0
    # Another key opens nothing; a visit renamed to another id does not open either.
    other = _ring(tmp_path / "u", key=b"x" * 32)
    assert other.visits() == [] and list(other.unreadable) == [vid]
    path.rename(path.with_name("u00000099.fgu"))
    moved = _ring(tmp_path / "u")
    assert moved.visits() == [] and "cannot decrypt" in moved.unreadable[99]
    with pytest.raises(ReviewError):
        ReviewRing(tmp_path / "u", b"short", max_visits=1, max_age_s=1, cluster_threshold=0.5)


def test_recurring_stranger_is_one_entry_with_stable_ids(tmp_path: Path) -> None:
    ring = _ring(tmp_path / "u")
    alice, bob = _emb(10), _emb(20)
    t0 = time.time() - 1000
    first = _add(ring, alice, t0 + 100.0)
    _add(ring, bob, t0 + 110.0)
    for i in range(5):  # the same stranger comes back five more times
        _add(ring, _emb(30 + i, alice), t0 + 200.0 + i)
    entries = {s.id: s for s in _ring(tmp_path / "u").strangers()}
    assert len(entries) == 2 and len(entries[first].visits) == 6
    assert entries[first].first_seen == t0 + 100.0 and entries[first].last_seen == t0 + 204.0
    summary = entries[first].summary()
    assert summary["id"] == first and summary["visits"] == 6


def test_retention_deletes_expired_and_excess_visits_from_disk(tmp_path: Path) -> None:
    folder = tmp_path / "u"
    now = time.time()
    ring = _ring(folder, max_visits=3, max_age_s=86400.0)
    old = [_add(ring, _emb(i), now - 3 * 86400 + i) for i in range(2)]  # past the age limit
    assert ring.ids() == []  # each add prunes: expired the moment they were stored
    ids = [_add(ring, _emb(10 + i), now - 100 + i) for i in range(5)]
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ".fgu")
    assert names == [f"u{i:08d}.fgu" for i in ids[-3:]]  # the newest 3 remain on disk
    assert not set(old) & set(ring.ids())
    # Time passes: everything expires and leaves the disk.
    assert ring.prune(now=now + 2 * 86400) == 3
    assert [p for p in folder.iterdir() if p.suffix == ".fgu"] == []
    # Ids are never handed out twice, even once every visit is gone.
    assert _add(ring, _emb(99), now) > max(ids)


def test_forget_deletes_every_visit_of_an_entry(tmp_path: Path) -> None:
    ring = _ring(tmp_path / "u")
    a, t0 = _emb(1), time.time()
    first = _add(ring, a, t0)
    _add(ring, _emb(2, a), t0 + 1)
    keep = _add(ring, _emb(3), t0 + 2)
    assert ring.forget(first) == 2
    assert ring.ids() == [keep]
    with pytest.raises(ReviewError, match="no unknown visitor"):
        ring.forget(first)


WRITER = """
import sys, numpy as np
from edge.review.ring import ReviewRing
ring = ReviewRing(__import__("pathlib").Path(sys.argv[1]), b"r" * 32, max_visits=100000,
                  max_age_s=1e9, cluster_threshold=0.5)
rng = np.random.default_rng(0)
jpeg = b"\\xff\\xd8" + bytes(200_000) + b"\\xff\\xd9"  # a big crop: a long write to be killed in
while True:
    v = rng.normal(size=128).astype(np.float32)
    ring.add(v / np.linalg.norm(v), jpeg, distance=0.9, track_length=4, model_sha256="m" * 64)
"""


def test_a_writer_killed_with_sigkill_leaves_the_ring_whole(tmp_path: Path) -> None:
    folder = tmp_path / "u"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], cwd=ROOT)
    try:
        assert wait_for(
            lambda: (
                folder.is_dir() and len([p for p in folder.iterdir() if p.suffix == ".fgu"]) >= 8
            ),
            120,
        ), "the writer stored nothing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    ring = _ring(folder)
    visits = ring.visits()
    assert len(visits) >= 8 and ring.unreadable == {}  # every visit on disk opens, whole
    assert all(len(v.jpeg) == 200_004 for v in visits)
    # A temporary file the killed writer may have left is no visit; once stale it is removed.
    leftovers = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    (folder / ".u99999999.fgu.killed.tmp").write_bytes(b"half a visit")
    leftovers.append(folder / ".u99999999.fgu.killed.tmp")
    for p in leftovers:
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    after = _add(ring, _emb(5), time.time())
    assert after > max(v.id for v in visits)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert len(_ring(folder).visits()) == len(visits) + 1

"""The unknown-visitor ring: the last visits of strangers, encrypted at rest, bounded, crash-safe.

One file per visit (one unknown track) in ``review.path`` (a 0700 folder):
``u<id>.fgu``, written once with :func:`edge.files.write_atomic` (temporary
file, fsync, rename, folder fsync), never rewritten. A process killed at any
instant (``kill -9``, a power cut) therefore leaves every visit either whole
or absent; a temporary file it leaves behind is not a visit and is removed
later (:func:`edge.files.remove_stale_tmp`'s age rule).

A visit file::

    b"FGU1" | nonce (12 bytes) | AES-256-GCM(payload), associated data b"FGU1" + id (8 bytes, BE)
    payload = len(header) (4 bytes, BE) | header (UTF-8 JSON) | the best crop (JPEG)

The header holds the id, the time (``ts``, wall clock), the cluster, the
distance to the nearest enrolled person, the track's length, the embedder's
sha256 and the track's mean embedding (float32, base64). The id is
authenticated, so a file renamed to another id does not open. The key is
``HKDF-SHA256(secret, info="facegate-review-v1")`` of ``review.key_*`` (or the
gallery key when that is unset), so it never equals the gallery's own key.

Bounds (:meth:`ReviewRing.prune`, run at every visit and from the daemon's
loop): visits older than ``review.max_age_days`` are deleted, then the oldest
beyond ``review.max_visits``. Deleting is ``unlink`` and a folder fsync; the
bytes were encrypted, and forgetting the key forgets them all.

Strangers who come back are one entry: each visit is assigned, when it
arrives, to the cluster of the most similar earlier visits
(:mod:`edge.review.cluster`); an entry is a cluster, named by its first
visit's id. ``facegate unknowns`` lists, shows, enrols and forgets entries.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edge.errors import ReviewError
from edge.files import STALE_TMP_S, exists, read_bounded, write_atomic
from edge.numerics import l2_normalize
from edge.review.cluster import assign, centroids

if TYPE_CHECKING:
    from edge.config import Config

log = logging.getLogger("facegate.review")

MAGIC = b"FGU1"
SUFFIX = ".fgu"
NEXT_FILE = "next-id"
MAX_VISIT_BYTES = 4 * 1024 * 1024
_NAME = re.compile(r"^u(\d{1,12})\.fgu$")


def derive_key(secret: bytes) -> bytes:
    """The ring's AES-256 key: ``HKDF-SHA256(secret, info="facegate-review-v1")``."""
    if len(secret) < 16:
        raise ReviewError(f"review key too short ({len(secret)} bytes, need 16+)")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"facegate-review-v1").derive(
        secret
    )


@dataclass(frozen=True)
class Visit:
    """One unknown track: when, how far from everyone enrolled, its embedding and best crop."""

    id: int
    ts: float
    cluster: int
    distance: float
    track_length: int
    model_sha256: str
    embedding: npt.NDArray[np.float32]
    jpeg: bytes

    def summary(self) -> dict[str, object]:
        """The visit for ``unknowns show`` (no embedding, no picture)."""
        return {
            "visit": self.id,
            "ts": round(self.ts, 3),
            "distance": round(self.distance, 4),
            "track_length": self.track_length,
        }


@dataclass(frozen=True)
class Stranger:
    """An entry of the ring: the visits of one cluster, oldest first."""

    id: int
    visits: tuple[Visit, ...]

    @property
    def first_seen(self) -> float:
        return self.visits[0].ts

    @property
    def last_seen(self) -> float:
        return self.visits[-1].ts

    def summary(self) -> dict[str, object]:
        """One JSON line for ``unknowns list``."""
        return {
            "id": self.id,
            "visits": len(self.visits),
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "nearest_distance": round(min(v.distance for v in self.visits), 4),
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _aad(visit_id: int) -> bytes:
    return MAGIC + struct.pack(">Q", visit_id)


def encode_visit(v: Visit, key: bytes) -> bytes:
    """A visit as its encrypted file (see the module docstring)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = {
        "id": v.id,
        "ts": v.ts,
        "cluster": v.cluster,
        "distance": v.distance,
        "track_length": v.track_length,
        "model_sha256": v.model_sha256,
        "embedding": base64.b64encode(np.asarray(v.embedding, "<f4").tobytes()).decode(),
    }
    h = json.dumps(header, sort_keys=True).encode()
    payload = struct.pack(">I", len(h)) + h + v.jpeg
    nonce = os.urandom(12)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, payload, _aad(v.id))


def decode_visit(blob: bytes, visit_id: int, key: bytes) -> Visit:
    """The visit in an encrypted file; ReviewError when it does not open or is malformed."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(blob) < 4 + 12 + 16 or blob[:4] != MAGIC:
        raise ReviewError(f"visit {visit_id}: not a review entry (bad header)")
    try:
        payload = AESGCM(key).decrypt(blob[4:16], blob[16:], _aad(visit_id))
        (n,) = struct.unpack(">I", payload[:4])
        h = json.loads(payload[4 : 4 + n])
        emb = np.frombuffer(base64.b64decode(h["embedding"], validate=True), "<f4")
        v = Visit(
            int(h["id"]), float(h["ts"]), int(h["cluster"]), float(h["distance"]),
            int(h["track_length"]), str(h["model_sha256"]), emb.astype(np.float32),
            payload[4 + n :],
        )  # fmt: skip
    except InvalidTag:
        raise ReviewError(f"visit {visit_id}: cannot decrypt (wrong key or damaged)") from None
    except (KeyError, TypeError, ValueError, struct.error) as e:
        raise ReviewError(f"visit {visit_id}: malformed ({type(e).__name__})") from None
    if v.id != visit_id or not np.all(np.isfinite(v.embedding)):
        raise ReviewError(f"visit {visit_id}: malformed (id or embedding)")
    return v


class ReviewRing:
    """The ring on disk (one folder); safe to use from the daemon and the CLI at once.

    Only the daemon adds visits; ``facegate unknowns`` reads and deletes. A
    visit deleted by one is gone for the other at its next look (the folder
    is listed each time; visits read before are kept in memory by name).
    """

    def __init__(
        self,
        folder: Path,
        key: bytes,
        *,
        max_visits: int,
        max_age_s: float,
        cluster_threshold: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = Path(folder)
        self._key = derive_key(key)
        self.max_visits = max_visits
        self.max_age_s = max_age_s
        self.cluster_threshold = cluster_threshold
        self.clock = clock
        self.unreadable: dict[int, str] = {}
        """Visits that do not open (wrong key, damaged), with why: listed, never guessed at."""
        self._cache: dict[int, Visit] = {}

    # -- reading ------------------------------------------------------------------------
    def _path(self, visit_id: int) -> Path:
        return self.folder / f"u{visit_id:08d}{SUFFIX}"

    def ids(self) -> list[int]:
        """The ids of the visits on disk, oldest first."""
        if not exists(self.folder, "review folder", ReviewError):
            return []
        try:
            names = os.listdir(self.folder)
        except OSError as e:
            raise ReviewError(f"{self.folder}: cannot list ({e.strerror or e})") from None
        return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)

    def visits(self) -> list[Visit]:
        """Every visit that opens, oldest first (the others in :attr:`unreadable`)."""
        ids = self.ids()
        present = set(ids)
        self._cache = {k: v for k, v in self._cache.items() if k in present}
        self.unreadable = {k: why for k, why in self.unreadable.items() if k in present}
        for i in ids:
            if i in self._cache or i in self.unreadable:
                continue
            try:
                blob = read_bounded(self._path(i), MAX_VISIT_BYTES, "review entry", ReviewError)
                self._cache[i] = decode_visit(blob, i, self._key)
            except ReviewError as e:
                if self._path(i).exists():  # not deleted in the meantime
                    self.unreadable[i] = str(e)
                    log.warning("review: %s", e)
        return [self._cache[i] for i in ids if i in self._cache]

    def strangers(self) -> list[Stranger]:
        """The entries: visits grouped by cluster, most recently seen first."""
        groups: dict[int, list[Visit]] = {}
        for v in self.visits():
            groups.setdefault(v.cluster, []).append(v)
        out = [
            Stranger(k, tuple(sorted(vs, key=lambda v: (v.ts, v.id)))) for k, vs in groups.items()
        ]
        return sorted(out, key=lambda s: (-s.last_seen, s.id))

    def stranger(self, entry_id: int) -> Stranger:
        """One entry by id; ReviewError when there is none."""
        for s in self.strangers():
            if s.id == entry_id:
                return s
        raise ReviewError(f"no unknown visitor {entry_id} in {self.folder} (expired or forgotten?)")

    # -- writing ------------------------------------------------------------------------
    def add(
        self,
        embedding: npt.NDArray[np.float32],
        jpeg: bytes,
        *,
        distance: float,
        track_length: int,
        model_sha256: str,
        ts: float | None = None,
    ) -> Visit:
        """Store one unknown visit (clustered with the earlier ones); the ring is pruned after."""
        e = l2_normalize(np.asarray(embedding, np.float32).reshape(-1))
        earlier = [v for v in self.visits() if v.model_sha256 == model_sha256]
        cluster = assign(
            e, centroids((v.cluster, v.embedding) for v in earlier), self.cluster_threshold
        )
        vid = self._next_id()
        visit = Visit(
            vid, self.clock() if ts is None else ts, vid if cluster is None else cluster,
            float(distance), int(track_length), model_sha256, e, bytes(jpeg),
        )  # fmt: skip
        write_atomic(self._path(vid), encode_visit(visit, self._key), "review entry", ReviewError)
        write_atomic(self.folder / NEXT_FILE, f"{vid + 1}\n".encode(), "review id", ReviewError)
        self._cache[vid] = visit
        self.prune()
        return visit

    def _next_id(self) -> int:
        """One past the highest id ever handed out (the counter file) or on disk."""
        n = 1
        counter = self.folder / NEXT_FILE
        if exists(counter, "review id", ReviewError):
            text = read_bounded(counter, 32, "review id", ReviewError).decode("ascii", "replace")
            if text.strip().isdigit():
                n = int(text.strip())
        ids = self.ids()
        return max([n, *(i + 1 for i in ids)])

    def delete(self, visit_ids: list[int]) -> int:
        """Delete visits from disk (unlink, then a folder fsync); how many were there."""
        gone = 0
        for i in visit_ids:
            try:
                os.unlink(self._path(i))
                gone += 1
            except FileNotFoundError:
                continue
            except OSError as e:
                raise ReviewError(f"{self._path(i)}: cannot delete ({e.strerror or e})") from None
            self._cache.pop(i, None)
            self.unreadable.pop(i, None)
        if gone:
            _fsync_dir(self.folder)
        return gone

    def forget(self, entry_id: int) -> int:
        """Delete every visit of an entry; how many (ReviewError when there is no such entry)."""
        s = self.stranger(entry_id)
        return self.delete([v.id for v in s.visits])

    def prune(self, now: float | None = None) -> int:
        """Delete the visits older than ``max_age_s`` and the oldest beyond ``max_visits``.

        A visit that does not open is aged by its file's modification time.
        Returns how many were deleted.
        """
        now = self.clock() if now is None else now
        visits = self.visits()
        old = [v.id for v in visits if now - v.ts > self.max_age_s]
        for i in list(self.unreadable):
            try:
                if now - self._path(i).stat().st_mtime > self.max_age_s:
                    old.append(i)
            except OSError:
                continue
        keep = [v for v in visits if v.id not in set(old)]
        excess = [v.id for v in keep[: max(0, len(keep) - self.max_visits)]]
        removed = self.delete(old + excess)
        _remove_stale_tmp(self.folder)  # temporary files of a killed writer
        if removed:
            log.info("review: %d visit(s) past retention deleted", removed)
        return removed


def ring_for_config(cfg: Config, cluster_threshold: float = 0.0) -> ReviewRing:
    """The configured ring: ``review.path``, the review key (else the gallery key), the bounds.

    ``cluster_threshold``: the embedder's calibrated threshold (only adding
    visits needs it). ReviewError when no key is configured: the ring is
    never written in the clear.
    """
    key = cfg.review.key.read(cfg.base_dir) or cfg.gallery.key.read(cfg.base_dir)
    if key is None:
        raise ReviewError(
            "review: the ring of unknown visitors is encrypted and no key is configured "
            "(review.key_file / review.key_credential, or a gallery key)"
        )
    return ReviewRing(
        cfg.review_dir,
        key,
        max_visits=cfg.review.max_visits,
        max_age_s=cfg.review.max_age_days * 86400.0,
        cluster_threshold=cluster_threshold,
    )


def _remove_stale_tmp(folder: Path, older_than_s: float = STALE_TMP_S) -> int:
    """Delete the atomic writes' temporary files (``.<name>.*.tmp``) a killed writer left.

    Only those older than ``older_than_s``: a younger one may be another
    process's write in progress (the daemon adding a visit while
    ``facegate unknowns`` prunes).
    """
    removed = 0
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "MAGIC",
    "ReviewError",
    "ReviewRing",
    "Stranger",
    "Visit",
    "decode_visit",
    "derive_key",
    "encode_visit",
    "ring_for_config",
]

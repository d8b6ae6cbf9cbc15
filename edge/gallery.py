"""The on-device gallery: a few people, several embeddings each, encrypted at rest.

File layout (``.fgg``)::

    b"FGG1" | mode (1 byte) | body
    mode 0 (plain):     sha256(payload) (32 bytes) | payload
    mode 1 (AES-GCM):   nonce (12 bytes) | AES-256-GCM(payload), header as associated data

``payload`` is UTF-8 JSON: the embedder's manifest sha256 (a gallery made by
another model is refused: its distances would be meaningless), the embedding
size, and per person the embeddings (float32, base64) and when they were
added. The key is derived from the key file or systemd credential with
HKDF-SHA256, so any secret of 16+ bytes works. Writes are atomic (temporary
file, fsync, rename, directory fsync) with mode 0600: a crash mid-write
leaves the old gallery intact.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edge.errors import GalleryError
from edge.numerics import l2_normalize

if TYPE_CHECKING:
    from edge.config import Config

MAGIC = b"FGG1"
MODE_PLAIN = 0
MODE_AESGCM = 1
MIN_KEY_BYTES = 16
_GROUP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_group(group: str) -> str:
    """A valid group name (1-64 of ``A-Z a-z 0-9 _ . -``), or GalleryError."""
    if not _GROUP_RE.match(group):
        raise GalleryError(f"invalid group name {group!r} (1-64 letters, digits, '_', '.', '-')")
    return group


def derive_key(secret: bytes) -> bytes:
    """A 256-bit AES key from a secret: ``HKDF-SHA256(secret, info="facegate-gallery-v1")``."""
    if len(secret) < MIN_KEY_BYTES:
        raise GalleryError(f"gallery key too short ({len(secret)} bytes, need {MIN_KEY_BYTES}+)")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"facegate-gallery-v1"
    ).derive(secret)


@dataclass(frozen=True)
class Person:
    """One enrolled person: unit-length embeddings (one per enrolment image)."""

    name: str
    embeddings: npt.NDArray[np.float32]
    added: float
    groups: tuple[str, ...] = ()  # person metadata: the door's allow list names groups


class Gallery:
    """People and their embeddings, tied to one embedder model by its sha256."""

    def __init__(self, model_sha256: str, embedding_size: int = 0) -> None:
        self.model_sha256 = model_sha256
        self.embedding_size = embedding_size
        self._people: dict[str, Person] = {}

    # -- contents ---------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return sorted(self._people)

    def __len__(self) -> int:
        return len(self._people)

    def __contains__(self, name: object) -> bool:
        return name in self._people

    def person(self, name: str) -> Person:
        return self._people[name]

    def add(self, name: str, embeddings: npt.NDArray[np.float32]) -> None:
        """Add embeddings (N, D) to a person, creating them if new."""
        name = name.strip()
        if not name or len(name) > 128 or any(c in name for c in "\n\r\t\0"):
            raise GalleryError(f"invalid person name {name!r}")
        e = l2_normalize(np.atleast_2d(np.asarray(embeddings, dtype=np.float32)))
        if self.embedding_size == 0:
            self.embedding_size = int(e.shape[1])
        if e.shape[1] != self.embedding_size:
            raise GalleryError(
                f"embedding size {e.shape[1]} does not match the gallery's {self.embedding_size}"
            )
        old = self._people.get(name)
        if old is not None:
            e = np.vstack([old.embeddings, e])
        self._people[name] = Person(
            name, e, old.added if old else time.time(), old.groups if old else ()
        )

    def groups(self, name: str) -> tuple[str, ...]:
        """The groups a person belongs to (empty when none, or not enrolled)."""
        p = self._people.get(name)
        return p.groups if p is not None else ()

    def set_groups(self, name: str, groups: list[str] | tuple[str, ...]) -> None:
        """Replace a person's groups (sorted, without duplicates)."""
        p = self._people.get(name)
        if p is None:
            raise GalleryError(f"no person named {name!r} in the gallery")
        clean = tuple(sorted({check_group(g) for g in groups}))
        self._people[name] = Person(p.name, p.embeddings, p.added, clean)

    def remove(self, name: str) -> None:
        if name not in self._people:
            raise GalleryError(f"no person named {name!r} in the gallery")
        del self._people[name]

    def matrix(self) -> tuple[list[str], npt.NDArray[np.float32], npt.NDArray[np.intp]]:
        """(names, embeddings (M, D) grouped by person, index of each person's first row)."""
        names = self.names
        if not names:
            return [], np.zeros((0, max(self.embedding_size, 1)), np.float32), np.zeros(0, np.intp)
        blocks = [self._people[n].embeddings for n in names]
        starts = np.cumsum([0] + [len(b) for b in blocks[:-1]]).astype(np.intp)
        return names, np.ascontiguousarray(np.vstack(blocks), dtype=np.float32), starts

    # -- persistence ------------------------------------------------------
    def _payload(self) -> bytes:
        people: dict[str, Any] = {}
        for n in self.names:
            p = self._people[n]
            people[n] = {
                "added": p.added,
                "count": len(p.embeddings),
                "embeddings": base64.b64encode(p.embeddings.astype("<f4").tobytes()).decode(),
            }
            if p.groups:
                people[n]["groups"] = list(p.groups)
        doc = {
            "version": 1,
            "model_sha256": self.model_sha256,
            "embedding_size": self.embedding_size,
            "people": people,
        }
        return json.dumps(doc, sort_keys=True).encode()

    def save(self, path: Path | str, key: bytes | None = None) -> None:
        """Write atomically (tmp, fsync, rename, dir fsync), mode 0600, encrypted if ``key``."""
        path = Path(path)
        payload = self._payload()
        if key is None:
            blob = MAGIC + bytes([MODE_PLAIN]) + hashlib.sha256(payload).digest() + payload
        else:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            header = MAGIC + bytes([MODE_AESGCM])
            nonce = os.urandom(12)
            blob = header + nonce + AESGCM(derive_key(key)).encrypt(nonce, payload, header)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: Path | str, key: bytes | None, model_sha256: str) -> Gallery:
        """Read a gallery; GalleryError if corrupt, tampered, wrong key or another model's."""
        path = Path(path)
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise GalleryError(f"{path}: cannot read gallery ({e.strerror or e})") from None
        if len(blob) < 5 or blob[:4] != MAGIC:
            raise GalleryError(f"{path}: not a facegate gallery (bad header)")
        mode, body = blob[4], blob[5:]
        if mode == MODE_PLAIN:
            if key is not None:
                raise GalleryError(
                    f"{path}: gallery is not encrypted but a key is configured; refusing it "
                    "(it may have been replaced). Re-enroll with the key."
                )
            digest, payload = body[:32], body[32:]
            if hashlib.sha256(payload).digest() != digest:
                raise GalleryError(f"{path}: gallery is corrupt (checksum mismatch)")
        elif mode == MODE_AESGCM:
            if key is None:
                raise GalleryError(f"{path}: gallery is encrypted and no key is configured")
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            try:
                payload = AESGCM(derive_key(key)).decrypt(body[:12], body[12:], blob[:5])
            except (InvalidTag, ValueError):
                raise GalleryError(
                    f"{path}: cannot decrypt gallery: wrong key or the file was tampered with"
                ) from None
        else:
            raise GalleryError(f"{path}: unknown gallery mode {mode}")
        try:
            doc = json.loads(payload)
            g = cls(str(doc["model_sha256"]), int(doc["embedding_size"]))
            for name, p in doc["people"].items():
                raw = np.frombuffer(base64.b64decode(p["embeddings"]), dtype="<f4")
                emb = raw.reshape(int(p["count"]), g.embedding_size).astype(np.float32)
                groups = tuple(str(x) for x in p.get("groups", []))
                g._people[name] = Person(name, emb, float(p["added"]), groups)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GalleryError(f"{path}: gallery is corrupt ({type(e).__name__})") from None
        if g.model_sha256 != model_sha256:
            raise GalleryError(
                f"{path}: gallery was made by another model (sha256 {g.model_sha256[:12]}..., "
                f"this model is {model_sha256[:12]}...); re-enroll with this model"
            )
        return g


def gallery_key(cfg: Config) -> bytes | None:
    """The gallery key from the configured key file or systemd credential (or None)."""
    from edge.config import read_secret

    return read_secret(
        cfg.gallery.key_file, cfg.gallery.key_credential, "gallery.key", base_dir=cfg.base_dir
    )


def open_for_config(cfg: Config, model_sha256: str) -> Gallery:
    """The configured gallery; an empty one (for this model) when the file does not exist."""
    path = cfg.resolve(cfg.gallery.path)
    key = gallery_key(cfg)
    if not path.exists():
        return Gallery(model_sha256)
    return Gallery.load(path, key, model_sha256)

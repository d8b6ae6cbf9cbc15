"""The on-device gallery: a few people, several embeddings each, encrypted at rest.

File layout (``.fgg``)::

    b"FGG1" | mode (1 byte) | body
    mode 0 (plain):     sha256(payload) (32 bytes) | payload
    mode 1 (AES-GCM):   nonce (12 bytes) | AES-256-GCM(payload), header as associated data

``payload`` is UTF-8 JSON (``version`` 2): the embedder model's sha256 and the
canonical hash of its whole manifest (:func:`manifest_digest`), a
``generation`` counter, the embedding size, and per person the embeddings
(float32, base64) and when they were added. With a key, all of it is
authenticated by AES-GCM; without one, the checksum only catches accidents.

What a load refuses, each with one line that says what to do:

* a gallery of another model (its distances would be meaningless);
* a gallery enrolled under another manifest of the same model: the
  manifest carries the threshold and the confidence curve, so editing it
  could turn strangers into enrolled people. ``facegate gallery rebind``
  (which needs the key) accepts a new manifest on purpose;
* a gallery whose ``generation`` is below the high-water mark kept beside it
  (``<name>.generation``): an older copy put back would bring removed people
  back. ``--allow-rollback`` accepts it on purpose. The mark defends against
  a file copied back, not against someone who can also rewrite the mark;
* embeddings that are not finite or not of unit length (a forged
  embedding 50 times too long would match everyone).

The key is derived from the key file or systemd credential with HKDF-SHA256,
so any secret of 16+ bytes works. Writes are atomic
(:func:`edge.files.write_atomic`) with mode 0600: a crash mid-write leaves the
old gallery intact, and temporary files of a killed writer are removed on
the next write.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edge.config.values import GROUP_PREFIX, check_group
from edge.errors import GalleryError
from edge.files import exists, read_bounded, write_atomic
from edge.numerics import l2_normalize

if TYPE_CHECKING:
    from edge.config import Config
    from edge.vision.manifest import Manifest

log = logging.getLogger("facegate.gallery")

MAGIC = b"FGG1"
MODE_PLAIN = 0
MODE_AESGCM = 1
MIN_KEY_BYTES = 16
VERSION = 2
MAX_GALLERY_BYTES = 64 * 1024 * 1024
MAX_EMBEDDING_SIZE = 4096
UNIT_TOLERANCE = 1e-3
"""How far from 1 an embedding's length may be after the float32 round trip."""


def derive_key(secret: bytes) -> bytes:
    """A 256-bit AES key from a secret: ``HKDF-SHA256(secret, info="facegate-gallery-v1")``."""
    if len(secret) < MIN_KEY_BYTES:
        raise GalleryError(f"gallery key too short ({len(secret)} bytes, need {MIN_KEY_BYTES}+)")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"facegate-gallery-v1"
    ).derive(secret)


def manifest_digest(manifest: Manifest) -> str:
    """The canonical sha256 of a manifest's content.

    ``sha256(json.dumps(manifest.to_dict(), sort_keys=True, separators=(",", ":")))``:
    independent of key order, whitespace and where the file lies, changed by
    any value that changes (a threshold, a scale, a digit of the calibration).
    """
    text = json.dumps(manifest.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _generation_file(path: Path) -> Path:
    return path.with_name(path.name + ".generation")


def read_high_water(path: Path) -> int:
    """The highest gallery generation seen at ``path`` (0 when none is recorded)."""
    mark = _generation_file(path)
    if not exists(mark, "gallery generation", GalleryError):
        return 0
    text = read_bounded(mark, 64, "gallery generation", GalleryError).decode("ascii", "replace")
    if not text.strip().isdigit():
        raise GalleryError(f"{mark}: not a generation number; refusing the gallery")
    return int(text.strip())


def _raise_high_water(path: Path, generation: int) -> None:
    """Record ``generation`` as the newest seen (readable by the service user: 0644)."""
    write_atomic(
        _generation_file(path),
        f"{generation}\n".encode(),
        "gallery generation",
        GalleryError,
        mode=0o644,
    )


@dataclass(frozen=True)
class Person:
    """One enrolled person: unit-length embeddings (one per enrolment image)."""

    name: str
    embeddings: npt.NDArray[np.float32]
    added: float
    groups: tuple[str, ...] = ()  # person metadata: the door's allow list names groups


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 128 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise GalleryError(f"invalid person name {name[:40]!r}")
    return name


def check_new_name(name: str) -> str:
    """The name of a person about to be enrolled (stripped), or GalleryError.

    1-128 characters, no control characters, and not starting with
    ``group:``, which would read as a group in the door's allow list.
    (Galleries already holding such a name still load: the door never
    matches a person's name against a ``group:`` entry.)
    """
    name = _check_name(name)
    if name.lower().startswith(GROUP_PREFIX):
        raise GalleryError(
            f"invalid person name {name[:40]!r}: {GROUP_PREFIX!r} names a group in door.allow"
        )
    return name


def _check_unit(emb: npt.NDArray[np.float32], what: str) -> None:
    """Refuse embeddings that are not finite unit vectors (forged, or a broken model)."""
    if not np.all(np.isfinite(emb)):
        raise GalleryError(f"{what}: embedding with a non-finite value")
    norms = np.linalg.norm(emb.astype(np.float64), axis=1)
    if norms.size and float(np.max(np.abs(norms - 1.0))) > UNIT_TOLERANCE:
        raise GalleryError(f"{what}: embedding not of unit length (length {norms.max():.3g})")


class Gallery:
    """People and their embeddings, tied to one embedder model and its manifest."""

    def __init__(
        self,
        model_sha256: str,
        embedding_size: int = 0,
        *,
        manifest_sha256: str = "",
        generation: int = 0,
    ) -> None:
        self.model_sha256 = model_sha256
        self.embedding_size = embedding_size
        self.manifest_sha256 = manifest_sha256
        """:func:`manifest_digest` of the embedder manifest it was enrolled under."""
        self.generation = generation
        """Counts the saves of this gallery file (0: never saved)."""
        self._people: dict[str, Person] = {}

    @classmethod
    def for_manifest(cls, manifest: Manifest) -> Gallery:
        """An empty gallery bound to an embedder (its model and its manifest)."""
        return cls(
            manifest.sha256, manifest.embedding_size, manifest_sha256=manifest_digest(manifest)
        )

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
        name = check_new_name(name)
        raw = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        if raw.ndim != 2 or not np.all(np.isfinite(raw)):
            raise GalleryError(f"{name!r}: embeddings must be finite (N, D) vectors")
        e = l2_normalize(raw)
        _check_unit(e, repr(name))
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
    def _payload(self, generation: int) -> bytes:
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
            "version": VERSION,
            "model_sha256": self.model_sha256,
            "manifest_sha256": self.manifest_sha256,
            "generation": generation,
            "embedding_size": self.embedding_size,
            "people": people,
        }
        return json.dumps(doc, sort_keys=True).encode()

    def save(self, path: Path | str, key: bytes | None = None) -> None:
        """Write atomically, mode 0600, encrypted if ``key``; the generation goes up by one.

        The new generation is one above both this gallery's and the high-water
        mark beside the file, and the mark is raised after the file is in place.
        """
        path = Path(path)
        if not self.manifest_sha256:
            raise GalleryError(
                f"{path}: gallery not bound to an embedder manifest (build it with "
                "Gallery.for_manifest); refusing to save it"
            )
        generation = max(self.generation, read_high_water(path)) + 1
        payload = self._payload(generation)
        if key is None:
            blob = MAGIC + bytes([MODE_PLAIN]) + hashlib.sha256(payload).digest() + payload
        else:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            header = MAGIC + bytes([MODE_AESGCM])
            nonce = os.urandom(12)
            blob = header + nonce + AESGCM(derive_key(key)).encrypt(nonce, payload, header)
        write_atomic(path, blob, "gallery", GalleryError)
        self.generation = generation
        _raise_high_water(path, generation)

    @classmethod
    def load(
        cls,
        path: Path | str,
        key: bytes | None,
        model_sha256: str,
        *,
        manifest_sha256: str | None,
        allow_rollback: bool = False,
    ) -> Gallery:
        """Read a gallery; GalleryError if it cannot be trusted (see the module docstring).

        ``manifest_sha256=None`` accepts any manifest (only ``rebind`` does);
        ``allow_rollback`` accepts a generation below the high-water mark.
        """
        path = Path(path)
        blob = read_bounded(path, MAX_GALLERY_BYTES, "gallery", GalleryError)
        payload = _open_blob(path, blob, key)
        g = _parse(path, payload)
        if g.model_sha256 != model_sha256:
            raise GalleryError(
                f"{path}: gallery was made by another model (sha256 {g.model_sha256[:12]}..., "
                f"this model is {model_sha256[:12]}...); re-enroll with this model"
            )
        if manifest_sha256 is not None and g.manifest_sha256 != manifest_sha256:
            was = (
                f"manifest {g.manifest_sha256[:12]}..."
                if g.manifest_sha256
                else "no manifest (an older gallery)"
            )
            raise GalleryError(
                f"{path}: gallery was enrolled under {was}, the embedder's manifest is now "
                f"{manifest_sha256[:12]}... (edited or rebuilt: its threshold decides who is "
                f"let in); if the new manifest is intended, accept it with "
                f"`facegate gallery rebind --gallery {path}` (needs the key)"
            )
        mark = read_high_water(path)
        if g.generation < mark and not allow_rollback:
            raise GalleryError(
                f"{path}: gallery generation {g.generation} is older than the newest seen "
                f"here ({mark}): an old copy put back? If you restored it on purpose, accept it "
                f"with `facegate gallery rebind --allow-rollback --gallery {path}`"
            )
        if g.generation > mark:
            try:
                _raise_high_water(path, g.generation)
            except GalleryError as e:  # a read-only folder: the check above still ran
                log.debug("gallery generation mark not raised: %s", e)
        return g


def _open_blob(path: Path, blob: bytes, key: bytes | None) -> bytes:
    """The payload of a gallery file, checked (plain) or decrypted and authenticated."""
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
        return payload
    if mode == MODE_AESGCM:
        if key is None:
            raise GalleryError(f"{path}: gallery is encrypted and no key is configured")
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            return AESGCM(derive_key(key)).decrypt(body[:12], body[12:], blob[:5])
        except (InvalidTag, ValueError):
            raise GalleryError(
                f"{path}: cannot decrypt gallery: wrong key or the file was tampered with"
            ) from None
    raise GalleryError(f"{path}: unknown gallery mode {mode}")


def _parse(path: Path, payload: bytes) -> Gallery:
    """A gallery from its JSON payload, every value checked."""
    try:
        doc = json.loads(payload)
        version = int(doc.get("version", 1))
        if version not in (1, VERSION):
            raise GalleryError(f"{path}: unknown gallery version {version}")
        size = int(doc["embedding_size"])
        generation = int(doc.get("generation", 0))
        if not 0 <= size <= MAX_EMBEDDING_SIZE or generation < 0:
            raise ValueError("embedding_size or generation out of range")
        g = Gallery(
            str(doc["model_sha256"]),
            size,
            manifest_sha256=str(doc.get("manifest_sha256", "")),
            generation=generation,
        )
        for name, p in dict(doc["people"]).items():
            added = float(p["added"])
            count = int(p["count"])
            if not math.isfinite(added) or count < 1 or size == 0:
                raise ValueError("bad person record")
            raw = np.frombuffer(base64.b64decode(p["embeddings"], validate=True), dtype="<f4")
            emb = raw.reshape(count, size).astype(np.float32)
            _check_unit(emb, f"{path}: person {str(name)[:40]!r}")
            checked = _check_name(str(name))
            groups = tuple(check_group(str(x)) for x in p.get("groups", []))
            g._people[checked] = Person(checked, emb, added, groups)
    except GalleryError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as e:
        raise GalleryError(f"{path}: gallery is corrupt ({type(e).__name__})") from None
    return g


def read_people(path: Path | str, key: bytes | None) -> dict[str, tuple[str, ...]]:
    """Each enrolled name with its groups, read (and authenticated) without the models.

    For ``check-config``, which checks the door's allow list and schedule
    against the gallery; the gallery's binding to an embedder is not checked
    here (``run`` does that).
    """
    p = Path(path)
    g = _parse(p, _open_blob(p, read_bounded(p, MAX_GALLERY_BYTES, "gallery", GalleryError), key))
    return {name: g.groups(name) for name in g.names}


def gallery_key(cfg: Config) -> bytes | None:
    """The gallery key from the configured key file or systemd credential (or None)."""
    return cfg.gallery.key.read(cfg.base_dir)


def _embedder_manifest(cfg: Config, model_sha256: str) -> Manifest:
    """The configured embedder's manifest, which must describe the model ``model_sha256``."""
    from edge.vision.manifest import load_manifest

    manifest = load_manifest(cfg.model_path(cfg.embedder.model))
    if manifest.sha256 != model_sha256:
        raise GalleryError(
            f"{manifest.path}: describes model {manifest.sha256[:12]}..., not the loaded "
            f"{model_sha256[:12]}... (changed since start-up?); restart"
        )
    return manifest


def open_for_config(
    cfg: Config,
    model_sha256: str,
    manifest: Manifest | None = None,
    *,
    allow_rollback: bool = False,
) -> Gallery:
    """The configured gallery; an empty one (bound to this embedder) when the file does not exist.

    ``manifest`` is the embedder's (the one it was loaded with); without it the
    configured embedder's manifest is read again.
    """
    path = cfg.resolve(cfg.gallery.path)
    key = gallery_key(cfg)
    if manifest is None:
        manifest = _embedder_manifest(cfg, model_sha256)
    if not exists(path, "gallery", GalleryError):
        return Gallery.for_manifest(manifest)
    return Gallery.load(
        path,
        key,
        model_sha256,
        manifest_sha256=manifest_digest(manifest),
        allow_rollback=allow_rollback,
    )


def reload_for_config(cfg: Config, current: Gallery) -> Gallery:
    """The configured gallery again, for a running service (SIGHUP, ``reload-gallery``).

    Unlike :func:`open_for_config`, a missing file is an error (the caller
    keeps ``current``): a gallery moved away must not empty the door. The new
    gallery must belong to the same model and manifest as ``current``.
    """
    path = cfg.resolve(cfg.gallery.path)
    if not exists(path, "gallery", GalleryError):
        raise GalleryError(f"{path}: gallery file is missing")
    return Gallery.load(
        path, gallery_key(cfg), current.model_sha256, manifest_sha256=current.manifest_sha256
    )


def rebind(
    path: Path | str, key: bytes | None, manifest: Manifest, *, allow_rollback: bool = False
) -> Gallery:
    """Accept a gallery under a new manifest (and, if allowed, an older generation); save it.

    The key is needed: re-saving authenticates the gallery under the new
    manifest hash. Returns the saved gallery (its generation above every
    earlier one).
    """
    g = Gallery.load(
        path, key, manifest.sha256, manifest_sha256=None, allow_rollback=allow_rollback
    )
    g.manifest_sha256 = manifest_digest(manifest)
    g.save(path, key)
    return g

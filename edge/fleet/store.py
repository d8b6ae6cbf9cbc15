"""What a door keeps of the fleet in ``service.state_dir``: survive a restart, refuse a rollback.

Three files per site, each written atomically (temporary file, fsync,
rename) with mode 0600:

``fleet-<site>.bundle``
    The bundle in force, exactly as it came: ``b"FGB1" | u32 meta length |
    meta JSON ({"applied_at": unix seconds}) | u32 manifest length | the
    signed manifest message | the ciphertext``. Still encrypted under the
    site key; at start it is checked again like a new bundle (signature,
    site, model, chunks, decryption), so a file swapped on disk is refused.
``fleet-<site>.version``
    The highest version ever applied here: the rollback floor. A manifest
    below it is refused as a replay, also after a restart; a held bundle
    below it (an old file put back) is not loaded.
``fleet-<site>.confirmed``
    With ``fleet.max_age_s`` only: the wall-clock time the door last knew its
    gallery was current (written while synchronised, at most every
    ``max_age_s / 4``), so the age survives a restart.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import FleetError
from edge.files import exists, read_bounded, write_atomic
from edge.fleet.bundle import (
    MAX_BUNDLE_BYTES,
    MAX_MANIFEST_BYTES,
    BundleRefused,
    ManifestInfo,
    check_model,
    open_bundle,
    read_manifest,
)

if TYPE_CHECKING:
    from edge.fleet.keys import DoorKeys
    from edge.identity.gallery import Gallery

log = logging.getLogger("facegate.fleet")

MAGIC = b"FGB1"


@dataclass(frozen=True)
class Held:
    """The bundle a door holds: its manifest, its gallery, when it was applied (wall clock)."""

    info: ManifestInfo
    gallery: Gallery
    applied_at: float
    chunks: tuple[bytes, ...] = ()


class FleetStore:
    """The held bundle, the rollback floor and the last confirmation of one site."""

    def __init__(self, state_dir: Path, site: str) -> None:
        self.bundle_path = state_dir / f"fleet-{site}.bundle"
        self.version_path = state_dir / f"fleet-{site}.version"
        self.confirmed_path = state_dir / f"fleet-{site}.confirmed"
        self.site = site

    # -- the rollback floor ------------------------------------------------------------
    def floor(self) -> int:
        """The highest version applied here (0: none)."""
        text = self._read_small(self.version_path, "fleet version")
        if text is None:
            return 0
        if not text.isdigit():
            raise FleetError(f"{self.version_path}: not a version number")
        return int(text)

    def raise_floor(self, version: int) -> None:
        if version > self.floor():
            write_atomic(self.version_path, f"{version}\n".encode(), "fleet version", FleetError)

    # -- the last confirmation (max_age_s) ----------------------------------------------
    def confirmed(self) -> float | None:
        """When the door last knew its gallery was current (wall clock), or None."""
        text = self._read_small(self.confirmed_path, "fleet confirmation")
        try:
            value = float(text) if text is not None else None
        except ValueError:
            return None
        return value if value is not None and math.isfinite(value) else None

    def confirm(self, wall: float) -> None:
        write_atomic(self.confirmed_path, f"{wall:.3f}\n".encode(), "fleet time", FleetError)

    def _read_small(self, path: Path, what: str) -> str | None:
        if not exists(path, what, FleetError):
            return None
        return read_bounded(path, 64, what, FleetError).decode("ascii", "replace").strip()

    # -- the held bundle -----------------------------------------------------------------
    def save(self, info: ManifestInfo, chunks: Sequence[bytes], applied_at: float) -> None:
        """Keep a bundle as the one in force (and raise the floor to its version)."""
        meta = json.dumps({"applied_at": round(applied_at, 3)}).encode()
        blob = b"".join(
            [
                MAGIC,
                struct.pack(">I", len(meta)),
                meta,
                struct.pack(">I", len(info.message)),
                info.message,
                *chunks,
            ]
        )
        write_atomic(self.bundle_path, blob, "fleet bundle", FleetError)
        self.raise_floor(info.version)

    def load(self, keys: DoorKeys, model_sha256: str, manifest_sha256: str) -> Held | None:
        """The held bundle, checked like a new one; None when there is none or it is refused.

        A refused file (damaged, swapped, another model, below the floor) is
        logged and left in place; the door starts without it and takes the
        broker's bundle (at or above the floor) when it connects.
        """
        if not exists(self.bundle_path, "fleet bundle", FleetError):
            return None
        try:
            held = self._load(keys, model_sha256, manifest_sha256)
        except (BundleRefused, FleetError) as e:
            log.error(
                "fleet: the held bundle %s is refused (%s); starting without it",
                self.bundle_path,
                e,
            )
            return None
        floor = self.floor()
        if held.info.version < floor:
            log.error(
                "fleet: the held bundle %s is version %d, below the newest applied here (%d): "
                "an old copy put back? starting without it",
                self.bundle_path,
                held.info.version,
                floor,
            )
            return None
        return held

    def _load(self, keys: DoorKeys, model_sha256: str, manifest_sha256: str) -> Held:
        blob = read_bounded(
            self.bundle_path,
            MAX_BUNDLE_BYTES + MAX_MANIFEST_BYTES + 4096,
            "fleet bundle",
            FleetError,
        )
        try:
            if blob[:4] != MAGIC:
                raise ValueError("bad header")
            (n,) = struct.unpack(">I", blob[4:8])
            meta = json.loads(blob[8 : 8 + n])
            applied_at = float(meta["applied_at"])
            at = 8 + n
            (m,) = struct.unpack(">I", blob[at : at + 4])
            message, ciphertext = blob[at + 4 : at + 4 + m], blob[at + 4 + m :]
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise FleetError(f"damaged ({e})") from None
        info = read_manifest(message, keys.public_keys, site=self.site)
        check_model(info, model_sha256, manifest_sha256)
        step = info.chunk_bytes
        chunks = tuple(ciphertext[i : i + step] for i in range(0, len(ciphertext), step))
        gallery = open_bundle(info, chunks, keys.site_key)
        return Held(info, gallery, applied_at, chunks)


__all__ = ["MAGIC", "FleetStore", "Held"]

"""Shared pieces of the fleet tests: keys, galleries, bundles and a stand-in link.

No broker here: :class:`FakeLink` records what the door's state machine
subscribes to, and the tests hand it messages as a broker would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.fleet.bundle import Bundle, Revocation, build_bundle
from edge.fleet.keys import AdminKeys, DoorKeys, derive_site_key, generate, load_public_keys
from edge.fleet.keys import load_signing_key as _load_signing
from edge.identity.gallery import Gallery

MODEL = "m" * 64
MANIFEST = "d" * 64
SIZE = 8
SITE = "hq"


def gallery(names: list[str], per_person: int = 2, seed: int = 0) -> Gallery:
    """A gallery of ``names`` with random unit embeddings, bound to the test model."""
    rng = np.random.default_rng(seed)
    g = Gallery(MODEL, SIZE, manifest_sha256=MANIFEST)
    for n in names:
        g.add(n, rng.normal(size=(per_person, SIZE)).astype(np.float32))
    return g


def keys(folder: Path, prefix: str = "fleet") -> tuple[AdminKeys, DoorKeys]:
    """A fresh key set written by ``generate`` (as ``facegate fleet keygen`` does)."""
    files = generate(folder, prefix)
    site = derive_site_key(files.site.read_bytes().rstrip(b"\n"))
    admin = AdminKeys(site, _load_signing(files.signing.read_bytes()))
    door = DoorKeys(site, tuple(load_public_keys(files.public.read_bytes())))
    return admin, door


def bundle(
    admin: AdminKeys,
    names: list[str],
    version: int,
    *,
    site: str = SITE,
    revoked: tuple[Revocation, ...] = (),
    chunk_bytes: int = 64,
    model: str = MODEL,
) -> Bundle:
    g = gallery(names)
    g.model_sha256 = model
    return build_bundle(
        g,
        site=site,
        version=version,
        keys=admin,
        revoked=revoked,
        created=1767323045.0,
        chunk_bytes=chunk_bytes,
    )


class FakeLink:
    """Subscriptions as a broker would see them; mids count up from 1."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.mid = 0

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> int | None:
        self.subscribed.append(topic_filter)
        self.mid += 1
        return self.mid

    def unsubscribe(self, topic_filter: str) -> int | None:
        self.unsubscribed.append(topic_filter)
        return None

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> object:
        return None


__all__ = ["MANIFEST", "MODEL", "SITE", "SIZE", "FakeLink", "bundle", "gallery", "keys"]

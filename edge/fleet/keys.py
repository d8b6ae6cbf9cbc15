"""The fleet's keys: the admin's Ed25519 pair, the doors' trusted public keys, the site key.

* **Signing key** (admin machine only): an Ed25519 private key, PEM
  (PKCS#8, ``-----BEGIN PRIVATE KEY-----``), as ``openssl genpkey -algorithm
  ed25519`` writes it. It signs every bundle's manifest.
* **Public keys** (every door): one or more Ed25519 public keys, PEM
  (``-----BEGIN PUBLIC KEY-----``; ``openssl pkey -pubout``), concatenated in
  one file. A door accepts a manifest signed by any of them, which is what a
  key rotation needs (old and new trusted for a while). A door cannot sign:
  a stolen door forges nothing.
* **Site key** (admin and doors): any secret of 16+ bytes (``keygen`` writes
  32 random bytes, base64); the AES-256-GCM key that encrypts the bundle is
  ``HKDF-SHA256(secret, info="facegate-fleet-site-v1")``.

:func:`generate` writes all three with mode 0600 and never overwrites a file.
A key's id (:func:`key_id`) is the first 16 hex digits of the sha256 of its
32 raw bytes; manifests name the key that signed them by it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import ConfigError, FleetError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from edge.config import Config

SITE_KEY_INFO = b"facegate-fleet-site-v1"
MIN_SITE_KEY_BYTES = 16
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def derive_site_key(secret: bytes) -> bytes:
    """The AES-256 key of a site: ``HKDF-SHA256(secret, info="facegate-fleet-site-v1")``."""
    if len(secret) < MIN_SITE_KEY_BYTES:
        raise ConfigError(
            f"fleet.site_key: too short ({len(secret)} bytes, need {MIN_SITE_KEY_BYTES}+)"
        )
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SITE_KEY_INFO).derive(secret)


def public_bytes(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """``sha256(raw public key)[:16]`` in hex: how a manifest names the key that signed it."""
    return hashlib.sha256(public_bytes(key)).hexdigest()[:16]


def load_signing_key(pem: bytes, what: str = "fleet.signing_key") -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8, unencrypted); ConfigError otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{what}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{what}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_keys(pem: bytes, what: str = "fleet.public_key") -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in a PEM file (one or more blocks); ConfigError when none."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: list[Ed25519PublicKey] = []
    for i, block in enumerate(_PEM_PUBLIC.findall(pem)):
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{what}: public key {i + 1} is not valid PEM ({e})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{what}: public key {i + 1} is not Ed25519")
        keys.append(key)
    if not keys:
        raise ConfigError(f"{what}: no PEM public key (-----BEGIN PUBLIC KEY-----) in it")
    return keys


def public_pem(key: Ed25519PublicKey) -> bytes:
    """A public key as PEM (SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """A private key as unencrypted PEM (PKCS#8)."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class DoorKeys:
    """What a door holds: the site's AES key and the public keys it trusts."""

    site_key: bytes
    public_keys: tuple[Ed25519PublicKey, ...]


@dataclass(frozen=True)
class AdminKeys:
    """What the admin machine holds: the site's AES key and the signing key."""

    site_key: bytes
    signing_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()


def _site_key(cfg: Config) -> bytes:
    secret = cfg.fleet.site_key.read(cfg.base_dir)
    if secret is None:
        raise ConfigError("fleet.site_key_file: the site key is not configured")
    return derive_site_key(secret)


def door_keys(cfg: Config) -> DoorKeys:
    """The door's keys from ``[fleet]`` (files or systemd credentials); ConfigError."""
    pem = cfg.fleet.public_key.read(cfg.base_dir)
    if pem is None:
        raise ConfigError("fleet.public_key_file: the admin's public key is not configured")
    return DoorKeys(_site_key(cfg), tuple(load_public_keys(pem)))


def admin_keys(cfg: Config) -> AdminKeys:
    """The admin's keys from ``[fleet]``; ConfigError when one is missing or wrong."""
    pem = cfg.fleet.signing_key.read(cfg.base_dir)
    if pem is None:
        raise ConfigError(
            "fleet.signing_key_file: push needs the signing key (facegate fleet keygen)"
        )
    return AdminKeys(_site_key(cfg), load_signing_key(pem))


@dataclass(frozen=True)
class KeyFiles:
    """Where :func:`generate` wrote the keys."""

    signing: Path
    public: Path
    site: Path


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never through a link, never over a file)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise FleetError(f"{path}: already exists; not overwriting a key") from None
    except OSError as e:
        raise FleetError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate(folder: Path, prefix: str = "fleet") -> KeyFiles:
    """A new Ed25519 pair and site key in ``folder`` (mode 0600 each; existing files refused)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    files = KeyFiles(
        folder / f"{prefix}-signing.pem",
        folder / f"{prefix}-public.pem",
        folder / f"{prefix}-site.key",
    )
    for p in (files.signing, files.public, files.site):
        if p.exists() or p.is_symlink():
            raise FleetError(f"{p}: already exists; not overwriting a key")
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    _write_new(files.signing, private_pem(key))
    _write_new(files.public, public_pem(key.public_key()))
    _write_new(files.site, base64.b64encode(os.urandom(32)) + b"\n")
    return files


__all__ = [
    "MIN_SITE_KEY_BYTES",
    "SITE_KEY_INFO",
    "AdminKeys",
    "DoorKeys",
    "KeyFiles",
    "admin_keys",
    "derive_site_key",
    "door_keys",
    "generate",
    "key_id",
    "load_public_keys",
    "load_signing_key",
    "private_pem",
    "public_bytes",
    "public_pem",
]

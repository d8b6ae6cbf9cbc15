"""Secrets in the config: never values, always a file or a systemd credential.

A section declares ``key = Secret()`` beside its ``key_file`` and
``key_credential`` fields; ``cfg.<section>.key`` is then a :class:`SecretRef`
that reads the secret (:func:`read_secret`) from whichever is set.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from edge.errors import ConfigError
from edge.files import read_bounded

log = logging.getLogger("facegate.config")

MAX_SECRET_BYTES = 64 * 1024
KEY_MIN_BYTES = 16
"""The shortest gallery key, event signing key or remote unlock key accepted."""


@dataclass(frozen=True)
class SecretRef:
    """Where one secret comes from: a file, a systemd credential, or nowhere (unset)."""

    key: str
    """The key path for messages, e.g. ``gallery.key``."""
    file: str = ""
    credential: str = ""
    min_bytes: int = 0
    """A shorter secret is refused (keys: 16 bytes, so a guessable one never starts)."""

    @property
    def configured(self) -> bool:
        return bool(self.file or self.credential)

    def read(self, base_dir: Path | None = None) -> bytes | None:
        """The secret's bytes (trailing newlines stripped), or None when unset.

        ConfigError when it cannot be read or is shorter than ``min_bytes``;
        ``check-config`` reads it the same way, so a key it accepts starts.
        """
        what = f"{self.key}_file" if self.file else f"{self.key}_credential"
        data = read_secret(self.file, self.credential, what, base_dir)
        if data is not None and len(data) < self.min_bytes:
            raise ConfigError(f"{self.key}: too short ({len(data)} bytes, need {self.min_bytes}+)")
        return data


class Secret:
    """Declares the key pair ``<name>_file`` / ``<name>_credential`` of a section.

    ``key = Secret()`` in :class:`GalleryConfig` makes ``cfg.gallery.key`` a
    :class:`SecretRef` built from ``key_file`` and ``key_credential``; giving
    both is an error. ``min_bytes``: the shortest secret accepted.
    """

    def __init__(self, min_bytes: int = 0) -> None:
        self.min_bytes = min_bytes

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Secret: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> SecretRef: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Secret | SecretRef:
        if obj is None:
            return self
        section = getattr(obj, "SECTION", "")
        return SecretRef(
            f"{section}.{self.name}",
            getattr(obj, f"{self.name}_file"),
            getattr(obj, f"{self.name}_credential"),
            self.min_bytes,
        )


def warn_if_exposed(path: Path, key: str) -> None:
    """Log a warning when a secret file can be read by its group or by others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # reading it later says why
    if stat.S_ISREG(mode) and mode & 0o077:
        log.warning(
            "%s: %s can be read or written by group or others (mode %04o); chmod 600 it",
            key,
            path,
            stat.S_IMODE(mode),
        )


def read_secret(
    file: str, credential: str, what: str, base_dir: Path | None = None
) -> bytes | None:
    """Read a secret from a file or a systemd credential; None when neither is set.

    A systemd credential ``name`` (``LoadCredential=name:/path``) is read from
    ``$CREDENTIALS_DIRECTORY/name``. Trailing newlines are stripped. Secrets
    never come from argv or the config itself.
    """
    if credential:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(
                f"{what}: credential {credential!r} requested but $CREDENTIALS_DIRECTORY is "
                "not set (run under systemd with LoadCredential=, or use a file)"
            )
        path = Path(cred_dir) / credential
    elif file:
        path = Path(file).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
    else:
        return None
    try:
        data = read_bounded(path, MAX_SECRET_BYTES, "secret", ConfigError)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    return data.rstrip(b"\r\n")


__all__ = [
    "KEY_MIN_BYTES",
    "MAX_SECRET_BYTES",
    "Secret",
    "SecretRef",
    "read_secret",
    "warn_if_exposed",
]

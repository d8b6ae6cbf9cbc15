"""Remote unlock: a signed command over MQTT, verified here, never trusted by topic.

The command is ``{"command": "unlock", "ts", "nonce", "hmac"}``; ``hmac`` is
HMAC-SHA256 over :func:`unlock_message` (``facegate-unlock-v1``, the
``device.id``, ``ts`` and ``nonce``) with ``door.remote_key_*``. It is only
accepted with ``door.remote_unlock = true``, a synchronised clock, ``ts``
within :data:`REMOTE_MAX_AGE_S` of the device's clock and a nonce not seen
before (:class:`NonceCache`). :func:`verify_unlock` says why a command is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from edge.config.environment import check_distinct_keys
from edge.delivery.codec import loads_strict
from edge.door.policy import CLOCK_NOT_SYNCED, STALE

if TYPE_CHECKING:
    from edge.config import Config

# -- remote unlock refusals (the ``reason`` of remote_refused) -----------------------
REMOTE_DISABLED = "remote_disabled"
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
REPLAYED = "replayed"
BUSY = "busy"
UNSAVED = "unsaved"
"""The nonce could not be put on disk before acting: refused (fail closed)."""
REMOTE_REASONS = (
    REMOTE_DISABLED,
    MALFORMED,
    BAD_SIGNATURE,
    CLOCK_NOT_SYNCED,
    STALE,
    REPLAYED,
    BUSY,
    UNSAVED,
)

REMOTE_MAX_AGE_S = 5.0
"""A remote unlock whose ``ts`` is further than this from the device's clock is refused."""
NONCE_KEEP_S = 600.0
"""Nonces are remembered at least this long (monotonic), whatever the wall clock does."""
NONCE_MAX = 4096
"""More remembered nonces than this: further commands are refused (``busy``)."""
UNLOCK_MESSAGE_VERSION = "facegate-unlock-v1"

_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_HMAC_RE = re.compile(r"^[0-9a-f]{64}$")


def unlock_message(device_id: str, ts: int, nonce: str) -> bytes:
    """The bytes a remote unlock signs: ``facegate-unlock-v1\\n<device.id>\\n<ts>\\n<nonce>``.

    The device id is part of it, so a command signed for one door opens no other.
    """
    return f"{UNLOCK_MESSAGE_VERSION}\n{device_id}\n{ts}\n{nonce}".encode()


def sign_unlock(
    key: bytes, device_id: str, ts: int | None = None, nonce: str | None = None
) -> dict[str, Any]:
    """A signed ``{"command": "unlock", "ts", "nonce", "hmac"}`` command.

    ``ts``: integer Unix seconds (now by default); ``nonce``: 32 random hex
    digits by default; ``hmac``: hex HMAC-SHA256 of :func:`unlock_message` with ``key``.
    """
    t = int(time.time()) if ts is None else ts
    n = nonce or secrets.token_hex(16)
    mac = hmac.new(key, unlock_message(device_id, t, n), hashlib.sha256).hexdigest()
    return {"command": "unlock", "ts": t, "nonce": n, "hmac": mac}


class NonceStore(Protocol):
    """Where accepted nonces outlive the process (:class:`edge.door.state.DoorState`)."""

    not_before: float

    def seen(self, nonce: str) -> bool: ...

    def remember(self, nonce: str, ts: float) -> bool: ...


class NonceCache:
    """Nonces of accepted remote unlocks, remembered while their command could still be fresh.

    A nonce is forgotten only when its command is stale by the wall clock
    *and* it was accepted more than :data:`NONCE_KEEP_S` ago by the monotonic
    clock, so stepping the wall clock back does not make an old command new.
    With a ``store``, a nonce is also put on disk before it is accepted and
    looked up there, so a restart does not make a captured command new
    either (:class:`edge.door.state.DoorState`).
    """

    def __init__(self, max_entries: int = NONCE_MAX, store: NonceStore | None = None) -> None:
        self.max_entries = max_entries
        self.store = store
        self._seen: dict[str, tuple[float, float]] = {}  # nonce -> (ts, accepted at, monotonic)

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: str, ts: float, now: float, mono: float) -> str | None:
        """Remember ``nonce``: None when new, else REPLAYED, BUSY or UNSAVED."""
        self._seen = {
            n: (t, m)
            for n, (t, m) in self._seen.items()
            if now - t <= REMOTE_MAX_AGE_S or mono - m <= NONCE_KEEP_S
        }
        store = self.store
        if nonce in self._seen or (store is not None and store.seen(nonce)):
            return REPLAYED
        if store is not None and ts < store.not_before:
            return REPLAYED  # signed before a start that lost the saved nonces
        if len(self._seen) >= self.max_entries:
            return BUSY
        if store is not None and not store.remember(nonce, ts):
            return UNSAVED
        self._seen[nonce] = (ts, mono)
        return None


def parse_unlock(payload: bytes | Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The command ``{"command": "unlock", "ts": INT, "nonce": STR, "hmac": HEX}``, or None."""
    if isinstance(payload, bytes | bytearray):
        try:
            doc = loads_strict(bytes(payload))  # a key given twice is malformed
        except ValueError:
            return None
    else:
        doc = payload
    if not isinstance(doc, Mapping) or set(doc) != {"command", "ts", "nonce", "hmac"}:
        return None
    ts, nonce, mac = doc["ts"], doc["nonce"], doc["hmac"]
    if (
        doc["command"] != "unlock"
        or not isinstance(ts, int)
        or isinstance(ts, bool)
        or not isinstance(nonce, str)
        or not _NONCE_RE.match(nonce)
        or not isinstance(mac, str)
        or not _HMAC_RE.match(mac)
    ):
        return None
    return doc


def signed_by(doc: Mapping[str, Any], key: bytes, device_id: str) -> bool:
    """Whether a parsed command's ``hmac`` is ``key``'s for ``device_id`` (constant time)."""
    want = hmac.new(key, unlock_message(device_id, doc["ts"], doc["nonce"]), hashlib.sha256)
    return hmac.compare_digest(want.hexdigest(), doc["hmac"])


def authentic(payload: bytes | Mapping[str, Any], *, key: bytes, device_id: str) -> bool:
    """A well-formed unlock signed with ``key`` for ``device_id``: one parse and one HMAC.

    Stateless and cheap: the command gate asks it before a command may spend
    a token of the shared rate limit (a wrong-key flood spends none).
    """
    doc = parse_unlock(payload)
    return doc is not None and signed_by(doc, key, device_id)


def verify_unlock(
    payload: bytes | Mapping[str, Any],
    *,
    key: bytes,
    device_id: str,
    now: float,
    mono: float,
    synced: bool,
    nonces: NonceCache,
) -> str | None:
    """Check a remote unlock command; None when accepted, else why it is refused.

    In order: the payload is exactly ``{"command": "unlock", "ts": INT,
    "nonce": STR, "hmac": HEX}`` (else :data:`MALFORMED`); the HMAC matches
    (constant-time compare; else :data:`BAD_SIGNATURE`); the clock is synced
    (else :data:`CLOCK_NOT_SYNCED`); ``|now - ts| <= REMOTE_MAX_AGE_S``
    (else :data:`STALE`); the nonce is new, also across restarts (else
    :data:`REPLAYED`), and saved (else :data:`UNSAVED`). Only an accepted
    command's nonce is remembered, so unsigned junk cannot fill the cache.
    """
    doc = parse_unlock(payload)
    if doc is None:
        return MALFORMED
    if not signed_by(doc, key, device_id):
        return BAD_SIGNATURE
    if not synced:
        return CLOCK_NOT_SYNCED
    ts = doc["ts"]
    if abs(now - ts) > REMOTE_MAX_AGE_S:
        return STALE
    return nonces.add(doc["nonce"], float(ts), now, mono)


def remote_key(cfg: Config) -> bytes | None:
    """The remote unlock key from ``door.remote_key_file`` / ``remote_key_credential``.

    16+ bytes, and not the event signing key (:func:`edge.config.check_distinct_keys`):
    ConfigError otherwise, at start as in ``check-config``.
    """
    key = cfg.door.remote_key.read(cfg.base_dir)
    if key is not None and cfg.events.sign_key.configured:
        check_distinct_keys(key, cfg.events.sign_key.read(cfg.base_dir))
    return key


__all__ = [
    "BAD_SIGNATURE",
    "BUSY",
    "MALFORMED",
    "NONCE_KEEP_S",
    "NONCE_MAX",
    "REMOTE_DISABLED",
    "REMOTE_MAX_AGE_S",
    "REMOTE_REASONS",
    "REPLAYED",
    "UNLOCK_MESSAGE_VERSION",
    "UNSAVED",
    "NonceCache",
    "NonceStore",
    "authentic",
    "parse_unlock",
    "remote_key",
    "sign_unlock",
    "signed_by",
    "unlock_message",
    "verify_unlock",
]

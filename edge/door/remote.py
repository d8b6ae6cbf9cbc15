"""Signed remote commands: verified here, never trusted by topic.

The door's remote unlock is ``{"command": "unlock", "ts", "nonce", "hmac"}``;
``hmac`` is HMAC-SHA256 over :func:`unlock_message` (``facegate-unlock-v1``,
the ``device.id``, ``ts`` and ``nonce``) with ``door.remote_key_*``. It is
only accepted with ``door.remote_unlock = true``, a synchronised clock,
``ts`` within :data:`REMOTE_MAX_AGE_S` of the device's clock and a nonce not
seen before (:class:`NonceCache`). :func:`verify_unlock` says why a command
is refused.

The same code checks every signed command (:func:`parse_signed`,
:func:`signed_by`, :func:`verify_signed`): each has its own domain string
and its own key, and may sign fields of its own after the nonce. The second
one is the review's "enrol the next face as N" (:func:`verify_enrol`:
``facegate-enrol-v1``, ``review.enrol_key_*``, the name signed), so a
signature for one command never passes for the other.
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
ENROL_MESSAGE_VERSION = "facegate-enrol-v1"
ENROL_FIELDS = ("name",)
"""The enrol command's own fields, signed after the nonce, in this order."""
MAX_SIGNED_FIELD = 512
"""A signed command's own fields (the name to enrol) are strings of at most this length."""

_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_HMAC_RE = re.compile(r"^[0-9a-f]{64}$")


def signed_message(domain: str, device_id: str, ts: int, nonce: str, *fields: str) -> bytes:
    """The bytes a signed command signs: ``<domain>\\n<device.id>\\n<ts>\\n<nonce>[\\n<field>...]``.

    The device id is part of it, so a command signed for one door acts on no
    other; the domain names the command, so one command's signature is no
    other's. Fields are UTF-8.
    """
    return "\n".join([domain, device_id, str(ts), nonce, *fields]).encode()


def unlock_message(device_id: str, ts: int, nonce: str) -> bytes:
    """The bytes a remote unlock signs: ``facegate-unlock-v1\\n<device.id>\\n<ts>\\n<nonce>``."""
    return signed_message(UNLOCK_MESSAGE_VERSION, device_id, ts, nonce)


def sign_command(
    key: bytes,
    device_id: str,
    command: str,
    domain: str,
    fields: Mapping[str, str] | None = None,
    ts: int | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """A signed ``{"command": command, **fields, "ts", "nonce", "hmac"}`` command.

    ``ts``: integer Unix seconds (now by default); ``nonce``: 32 random hex
    digits by default; ``hmac``: hex HMAC-SHA256 of :func:`signed_message`
    (the fields' values in the order given) with ``key``.
    """
    t = int(time.time()) if ts is None else ts
    n = nonce or secrets.token_hex(16)
    extra = dict(fields or {})
    msg = signed_message(domain, device_id, t, n, *extra.values())
    mac = hmac.new(key, msg, hashlib.sha256).hexdigest()
    return {"command": command, **extra, "ts": t, "nonce": n, "hmac": mac}


def sign_unlock(
    key: bytes, device_id: str, ts: int | None = None, nonce: str | None = None
) -> dict[str, Any]:
    """A signed ``{"command": "unlock", "ts", "nonce", "hmac"}`` command (:func:`sign_command`)."""
    return sign_command(key, device_id, "unlock", UNLOCK_MESSAGE_VERSION, None, ts, nonce)


def sign_enrol(
    key: bytes, device_id: str, name: str, ts: int | None = None, nonce: str | None = None
) -> dict[str, Any]:
    """A signed ``{"command": "enrol", "name", "ts", "nonce", "hmac"}`` (the name is signed)."""
    return sign_command(key, device_id, "enrol", ENROL_MESSAGE_VERSION, {"name": name}, ts, nonce)


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


def parse_signed(
    payload: bytes | Mapping[str, Any], command: str, fields: tuple[str, ...] = ()
) -> Mapping[str, Any] | None:
    """``{"command": command, <fields>, "ts": INT, "nonce": STR, "hmac": HEX}``, or None.

    Each field a string of at most :data:`MAX_SIGNED_FIELD` characters; every
    key once (a key given twice is malformed); nothing else.
    """
    if isinstance(payload, bytes | bytearray):
        try:
            doc = loads_strict(bytes(payload))  # a key given twice is malformed
        except ValueError:
            return None
    else:
        doc = payload
    if not isinstance(doc, Mapping) or set(doc) != {"command", "ts", "nonce", "hmac", *fields}:
        return None
    ts, nonce, mac = doc["ts"], doc["nonce"], doc["hmac"]
    if (
        doc["command"] != command
        or not isinstance(ts, int)
        or isinstance(ts, bool)
        or not isinstance(nonce, str)
        or not _NONCE_RE.match(nonce)
        or not isinstance(mac, str)
        or not _HMAC_RE.match(mac)
        or not all(isinstance(doc[f], str) and len(doc[f]) <= MAX_SIGNED_FIELD for f in fields)
    ):
        return None
    return doc


def parse_unlock(payload: bytes | Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The command ``{"command": "unlock", "ts": INT, "nonce": STR, "hmac": HEX}``, or None."""
    return parse_signed(payload, "unlock")


def signed_by(
    doc: Mapping[str, Any],
    key: bytes,
    device_id: str,
    domain: str = UNLOCK_MESSAGE_VERSION,
    fields: tuple[str, ...] = (),
) -> bool:
    """Whether a parsed command's ``hmac`` is ``key``'s for ``device_id`` (constant time).

    The message is :func:`signed_message` under ``domain`` with the values of
    ``fields`` (an unlock: none).
    """
    msg = signed_message(domain, device_id, doc["ts"], doc["nonce"], *(doc[f] for f in fields))
    want = hmac.new(key, msg, hashlib.sha256)
    return hmac.compare_digest(want.hexdigest(), doc["hmac"])


def authentic(payload: bytes | Mapping[str, Any], *, key: bytes, device_id: str) -> bool:
    """A well-formed unlock signed with ``key`` for ``device_id``: one parse and one HMAC.

    Stateless and cheap: the command gate asks it before a command may spend
    a token of the shared rate limit (a wrong-key flood spends none).
    """
    doc = parse_unlock(payload)
    return doc is not None and signed_by(doc, key, device_id)


def authentic_enrol(payload: bytes | Mapping[str, Any], *, key: bytes, device_id: str) -> bool:
    """:func:`authentic` for the enrol command (``facegate-enrol-v1``, the name signed)."""
    doc = parse_signed(payload, "enrol", ENROL_FIELDS)
    return doc is not None and signed_by(doc, key, device_id, ENROL_MESSAGE_VERSION, ENROL_FIELDS)


def verify_signed(
    payload: bytes | Mapping[str, Any],
    *,
    command: str,
    domain: str,
    fields: tuple[str, ...] = (),
    key: bytes,
    device_id: str,
    now: float,
    mono: float,
    synced: bool,
    nonces: NonceCache,
) -> str | None:
    """Check a signed command; None when accepted, else why it is refused.

    In order: the payload is exactly ``{"command": command, <fields>, "ts":
    INT, "nonce": STR, "hmac": HEX}`` (:func:`parse_signed`; else
    :data:`MALFORMED`); the HMAC of :func:`signed_message` under ``domain``
    matches (constant-time compare; else :data:`BAD_SIGNATURE`); the clock
    is synced (else :data:`CLOCK_NOT_SYNCED`); ``|now - ts| <=
    REMOTE_MAX_AGE_S`` (else :data:`STALE`); the nonce is new, also across
    restarts where ``nonces`` has a store (else :data:`REPLAYED`), and saved
    (else :data:`UNSAVED`). Only an accepted command's nonce is remembered,
    so unsigned junk cannot fill the cache.
    """
    doc = parse_signed(payload, command, fields)
    if doc is None:
        return MALFORMED
    if not signed_by(doc, key, device_id, domain, fields):
        return BAD_SIGNATURE
    if not synced:
        return CLOCK_NOT_SYNCED
    ts = doc["ts"]
    if abs(now - ts) > REMOTE_MAX_AGE_S:
        return STALE
    return nonces.add(doc["nonce"], float(ts), now, mono)


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

    :func:`verify_signed` for ``{"command": "unlock", "ts", "nonce", "hmac"}``
    under ``facegate-unlock-v1``.
    """
    return verify_signed(
        payload,
        command="unlock",
        domain=UNLOCK_MESSAGE_VERSION,
        key=key,
        device_id=device_id,
        now=now,
        mono=mono,
        synced=synced,
        nonces=nonces,
    )


def verify_enrol(
    payload: bytes | Mapping[str, Any],
    *,
    key: bytes,
    device_id: str,
    now: float,
    mono: float,
    synced: bool,
    nonces: NonceCache,
) -> tuple[str | None, str | None]:
    """Check an "enrol the next face as N" command: (None, N) when accepted, else (why, None).

    :func:`verify_signed` for ``{"command": "enrol", "name", "ts", "nonce",
    "hmac"}`` under ``facegate-enrol-v1``, with the name signed after the nonce.
    """
    doc = parse_signed(payload, "enrol", ENROL_FIELDS)
    why = verify_signed(
        payload if doc is None else doc,
        command="enrol",
        domain=ENROL_MESSAGE_VERSION,
        fields=ENROL_FIELDS,
        key=key,
        device_id=device_id,
        now=now,
        mono=mono,
        synced=synced,
        nonces=nonces,
    )
    return (None, str(doc["name"])) if why is None and doc is not None else (why, None)


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
    "ENROL_MESSAGE_VERSION",
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
    "authentic_enrol",
    "parse_signed",
    "parse_unlock",
    "remote_key",
    "sign_command",
    "sign_enrol",
    "sign_unlock",
    "signed_by",
    "signed_message",
    "unlock_message",
    "verify_enrol",
    "verify_signed",
    "verify_unlock",
]

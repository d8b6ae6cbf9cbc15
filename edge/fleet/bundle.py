"""The gallery bundle: a site's people, encrypted, chunked and signed (pure functions).

A bundle is what ``facegate fleet push`` publishes and what a door applies.
Building one (:func:`build_bundle`), in this order:

1. **Payload** (:func:`encode_people`): ``b"FGF1" | u32 header length (big
   endian) | header JSON | float32 little-endian embeddings``. The header
   lists each person (name, number of embeddings, groups, when added) and
   the embedding size; the rows follow in that order. No photos.
2. **Encrypt**: ``AES-256-GCM(site key, nonce, payload, aad)`` with a random
   96-bit nonce and ``aad = "facegate-fleet-payload-v1\\n" + site + "\\n" +
   version + "\\n" + model sha256 + "\\n" + manifest sha256``: embeddings
   are biometric data, and the ciphertext cannot be moved under another
   site, version or model.
3. **Chunk**: the ciphertext cut into pieces of ``chunk_bytes`` (64 KiB by
   default, far under any broker's message limit: Mosquitto's default is
   256 MB, EMQX's 1 MB, AWS IoT's 128 KB), each with its sha256.
4. **Sign**: the manifest body, a compact JSON object (``format``, ``site``,
   ``version``, ``created``, ``model_sha256``, ``manifest_sha256``,
   ``embedding_size``, ``people``, ``embeddings``, ``size``, ``chunk_bytes``,
   ``chunks`` (their sha256), ``sha256`` (of the whole ciphertext),
   ``nonce``, ``revoked``), is signed with Ed25519 over
   ``"facegate-fleet-manifest-v1\\n" + body``. The message is
   ``{"v": 1, "key": <key id>, "body": base64(body), "sig": base64(signature)}``.

``revoked`` is the revocation history (who was removed at which version,
while they stay removed), sealed with the site key (AES-GCM, its own nonce,
``aad = "facegate-fleet-revoked-v1\\n" + site + "\\n" + version``): names
are personal data too. ``facegate fleet status`` reads it to say what a
lagging door still grants; doors ignore it.

A door checks in the reverse order and stops at the first failure, so a
forgery is refused before anything is decrypted: the signature over the
exact body bytes (only then is the body parsed), the format and the site,
the model and its manifest (:func:`check_model`), the version (the
caller's: it knows what it holds), each chunk's sha256 as it arrives
(:func:`check_chunk`), then the whole ciphertext's size and sha256, and
only then decryption and the payload's own checks (:func:`open_bundle`).
Every refusal is a :class:`BundleRefused` with a reason code from
:data:`REASONS` and a one-line detail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.errors import FleetError, GalleryError
from edge.fleet.keys import key_id
from edge.identity.gallery import Gallery, check_new_name

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from edge.fleet.keys import AdminKeys

FORMAT = "facegate-fleet-v1"
WIRE_VERSION = 1
MANIFEST_DOMAIN = b"facegate-fleet-manifest-v1\n"
PAYLOAD_DOMAIN = b"facegate-fleet-payload-v1\n"
REVOKED_DOMAIN = b"facegate-fleet-revoked-v1\n"
PAYLOAD_MAGIC = b"FGF1"
DEFAULT_CHUNK_BYTES = 64 * 1024
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
"""The largest ciphertext a door accepts (the gallery file's own limit)."""
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_CHUNKS = 65536
MAX_VERSION = 2**53
MAX_REVOKED = 1000
"""Revocations kept in the history (the oldest are dropped beyond this)."""
UNIT_TOLERANCE = 1e-3

# -- why a bundle is refused --------------------------------------------------------
BAD_SIGNATURE = "bad_signature"  # forged, or signed by a key this door does not trust
MALFORMED = "malformed"
WRONG_SITE = "wrong_site"
WRONG_MODEL = "wrong_model"
NOT_NEWER = "not_newer"  # an older (replayed) or the same version
BAD_CHUNK = "bad_chunk"  # a chunk whose sha256 or size is wrong (truncated, altered)
INCOMPLETE = "incomplete"  # chunks missing after fleet.fetch_timeout_s
UNDECRYPTABLE = "undecryptable"  # another site key
REASONS = (
    BAD_SIGNATURE,
    MALFORMED,
    WRONG_SITE,
    WRONG_MODEL,
    NOT_NEWER,
    BAD_CHUNK,
    INCOMPLETE,
    UNDECRYPTABLE,
)


class BundleRefused(FleetError):
    """A bundle a door must not apply: ``reason`` (one of :data:`REASONS`) and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Revocation:
    """A person removed from the site's gallery, and the bundle version that removed them."""

    name: str
    version: int


@dataclass(frozen=True)
class ManifestInfo:
    """A manifest whose signature held, with what its body says."""

    site: str
    version: int
    created: float
    model_sha256: str
    manifest_sha256: str
    embedding_size: int
    people: int
    embeddings: int
    size: int
    chunk_bytes: int
    chunks: tuple[str, ...]
    sha256: str
    nonce: bytes
    revoked: bytes
    key: str
    digest: str
    """sha256 of the body's bytes: names this bundle exactly (two pushes of one version differ)."""
    message: bytes
    """The manifest message as published (kept with the held bundle, verified again at start)."""

    def chunk_size(self, index: int) -> int:
        """How many bytes chunk ``index`` must hold."""
        if index < len(self.chunks) - 1:
            return self.chunk_bytes
        return self.size - self.chunk_bytes * (len(self.chunks) - 1)

    def describe(self) -> str:
        return (
            f"version {self.version} ({self.digest[:12]}), site {self.site!r}, "
            f"{self.people} people, {len(self.chunks)} chunks, {self.size} bytes"
        )


@dataclass(frozen=True)
class Bundle:
    """A built bundle: the signed manifest message and the ciphertext's chunks."""

    info: ManifestInfo
    manifest: bytes
    chunks: tuple[bytes, ...]

    @property
    def size(self) -> int:
        """Bytes on the broker: the manifest and every chunk."""
        return len(self.manifest) + sum(len(c) for c in self.chunks)


# -- the payload --------------------------------------------------------------------


def encode_people(gallery: Gallery) -> bytes:
    """A gallery's people as the bundle payload (module docstring, step 1)."""
    names, matrix, _ = gallery.matrix()
    people = []
    for n in names:
        p = gallery.person(n)
        people.append(
            {"name": n, "count": len(p.embeddings), "groups": list(p.groups), "added": p.added}
        )
    header = json.dumps(
        {"embedding_size": gallery.embedding_size, "people": people},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    rows = matrix.astype("<f4").tobytes() if names else b""
    return PAYLOAD_MAGIC + struct.pack(">I", len(header)) + header + rows


def _payload_people(payload: bytes) -> tuple[int, list[dict[str, Any]], bytes]:
    """(embedding size, people records, the rows' bytes) of a payload; ValueError if malformed."""
    if payload[:4] != PAYLOAD_MAGIC or len(payload) < 8:
        raise ValueError("bad payload header")
    (n,) = struct.unpack(">I", payload[4:8])
    header = json.loads(payload[8 : 8 + n])
    size = int(header["embedding_size"])
    people = list(header["people"])
    return size, people, payload[8 + n :]


def decode_people(payload: bytes, info: ManifestInfo) -> Gallery:
    """The gallery a payload holds, bound to the manifest's model; BundleRefused if malformed."""
    try:
        size, people, rows = _payload_people(payload)
        counts = [int(p["count"]) for p in people]
        if size != info.embedding_size or not 0 < size <= 4096 or min(counts, default=1) < 1:
            raise ValueError("embedding size or counts out of range")
        if len(rows) != sum(counts) * size * 4 or len(people) != info.people:
            raise ValueError("payload size disagrees with its header or the manifest")
        matrix = np.frombuffer(rows, dtype="<f4").reshape(-1, size).astype(np.float32)
        _check_unit(matrix)
        g = Gallery(
            info.model_sha256,
            size,
            manifest_sha256=info.manifest_sha256,
            generation=info.version,
        )
        start = 0
        for p, count in zip(people, counts, strict=True):
            name = str(p["name"])
            if name in g:
                raise ValueError(f"person {name[:40]!r} twice")
            g.add(name, matrix[start : start + count])
            start += count
            if p.get("groups"):
                g.set_groups(name, [str(x) for x in p["groups"]])
    except (GalleryError, KeyError, TypeError, ValueError, struct.error) as e:
        raise BundleRefused(MALFORMED, f"version {info.version}: bad payload ({e})") from None
    return g


def _check_unit(matrix: np.ndarray[Any, Any]) -> None:
    """Embeddings must be finite and of unit length (a 50x longer one would match everyone)."""
    if not np.all(np.isfinite(matrix)):
        raise ValueError("an embedding with a non-finite value")
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    if norms.size and float(np.max(np.abs(norms - 1.0))) > UNIT_TOLERANCE:
        raise ValueError("an embedding not of unit length")


# -- sealing (AES-GCM under the site key) ------------------------------------------


def payload_aad(site: str, version: int, model_sha256: str, manifest_sha256: str) -> bytes:
    """The associated data binding the ciphertext to its site, version and model."""
    return PAYLOAD_DOMAIN + f"{site}\n{version}\n{model_sha256}\n{manifest_sha256}".encode()


def revoked_aad(site: str, version: int) -> bytes:
    return REVOKED_DOMAIN + f"{site}\n{version}".encode()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext with its tag): AES-256-GCM with a random 96-bit nonce."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def _unseal(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes, what: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        raise BundleRefused(
            UNDECRYPTABLE, f"{what} does not decrypt with this site key (another site's key?)"
        ) from None


def seal_revoked(key: bytes, site: str, version: int, revoked: Sequence[Revocation]) -> bytes:
    """The revocation history sealed for the manifest: nonce + AES-GCM ciphertext."""
    doc = [[r.name, r.version] for r in list(revoked)[-MAX_REVOKED:]]
    nonce, ct = _seal(key, json.dumps(doc, ensure_ascii=False).encode(), revoked_aad(site, version))
    return nonce + ct


def open_revoked(info: ManifestInfo, site_key: bytes) -> list[Revocation]:
    """The revocation history of a manifest (BundleRefused when it does not decrypt)."""
    if len(info.revoked) < 12 + 16:
        raise BundleRefused(MALFORMED, "revocation history too short")
    plain = _unseal(
        site_key,
        info.revoked[:12],
        info.revoked[12:],
        revoked_aad(info.site, info.version),
        "the revocation history",
    )
    try:
        return [Revocation(str(n), int(v)) for n, v in json.loads(plain)]
    except (TypeError, ValueError) as e:
        raise BundleRefused(MALFORMED, f"bad revocation history ({e})") from None


def next_revocations(
    history: Sequence[Revocation],
    before: Sequence[str],
    after: Sequence[str],
    version: int,
) -> list[Revocation]:
    """The history for a new version: people gone since ``before`` added, re-enrolled dropped."""
    now = set(after)
    kept = [r for r in history if r.name not in now]
    gone = sorted(set(before) - now - {r.name for r in kept})
    return (kept + [Revocation(n, version) for n in gone])[-MAX_REVOKED:]


# -- building -------------------------------------------------------------------------


def build_bundle(
    gallery: Gallery,
    *,
    site: str,
    version: int,
    keys: AdminKeys,
    revoked: Sequence[Revocation] = (),
    created: float,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Bundle:
    """Encrypt, chunk and sign a gallery as bundle ``version`` of ``site`` (module docstring)."""
    if not 1 <= version <= MAX_VERSION:
        raise FleetError(f"bundle version {version} out of range [1, {MAX_VERSION}]")
    if not gallery.manifest_sha256:
        raise FleetError("the gallery is not bound to an embedder manifest; re-enrol it")
    for name in gallery.names:
        try:
            check_new_name(name)  # what every door checks: refuse it here, not at each door
        except GalleryError as e:
            raise FleetError(f"cannot push {name[:40]!r}: {e} (rename the person)") from None
    payload = encode_people(gallery)
    aad = payload_aad(site, version, gallery.model_sha256, gallery.manifest_sha256)
    nonce, ciphertext = _seal(keys.site_key, payload, aad)
    if len(ciphertext) > MAX_BUNDLE_BYTES:
        raise FleetError(f"bundle of {len(ciphertext)} bytes is over {MAX_BUNDLE_BYTES}")
    chunks = tuple(ciphertext[i : i + chunk_bytes] for i in range(0, len(ciphertext), chunk_bytes))
    body = {
        "format": FORMAT,
        "site": site,
        "version": version,
        "created": round(created, 3),
        "model_sha256": gallery.model_sha256,
        "manifest_sha256": gallery.manifest_sha256,
        "embedding_size": gallery.embedding_size,
        "people": len(gallery),
        "embeddings": int(gallery.matrix()[1].shape[0]) if len(gallery) else 0,
        "size": len(ciphertext),
        "chunk_bytes": chunk_bytes,
        "chunks": [hashlib.sha256(c).hexdigest() for c in chunks],
        "sha256": hashlib.sha256(ciphertext).hexdigest(),
        "nonce": base64.b64encode(nonce).decode(),
        "revoked": base64.b64encode(seal_revoked(keys.site_key, site, version, revoked)).decode(),
    }
    body_bytes = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    signature = keys.signing_key.sign(MANIFEST_DOMAIN + body_bytes)
    message = json.dumps(
        {
            "v": WIRE_VERSION,
            "key": key_id(keys.public_key),
            "body": base64.b64encode(body_bytes).decode(),
            "sig": base64.b64encode(signature).decode(),
        },
        separators=(",", ":"),
    ).encode()
    info = _info(body_bytes, message, key_id(keys.public_key))
    return Bundle(info, message, chunks)


# -- reading ---------------------------------------------------------------------------


def _envelope(message: bytes) -> tuple[str, bytes, bytes]:
    """(key id, body bytes, signature) of a manifest message; BundleRefused if malformed."""
    if len(message) > MAX_MANIFEST_BYTES:
        raise BundleRefused(MALFORMED, f"manifest of {len(message)} bytes is too large")
    try:
        doc = json.loads(message)
        if not isinstance(doc, dict) or doc.get("v") != WIRE_VERSION:
            raise ValueError("not a version 1 manifest")
        body = base64.b64decode(str(doc["body"]), validate=True)
        sig = base64.b64decode(str(doc["sig"]), validate=True)
        return str(doc.get("key", ""))[:64], body, sig
    except (KeyError, TypeError, ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise BundleRefused(MALFORMED, f"not a manifest ({e})") from None


def verify_signature(message: bytes, public_keys: Sequence[Ed25519PublicKey]) -> bytes:
    """The body bytes of a manifest signed by one of ``public_keys``; BundleRefused otherwise."""
    from cryptography.exceptions import InvalidSignature

    kid, body, sig = _envelope(message)
    for pk in public_keys:
        try:
            pk.verify(sig, MANIFEST_DOMAIN + body)
            return body
        except InvalidSignature:
            continue
    known = ", ".join(key_id(k) for k in public_keys)
    raise BundleRefused(
        BAD_SIGNATURE,
        f"signature does not verify with a trusted key (signed by {kid or '?'}; trusted: {known})",
    )


def _info(body: bytes, message: bytes, kid: str) -> ManifestInfo:
    """The fields of a (verified) body, each checked; BundleRefused(MALFORMED) otherwise."""
    try:
        d = json.loads(body)
        if d.get("format") != FORMAT:
            raise ValueError(f"format {str(d.get('format'))[:40]!r}")
        chunks = tuple(str(c) for c in d["chunks"])
        info = ManifestInfo(
            site=str(d["site"]),
            version=int(d["version"]),
            created=float(d["created"]),
            model_sha256=str(d["model_sha256"]),
            manifest_sha256=str(d["manifest_sha256"]),
            embedding_size=int(d["embedding_size"]),
            people=int(d["people"]),
            embeddings=int(d["embeddings"]),
            size=int(d["size"]),
            chunk_bytes=int(d["chunk_bytes"]),
            chunks=chunks,
            sha256=str(d["sha256"]),
            nonce=base64.b64decode(str(d["nonce"]), validate=True),
            revoked=base64.b64decode(str(d["revoked"]), validate=True),
            key=kid,
            digest=hashlib.sha256(body).hexdigest(),
            message=message,
        )
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as e:
        raise BundleRefused(MALFORMED, f"bad manifest body ({e})") from None
    _check_ranges(info)
    return info


def _check_ranges(i: ManifestInfo) -> None:
    ok = (
        1 <= i.version <= MAX_VERSION
        and math.isfinite(i.created)
        and 0 < i.size <= MAX_BUNDLE_BYTES
        and 1 <= i.chunk_bytes <= MAX_BUNDLE_BYTES
        and 1 <= len(i.chunks) <= MAX_CHUNKS
        and len(i.chunks) == -(-i.size // i.chunk_bytes)
        and len(i.nonce) == 12
        and i.people >= 0
    )
    if not ok:
        raise BundleRefused(MALFORMED, f"manifest values out of range (version {i.version})")


def read_manifest(
    message: bytes, public_keys: Sequence[Ed25519PublicKey], *, site: str
) -> ManifestInfo:
    """A manifest checked for its signature (first), format and site; BundleRefused otherwise."""
    body = verify_signature(message, public_keys)
    info = _info(body, message, _envelope(message)[0])
    if info.site != site:
        raise BundleRefused(
            WRONG_SITE, f"version {info.version} is for site {info.site[:64]!r}, not {site!r}"
        )
    return info


def peek_manifest(message: bytes) -> ManifestInfo | None:
    """A manifest's fields WITHOUT checking its signature (the admin's version pick), or None."""
    try:
        kid, body, _ = _envelope(message)
        return _info(body, message, kid)
    except BundleRefused:
        return None


def check_model(info: ManifestInfo, model_sha256: str, manifest_sha256: str) -> None:
    """The bundle was made for this embedder and this manifest; BundleRefused(WRONG_MODEL)."""
    if info.model_sha256 != model_sha256:
        raise BundleRefused(
            WRONG_MODEL,
            f"version {info.version} was enrolled with model {info.model_sha256[:12]}..., "
            f"this door runs {model_sha256[:12]}...",
        )
    if info.manifest_sha256 != manifest_sha256:
        raise BundleRefused(
            WRONG_MODEL,
            f"version {info.version} was enrolled under manifest {info.manifest_sha256[:12]}..., "
            f"this door's is {manifest_sha256[:12]}... (another calibration)",
        )


def check_chunk(info: ManifestInfo, index: int, data: bytes) -> None:
    """Chunk ``index`` has the size and sha256 the manifest lists; BundleRefused(BAD_CHUNK)."""
    if not 0 <= index < len(info.chunks):
        raise BundleRefused(BAD_CHUNK, f"version {info.version}: no chunk {index}")
    want = info.chunk_size(index)
    if len(data) != want:
        raise BundleRefused(
            BAD_CHUNK,
            f"version {info.version}: chunk {index} has {len(data)} bytes, expected {want}",
        )
    if hashlib.sha256(data).hexdigest() != info.chunks[index]:
        raise BundleRefused(BAD_CHUNK, f"version {info.version}: chunk {index} sha256 mismatch")


def open_bundle(info: ManifestInfo, chunks: Sequence[bytes], site_key: bytes) -> Gallery:
    """The gallery in a bundle's chunks: each checked, the whole checked, decrypted, parsed."""
    if len(chunks) != len(info.chunks):
        raise BundleRefused(
            INCOMPLETE, f"version {info.version}: {len(chunks)} of {len(info.chunks)} chunks"
        )
    for i, c in enumerate(chunks):
        check_chunk(info, i, c)
    ciphertext = b"".join(chunks)
    if hashlib.sha256(ciphertext).hexdigest() != info.sha256:
        raise BundleRefused(BAD_CHUNK, f"version {info.version}: the whole bundle's sha256")
    aad = payload_aad(info.site, info.version, info.model_sha256, info.manifest_sha256)
    payload = _unseal(site_key, info.nonce, ciphertext, aad, f"version {info.version}")
    return decode_people(payload, info)


__all__ = [
    "BAD_CHUNK",
    "BAD_SIGNATURE",
    "DEFAULT_CHUNK_BYTES",
    "FORMAT",
    "INCOMPLETE",
    "MALFORMED",
    "MAX_BUNDLE_BYTES",
    "MAX_REVOKED",
    "NOT_NEWER",
    "REASONS",
    "UNDECRYPTABLE",
    "WRONG_MODEL",
    "WRONG_SITE",
    "Bundle",
    "BundleRefused",
    "ManifestInfo",
    "Revocation",
    "build_bundle",
    "check_chunk",
    "check_model",
    "decode_people",
    "encode_people",
    "next_revocations",
    "open_bundle",
    "open_revoked",
    "payload_aad",
    "peek_manifest",
    "read_manifest",
    "seal_revoked",
    "verify_signature",
]

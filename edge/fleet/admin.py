"""The admin's side: ``facegate fleet push`` and ``facegate fleet status``.

**push** (:func:`push`), over its own connection (:class:`edge.fleet.link.AdminLink`):

1. Read what the broker holds: the retained manifest of the site and its
   chunks (the previous bundle: its version, its people and its revocation
   history, decrypted with the site key).
2. Pick the version: ``max(retained version, this machine's record) + 1``
   (the record, ``fleet-<site>.pushed.json`` in ``service.state_dir``,
   covers a broker that lost its retained messages).
3. Build the bundle (:func:`edge.fleet.bundle.build_bundle`); the
   revocation history gains everyone in the previous bundle who is not in
   this one.
4. Publish every chunk, retained, QoS 1, and wait for every PUBACK
   (republishing after a reconnect).
5. Read the retained manifest again: if another push changed it meanwhile,
   stop (:class:`PushConflict`); nothing of this push is in force.
6. Publish the manifest (retained, QoS 1), wait for its PUBACK.
7. Read everything back from the broker's retained store and republish
   what is missing or different, until all of it is there: a broker killed
   mid-push (Mosquitto acknowledges before it writes its persistence file)
   loses nothing. A manifest of another push found there means the race was
   lost (:class:`PushConflict`).
8. Clear the chunks of other versions (empty retained messages), then
   write the record.

**status** (:func:`status`): the retained manifest and every door's
retained state; per door its version, whether it lags, and which revoked
people it still grants (from the sealed revocation history).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.errors import BrokerError, FleetError
from edge.files import exists, read_bounded, write_atomic
from edge.fleet.bundle import (
    Bundle,
    BundleRefused,
    ManifestInfo,
    Revocation,
    build_bundle,
    next_revocations,
    open_bundle,
    open_revoked,
    peek_manifest,
    read_manifest,
)
from edge.fleet.link import AdminLink, Progress
from edge.fleet.topics import FleetTopics

if TYPE_CHECKING:
    from pathlib import Path

    from edge.config import Config
    from edge.fleet.keys import AdminKeys
    from edge.identity.gallery import Gallery

log = logging.getLogger("facegate.fleet")

READ_WAIT_S = 1.0
"""How long after a SUBACK a read waits for retained messages it cannot count on."""


class PushConflict(FleetError):
    """Another push changed the site's bundle while this one ran."""

    exit_code = 3


def _nothing(stage: str, done: int, total: int) -> None:
    return None


# -- reading the broker's retained store ---------------------------------------------


def snapshot(
    link: AdminLink,
    topic_filter: str,
    deadline: float,
    *,
    complete: Callable[[dict[str, bytes]], bool] = lambda _: False,
    wait_s: float = READ_WAIT_S,
) -> dict[str, bytes]:
    """The retained messages under ``topic_filter`` (topic -> payload; cleared ones left out).

    Returns once ``complete(found)`` holds, or ``wait_s`` after the SUBACK.
    A lost connection starts the read again, until ``deadline``.
    """
    while True:
        try:
            return _snapshot_once(link, topic_filter, deadline, complete, wait_s)
        except BrokerError:
            if time.monotonic() >= deadline:
                raise


def _snapshot_once(
    link: AdminLink,
    topic_filter: str,
    deadline: float,
    complete: Callable[[dict[str, bytes]], bool],
    wait_s: float,
) -> dict[str, bytes]:
    generation = link.wait_connected(deadline)
    link.take()
    link.subscribe(topic_filter, deadline)
    found: dict[str, bytes] = {}
    end = min(deadline, time.monotonic() + wait_s)
    while not complete(found):
        if link.transport.generation != generation:
            raise BrokerError("mqtt: connection lost while reading")
        if not link.wait_message(end):
            break
        for topic, payload, retained in link.take():
            if retained and payload:
                found[topic] = payload
    link.unsubscribe(topic_filter)
    return found


@dataclass
class Previous:
    """What the broker held before a push."""

    info: ManifestInfo | None = None
    """The retained manifest (its signature unchecked when it is not ours)."""
    verified: bool = False
    names: list[str] | None = None
    revoked: list[Revocation] = field(default_factory=list)

    @property
    def version(self) -> int:
        return self.info.version if self.info is not None else 0

    @property
    def digest(self) -> str | None:
        return self.info.digest if self.info is not None else None


def _has_bundle(topics: FleetTopics) -> Callable[[dict[str, bytes]], bool]:
    """Whether a snapshot holds the manifest and every chunk it lists."""

    def done(found: dict[str, bytes]) -> bool:
        msg = found.get(topics.manifest)
        info = peek_manifest(msg) if msg else None
        if info is None:
            return False
        return all(topics.chunk(info.version, i) in found for i in range(len(info.chunks)))

    return done


def read_previous(
    link: AdminLink, topics: FleetTopics, keys: AdminKeys, site: str, deadline: float
) -> Previous:
    """The retained bundle: version, people and revocations (what can be read of it)."""
    found = snapshot(link, topics.gallery_all, deadline, complete=_has_bundle(topics))
    msg = found.get(topics.manifest)
    if not msg:
        return Previous()
    prev = Previous(peek_manifest(msg))
    try:
        info = read_manifest(msg, [keys.public_key], site=site)
        prev.info, prev.verified = info, True
        prev.revoked = open_revoked(info, keys.site_key)
        chunks = [found.get(topics.chunk(info.version, i), b"") for i in range(len(info.chunks))]
        prev.names = open_bundle(info, chunks, keys.site_key).names
    except BundleRefused as e:
        log.warning(
            "fleet: the bundle on the broker cannot be read (%s); its people and "
            "revocations come from this machine's record",
            e,
        )
    return prev


# -- this machine's record of its pushes ------------------------------------------------


@dataclass
class Record:
    """What the last push from this machine published (``fleet-<site>.pushed.json``)."""

    version: int = 0
    digest: str = ""
    names: list[str] = field(default_factory=list)
    revoked: list[Revocation] = field(default_factory=list)

    @staticmethod
    def path(cfg: Config) -> Path:
        return cfg.state_dir / f"fleet-{cfg.fleet.site}.pushed.json"

    @classmethod
    def load(cls, cfg: Config) -> Record:
        p = cls.path(cfg)
        if not exists(p, "fleet record", FleetError):
            return cls()
        try:
            d = json.loads(read_bounded(p, 16 * 1024 * 1024, "fleet record", FleetError))
            return cls(
                int(d["version"]),
                str(d["digest"]),
                [str(n) for n in d["names"]],
                [Revocation(str(n), int(v)) for n, v in d["revoked"]],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FleetError(f"{p}: damaged push record ({e}); move it aside") from None

    def save(self, cfg: Config) -> None:
        doc = {
            "version": self.version,
            "digest": self.digest,
            "names": self.names,
            "revoked": [[r.name, r.version] for r in self.revoked],
        }
        write_atomic(self.path(cfg), json.dumps(doc).encode(), "fleet record", FleetError)


# -- push ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """What a push published."""

    bundle: Bundle
    previous: int
    revoked: list[Revocation]
    newly_revoked: list[str]
    cleared: int
    republished: int


def plan_bundle(
    gallery: Gallery, cfg: Config, keys: AdminKeys, prev: Previous, record: Record, now: float
) -> tuple[Bundle, list[Revocation]]:
    """The next bundle: its version after both the broker's and this machine's, its revocations."""
    version = max(prev.version, record.version) + 1
    history = prev.revoked if prev.verified else record.revoked
    before = prev.names if prev.names is not None else record.names
    revoked = next_revocations(history, before, gallery.names, version)
    bundle = build_bundle(
        gallery,
        site=cfg.fleet.site,
        version=version,
        keys=keys,
        revoked=revoked,
        created=now,
        chunk_bytes=cfg.fleet.chunk_kib * 1024,
    )
    return bundle, revoked


def _check_unchanged(
    link: AdminLink, topics: FleetTopics, prev: Previous, version: int, deadline: float
) -> None:
    """Stop when another push replaced the manifest since this one read it."""
    found = snapshot(link, topics.manifest, deadline, complete=lambda f: bool(f))
    msg = found.get(topics.manifest)
    info = peek_manifest(msg) if msg else None
    # None: the broker lost it (a restart without persistence), which is no other push.
    if info is not None and info.digest != prev.digest:
        raise PushConflict(
            f"another push published version {info.version} while this one ran; version {version} "
            "was not published (its chunks are cleared by the next push): run push again"
        )


def _confirm(
    link: AdminLink, topics: FleetTopics, bundle: Bundle, deadline: float, progress: Progress
) -> tuple[dict[str, bytes], int]:
    """Read the bundle back until the broker holds all of it; (what was found, republished)."""
    v = bundle.info.version
    want = {topics.chunk(v, i): c for i, c in enumerate(bundle.chunks)}
    want[topics.manifest] = bundle.manifest
    republished = 0
    while True:
        found = snapshot(
            link,
            topics.gallery_all,
            deadline,
            complete=lambda f: all(f.get(t) == p for t, p in want.items()),
        )
        msg = found.get(topics.manifest)
        other = peek_manifest(msg) if msg and msg != bundle.manifest else None
        if other is not None and other.version >= v:
            raise PushConflict(
                f"another push published version {other.version} over this one ({v}); "
                "doors may hold either: run push again so that all of them agree"
            )
        missing = [(t, p) for t, p in want.items() if found.get(t) != p]
        if not missing:
            return found, republished
        if time.monotonic() >= deadline:
            raise FleetError(
                f"the broker does not keep {len(missing)} of the bundle's {len(want)} messages "
                f"(is this user allowed to publish on {topics.base}/#? see the ACL)"
            )
        # Chunks first, the manifest last, as in the first pass.
        missing.sort(key=lambda tp: tp[0] == topics.manifest)
        log.warning(
            "fleet: the broker lost %d messages of version %d; publishing them again",
            len(missing),
            v,
        )
        republished += len(missing)
        link.publish_all(missing, deadline, "republish", progress)


def _clear_others(
    link: AdminLink,
    topics: FleetTopics,
    found: dict[str, bytes],
    prev: Previous,
    version: int,
    deadline: float,
) -> int:
    """Clear the retained chunks of every other version (the previous one's, leftovers)."""
    stale = {t for t in found if (w := topics.parse_chunk(t)) is not None and w[0] != version}
    if prev.info is not None and prev.version != version:
        stale |= {topics.chunk(prev.version, i) for i in range(len(prev.info.chunks))}
    link.publish_all([(t, b"") for t in sorted(stale)], deadline, "clear")
    return len(stale)


def push(
    cfg: Config,
    gallery: Gallery,
    keys: AdminKeys,
    *,
    timeout: float = 60.0,
    progress: Progress = _nothing,
) -> PushResult:
    """Publish ``gallery`` to the site's doors (module docstring); FleetError/BrokerError."""
    deadline = time.monotonic() + timeout
    topics = FleetTopics.for_site(cfg.mqtt.prefix, cfg.fleet.site)
    with AdminLink(cfg, cfg.fleet.site) as link:
        prev = read_previous(link, topics, keys, cfg.fleet.site, deadline)
        record = Record.load(cfg)
        bundle, revoked = plan_bundle(gallery, cfg, keys, prev, record, time.time())
        v = bundle.info.version
        chunks = [(topics.chunk(v, i), c) for i, c in enumerate(bundle.chunks)]
        link.publish_all(chunks, deadline, "chunks", progress)
        _check_unchanged(link, topics, prev, v, deadline)
        link.publish_all([(topics.manifest, bundle.manifest)], deadline, "manifest", progress)
        found, republished = _confirm(link, topics, bundle, deadline, progress)
        cleared = _clear_others(link, topics, found, prev, v, deadline)
    Record(v, bundle.info.digest, gallery.names, revoked).save(cfg)
    before = set(prev.names if prev.names is not None else record.names)
    gone = sorted(before - set(gallery.names))
    return PushResult(bundle, prev.version, revoked, gone, cleared, republished)


# -- status --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoorStatus:
    """One door's view of the site, from its retained state."""

    device: str
    version: int
    digest: str | None
    people: int | None
    applied_at: str | None
    sync: str | None
    refused: dict[str, Any] | None
    online: bool | None
    lagging: bool
    still_grants: tuple[str, ...]
    """Revoked people this door's version still holds (revoked after it)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "version": self.version,
            "digest": self.digest,
            "people": self.people,
            "applied_at": self.applied_at,
            "sync": self.sync,
            "online": self.online,
            "lagging": self.lagging,
            "still_grants": list(self.still_grants),
            "refused": self.refused,
        }


@dataclass(frozen=True)
class SiteStatus:
    """The site's bundle on the broker and every door that reported one."""

    site: str
    current: ManifestInfo | None
    verified: bool
    revoked: list[Revocation]
    doors: list[DoorStatus]

    @property
    def lagging(self) -> list[DoorStatus]:
        return [d for d in self.doors if d.lagging]


def door_status(
    device: str, fleet: dict[str, Any], online: bool | None, current: Previous
) -> DoorStatus:
    """A door's line from the ``fleet`` member of its state and the site's bundle."""
    version = int(fleet.get("version") or 0)
    digest = fleet.get("digest")
    lagging = current.info is not None and (
        version < current.version
        or (version == current.version and digest != (current.digest or "")[:16])
    )
    grants = tuple(sorted({r.name for r in current.revoked if r.version > version}))
    return DoorStatus(
        device,
        version,
        str(digest) if digest else None,
        fleet.get("people"),
        fleet.get("applied_at"),
        fleet.get("sync"),
        fleet.get("refused"),
        online,
        lagging,
        grants if lagging else (),
    )


def _doors(cfg: Config, found: dict[str, bytes], current: Previous) -> list[DoorStatus]:
    from edge.fleet.topics import device_of_state

    prefix = cfg.mqtt.prefix
    out = []
    for topic, payload in sorted(found.items()):
        device = device_of_state(prefix, topic)
        if device is None or not topic.endswith("/state"):
            continue
        try:
            fleet = json.loads(payload).get("fleet")
        except (ValueError, AttributeError):
            continue
        if not isinstance(fleet, dict) or fleet.get("site") != cfg.fleet.site:
            continue
        avail = found.get(f"{prefix.rstrip('/')}/{device}/availability")
        online = None if avail is None else avail == b"online"
        out.append(door_status(device, fleet, online, current))
    return out


def status(
    cfg: Config, keys: AdminKeys, *, wait_s: float = 2.0, timeout: float = 30.0
) -> SiteStatus:
    """The site's bundle and every door's retained state (collected for ``wait_s``)."""
    deadline = time.monotonic() + timeout
    topics = FleetTopics.for_site(cfg.mqtt.prefix, cfg.fleet.site)
    prefix = cfg.mqtt.prefix.rstrip("/")
    with AdminLink(cfg, f"{cfg.fleet.site}-status") as link:
        found = snapshot(link, topics.manifest, deadline, complete=lambda f: bool(f))
        states = snapshot(link, f"{prefix}/+/state", deadline, wait_s=wait_s)
        states.update(snapshot(link, f"{prefix}/+/availability", deadline, wait_s=min(wait_s, 0.5)))
    current = Previous()
    msg = found.get(topics.manifest)
    if msg:
        current = Previous(peek_manifest(msg))
        try:
            info = read_manifest(msg, [keys.public_key], site=cfg.fleet.site)
            current.info, current.verified = info, True
            current.revoked = open_revoked(info, keys.site_key)
        except BundleRefused as e:
            log.warning("fleet: the manifest on the broker is refused: %s", e)
    return SiteStatus(
        cfg.fleet.site,
        current.info,
        current.verified,
        current.revoked,
        _doors(cfg, states, current),
    )


__all__ = [
    "READ_WAIT_S",
    "DoorStatus",
    "Previous",
    "PushConflict",
    "PushResult",
    "Record",
    "SiteStatus",
    "door_status",
    "plan_bundle",
    "push",
    "read_previous",
    "snapshot",
    "status",
]

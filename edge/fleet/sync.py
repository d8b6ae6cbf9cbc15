"""A door's side of the fleet as a state machine: connect, manifest, chunks, apply; the gate.

:class:`DeviceSync` knows no MQTT client and no thread: its owner
(:class:`edge.fleet.device.FleetDevice`) calls it with a link (subscribe,
unsubscribe) and the monotonic time, under one lock. Phases:

``starting``
    The process started and has not connected yet. Grants are held, at
    most ``fleet.sync_wait_s``: a door that cannot reach the broker then
    goes on with the bundle it holds (``offline``).
``offline``
    Not connected. Grants go on with the bundle held, unless
    ``fleet.max_age_s`` is set and it was not confirmed current for that
    long (``fleet_stale``: fail-secure).
``syncing``
    Connected: subscribed to the retained manifest, grants held until it
    is processed, or until ``fleet.sync_wait_s`` after the broker
    acknowledged the subscription (SUBACK) without one: the broker holds
    none.
``fetching``
    A verified manifest newer than the bundle held: its chunks are being
    collected (subscribed to that version's chunk topics); grants held,
    at most ``fleet.fetch_timeout_s``.
``applying``
    Every chunk arrived and checked, the bundle decrypted and parsed: the
    owner swaps it in (:meth:`DeviceSync.take_pending`, then
    :meth:`DeviceSync.applied`); grants held until then.
``current``
    Connected and holding the newest bundle the broker has (or there is
    none). While current, a new manifest starts a fetch at once.
``behind``
    Connected, but the newest *verified* bundle could not be applied (a bad
    or missing chunk, another model, another site key): the bundle held stays
    in force, grants go on, and with ``max_age_s`` the age keeps counting.
``unsubscribed``
    The broker refused the manifest subscription (an ACL): treated as offline.

The gate (:meth:`DeviceSync.gate`) is what the door asks before a grant:
``None``, or (reason, detail) with reason ``fleet_syncing`` or
``fleet_stale``. So after every (re)connect, a revocation waiting on the
broker is applied before the door grants anything again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from edge.fleet.bundle import (
    BAD_SIGNATURE,
    INCOMPLETE,
    MALFORMED,
    NOT_NEWER,
    WRONG_SITE,
    BundleRefused,
    ManifestInfo,
    check_chunk,
    check_model,
    open_bundle,
    peek_manifest,
    read_manifest,
)

if TYPE_CHECKING:
    from edge.fleet.keys import DoorKeys
    from edge.fleet.store import Held
    from edge.fleet.topics import FleetTopics
    from edge.identity.gallery import Gallery

log = logging.getLogger("facegate.fleet")

STARTING = "starting"
OFFLINE = "offline"
SYNCING = "syncing"
FETCHING = "fetching"
APPLYING = "applying"
CURRENT = "current"
BEHIND = "behind"
UNSUBSCRIBED = "unsubscribed"
HOLDING = frozenset({STARTING, SYNCING, FETCHING, APPLYING})
"""The phases in which the door grants nothing."""

FLEET_SYNCING = "fleet_syncing"
"""Denial reason: the gallery is being brought up to date (after a (re)connect, a new bundle)."""
FLEET_STALE = "fleet_stale"
"""Denial reason: ``fleet.max_age_s`` passed without the gallery being confirmed current."""
UNVERIFIED = frozenset({BAD_SIGNATURE, MALFORMED, WRONG_SITE})
"""Refusals of manifests that are not the site's: they say nothing of what is newest."""


class SubscribeLink(Protocol):
    """What the machine needs of the broker connection."""

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> int | None: ...

    def unsubscribe(self, topic_filter: str) -> object: ...


@dataclass(frozen=True)
class Refusal:
    """A bundle refused: its version (when readable), the reason code, a detail."""

    version: int | None
    reason: str
    detail: str


@dataclass(frozen=True)
class Pending:
    """A complete, checked bundle waiting to be applied."""

    info: ManifestInfo
    gallery: Gallery
    chunks: tuple[bytes, ...]


@dataclass
class Fetch:
    """The chunks of one manifest being collected."""

    info: ManifestInfo
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)

    def missing(self) -> list[int]:
        return [i for i in range(len(self.info.chunks)) if i not in self.chunks]


@dataclass(frozen=True)
class Limits:
    """``[fleet]``'s timing: sync_wait_s, fetch_timeout_s, max_age_s (0: off)."""

    sync_wait_s: float
    fetch_timeout_s: float
    max_age_s: float = 0.0


class DeviceSync:
    """The door's fleet state (see the module); every method under the owner's lock."""

    def __init__(
        self,
        topics: FleetTopics,
        keys: DoorKeys,
        model: tuple[str, str],
        held: Held | None,
        floor: int,
        limits: Limits,
        *,
        now: float,
        confirmed: float,
        refused: Callable[[Refusal], None],
        pending: Callable[[], None],
    ) -> None:
        self.topics, self.keys, self.limits = topics, keys, limits
        self.site = topics.site
        self.model_sha256, self.manifest_sha256 = model
        self.held = held
        self.floor = floor
        self.phase = STARTING
        self.started = now
        self.confirmed = confirmed
        """Monotonic time the gallery was last known current (-inf: never)."""
        self.last_refusal: Refusal | None = None
        self.connections = 0
        """Connections so far (each one starts a sync)."""
        self._on_refused, self._on_pending = refused, pending
        self._connected = False
        self._manifest_mid: int | None = None
        self._suback_at: float | None = None
        self._fetch: Fetch | None = None
        self._pending: Pending | None = None

    @property
    def version(self) -> int:
        return self.held.info.version if self.held is not None else 0

    # -- the connection ----------------------------------------------------------------
    def connected(self, link: SubscribeLink, now: float) -> None:
        """A (re)connect: subscribe to the manifest; grants held until it is processed."""
        self._connected = True
        self.connections += 1
        self._fetch = None  # a clean session: the chunk subscription is gone
        self._suback_at = None
        self.phase = SYNCING
        self.started = now
        self._manifest_mid = link.subscribe(self.topics.manifest)

    def subscribed(self, mid: int, granted: bool, now: float) -> None:
        if mid != self._manifest_mid:
            return
        if not granted:
            log.error(
                "fleet: the broker refused the subscription to %s (ACL?)", self.topics.manifest
            )
            self.phase = UNSUBSCRIBED
            return
        self._suback_at = now

    def disconnected(self, now: float) -> None:
        if self.phase == CURRENT:
            self.confirmed = now
        self._connected = False
        self._fetch = None
        self.phase = APPLYING if self._pending is not None else OFFLINE

    # -- messages ------------------------------------------------------------------------
    def message(self, link: SubscribeLink, topic: str, payload: bytes, now: float) -> bool:
        """A message on the fleet's topics (True) or someone else's (False)."""
        if topic == self.topics.manifest:
            self._manifest(link, payload, now)
            return True
        where = self.topics.parse_chunk(topic)
        if where is None:
            return False
        self._chunk(link, where[0], where[1], payload)
        return True

    def _manifest(self, link: SubscribeLink, payload: bytes, now: float) -> None:
        if not payload:  # cleared: the broker holds no bundle
            self._settle(CURRENT)
            return
        try:
            info = read_manifest(payload, self.keys.public_keys, site=self.site)
            check_model(info, self.model_sha256, self.manifest_sha256)
            self._check_newer(info)
        except BundleRefused as e:
            peek = peek_manifest(payload)
            self._refuse(Refusal(peek.version if peek else None, e.reason, e.detail))
            # A verified bundle this door cannot use leaves it behind; a forgery or
            # a replay says nothing of what is newest (it only ends the wait).
            if e.reason not in UNVERIFIED and e.reason != NOT_NEWER:
                self._settle(BEHIND)
            elif self.phase == SYNCING:
                self._settle(CURRENT)
            return
        except _AlreadyHeld:
            self._settle(CURRENT)
            return
        self._start_fetch(link, info, now)

    def _check_newer(self, info: ManifestInfo) -> None:
        held = self.held.info if self.held is not None else None
        if held is not None and info.version == held.version and info.digest == held.digest:
            raise _AlreadyHeld
        floor = max(self.version, self.floor)
        if info.version < floor or (held is not None and info.version == held.version):
            same = " (the same version, another bundle)" if info.version == self.version else ""
            raise BundleRefused(
                NOT_NEWER,
                f"version {info.version} is not newer than the one held "
                f"({self.version}, newest applied {self.floor}){same}: a replay?",
            )

    def _start_fetch(self, link: SubscribeLink, info: ManifestInfo, now: float) -> None:
        p, f = self._pending, self._fetch
        if p is not None and p.info.digest == info.digest:
            self.phase = APPLYING
            return
        if f is not None and f.info.digest == info.digest:
            return  # the same manifest again (a re-publish)
        if f is not None:
            link.unsubscribe(self.topics.chunks(f.info.version))
        self._fetch = Fetch(info, now)
        self.phase = FETCHING
        log.info("fleet: fetching %s", info.describe())
        link.subscribe(self.topics.chunks(info.version))

    def _chunk(self, link: SubscribeLink, version: int, index: int, payload: bytes) -> None:
        f = self._fetch
        if f is None or version != f.info.version or not payload:
            return  # another version's chunk, or one being cleared
        try:
            check_chunk(f.info, index, payload)
        except BundleRefused as e:
            self._abort(link, Refusal(version, e.reason, e.detail))
            return
        f.chunks[index] = payload
        if f.missing():
            return
        chunks = tuple(f.chunks[i] for i in range(len(f.info.chunks)))
        try:
            gallery = open_bundle(f.info, chunks, self.keys.site_key)
        except BundleRefused as e:
            self._abort(link, Refusal(version, e.reason, e.detail))
            return
        link.unsubscribe(self.topics.chunks(version))
        self._fetch = None
        self._pending = Pending(f.info, gallery, chunks)
        self.phase = APPLYING
        self._on_pending()

    def _abort(self, link: SubscribeLink, refusal: Refusal) -> None:
        """A verified bundle that cannot be applied: keep what is held, say why."""
        f = self._fetch
        if f is not None:
            link.unsubscribe(self.topics.chunks(f.info.version))
        self._fetch = None
        self._refuse(refusal)
        self._settle(BEHIND)

    def _refuse(self, refusal: Refusal) -> None:
        self.last_refusal = refusal
        self._on_refused(refusal)

    def _settle(self, phase: str) -> None:
        """The manifest was processed: ``phase`` when connected (else offline)."""
        if self._pending is not None:
            self.phase = APPLYING
        elif self._fetch is not None:
            self.phase = FETCHING
        else:
            self.phase = phase if self._connected else OFFLINE

    # -- time ----------------------------------------------------------------------------
    def tick(self, link: SubscribeLink, now: float) -> None:
        """Timeouts: no manifest after the SUBACK, chunks that never come; the confirmation."""
        self._expire(now)
        if self.phase == SYNCING and self._suback_at is not None:
            if now - self._suback_at >= self.limits.sync_wait_s:
                log.info("fleet: no bundle on the broker for site %r", self.site)
                self._settle(CURRENT)
        elif self.phase == SYNCING and now - self.started > self.limits.fetch_timeout_s:
            log.error("fleet: no answer to the subscription to %s", self.topics.manifest)
            self.phase = UNSUBSCRIBED
        f = self._fetch
        if f is not None and now - f.started > self.limits.fetch_timeout_s:
            missing = f.missing()
            detail = (
                f"version {f.info.version}: {len(missing)} of {len(f.info.chunks)} chunks "
                f"missing after {self.limits.fetch_timeout_s:g} s (first: {missing[:5]})"
            )
            self._abort(link, Refusal(f.info.version, INCOMPLETE, detail))
        if self.phase == CURRENT:
            self.confirmed = now

    def _expire(self, now: float) -> None:
        if self.phase == STARTING and now - self.started > self.limits.sync_wait_s:
            self.phase = OFFLINE

    # -- applying --------------------------------------------------------------------------
    def take_pending(self) -> Pending | None:
        """The complete bundle to apply now (once), or None."""
        p, self._pending = self._pending, None
        return p

    def applied(self, held: Held, now: float) -> None:
        """The owner swapped ``held`` in: it is in force; grants resume."""
        self.held = held
        self.floor = max(self.floor, held.info.version)
        self.confirmed = now
        if self.phase == APPLYING:
            self._settle(CURRENT)

    def failed(self, refusal: Refusal) -> None:
        """The owner could not swap the pending bundle in: the one held stays in force."""
        self._refuse(refusal)
        self._settle(BEHIND)

    # -- the gate ----------------------------------------------------------------------------
    def gate(self, now: float) -> tuple[str, str] | None:
        """None when the door may grant; else (reason, detail)."""
        self._expire(now)
        if self.phase in HOLDING:
            return FLEET_SYNCING, f"the gallery is being brought up to date ({self.phase})"
        max_age = self.limits.max_age_s
        if max_age > 0 and self.phase != CURRENT and now - self.confirmed > max_age:
            age = now - self.confirmed
            known = f"for {age:.0f} s" if age != float("inf") else "since start"
            return FLEET_STALE, (
                f"the gallery was not confirmed current {known} (fleet.max_age_s {max_age:g}); "
                f"{self.phase}"
            )
        return None


class _AlreadyHeld(Exception):
    """The manifest is the bundle held: nothing to do."""


__all__ = [
    "APPLYING",
    "BEHIND",
    "CURRENT",
    "FETCHING",
    "FLEET_STALE",
    "FLEET_SYNCING",
    "HOLDING",
    "OFFLINE",
    "STARTING",
    "SYNCING",
    "UNSUBSCRIBED",
    "DeviceSync",
    "Fetch",
    "Limits",
    "Pending",
    "Refusal",
    "SubscribeLink",
]

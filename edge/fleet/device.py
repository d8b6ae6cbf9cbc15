"""The door's fleet side as an extension of the MQTT publisher: :class:`FleetDevice`.

It joins :class:`edge.daemon.Publisher`'s extensions when ``fleet.enabled``
and drives :class:`edge.fleet.sync.DeviceSync` from the publisher's hooks
(connect, SUBACK, messages, disconnect: paho's thread; tick: the delivery
loop's), under one lock. What it offers the service:

* :meth:`FleetDevice.gallery`: the bundle held in ``service.state_dir``
  (checked again at start), or an empty gallery bound to this embedder;
* :meth:`FleetDevice.take_pending` / :meth:`FleetDevice.applied`: a complete,
  checked bundle, which the owner of the recognizer swaps in on its own
  thread exactly as a gallery reload does (``on_pending`` says one is
  waiting); only then is it stored, the rollback floor raised and the gate
  opened;
* :meth:`FleetDevice.gate`: what the door asks before a grant;
* :meth:`FleetDevice.state`: the ``fleet`` member of the retained state
  (``site``, ``version``, ``digest``, ``model``, ``people``, ``applied_at``,
  ``sync``, ``refused``);
* events through the publisher's sink: ``fleet_applied`` and
  ``fleet_refused`` (with ``reason`` and ``detail``), each also logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.clock import clock_synced
from edge.delivery.events import iso_utc
from edge.delivery.extension import Extension, MqttLink
from edge.errors import FacegateError
from edge.fleet.keys import door_keys
from edge.fleet.store import FleetStore, Held
from edge.fleet.sync import CURRENT, DeviceSync, Limits, Pending, Refusal
from edge.fleet.topics import FleetTopics
from edge.identity.gallery import Gallery

if TYPE_CHECKING:
    from edge.config import Config
    from edge.door.record import EventSink

log = logging.getLogger("facegate.fleet")

APPLIED = "fleet_applied"
REFUSED = "fleet_refused"
CONFIRM_EVERY_S = 30.0
"""With ``max_age_s``: the confirmation is written at most this often (or max_age_s / 4)."""


def model_identity(cfg: Config) -> tuple[str, str, int]:
    """(model sha256, manifest digest, embedding size) of the configured embedder's manifest."""
    from edge.identity.gallery import manifest_digest
    from edge.vision.manifest import load_manifest

    m = load_manifest(cfg.model_path(cfg.embedder.model))
    return m.sha256, manifest_digest(m), m.embedding_size or 0


@dataclass(frozen=True)
class Probe:
    """The fleet's side of a door at one instant (:meth:`FleetDevice.probe`)."""

    connections: int
    phase: str
    version: int
    gate: tuple[str, str] | None


class FleetDevice(Extension):
    """The fleet on a door (see the module). ``model``: (sha256, digest, size) for tests."""

    def __init__(
        self,
        cfg: Config,
        *,
        model: tuple[str, str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        synced: Callable[[], bool] = clock_synced,
    ) -> None:
        f = cfg.fleet
        self.cfg = cfg
        self.topics = FleetTopics.for_site(cfg.mqtt.prefix, f.site)
        self.store = FleetStore(cfg.state_dir, f.site)
        self.limits = Limits(f.sync_wait_s, f.fetch_timeout_s, f.max_age_s)
        self.events: EventSink | None = None
        """Where ``fleet_applied`` / ``fleet_refused`` go (the daemon's publisher)."""
        self.on_pending: Callable[[], None] = lambda: None
        """Called (under the lock: only flag it) when a bundle waits to be applied."""
        self.on_state: Callable[[], None] = lambda: None
        """Called after a refusal, to send the state (its ``fleet.refused``) now."""
        self._model = model
        self._clock, self._wall, self._synced = clock, wall, synced
        self._lock = threading.Lock()
        self._sync: DeviceSync | None = None
        self._empty: Gallery | None = None
        self._refused_at: float | None = None
        self._outgoing: list[tuple[str, dict[str, Any]]] = []
        self._confirmed_written = float("-inf")

    # -- start ----------------------------------------------------------------------------
    def start(self) -> None:
        """Read the keys and the held bundle (ConfigError for a missing or bad key)."""
        if self._sync is not None:
            return
        keys = door_keys(self.cfg)
        sha, digest, size = self._model or model_identity(self.cfg)
        self._empty = Gallery(sha, size, manifest_sha256=digest)
        held = self.store.load(keys, sha, digest)
        now = self._clock()
        self._sync = DeviceSync(
            self.topics,
            keys,
            (sha, digest),
            held,
            self.store.floor(),
            self.limits,
            now=now,
            confirmed=self._start_confirmed(now),
            refused=self._refused,
            pending=lambda: self.on_pending(),
        )
        what = held.info.describe() if held is not None else "no bundle yet"
        log.info("fleet: site %r, holding %s", self.cfg.fleet.site, what)

    def _start_confirmed(self, now: float) -> float:
        """When the gallery was last known current, on the monotonic clock (-inf: unknown)."""
        if self.limits.max_age_s <= 0:
            return now
        wall, last = self._wall(), self.store.confirmed()
        if last is None or not self._synced() or last > wall:
            return float("-inf")  # an unsynchronised clock cannot say how old it is
        return now - (wall - last)

    @property
    def sync(self) -> DeviceSync:
        if self._sync is None:
            raise FacegateError("fleet: not started")
        return self._sync

    def gallery(self) -> Gallery:
        """The gallery held (an empty one bound to this embedder when none is)."""
        with self._lock:
            held = self.sync.held
        if held is not None:
            return held.gallery
        assert self._empty is not None
        return self._empty

    @property
    def model_sha256(self) -> str:
        assert self._empty is not None
        return self._empty.model_sha256

    # -- the publisher's hooks --------------------------------------------------------------
    def connected(self, link: MqttLink) -> None:
        with self._lock:
            self.sync.connected(link, self._clock())

    def subscribed(self, link: MqttLink, mid: int, granted: bool) -> None:
        with self._lock:
            self.sync.subscribed(mid, granted, self._clock())

    def disconnected(self) -> None:
        with self._lock:
            self.sync.disconnected(self._clock())

    def message(self, link: MqttLink, topic: str, payload: bytes, retained: bool) -> bool:
        with self._lock:
            mine = self.sync.message(link, topic, payload, self._clock())
        self._flush()
        return mine

    def tick(self, link: MqttLink, now: float) -> None:
        with self._lock:
            self.sync.tick(link, self._clock())
            confirm = self._should_confirm()
        self._flush()
        if confirm:
            try:
                self.store.confirm(self._wall())
            except FacegateError as e:
                log.warning("fleet: cannot record the confirmation: %s", e)

    def _should_confirm(self) -> bool:
        now = self._clock()
        every = max(CONFIRM_EVERY_S, self.limits.max_age_s / 4)
        if self.limits.max_age_s <= 0 or self.sync.phase != CURRENT or not self._synced():
            return False
        if now - self._confirmed_written < every:
            return False
        self._confirmed_written = now
        return True

    def state(self) -> dict[str, Any]:
        """The ``fleet`` member of the retained state."""
        with self._lock:
            s = self.sync
            held, phase, refusal = s.held, s.phase, s.last_refusal
        info = held.info if held is not None else None
        refused = None
        if refusal is not None:
            at = iso_utc(self._refused_at) if self._refused_at is not None else None
            refused = {**_refusal_fields(refusal), "at": at}
        return {
            "fleet": {
                "site": self.cfg.fleet.site,
                "version": info.version if info else 0,
                "digest": info.digest[:16] if info else None,
                "model": self.model_sha256,
                "people": len(held.gallery) if held else 0,
                "applied_at": iso_utc(held.applied_at) if held else None,
                "sync": phase,
                "refused": refused,
            }
        }

    # -- applying (the recognizer's thread) ---------------------------------------------------
    def take_pending(self) -> Pending | None:
        """The complete bundle to swap in now, or None. Grants stay held until :meth:`applied`."""
        with self._lock:
            return self.sync.take_pending()

    def applied(self, pending: Pending) -> Held:
        """``pending`` is in force: remember it (state_dir), open the gate, say so."""
        wall = self._wall()
        held = Held(pending.info, pending.gallery, wall, pending.chunks)
        fields = {
            "version": pending.info.version,
            "people": len(pending.gallery),
            "digest": pending.info.digest[:16],
            "detail": f"gallery version {pending.info.version} applied",
        }
        with self._lock:
            fields["previous"] = before = self.sync.version
            self.sync.applied(held, self._clock())
            self._emit(APPLIED, fields)
        try:
            self.store.save(pending.info, pending.chunks, wall)
        except FacegateError as e:  # in force anyway; a restart fetches it again
            log.error("fleet: version %d applied but not stored: %s", pending.info.version, e)
        log.info("fleet: applied %s (was version %d)", pending.info.describe(), before)
        self._flush()
        return held

    def apply_failed(self, pending: Pending, error: Exception) -> None:
        """Swapping ``pending`` in failed: refused (malformed), the gallery held stays."""
        from edge.fleet.bundle import MALFORMED

        with self._lock:
            detail = f"version {pending.info.version} could not be applied ({error})"
            self.sync.failed(Refusal(pending.info.version, MALFORMED, detail))
        self._flush()

    def gate(self) -> tuple[str, str] | None:
        """None when the door may grant now; else (denial reason, detail)."""
        with self._lock:
            return self.sync.gate(self._clock())

    def probe(self) -> Probe:
        """Connections, phase, version and the gate, read at one instant (tools, tests)."""
        with self._lock:
            s = self.sync
            return Probe(s.connections, s.phase, s.version, s.gate(self._clock()))

    # -- events ---------------------------------------------------------------------------------
    def _refused(self, refusal: Refusal) -> None:
        """DeviceSync's callback (lock held): log now, publish after the lock."""
        self._refused_at = self._wall()
        log.warning(
            "fleet: refused bundle version %s: %s: %s",
            refusal.version,
            refusal.reason,
            refusal.detail,
        )
        self._emit(REFUSED, _refusal_fields(refusal))

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        """Queue an event (lock held); :meth:`_flush` publishes it once the lock is free."""
        self._outgoing.append((kind, fields))

    def _flush(self) -> None:
        with self._lock:
            out, self._outgoing = self._outgoing, []
        sink = self.events
        for kind, fields in out:
            if sink is None:
                continue
            try:
                sink.publish_event(kind, {"site": self.cfg.fleet.site, **fields})
            except FacegateError as e:
                log.warning("fleet: event %s not stored: %s", kind, e)
        if any(kind == REFUSED for kind, _ in out):
            self.on_state()


def _refusal_fields(r: Refusal) -> dict[str, Any]:
    return {"version": r.version, "reason": r.reason, "detail": r.detail}


__all__ = ["APPLIED", "REFUSED", "FleetDevice", "Probe", "model_identity"]

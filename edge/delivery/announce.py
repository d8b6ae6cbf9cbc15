"""What the device says about itself on the broker: availability, state, presence, statuses.

Availability means ready: until :meth:`Announcer.set_ready` (the daemon calls
it once the models are loaded and the camera delivered a frame) the device
says ``offline``; from then on every connect announces the extensions'
messages (Home Assistant's discovery configs), one complete state message,
the presence and ``online``, in that order. The Last Will publishes
``offline`` (retained) when the connection dies without a DISCONNECT, and a
clean stop says ``offline`` itself (:meth:`Announcer.farewell`, then the
transport). The state is published once per ``mqtt.state_interval_s`` from
the delivery loop's :meth:`~Announcer.tick` (and at once when the gallery
changes); :meth:`Announcer.set_state` only merges fields. Retained status
topics (the door's) are sent when set and again on every connect.

Everything that announces runs under one lock (the transport's), from the
daemon's thread (``set_ready``, ``set_gallery``, ``set_presence``) and from
paho's (on connect), so a connection and a readiness that race announce once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from edge.delivery.codec import encode
from edge.delivery.events import ABSENT, OFFLINE, ONLINE, PRESENT, build_state
from edge.delivery.signing import STATUS_SIG_CONTEXT, sign_key, sign_payload

if TYPE_CHECKING:
    from edge.config import Config
    from edge.delivery.extension import Extension
    from edge.delivery.topics import Topics
    from edge.delivery.transport import MqttTransport

log = logging.getLogger("facegate.mqtt")


class Announcer:
    """Availability, state, presence, statuses and the extensions' announcements."""

    def __init__(
        self,
        cfg: Config,
        topics: Topics,
        link: MqttTransport,
        extensions: Sequence[Extension],
        extra_state: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.link = link
        self.extensions = tuple(extensions)
        self._extra_state = extra_state
        self._lock = link.lock
        self._state_lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._status: dict[str, bytes] = {}  # door: retained <base>/<name> topics
        self._key = sign_key(cfg)
        self._ready = threading.Event()
        self._presence = False
        self._state_sent = 0.0  # monotonic time of the last state message

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def _live(self) -> bool:
        return self.link.connected.is_set() and self._ready.is_set()

    # -- the daemon's side -------------------------------------------------------------

    def set_state(self, **fields: Any) -> None:
        """Merge ``fields`` into the retained state (published per period)."""
        with self._state_lock:
            self._state.update(fields)

    def publish_status(self, name: str, fields: dict[str, Any]) -> None:
        """A retained status topic ``<base>/<name>`` (the door's): sent now and on every connect.

        Signed like the events when ``events.sign_key_*`` is set, with its
        own context (:data:`edge.delivery.signing.STATUS_SIG_CONTEXT`).
        """
        body = encode(build_state(self.cfg.device.id, **fields))
        payload = body if self._key is None else sign_payload(body, self._key, STATUS_SIG_CONTEXT)
        topic = f"{self.topics.base}/{name}"
        with self._state_lock:
            self._status[topic] = payload
        if self.link.connected.is_set():
            self.link.publish(topic, payload, retain=True)

    def set_ready(self) -> None:
        """The device is ready: announce it (when connected), ``online``."""
        with self._lock:
            if self._ready.is_set():
                return
            self._ready.set()
            if self.link.connected.is_set():
                self._announce()
        log.info("mqtt: ready; %s is online", self.topics.availability)

    def set_gallery(self, names: Sequence[str]) -> None:
        """The enrolled names changed: the extensions hear it, the state goes out now."""
        people = tuple(sorted(set(names)))
        with self._lock:
            live = self._live()
            for ext in self.extensions:
                ext.gallery_changed(self.link if live else None, people)
            if live:
                self.publish_state()

    def set_presence(self, present: bool) -> None:
        """A face is (or no longer is) tracked in front of the camera: ``presence`` ON/OFF."""
        with self._lock:
            if present == self._presence:
                return
            self._presence = present
            if self._live():
                self._publish_presence()

    # -- the connection's side ---------------------------------------------------------

    def on_connect(self) -> None:
        """A new connection (transport lock held): statuses, then announce or say ``offline``."""
        with self._state_lock:
            statuses = list(self._status.items())
        for topic, payload in statuses:
            self.link.publish(topic, payload, retain=True)
        if self._ready.is_set():
            self._announce()
        else:
            # Not ready (yet): say so, in case a stale "online" is retained.
            self.link.publish(self.topics.availability, OFFLINE, retain=True)

    def tick(self, now: float) -> None:
        """The delivery loop, while connected: the state once per period; the extensions."""
        interval = self.cfg.mqtt.state_interval_s
        if self._ready.is_set() and now - self._state_sent >= interval:
            # Once per period (set_state only merges). Under the lock, so an
            # announce in progress (which sends one) is seen.
            with self._lock:
                if time.monotonic() - self._state_sent >= interval:
                    self.publish_state()
        for ext in self.extensions:
            ext.tick(self.link, now)

    def farewell(self) -> None:
        """Stopping, still connected: the daemon's last word (``status: offline``) when ready."""
        if self._ready.is_set():
            self.publish_state()

    def publish_state(self) -> None:
        """One complete state message now (retained), with the outbox's fields."""
        if not self.link.connected.is_set():
            return
        with self._state_lock:
            fields = dict(self._state)
        fields.update(self._extra_state())
        for ext in self.extensions:
            fields.update(ext.state())
        payload = build_state(self.cfg.device.id, **fields)
        self._state_sent = time.monotonic()
        self.link.publish(self.topics.state, encode(payload), retain=True)

    def _publish_presence(self) -> None:
        self.link.publish(self.topics.presence, PRESENT if self._presence else ABSENT, retain=True)

    def _announce(self) -> None:
        """The extensions' messages, one complete state, presence, then ``online`` (locked)."""
        for ext in self.extensions:
            ext.announce(self.link)
        self.publish_state()
        self._publish_presence()
        self.link.publish(self.topics.availability, ONLINE, retain=True)


__all__ = ["Announcer"]

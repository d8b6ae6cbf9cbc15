"""New unknown visitors on MQTT: the crop and the entry, for a Home Assistant notification.

With ``review.notify = true`` the daemon's review watcher
(:class:`edge.review.watch.UnknownReview`) hands each visit it kept to
:meth:`UnknownNotifier.push`; the publisher's delivery thread sends it at
its next :meth:`UnknownNotifier.tick`: the crop as a raw JPEG on
``<prefix>/<device.id>/unknown/image`` (Home Assistant's "Unknown visitor"
image entity shows it), then the entry on ``<prefix>/<device.id>/unknown``::

    {"id": 12, "visit": 31, "visits": 6, "ts": "2026-01-02T03:04:05Z", "distance": 0.81}

(``id``: the entry, as ``facegate unknowns show 12`` names it; ``visits``:
how many visits it holds now). Neither is retained nor queued in the
outbox: a notification is for now; while the broker is away they are
dropped (at most :data:`QUEUE` wait), and the ring keeps the visit anyway.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from edge.delivery.codec import encode
from edge.delivery.extension import Extension, MqttLink
from edge.delivery.topics import Topics

if TYPE_CHECKING:
    from edge.config import Config
    from edge.review.ring import Visit

log = logging.getLogger("facegate.review")

QUEUE = 8
"""Notifications waiting for the broker at most; older ones are dropped."""


def unknown_payload(visit: Visit, visits: int) -> dict[str, Any]:
    """The ``unknown`` topic's JSON for a visit of an entry with ``visits`` visits."""
    return {
        "id": visit.cluster,
        "visit": visit.id,
        "visits": visits,
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(visit.ts)),
        "distance": round(visit.distance, 4),
    }


class UnknownNotifier(Extension):
    """Sends each new unknown visit (crop, then entry) while connected; see the module docstring."""

    def __init__(self, cfg: Config) -> None:
        self.enabled = cfg.review.notify
        self.topics = Topics.for_device(cfg.mqtt.prefix, cfg.device.id)
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[bytes, bytes]] = collections.deque(maxlen=QUEUE)
        self.sent = 0

    def push(self, visit: Visit, visits: int) -> None:
        """A visit was kept (the daemon's loop thread): queue it for the next tick."""
        if not self.enabled:
            return
        with self._lock:
            self._queue.append((visit.jpeg, encode(unknown_payload(visit, visits))))

    def tick(self, link: MqttLink, now: float) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                jpeg, entry = self._queue.popleft()
            link.publish(self.topics.unknown_image, jpeg)
            link.publish(self.topics.unknown, entry)
            self.sent += 1


__all__ = ["QUEUE", "UnknownNotifier", "unknown_payload"]

"""Each stored event as it goes out: its ``delivery`` decided now, signed now, its snapshot first.

The outbox stores an event once; it may be sent several times (a reconnect,
a restart). :class:`EventSender` turns a stored row into what goes on the
wire *at this send*: ``delivery`` (:func:`edge.delivery.events.delivery_of`):
an event that waited out a broker outage past its ``expires_at`` goes out
``late``, every other field unchanged; the signature
(:func:`edge.delivery.signing.wire_event`), which covers that ``delivery``;
for a live event with ``mqtt.snapshot``, the face crop on the ``snapshot``
topic just before it. After a live decision event, ``sent(event)`` tells the
owner (Home Assistant's "Last person" follows it).

What only this process knows about an event (when its face was seen, on the
monotonic clock, and its JPEG) is kept here per ``seq`` until the PUBACK.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from edge.delivery.events import LIVE, delivery_of
from edge.delivery.signing import wire_event

if TYPE_CHECKING:
    from edge.delivery.outbox import Row
    from edge.delivery.topics import Topics

SNAPSHOTS_KEPT = 16
"""Face crops kept in memory for events not yet sent (never written to disk)."""


class Publish(Protocol):
    """Hand one QoS 1 message over; its mid, None when there is no connection."""

    def __call__(self, topic: str, payload: bytes) -> int | None: ...


class EventSender:
    """Sends stored rows with their delivery decided at each send (see the module)."""

    def __init__(
        self,
        topics: Topics,
        *,
        sign_key: bytes | None,
        valid_for_s: float,
        synced: Callable[[], bool],
        max_kept: int,
        sent: Callable[[dict[str, Any]], None] = lambda event: None,
    ) -> None:
        self.topics = topics
        self.sign_key = sign_key
        self.valid_for_s = valid_for_s
        self._synced = synced
        self._max_kept = max_kept
        self._sent = sent
        self._lock = threading.Lock()
        self._seen: dict[int, float] = {}
        self._snapshots: dict[int, bytes] = {}

    def remember(self, seq: int, seen: float, jpeg: bytes | None) -> None:
        """What this process knows of a stored event: when its face was seen, its crop."""
        with self._lock:
            self._seen[seq] = seen
            while len(self._seen) > self._max_kept:
                del self._seen[next(iter(self._seen))]  # dropped from the outbox too
            if jpeg is not None:
                self._snapshots[seq] = jpeg
                while len(self._snapshots) > SNAPSHOTS_KEPT:
                    del self._snapshots[next(iter(self._snapshots))]

    def forget(self, seqs: list[int]) -> None:
        """The broker has these events: nothing more to keep about them."""
        with self._lock:
            for seq in seqs:
                self._seen.pop(seq, None)
                self._snapshots.pop(seq, None)

    def send(self, row: Row, publish: Publish) -> int | None:
        """Hand one stored event over with its ``delivery`` decided now; its mid.

        A live event is preceded by its snapshot (if any) and followed by
        ``sent(event)``; a late one goes alone, every field but ``delivery``
        as stored.
        """
        try:
            doc = json.loads(row.payload)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return publish(row.topic, row.payload)  # not ours to interpret: as it is
        if "expires_at_unix" not in doc:
            # A door record, or an older version's event left in the outbox:
            # as stored, signed now (the key may be newer than the row).
            return publish(row.topic, wire_event(doc, self.sign_key))
        with self._lock:
            seen = self._seen.get(row.seq)
            jpeg = self._snapshots.pop(row.seq, None)
        delivery = delivery_of(
            doc,
            valid_for_s=self.valid_for_s,
            age_s=None if seen is None else time.monotonic() - seen,
            now=time.time(),
            synced_now=self._synced(),
        )
        doc["delivery"] = delivery
        # Signed at each send: the signature covers the delivery decided now.
        payload = wire_event(doc, self.sign_key)
        live = delivery == LIVE
        if live and jpeg is not None:
            publish(self.topics.snapshot, jpeg)
        mid = publish(row.topic, payload)
        if live:
            self._sent(doc)
        return mid


__all__ = ["SNAPSHOTS_KEPT", "EventSender", "Publish"]

"""What the door did, told twice: one audit entry, then one event through an :class:`EventSink`.

The door never imports the MQTT side. It publishes through the small
:class:`EventSink` Protocol, which the daemon's publishers satisfy
(:class:`edge.delivery.publishers.PublisherLike` has both methods); with no
sink (``facegate door test``) only the audit log is written. The audit entry
comes first, under one lock, so audit ids and event sequence numbers are in
the same order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import edge.door.audit as aud

log = logging.getLogger("facegate.door")


class EventSink(Protocol):
    """Where door events go: the daemon's publisher (outbox + retained status topic)."""

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]: ...

    def publish_status(self, name: str, fields: dict[str, Any]) -> None: ...


class Recorder:
    """Writes each door outcome to the audit log, then publishes it to the sink (if any).

    Neither failure stops the door: an audit entry that cannot be stored is
    logged and its event still goes out; an event that cannot be published
    is logged.
    """

    def __init__(
        self,
        audit: aud.AuditLog,
        events: EventSink | None,
        wall: Callable[[], float],
        synced: Callable[[], bool],
    ) -> None:
        self.audit = audit
        self.events = events
        self._wall = wall
        self._synced = synced
        self._lock = threading.Lock()  # audit id order == event seq order

    def record(
        self,
        kind: str,
        *,
        name: str | None = None,
        reason: str | None = None,
        detail: str = "",
        data: dict[str, Any] | None = None,
    ) -> aud.AuditEntry | None:
        """One audit entry, then its event (in that order, one at a time); the entry."""
        try:
            synced = bool(self._synced())
        except Exception:
            synced = False
        with self._lock:
            entry: aud.AuditEntry | None
            try:
                entry = self.audit.append(
                    kind, name=name, reason=reason, detail=detail, data=data,
                    ts=self._wall(), clock_synced=synced,
                )  # fmt: skip
                fields = entry.event_fields()
                ts = entry.ts
            except Exception:
                # The door keeps working; the event below still tells the world.
                log.exception("door: audit entry %s not stored", kind)
                entry = None
                fields = {"audit_id": None, "name": name, "reason": reason, "detail": detail}
                fields.update(data or {})
                ts = self._wall()
            log.info(
                "door: %s%s%s%s",
                kind,
                f" name={name}" if name else "",
                f" reason={reason}" if reason else "",
                f" ({detail})" if detail else "",
            )
            if self.events is not None:
                try:
                    self.events.publish_event(kind, fields, ts)
                except Exception:
                    log.exception("door: event %s not published", kind)
        return entry

    def status(self, name: str, fields: dict[str, Any]) -> None:
        """The door's retained status topic ``<base>/<name>``, through the sink."""
        if self.events is None:
            return
        try:
            self.events.publish_status(name, fields)
        except Exception:
            log.exception("door: status not published")


__all__ = ["EventSink", "Recorder"]

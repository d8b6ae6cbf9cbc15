"""What the door did, told twice: one audit entry, then one event, written by a thread of its own.

The relay's owner thread must never wait on storage: an audit database
write-locked by another process (a backup, ``sqlite3`` in a shell) once held
the strike energised for 5 s past ``unlock_s`` and lost the entry. So
:meth:`Recorder.record` only stamps the entry (wall clock, clock state) and
queues it; the ``door-audit`` thread appends it to the log, retrying while
the log is locked (:class:`~edge.door.audit.AuditBusy`), in the order the
entries were made, then publishes its event through the :class:`EventSink`
(with the audit id, so ids and event sequence numbers are in one order).
The door's retained status is coalesced (only the newest is sent) and is
sent between those retries too, so it never waits behind a locked log.

An entry the log refuses for another reason (a full disk, a corrupt file)
is logged and its event still goes out. When the door stops, the thread
has until the stop's deadline to write what is queued; whatever a lock
still holds back then is written to the journal (the service's log), line
by line, so it is not lost without a trace.

The door never imports the MQTT side. It publishes through the small
:class:`EventSink` Protocol, which the daemon's publishers satisfy; with no
sink (``facegate door test``) only the audit log is written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import edge.door.audit as aud

log = logging.getLogger("facegate.door")

RETRY_MIN_S = 0.05
RETRY_MAX_S = 0.5
"""Back-off between attempts while the audit log is locked."""
BUSY_TIMEOUT_S = 0.25
"""How long one append waits for SQLite's lock before the thread looks at its queue again."""
_STATUS = "status"


class EventSink(Protocol):
    """Where door events go: the daemon's publisher (outbox + retained status topic)."""

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]: ...

    def publish_status(self, name: str, fields: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Pending:
    """An entry made and not yet written: everything is stamped when it is made."""

    kind: str
    ts: float
    clock_synced: bool
    name: str | None = None
    reason: str | None = None
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Queues door outcomes; its ``door-audit`` thread writes the entry, then the event."""

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
        self._q: queue.SimpleQueue[Pending | threading.Event | str | None] = queue.SimpleQueue()
        self._status_lock = threading.Lock()
        self._status: tuple[str, dict[str, Any]] | None = None  # newest, not yet sent
        self._wake = threading.Event()
        self._deadline: float | None = None  # set by close(): give up retrying then
        self.unwritten = 0
        """Entries still locked out of the log when the door stopped (logged instead)."""
        self._thread = threading.Thread(target=self._main, name="door-audit", daemon=True)
        self._thread.start()

    # -- any thread ------------------------------------------------------------------

    def record(
        self,
        kind: str,
        *,
        name: str | None = None,
        reason: str | None = None,
        detail: str = "",
        data: dict[str, Any] | None = None,
    ) -> None:
        """Queue one entry (stamped now); never blocks, never raises for storage."""
        try:
            synced = bool(self._synced())
        except Exception:
            synced = False
        self._q.put(Pending(kind, self._wall(), synced, name, reason, detail, dict(data or {})))
        log.info(
            "door: %s%s%s%s",
            kind,
            f" name={name}" if name else "",
            f" reason={reason}" if reason else "",
            f" ({detail})" if detail else "",
        )

    def status(self, name: str, fields: dict[str, Any]) -> None:
        """The door's retained status topic ``<base>/<name>``: the newest one is sent."""
        if self.events is None:
            return
        with self._status_lock:
            self._status = (name, dict(fields))
        self._q.put(_STATUS)  # sent when the thread gets to it, or between retries
        self._wake.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        done = threading.Event()
        self._q.put(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (until ``timeout``), then end the thread (idempotent)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + timeout
            self._q.put(None)
            self._wake.set()
        self._thread.join(timeout=timeout + 1.0)

    # -- the door-audit thread ------------------------------------------------------------

    def _main(self) -> None:
        while True:
            self._send_status()
            try:
                item = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                self._send_status()
                return
            if isinstance(item, threading.Event):
                self._send_status()
                item.set()
            elif isinstance(item, Pending):
                self._write(item)
            else:
                self._send_status()

    def _write(self, p: Pending) -> None:
        entry = self._append(p)
        if entry is not None:
            fields, ts = entry.event_fields(), entry.ts
        else:  # not stored: the event still tells the world
            fields = {"audit_id": None, "name": p.name, "reason": p.reason, "detail": p.detail}
            fields.update(p.data)
            ts = p.ts
        if self.events is not None:
            try:
                self.events.publish_event(p.kind, fields, ts)
            except Exception:
                log.exception("door: event %s not published", p.kind)

    def _append(self, p: Pending) -> aud.AuditEntry | None:
        """The entry appended, retrying while the log is locked; None if it cannot be."""
        wait = RETRY_MIN_S
        warned = False
        while True:
            try:
                return self.audit.append(
                    p.kind, name=p.name, reason=p.reason, detail=p.detail, data=p.data,
                    ts=p.ts, clock_synced=p.clock_synced,
                )  # fmt: skip
            except aud.AuditBusy:
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self.unwritten += 1
                    log.error("door: audit log locked at stop; entry not written: %s", p)
                    return None
                if not warned:
                    log.warning("door: audit log is locked by another process; retrying")
                    warned = True
            except Exception:
                log.exception("door: audit entry %s not stored", p.kind)
                return None
            self._send_status()  # the status never waits behind a locked log
            self._wake.wait(wait)
            self._wake.clear()
            wait = min(RETRY_MAX_S, wait * 2)

    def _send_status(self) -> None:
        with self._status_lock:
            pending, self._status = self._status, None
        if pending is None or self.events is None:
            return
        try:
            self.events.publish_status(*pending)
        except Exception:
            log.exception("door: status not published")


__all__ = ["BUSY_TIMEOUT_S", "EventSink", "Pending", "Recorder"]

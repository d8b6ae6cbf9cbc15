"""The delivery loop: the outbox drained to the broker in order, at a bounded rate, until acked.

One thread (``mqtt-drain``), the only one that hands stored events to the
transport. It sends them in sequence order, at most ``rate`` per second (a
:class:`~edge.delivery.ratelimit.TokenBucket`) and at most
:data:`~edge.delivery.transport.WINDOW` unacknowledged at a time. An event
leaves the outbox only when its PUBACK arrived (:meth:`DeliveryLoop.apply_acks`).

It goes back (:meth:`DeliveryLoop.rewind`) when events in flight may be
lost: on every new connection (the transport dropped paho's copies), when
no PUBACK came for :data:`STALL_S` while connected, and when stored events
below the cursor are in flight nowhere. Events still in the outbox when the
process starts are sent again from the oldest. A broker can therefore see an
event twice, never zero times (unless the outbox overflowed, which shows as
a ``seq`` gap).

The loop knows rows, not events: its owner says how to send one row
(``send``: the row's mid, or None when there is no client) and is told what
was acknowledged (``acked``) and, twice a second or so, the time (``tick``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from edge.delivery.ratelimit import TokenBucket
from edge.delivery.transport import WINDOW
from edge.errors import FacegateError

if TYPE_CHECKING:
    from edge.delivery.outbox import Outbox, Row

log = logging.getLogger("facegate.mqtt")

STALL_S = 30.0
"""Connected this long with unacknowledged events and no PUBACK: send them again."""
IDLE_WAIT_S = 0.5
"""Longest sleep between two looks at the outbox, the acks and the clock."""


class Link(Protocol):
    """What the loop reads of the transport (:class:`~edge.delivery.transport.MqttTransport`)."""

    connected: threading.Event
    generation: int
    acks: queue.SimpleQueue[tuple[int, bool]]


@dataclass
class Position:
    """Where the loop stands: how far the outbox was handed over, to which connection, when.

    ``cursor``: the highest seq handed over in this process; ``last_ack``:
    when the last PUBACK came (or sending was last restarted); ``generation``:
    the connection those sends went to.
    """

    generation: int
    last_ack: float
    cursor: int = 0


class DeliveryLoop:
    """Drains an :class:`~edge.delivery.outbox.Outbox` over a :class:`Link` (see the module)."""

    def __init__(
        self,
        outbox: Outbox,
        link: Link,
        *,
        rate: float,
        send: Callable[[Row], int | None],
        acked: Callable[[list[int]], None] = lambda seqs: None,
        tick: Callable[[float, bool], None] = lambda now, connected: None,
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.rate = rate
        self._send = send
        self._acked = acked
        self._tick = tick
        self.published = 0
        """Events handed to the transport (re-sends included)."""
        self.acked = 0
        """PUBACKs for events."""
        self.inflight: dict[int, int] = {}
        """mid -> seq of the events handed over and not yet acknowledged."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_deadline = 0.0
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="mqtt-drain", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look again now (a new event, a PUBACK, a connection)."""
        self._wake.set()

    def stop(self, flush_until: float, join_until: float) -> bool:
        """Send what can be sent until ``flush_until``, then end; whether the thread ended.

        Both are monotonic instants; the thread is waited for until ``join_until``.
        """
        self._flush_deadline = flush_until
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout=max(0.05, join_until - time.monotonic()))
        if self._thread.is_alive():
            log.warning("mqtt: drain thread did not stop in time")
            return False
        return True

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._loop()
        except Exception:
            # The watchdog sees alive() turn False and systemd restarts us.
            log.exception("mqtt: drain thread failed")

    def _loop(self) -> None:
        """Until stopped and flushed: acks, the owner's tick, rewind when needed, a batch."""
        rate = self.rate
        bucket = TokenBucket(rate, max(1.0, min(rate, float(WINDOW))), time.monotonic())
        pos = Position(generation=self.link.generation, last_ack=time.monotonic())
        wait = IDLE_WAIT_S
        while True:
            self._wake.wait(timeout=wait)
            self._wake.clear()
            now = time.monotonic()
            if self.apply_acks():
                pos.last_ack = now
            connected = self.link.connected.is_set()
            if self._stop.is_set() and self._flushed(pos, connected, now):
                return
            self._tick(now, connected)
            wait = IDLE_WAIT_S
            if not connected:
                pos.last_ack = now  # a stall is only measured while connected
                continue
            self.rewind(pos, now)
            wait = self._send_batch(pos, bucket, now)

    def apply_acks(self) -> int:
        """Delete acknowledged events from the outbox; how many acks were applied.

        Called by the thread, and by the owner once the thread has ended.
        """
        seqs: list[int] = []
        n = 0
        while True:
            try:
                mid, ok = self.link.acks.get_nowait()
            except queue.Empty:
                break
            n += 1
            seq = self.inflight.pop(mid, None)
            if seq is None:
                continue  # availability, state, discovery, or a stale mid
            if ok:
                seqs.append(seq)
            else:
                # Only possible with MQTT 5 (we speak 3.1.1): keep it for the next start.
                log.error("mqtt: broker refused event seq %d; kept in the outbox", seq)
        if seqs:
            self._acked(seqs)
            self.acked += len(seqs)
            try:
                self.outbox.ack(seqs)
            except FacegateError as e:
                log.error("%s", e)
        return n

    def _flushed(self, pos: Position, connected: bool, now: float) -> bool:
        """Stopping: whether the thread may end (nothing left to send, or no time)."""
        return (
            not connected
            or now >= self._flush_deadline
            or (not self.inflight and not self.outbox.pending(pos.cursor, 1))
        )

    def rewind(self, pos: Position, now: float) -> None:
        """Move the cursor back when events in flight may be lost: reconnect, stall, a gap."""
        if pos.generation != self.link.generation:
            # A new connection: the transport dropped what was in flight; send
            # it again from the outbox.
            pos.generation = self.link.generation
            self._resend_all(pos, now)
        elif self.inflight and now - pos.last_ack > STALL_S:
            # No PUBACK for a long time: assume paho lost them and re-send.
            log.warning(
                "mqtt: %d events unacknowledged for %.0f s; re-sending", len(self.inflight), STALL_S
            )
            self._resend_all(pos, now)
        if not self.inflight:
            # Self-healing: stored events at or below the cursor that are
            # not in flight were lost somewhere; go back for them.
            oldest = self.outbox.oldest_seq()
            if oldest is not None and oldest <= pos.cursor:
                pos.cursor = oldest - 1

    def _resend_all(self, pos: Position, now: float) -> None:
        """Forget what is in flight; send again from the oldest stored event."""
        self.inflight.clear()
        pos.cursor = (self.outbox.oldest_seq() or pos.cursor + 1) - 1
        pos.last_ack = now

    def _send_batch(self, pos: Position, bucket: TokenBucket, now: float) -> float:
        """Hand the next stored events over within the window and the rate; the next wait.

        At most ``WINDOW`` events are unacknowledged and at most ``rate`` per
        second are sent (a token bucket holding up to ``min(rate, WINDOW)``).
        """
        free = WINDOW - len(self.inflight)
        if free <= 0:
            return IDLE_WAIT_S  # woken again by the next PUBACK
        n = min(free, bucket.available(now))
        if n <= 0:
            return bucket.wait_s()
        rows = self.outbox.pending(pos.cursor, n)
        for row in rows:
            mid = self._send(row)
            if mid is None:
                return IDLE_WAIT_S  # stopped under us
            self.inflight[mid] = row.seq
            pos.cursor = row.seq
            self.published += 1
            bucket.spend()
        # A full batch: more may be waiting, as soon as a token is there.
        return bucket.wait_s() if rows and len(rows) == n else IDLE_WAIT_S


__all__ = ["IDLE_WAIT_S", "STALL_S", "DeliveryLoop", "Link", "Position"]

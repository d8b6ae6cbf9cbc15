"""MQTT publishing with durable, ordered, at-least-once delivery (paho-mqtt 2.x).

:class:`MqttPublisher` is what the daemon publishes to when ``mqtt.enabled``;
it puts together:

* the transport (:mod:`edge.delivery.transport`): one paho client, its
  network thread, TLS, the Last Will, publishing with acks;
* the delivery loop (:mod:`edge.delivery.drain`): one *drain* thread, the
  only one that hands stored events over, in order, rate-limited, until
  acknowledged, going back after a reconnect or a stall;
* the sender (:mod:`edge.delivery.sender`): each stored event's ``delivery``
  decided, and its signature made, at each send;
* the announcer (:mod:`edge.delivery.announce`): availability, state,
  presence and the door's status topics;
* the command gate (:mod:`edge.delivery.commands`);
* the extensions (:mod:`edge.delivery.extension`): features that watch the
  flow, such as Home Assistant, handed in by whoever assembles the publisher
  (:class:`edge.daemon.Publisher`).

:meth:`MqttPublisher.publish_decision` writes the event to the on-disk
:class:`~edge.delivery.outbox.Outbox` and wakes the drain thread; it never
touches the network, so a dead broker never blocks the recognition loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.clock import clock_synced
from edge.delivery.announce import Announcer
from edge.delivery.codec import encode
from edge.delivery.commands import CommandGate, GatedCommands
from edge.delivery.drain import DeliveryLoop
from edge.delivery.events import OFFLINE, decision_event, door_event, snapshot_jpeg
from edge.delivery.outbox import Outbox
from edge.delivery.sender import EventSender
from edge.delivery.signing import sign_key
from edge.delivery.topics import Topics
from edge.delivery.transport import Hooks, MqttTransport
from edge.errors import BrokerError, FacegateError

if TYPE_CHECKING:
    from edge.config import Config
    from edge.delivery.extension import Extension
    from edge.delivery.outbox import Row
    from edge.types import Decision

log = logging.getLogger("facegate.mqtt")

CLOCK_CHECK_S = 10.0
"""How long a reading of the kernel's clock state is trusted."""


def seen_monotonic(decision: Decision, wall_now: float, mono_now: float) -> float:
    """When the face was seen, on the monotonic clock: ``mono_now - max(0, wall_now - ts)``.

    Both wall-clock readings (the frame's ``timestamp`` and ``wall_now``) come
    from the same clock moments apart, so their difference is the decision's
    age even when that clock is not synchronised.
    """
    return mono_now - max(0.0, wall_now - decision.timestamp)


def outbox_path(cfg: Config) -> Path:
    """``mqtt.outbox_path``; a relative path is taken inside ``service.state_dir``."""
    return cfg.outbox_file


def outbox_state(outbox: Outbox | None) -> dict[str, Any]:
    """The outbox's fields of the state message.

    ``outbox_pending``: events waiting; ``outbox_dropped``: events ever
    dropped (the oldest, for the bound or a full disk, and those never
    stored); ``outbox_lost``: events that could not be stored at all since
    start; ``outbox_error``: the last storage error (a full disk says so
    here), ``null`` while all is well. Nothing when the outbox is closed.
    """
    if outbox is None:
        return {}
    try:
        return {
            "outbox_pending": len(outbox),
            "outbox_dropped": outbox.dropped,
            "outbox_lost": outbox.lost,
            "outbox_error": outbox.last_error,
        }
    except FacegateError:
        return {}  # closed while stopping


class MqttPublisher(GatedCommands):
    """The MQTT side of the daemon: events, availability, state, commands, extensions."""

    def __init__(
        self, cfg: Config, outbox: Outbox | None = None, extensions: Sequence[Extension] = ()
    ) -> None:
        self.cfg = cfg
        self.topics = Topics.for_device(cfg.mqtt.prefix, cfg.device.id)
        self.commands = CommandGate()
        self.extensions = tuple(extensions)
        self.listening = threading.Event()
        """Set once the broker acknowledged the command subscription (SUBACK) of this
        connection; cleared on disconnect."""
        self._outbox = outbox
        self._command_mid: int | None = None
        self._clock = (0.0, False)
        self._stopped = False
        self.transport = MqttTransport(
            cfg,
            will=(self.topics.availability, OFFLINE.encode()),
            hooks=Hooks(
                connected=self._on_connected,
                message=self._on_message,
                subscribed=self._on_subscribed,
                acked=self._wake,
                disconnected=self._on_disconnected,
            ),
        )
        self.announcer = Announcer(
            cfg, self.topics, self.transport, self.extensions, lambda: outbox_state(self._outbox)
        )
        self.sender = EventSender(
            self.topics,
            sign_key=sign_key(cfg),
            valid_for_s=cfg.events.valid_for_s,
            synced=self._clock_synced,
            max_kept=cfg.mqtt.outbox_max,
            sent=self._event_sent,
        )
        self._loop: DeliveryLoop | None = None

    # -- life cycle --------------------------------------------------------------

    def start(self) -> None:
        """Open the outbox, configure the client and start both threads.

        An unreachable broker is not an error: events wait in the outbox and
        paho keeps reconnecting. Bad TLS files or secrets raise
        :class:`~edge.errors.ConfigError`.
        """
        if self._loop is not None:
            raise BrokerError("mqtt: publisher already started")
        for ext in self.extensions:
            ext.start()
        outbox = self._open_outbox()
        self.transport.start()
        self._loop = DeliveryLoop(
            outbox,
            self.transport,
            rate=self.cfg.mqtt.drain_rate,
            send=self._send,
            acked=self.sender.forget,
            tick=self._tick,
        )
        self._loop.start()
        m = self.cfg.mqtt
        log.info(
            "mqtt: %s:%d%s, topics %s/#, %d events waiting in the outbox",
            m.host,
            m.port,
            " (TLS)" if m.tls else "",
            self.topics.base,
            len(outbox),
        )

    def _open_outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox(outbox_path(self.cfg), self.cfg.mqtt.outbox_max)
        return self._outbox

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout``, say ``offline``, disconnect.

        Undelivered events stay in the outbox for the next start.
        """
        if self._stopped:
            return
        self._stopped = True
        now = time.monotonic()
        end = now + max(0.1, timeout)
        loop = self._loop
        ended = loop is None or loop.stop(now + max(0.1, timeout) * 0.5, end)
        self.transport.stop(end, farewell=self.announcer.farewell)
        if loop is not None and ended:
            loop.apply_acks()  # the last PUBACKs, so those events are not sent twice
        if self._outbox is not None:
            left = len(self._outbox)
            if left:
                log.info("mqtt: %d events kept in the outbox for the next start", left)
            self._outbox.close()
        self.commands.flush_log(force=True)

    def alive(self) -> bool:
        """Both threads are running (the watchdog's view of MQTT health)."""
        loop = self._loop
        return not self._stopped and self.transport.alive() and loop is not None and loop.alive()

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection."""
        return self.transport.connected.is_set()

    @property
    def published(self) -> int:
        """Events handed to paho (re-sends included)."""
        return 0 if self._loop is None else self._loop.published

    @property
    def acked(self) -> int:
        """PUBACKs for events."""
        return 0 if self._loop is None else self._loop.acked

    @property
    def callback_errors(self) -> int:
        return self.transport.callback_errors

    @property
    def refused_connections(self) -> int:
        return self.transport.refused_connections

    @property
    def failed_connections(self) -> int:
        return self.transport.failed_connections

    # -- the API the daemon uses ----------------------------------------------------

    def publish_decision(self, decision: Decision) -> dict[str, Any]:
        """Store the decision's event in the outbox and schedule it; the payload.

        Assigns the next sequence number and a new event id. Returns as soon
        as the event is on disk; delivery happens on the drain thread, which
        decides ``delivery`` again when it sends the event. The face crop
        (with ``mqtt.snapshot``) is kept in memory only, for that send.
        """
        outbox = self._open_outbox()
        synced = self._clock_synced()
        wall, mono = time.time(), time.monotonic()
        seen = seen_monotonic(decision, wall, mono)
        made: list[dict[str, Any]] = []

        def build(seq: int) -> tuple[str, bytes]:
            payload = decision_event(self.cfg, decision, seq, synced, mono - seen)
            made.append(payload)
            return str(payload["id"]), encode(payload)

        jpeg = None
        if self.cfg.mqtt.snapshot and decision.snapshot is not None and decision.snapshot.size:
            jpeg = snapshot_jpeg(decision.snapshot)
        row, _ = outbox.append(self.topics.event, build)
        self.sender.remember(row.seq, seen, jpeg)
        self._wake()
        return made[-1]

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]:
        """Store a door event (:func:`~edge.delivery.events.build_door_event`); the payload.

        Same path, sequence and delivery guarantees as :meth:`publish_decision`.
        """
        outbox = self._open_outbox()
        synced = self._clock_synced()
        t = time.time() if ts is None else ts
        made: list[dict[str, Any]] = []

        def build(seq: int) -> tuple[str, bytes]:
            payload = door_event(self.cfg, kind, fields, seq, synced, t)
            made.append(payload)
            return str(payload["id"]), encode(payload)

        outbox.append(self.topics.event, build)
        self._wake()
        return made[-1]

    def publish_status(self, name: str, fields: dict[str, Any]) -> None:
        """A retained status topic ``<base>/<name>`` (the door's): sent now and on every connect."""
        self.announcer.publish_status(name, fields)

    def set_state(self, **fields: Any) -> None:
        """Merge ``fields`` into the retained state (published by the drain thread, per period)."""
        self.announcer.set_state(**fields)

    def set_ready(self) -> None:
        """The device is ready (models loaded, first frame processed): announce it, ``online``.

        Call after :meth:`set_state` holds every field and :meth:`set_gallery`
        the enrolled names, so the first state message is complete.
        """
        self.announcer.set_ready()

    def publish_state_now(self) -> None:
        """The complete state now, once ready and connected (else it goes out when it can)."""
        if self.announcer.ready:
            self.announcer.publish_state()

    def set_gallery(self, names: list[str] | tuple[str, ...]) -> None:
        """The enrolled names changed: the extensions hear it, the state goes out now."""
        self.announcer.set_gallery(names)

    def set_presence(self, present: bool) -> None:
        """A face is (or no longer is) tracked in front of the camera: ``presence`` ON/OFF."""
        self.announcer.set_presence(present)

    # -- hooks (network thread, drain thread) -------------------------------------------

    def _wake(self) -> None:
        if self._loop is not None:
            self._loop.wake()

    def _clock_synced(self) -> bool:
        checked, value = self._clock
        now = time.monotonic()
        if now - checked > CLOCK_CHECK_S or checked == 0.0:
            value = clock_synced()
            self._clock = (now, value)
        return value

    def _on_connected(self) -> None:
        """A new connection (transport lock held): commands, statuses, announcements."""
        if self.cfg.mqtt.commands:
            self._command_mid = self.transport.subscribe(self.topics.command)
        for ext in self.extensions:
            ext.connected(self.transport)
        self.announcer.on_connect()
        self._wake()

    def _on_disconnected(self) -> None:
        self.listening.clear()
        for ext in self.extensions:
            ext.disconnected()

    def _on_subscribed(self, mid: int, granted: bool) -> None:
        if mid != self._command_mid:
            for ext in self.extensions:  # an extension's subscription
                ext.subscribed(self.transport, mid, granted)
            return
        if not granted:
            # An ACL that does not let the device read its command topic.
            log.error("mqtt: the broker refused the subscription to %s", self.topics.command)
            return
        self.listening.set()
        log.info("mqtt: listening for commands on %s", self.topics.command)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self.topics.command:
            self.commands.handle(payload, retained=retained)
            return
        for ext in self.extensions:
            if ext.message(self.transport, topic, payload, retained):
                return

    def _tick(self, now: float, connected: bool) -> None:
        self.commands.flush_log()
        if connected:
            self.announcer.tick(now)

    def _send(self, row: Row) -> int | None:
        return self.sender.send(row, self._publish_qos1)

    def _publish_qos1(self, topic: str, payload: bytes) -> int | None:
        info = self.transport.publish(topic, payload)
        return None if info is None else info.mid

    def _event_sent(self, event: dict[str, Any]) -> None:
        for ext in self.extensions:
            ext.event_sent(self.transport, event)


__all__ = ["CLOCK_CHECK_S", "MqttPublisher", "outbox_path", "outbox_state", "seen_monotonic"]

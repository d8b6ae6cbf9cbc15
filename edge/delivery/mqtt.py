"""MQTT publishing with durable, ordered, at-least-once delivery (paho-mqtt 2.x).

Threads: paho's network thread (``loop_start``: connects, reconnects with
back-off, runs the callbacks) and one *drain* thread, the only one that hands
events to paho. :meth:`MqttPublisher.publish_decision` writes the event to the
on-disk :class:`~edge.delivery.outbox.Outbox` and wakes the drain thread; it never
touches the network, so a dead broker never blocks the recognition loop.

Delivery: the drain thread sends stored events in sequence order, QoS 1, at
most ``mqtt.drain_rate`` per second and at most :data:`WINDOW` unacknowledged
at a time. An event leaves the outbox only when its PUBACK arrived. On every
(re)connect paho's own copies of unacknowledged events are dropped and the
drain thread sends them again from the outbox, so each send decides its
``delivery`` afresh (:func:`edge.delivery.events.delivery_of`): an event that waited
out a broker outage past its ``expires_at`` goes out ``late``, every other
field unchanged. Events still in the outbox when the process starts (crash,
SIGKILL, power cut) are sent again from the oldest. A broker can therefore
see an event twice, never zero times (unless the outbox overflowed, which
shows as a ``seq`` gap).

Availability means ready: until :meth:`MqttPublisher.set_ready` (the daemon calls
it once the models are loaded and the camera delivered a frame) the device
says ``offline``; from then on every connect announces the discovery configs,
one complete state message, the presence and ``online``, in that order. The
Last Will publishes ``offline`` (retained) when the connection dies without a
DISCONNECT, and a clean :meth:`MqttPublisher.stop` says ``offline`` itself. The
state is published once per ``mqtt.state_interval_s`` by the drain thread
(and at once when the gallery changes); :meth:`MqttPublisher.set_state` only
merges fields.

Commands (``mqtt.commands``) go through a :class:`~edge.delivery.commands.CommandGate`:
checked, rate-limited, counted and logged once per burst.

Every paho callback is wrapped: an exception is logged and counted, never
propagated into (and never kills) the network thread. The network thread is
paho's (``loop_start``); the publisher learns which thread it is from
``on_pre_connect``, which paho calls on it before every connection attempt.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from edge import __version__
from edge.clock import clock_synced
from edge.delivery.codec import encode
from edge.delivery.commands import CommandGate, GatedCommands
from edge.delivery.events import (
    ABSENT,
    LIVE,
    OFFLINE,
    ONLINE,
    PRESENT,
    build_state,
    decision_event,
    delivery_of,
    door_event,
    snapshot_jpeg,
)
from edge.delivery.outbox import Outbox, Row
from edge.delivery.ratelimit import TokenBucket
from edge.delivery.signing import sign_key, wire_event
from edge.delivery.topics import Topics
from edge.errors import BrokerError, ConfigError, FacegateError
from edge.homeassistant.discovery import (
    build_ha_discovery,
    build_last_person,
    ha_discovery_subscription,
    ha_discovery_topic,
    ha_person_object_id,
    ha_static_topics,
)

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTMessageInfo
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from edge.config import Config
    from edge.types import Decision

log = logging.getLogger("facegate.mqtt")

WINDOW = 20
"""Most events handed to paho and not yet acknowledged (paho's inflight limit)."""
STALL_S = 30.0
"""Connected this long with unacknowledged events and no PUBACK: send them again."""
CLOCK_CHECK_S = 10.0
SNAPSHOTS_KEPT = 16
"""Face crops kept in memory for events not yet sent (never written to disk)."""

F = TypeVar("F", bound=Callable[..., Any])


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


def outbox_state(outbox: Outbox) -> dict[str, Any]:
    """The outbox's fields of the state message.

    ``outbox_pending``: events waiting; ``outbox_dropped``: events ever
    dropped (the oldest, for the bound or a full disk, and those never
    stored); ``outbox_lost``: events that could not be stored at all since
    start; ``outbox_error``: the last storage error (a full disk says so
    here), ``null`` while all is well. Nothing when the outbox is closed.
    """
    try:
        return {
            "outbox_pending": len(outbox),
            "outbox_dropped": outbox.dropped,
            "outbox_lost": outbox.lost,
            "outbox_error": outbox.last_error,
        }
    except FacegateError:
        return {}  # closed while stopping


@dataclass
class _Position:
    """Where the drain thread stands: how far the outbox was handed to paho, and when.

    ``cursor``: the highest seq handed to paho in this process; ``last_ack``:
    when the last PUBACK came (or sending was last restarted); ``generation``:
    the connection those sends went to.
    """

    generation: int
    last_ack: float
    cursor: int = 0


class MqttPublisher(GatedCommands):
    """The MQTT side of the daemon: events, availability, state, discovery, commands."""

    def __init__(self, cfg: Config, outbox: Outbox | None = None) -> None:
        self.cfg = cfg
        self.topics = Topics.for_device(cfg.mqtt.prefix, cfg.device.id)
        self.commands = CommandGate()
        # Counters, for the state topic and tests.
        self.published = 0  # events handed to paho (including re-sends)
        self.acked = 0  # PUBACKs for events
        self.callback_errors = 0
        self.refused_connections = 0  # CONNACKs with a failure (bad credentials, ...)
        # Attempts that ended before a CONNACK: broker down, TLS refused (with
        # TLS 1.3 a missing client certificate closes the connection after the
        # handshake), or a refusal (which is also counted above).
        self.failed_connections = 0
        self._outbox = outbox
        self._sign_key = sign_key(cfg)
        self._client: Client | None = None
        self._net_thread: threading.Thread | None = None  # paho's, seen in on_pre_connect
        self._drain: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopped = False
        self._failures = 0  # failed connection attempts since the last success
        self._flush_deadline = 0.0
        self._wake = threading.Event()
        self._connected = threading.Event()
        self.listening = threading.Event()
        """Set once the broker acknowledged the command subscription (SUBACK) of this
        connection; cleared on disconnect."""
        self._command_mid: int | None = None
        self._acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}
        self._state_lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._status: dict[str, bytes] = {}  # door: retained <base>/<name> topics
        self._clock = (0.0, False)
        # Availability, discovery and presence: changed under _announce_lock,
        # from the daemon's thread (set_ready, set_gallery, set_presence) and
        # from paho's (on connect).
        self._announce_lock = threading.Lock()
        self._ready = threading.Event()
        self._people: tuple[str, ...] = ()
        self._announced_people: frozenset[str] = frozenset()
        self._ha_wanted: frozenset[str] = frozenset()
        self._presence = False
        self._generation = 0  # +1 per successful connect
        self._state_sent = 0.0  # monotonic time of the last state message
        # Per event seq, while it is stored: when its face was seen (monotonic)
        # and its JPEG snapshot. Both live only in this process.
        self._seen: dict[int, float] = {}
        self._snapshots: dict[int, bytes] = {}
        self._extra_lock = threading.Lock()
        self._clear_last_person_at: float | None = None

    # -- life cycle --------------------------------------------------------------

    def start(self) -> None:
        """Open the outbox, configure the client and start both threads.

        An unreachable broker is not an error: events wait in the outbox and
        paho keeps reconnecting. Bad TLS files or secrets raise
        :class:`~edge.errors.ConfigError`.
        """
        if self._client is not None:
            raise BrokerError("mqtt: publisher already started")
        m = self.cfg.mqtt
        if not m.ha_prefix.strip("/") or any(c in m.ha_prefix for c in "+#\0"):
            raise ConfigError(f"mqtt.ha_prefix: {m.ha_prefix!r} cannot be used in an MQTT topic")
        client = self._make_client()
        outbox = self._open_outbox()
        client.connect_async(m.host, m.port, keepalive=m.keepalive)
        self._client = client
        client.loop_start()
        self._drain = threading.Thread(target=self._drain_main, name="mqtt-drain", daemon=True)
        self._drain.start()
        log.info(
            "mqtt: %s:%d%s, topics %s/#, %d events waiting in the outbox",
            m.host,
            m.port,
            " (TLS)" if m.tls else "",
            self.topics.base,
            len(outbox),
        )

    def _make_client(self) -> Client:
        """A configured paho client (credentials, TLS, Will, limits, callbacks), not connected."""
        from edge.config import read_secret

        try:
            import paho.mqtt.client as paho
            from paho.mqtt.enums import CallbackAPIVersion
        except ImportError:
            raise BrokerError("mqtt: paho-mqtt is not installed (pip install paho-mqtt)") from None
        m = self.cfg.mqtt
        password = read_secret(
            m.password_file, m.password_credential, "mqtt.password", self.cfg.base_dir
        )
        if password is not None and not m.username:
            raise ConfigError("mqtt.username: a password is configured but no username")
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id or f"facegate-{self.cfg.device.id}",
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        client.suppress_exceptions = True  # second line of defence after _guarded
        client.max_inflight_messages_set(WINDOW)
        client.max_queued_messages_set(0)  # we bound the backlog ourselves (outbox)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        if m.username:
            client.username_pw_set(
                m.username, None if password is None else password.decode("utf-8", "replace")
            )
        if m.tls:
            self._configure_tls(client)
        client.on_pre_connect = self._guarded(self._on_pre_connect)
        client.on_connect = self._guarded(self._on_connect)
        client.on_disconnect = self._guarded(self._on_disconnect)
        client.on_connect_fail = self._guarded(self._on_connect_fail)
        client.on_publish = self._guarded(self._on_publish)
        client.on_message = self._guarded(self._on_message)
        client.on_subscribe = self._guarded(self._on_subscribe)
        return client

    def _open_outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox(outbox_path(self.cfg), self.cfg.mqtt.outbox_max)
        return self._outbox

    def _configure_tls(self, client: Client) -> None:
        import ssl

        m = self.cfg.mqtt

        def path(p: str) -> str | None:
            return str(self.cfg.resolve(p)) if p else None

        try:
            client.tls_set(
                ca_certs=path(m.tls_ca_file),
                certfile=path(m.tls_cert_file),
                keyfile=path(m.tls_key_file),
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError, ValueError) as e:
            raise ConfigError(f"mqtt.tls_ca_file: cannot set up TLS ({e})") from None

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout``, say ``offline``, disconnect.

        Undelivered events stay in the outbox for the next start.
        """
        if self._stopped:
            return
        self._stopped = True
        end = time.monotonic() + max(0.1, timeout)
        self._flush_deadline = time.monotonic() + max(0.1, timeout) * 0.5
        self._stop.set()
        self._wake.set()
        if self._drain is not None:
            self._drain.join(timeout=max(0.05, end - time.monotonic()))
            if self._drain.is_alive():
                log.warning("mqtt: drain thread did not stop in time")
        client = self._client
        if client is not None:
            self._say_offline(client, end)
            self._stop_network(client, end)
            self._client = None
        if self._drain is None or not self._drain.is_alive():
            self._apply_acks()  # the last PUBACKs, so those events are not sent twice
        if self._outbox is not None:
            left = len(self._outbox)
            if left:
                log.info("mqtt: %d events kept in the outbox for the next start", left)
            self._outbox.close()
        self.commands.flush_log(force=True)
        self._connected.clear()

    def _say_offline(self, client: Client, end: float) -> None:
        """The last state (``status: offline``), then ``offline``, confirmed by ``end`` at best."""
        if not self._connected.is_set():
            return
        try:
            if self._ready.is_set():
                self._publish_state()  # the daemon's last word (status: offline)
            info = client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            info.wait_for_publish(timeout=max(0.05, min(1.0, end - time.monotonic())))
        except Exception as e:  # best effort: the Will covers us anyway
            log.debug("mqtt: offline not confirmed: %s", e)

    def _stop_network(self, client: Client, end: float) -> None:
        """Disconnect and end paho's network thread, waiting for it until ``end`` at most."""
        client.disconnect()
        thread = self._net_thread
        if thread is not None:
            thread.join(timeout=max(0.05, end - time.monotonic()))
        if thread is not None and not thread.is_alive():
            client.loop_stop()
            return
        # Still in a reconnect back-off (or never started): tell it to end
        # without connecting again (a late connect under the same client id
        # would push the next instance off the broker), but do not wait for
        # it: loop_stop() joins without a timeout.
        if thread is not None:
            log.warning("mqtt: network thread did not stop in time")
        threading.Thread(target=client.loop_stop, name="mqtt-stop", daemon=True).start()

    def alive(self) -> bool:
        """Both threads are running (the watchdog's view of MQTT health)."""
        thread = self._net_thread
        return (
            not self._stop.is_set()
            and self._client is not None
            and thread is not None
            and thread.is_alive()
            and self._drain is not None
            and self._drain.is_alive()
        )

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection."""
        return self._connected.is_set()

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
        with self._extra_lock:
            self._seen[row.seq] = seen
            while len(self._seen) > self.cfg.mqtt.outbox_max:
                del self._seen[next(iter(self._seen))]  # dropped from the outbox too
            if jpeg is not None:
                self._snapshots[row.seq] = jpeg
                while len(self._snapshots) > SNAPSHOTS_KEPT:
                    del self._snapshots[next(iter(self._snapshots))]
        self._wake.set()
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
        self._wake.set()
        return made[-1]

    def publish_status(self, name: str, fields: dict[str, Any]) -> None:
        """A retained status topic ``<base>/<name>`` (the door's): sent now and on every connect."""
        payload = encode(build_state(self.cfg.device.id, **fields))
        topic = f"{self.topics.base}/{name}"
        with self._state_lock:
            self._status[topic] = payload
        client = self._client
        if client is not None and self._connected.is_set():
            client.publish(topic, payload, qos=1, retain=True)

    def set_state(self, **fields: Any) -> None:
        """Merge ``fields`` into the retained state (published by the drain thread, per period)."""
        with self._state_lock:
            self._state.update(fields)

    def set_ready(self) -> None:
        """The device is ready (models loaded, first frame processed): announce it, ``online``.

        Call after :meth:`set_state` holds every field and :meth:`set_gallery`
        the enrolled names, so the first state message is complete.
        """
        with self._announce_lock:
            if self._ready.is_set():
                return
            self._ready.set()
            client = self._client
            if client is not None and self._connected.is_set():
                self._announce(client)
        log.info("mqtt: ready; %s is online", self.topics.availability)

    def set_gallery(self, names: list[str] | tuple[str, ...]) -> None:
        """The enrolled names changed: re-announce the device triggers, publish the state now."""
        with self._announce_lock:
            self._people = tuple(sorted(set(names)))
            client = self._client
            if client is not None and self._connected.is_set() and self._ready.is_set():
                self._publish_discovery(client)
                self._publish_state()

    def set_presence(self, present: bool) -> None:
        """A face is (or no longer is) tracked in front of the camera: ``presence`` ON/OFF."""
        with self._announce_lock:
            if present == self._presence:
                return
            self._presence = present
            client = self._client
            if client is not None and self._connected.is_set() and self._ready.is_set():
                self._publish_presence(client)

    def _clock_synced(self) -> bool:
        checked, value = self._clock
        now = time.monotonic()
        if now - checked > CLOCK_CHECK_S or checked == 0.0:
            value = clock_synced()
            self._clock = (now, value)
        return value

    def _publish_state(self) -> None:
        client = self._client
        if client is None or not self._connected.is_set():
            return
        with self._state_lock:
            fields = dict(self._state)
        if self._outbox is not None:
            fields.update(outbox_state(self._outbox))
        payload = build_state(self.cfg.device.id, **fields)
        self._state_sent = time.monotonic()
        client.publish(self.topics.state, encode(payload), qos=1, retain=True)

    def _publish_presence(self, client: Client) -> None:
        payload = PRESENT if self._presence else ABSENT
        client.publish(self.topics.presence, payload, qos=1, retain=True)

    def _announce(self, client: Client) -> None:
        """Discovery, one complete state, presence, then ``online`` (under _announce_lock)."""
        self._publish_discovery(client)
        # Retained discovery configs of this device that it no longer wants (a
        # person removed while it was off, discovery switched off) come back
        # through this subscription and are cleared in _on_message. Only now
        # that the wanted set is known: before that, every config would look
        # stale, and clearing it would make Home Assistant drop the entities
        # (and their registry entries) at every start.
        sub = ha_discovery_subscription(self.cfg.mqtt.ha_prefix, self.cfg.device.id)
        client.subscribe(sub, qos=1)
        self._publish_state()
        self._publish_presence(client)
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)

    def _publish_discovery(self, client: Client) -> None:
        """Publish the wanted discovery configs and clear every other topic this device owns.

        With ``mqtt.ha_discovery = false`` nothing is wanted: every config
        the device may have published before is cleared (an empty retained
        payload), so Home Assistant removes the entities.
        """
        m = self.cfg.mqtt
        dev = self.cfg.device.id
        wanted: list[tuple[str, dict[str, Any]]] = []
        if m.ha_discovery:
            wanted = build_ha_discovery(
                self.topics,
                device_id=dev,
                device_name=self.cfg.device.name,
                ha_prefix=m.ha_prefix,
                sw_version=__version__,
                state_interval_s=m.state_interval_s,
                commands=m.commands,
                snapshot=m.snapshot,
                people=self._people,
            )
            if self.cfg.door.enabled:  # door: its entities join the same device
                from edge.homeassistant.discovery import door_discovery

                wanted += door_discovery(self.topics.base, self.cfg, like=wanted[0][1])
        topics = frozenset(t for t, _ in wanted)
        owned = set(ha_static_topics(m.ha_prefix, dev))
        owned |= {
            ha_discovery_topic(m.ha_prefix, "device_automation", dev, ha_person_object_id(n))
            for n in self._announced_people | set(self._people)
        }
        self._ha_wanted = topics
        for topic in sorted(owned - topics):
            client.publish(topic, b"", qos=1, retain=True)
        for topic, config in wanted:
            client.publish(topic, encode(config), qos=1, retain=True)
        self._announced_people = frozenset(self._people) if m.ha_discovery else frozenset()

    # -- paho callbacks (network thread) ------------------------------------------------

    def _guarded(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception:
                self.callback_errors += 1
                log.exception("mqtt: error in %s (ignored)", fn.__name__)
                return None

        return cast(F, wrapper)

    def _on_pre_connect(self, client: Client, userdata: Any) -> None:
        # paho calls this on its network thread before each connection attempt.
        self._net_thread = threading.current_thread()

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.refused_connections += 1
            log.error("mqtt: broker refused the connection: %s", reason_code)
            return
        log.info(
            "mqtt: connected to %s:%d%s",
            self.cfg.mqtt.host,
            self.cfg.mqtt.port,
            f" after {self._failures} failed attempts" if self._failures else "",
        )
        self._failures = 0
        # paho would now re-send its copies of unacknowledged events with the
        # delivery they had when first sent; drop them, and let the drain
        # thread send them again from the outbox with a fresh one.
        drop = getattr(client, "drop_out_messages", None)
        if callable(drop):
            drop()
        self._generation += 1
        with self._state_lock:  # door: the retained status topics, again after a reconnect
            statuses = list(self._status.items())
        for topic, payload in statuses:
            client.publish(topic, payload, qos=1, retain=True)
        if self.cfg.mqtt.commands:
            _, self._command_mid = client.subscribe(self.topics.command, qos=1)
        with self._announce_lock:
            self._connected.set()
            if self._ready.is_set():
                self._announce(client)
            else:
                # Not ready (yet): say so, in case a stale "online" is retained.
                client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
        self._wake.set()

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        # TCP or TLS failure (paho retries with back-off); say so once per outage.
        self.failed_connections += 1
        self._failures += 1
        if self._failures == 1:
            log.warning(
                "mqtt: cannot connect to %s:%d (broker down, network or TLS); retrying",
                self.cfg.mqtt.host,
                self.cfg.mqtt.port,
            )

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self.listening.clear()
        if not was:
            self.failed_connections += 1
        if was and not self._stop.is_set():
            log.warning("mqtt: disconnected (%s); reconnecting", reason_code)

    def _on_publish(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        # Never take a lock here: paho holds its message mutex while calling us,
        # and the drain thread may be inside client.publish() waiting for it.
        self._acks.put((mid, not reason_code.is_failure))
        self._wake.set()

    def _on_subscribe(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._command_mid:
            return  # the discovery subscription
        if any(rc.is_failure for rc in reason_codes):
            # An ACL that does not let the device read its command topic.
            log.error("mqtt: the broker refused the subscription to %s", self.topics.command)
            return
        self.listening.set()
        log.info("mqtt: listening for commands on %s", self.topics.command)

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        if msg.topic != self.topics.command:
            self._on_discovery_config(client, msg)
            return
        self.commands.handle(bytes(msg.payload), retained=bool(msg.retain))

    def _on_discovery_config(self, client: Client, msg: MQTTMessage) -> None:
        # Only retained configs found on subscribing matter; our own publishes
        # come back without the retain flag.
        if not msg.retain or not msg.payload or msg.topic in self._ha_wanted:
            return
        log.info("mqtt: clearing the stale discovery config %s", msg.topic)
        client.publish(msg.topic, b"", qos=1, retain=True)

    # -- the drain thread ---------------------------------------------------------------

    def _apply_acks(self) -> int:
        """Delete acknowledged events from the outbox; how many acks were applied.

        Called by the drain thread, and by :meth:`stop` once that has ended.
        """
        inflight = self._inflight
        seqs: list[int] = []
        n = 0
        while True:
            try:
                mid, ok = self._acks.get_nowait()
            except queue.Empty:
                break
            n += 1
            seq = inflight.pop(mid, None)
            if seq is None:
                continue  # availability/state/discovery, or a stale mid
            if ok:
                seqs.append(seq)
            else:
                # Only possible with MQTT 5 (we speak 3.1.1): keep it for the next start.
                log.error("mqtt: broker refused event seq %d; kept in the outbox", seq)
        if seqs:
            with self._extra_lock:
                for seq in seqs:
                    self._seen.pop(seq, None)
                    self._snapshots.pop(seq, None)
        if seqs and self._outbox is not None:
            self.acked += len(seqs)
            try:
                self._outbox.ack(seqs)
            except FacegateError as e:
                log.error("%s", e)
        return n

    def _drain_main(self) -> None:
        try:
            self._drain_loop()
        except Exception:
            # The watchdog sees alive() turn False and systemd restarts us.
            log.exception("mqtt: drain thread failed")

    def _drain_loop(self) -> None:
        """Until stopped and flushed: rewind when needed, periodic messages, send a batch."""
        outbox = self._open_outbox()
        rate = self.cfg.mqtt.drain_rate
        bucket = TokenBucket(rate, max(1.0, min(rate, float(WINDOW))), time.monotonic())
        pos = _Position(generation=self._generation, last_ack=time.monotonic())
        wait = 0.5
        while True:
            self._wake.wait(timeout=wait)
            self._wake.clear()
            now = time.monotonic()
            if self._apply_acks():
                pos.last_ack = now
            connected = self._connected.is_set()
            if self._stop.is_set() and self._flushed(outbox, pos, connected, now):
                return
            self.commands.flush_log()
            wait = 0.5
            if not connected:
                pos.last_ack = now  # a stall is only measured while connected
                continue
            self._rewind(outbox, pos, now)
            self._periodic(now)
            wait = self._send_batch(outbox, pos, bucket, now)

    def _flushed(self, outbox: Outbox, pos: _Position, connected: bool, now: float) -> bool:
        """Stopping: whether the drain thread may end (nothing left to send, or no time)."""
        return (
            not connected
            or now >= self._flush_deadline
            or (not self._inflight and not outbox.pending(pos.cursor, 1))
        )

    def _rewind(self, outbox: Outbox, pos: _Position, now: float) -> None:
        """Move the cursor back when events in flight may be lost: reconnect, stall, a gap."""
        if pos.generation != self._generation:
            # A new connection: paho dropped what was in flight (see
            # _on_connect); send it again from the outbox.
            pos.generation = self._generation
            self._resend_all(outbox, pos, now)
        elif self._inflight and now - pos.last_ack > STALL_S:
            # No PUBACK for a long time: assume paho lost them and re-send.
            log.warning(
                "mqtt: %d events unacknowledged for %.0f s; re-sending",
                len(self._inflight),
                STALL_S,
            )
            self._resend_all(outbox, pos, now)
        if not self._inflight:
            # Self-healing: stored events at or below the cursor that are
            # not in flight were lost somewhere; go back for them.
            oldest = outbox.oldest_seq()
            if oldest is not None and oldest <= pos.cursor:
                pos.cursor = oldest - 1

    def _resend_all(self, outbox: Outbox, pos: _Position, now: float) -> None:
        """Forget what is in flight; send again from the oldest stored event."""
        self._inflight.clear()
        pos.cursor = (outbox.oldest_seq() or pos.cursor + 1) - 1
        pos.last_ack = now

    def _periodic(self, now: float) -> None:
        """The state once per ``mqtt.state_interval_s``; blank ``last_person`` when due."""
        interval = self.cfg.mqtt.state_interval_s
        if self._ready.is_set() and now - self._state_sent >= interval:
            # Once per period (set_state only merges). Under the lock, so
            # an announce in progress (which sends one) is seen.
            with self._announce_lock:
                if time.monotonic() - self._state_sent >= interval:
                    self._publish_state()
        clear_at = self._clear_last_person_at
        if clear_at is not None and now >= clear_at:
            self._clear_last_person_at = None
            self._publish_last_person(None)

    def _send_batch(self, outbox: Outbox, pos: _Position, bucket: TokenBucket, now: float) -> float:
        """Hand the next stored events to paho within the window and the rate; the next wait.

        At most ``WINDOW`` events are unacknowledged and at most
        ``mqtt.drain_rate`` per second are sent (a token bucket holding up
        to ``min(rate, WINDOW)``).
        """
        free = WINDOW - len(self._inflight)
        if free <= 0:
            return 0.5  # woken again by the next PUBACK
        n = min(free, bucket.available(now))
        if n <= 0:
            return bucket.wait_s()
        client = self._client
        if client is None:
            return 0.5
        rows = outbox.pending(pos.cursor, n)
        for row in rows:
            info = self._send(client, row)
            self._inflight[info.mid] = row.seq
            pos.cursor = row.seq
            self.published += 1
            bucket.spend()
        # A full batch: more may be waiting, as soon as a token is there.
        return bucket.wait_s() if rows and len(rows) == n else 0.5

    def _send(self, client: Client, row: Row) -> MQTTMessageInfo:
        """Hand one stored event to paho with its ``delivery`` decided now; paho's info.

        A live event is preceded by its snapshot (if any) and followed by the
        ``last_person`` update; a late one goes alone, every field but
        ``delivery`` as stored.
        """
        payload = row.payload
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return client.publish(row.topic, payload, qos=1)  # not ours to interpret: as it is
        if "expires_at_unix" not in doc:
            # A door record, or an older version's event left in the outbox:
            # as stored, signed now (the key may be newer than the row).
            return client.publish(row.topic, wire_event(doc, self._sign_key), qos=1)
        with self._extra_lock:
            seen = self._seen.get(row.seq)
            jpeg = self._snapshots.pop(row.seq, None)
        delivery = delivery_of(
            doc,
            valid_for_s=self.cfg.events.valid_for_s,
            age_s=None if seen is None else time.monotonic() - seen,
            now=time.time(),
            synced_now=self._clock_synced(),
        )
        doc["delivery"] = delivery
        # Signed at each send: the signature covers the delivery decided now.
        payload = wire_event(doc, self._sign_key)
        live = delivery == LIVE
        if live and jpeg is not None:
            client.publish(self.topics.snapshot, jpeg, qos=1)
        info = client.publish(row.topic, payload, qos=1)
        if live:
            self._publish_last_person(doc)
        return info

    def _publish_last_person(self, event: dict[str, Any] | None) -> None:
        client = self._client
        if client is None:
            return
        if event is not None:
            clear_s = self.cfg.homeassistant.last_person_clear_s
            self._clear_last_person_at = time.monotonic() + clear_s
        client.publish(self.topics.last_person, encode(build_last_person(event)), qos=1)


__all__ = ["WINDOW", "MqttPublisher", "outbox_path", "outbox_state", "seen_monotonic"]

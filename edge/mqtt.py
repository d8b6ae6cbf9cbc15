"""MQTT publishing with durable, ordered, at-least-once delivery (paho-mqtt 2.x).

Threads: paho's network thread (``loop_start``: connects, reconnects with
back-off, runs the callbacks) and one *drain* thread, the only one that hands
events to paho. :meth:`Publisher.publish_decision` writes the event to the
on-disk :class:`~edge.outbox.Outbox` and wakes the drain thread; it never
touches the network, so a dead broker never blocks the recognition loop.

Delivery: the drain thread sends stored events in sequence order, QoS 1, at
most ``mqtt.drain_rate`` per second and at most :data:`WINDOW` unacknowledged
at a time. An event leaves the outbox only when its PUBACK arrived. Events
handed to paho before a disconnect are re-sent by paho itself after the
reconnect (flagged DUP); the drain thread then continues after them. Events
still in the outbox when the process starts (crash, SIGKILL, power cut) are
sent again from the oldest. A broker can therefore see an event twice, never
zero times (unless the outbox overflowed, which shows as a ``seq`` gap).

Availability: the Last Will publishes ``offline`` (retained) when the
connection dies without a DISCONNECT; ``online`` is published (retained) on
every connect and ``offline`` on a clean :meth:`Publisher.stop`.

Every paho callback is wrapped: an exception is logged and counted, never
propagated into (and never kills) the network thread.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from edge import __version__
from edge.errors import BrokerError, ConfigError, FacegateError
from edge.events import (
    OFFLINE,
    ONLINE,
    UNLOCK,
    CommandError,
    Topics,
    build_door_event,
    build_event,
    build_ha_discovery,
    build_state,
    clock_synced,
    encode,
    new_event_id,
    parse_command,
)
from edge.outbox import Outbox

if TYPE_CHECKING:
    from edge.config import Config
    from edge.types import Decision

log = logging.getLogger("facegate.mqtt")

WINDOW = 20
"""Most events handed to paho and not yet acknowledged (paho's inflight limit)."""
STALL_S = 30.0
"""Connected this long with unacknowledged events and no PUBACK: send them again."""
CLOCK_CHECK_S = 10.0
REJECT_LOG_FIRST = 10
REJECT_LOG_EVERY = 100

F = TypeVar("F", bound=Callable[..., Any])


def outbox_path(cfg: Config) -> Path:
    """``mqtt.outbox_path``; a relative path is taken inside ``service.state_dir``."""
    return cfg.outbox_file


class Publisher:
    """The MQTT side of the daemon: events, availability, state, discovery, commands."""

    def __init__(self, cfg: Config, outbox: Outbox | None = None) -> None:
        self.cfg = cfg
        self.topics = Topics.for_device(cfg.mqtt.prefix, cfg.device.id)
        self.on_command: Callable[[str], None] | None = None
        self.on_unlock: Callable[[bytes], None] | None = None  # door: signed remote unlock
        # Counters, for the state topic and tests.
        self.published = 0  # events handed to paho (including re-sends)
        self.acked = 0  # PUBACKs for events
        self.rejected_commands = 0
        self.callback_errors = 0
        self._outbox = outbox
        self._client: Any = None
        self._drain: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopped = False
        self._failures = 0  # failed connection attempts since the last success
        self._flush_deadline = 0.0
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}
        self._state_lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._status: dict[str, bytes] = {}  # door: retained <base>/<name> topics
        self._clock = (0.0, False)

    # -- life cycle --------------------------------------------------------------

    def start(self) -> None:
        """Open the outbox, configure the client and start both threads.

        An unreachable broker is not an error: events wait in the outbox and
        paho keeps reconnecting. Bad TLS files or secrets raise
        :class:`~edge.errors.ConfigError`.
        """
        if self._client is not None:
            raise BrokerError("mqtt: publisher already started")
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
        outbox = self._open_outbox()
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
        client.on_connect = self._guarded(self._on_connect)
        client.on_disconnect = self._guarded(self._on_disconnect)
        client.on_connect_fail = self._guarded(self._on_connect_fail)
        client.on_publish = self._guarded(self._on_publish)
        client.on_message = self._guarded(self._on_message)
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

    def _open_outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox(outbox_path(self.cfg), self.cfg.mqtt.outbox_max)
        return self._outbox

    def _configure_tls(self, client: Any) -> None:
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
            if self._connected.is_set():
                try:
                    info = client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
                    info.wait_for_publish(timeout=max(0.05, min(1.0, end - time.monotonic())))
                except Exception as e:  # best effort: the Will covers us anyway
                    log.debug("mqtt: offline not confirmed: %s", e)
            client.disconnect()
            thread = getattr(client, "_thread", None)
            if isinstance(thread, threading.Thread):
                thread.join(timeout=max(0.05, end - time.monotonic()))
                if thread.is_alive():
                    log.warning("mqtt: network thread did not stop in time")
                else:
                    client.loop_stop()
            self._client = None
        if self._drain is None or not self._drain.is_alive():
            self._apply_acks()  # the last PUBACKs, so those events are not sent twice
        if self._outbox is not None:
            left = len(self._outbox)
            if left:
                log.info("mqtt: %d events kept in the outbox for the next start", left)
            self._outbox.close()
        self._connected.clear()

    def alive(self) -> bool:
        """Both threads are running (the watchdog's view of MQTT health)."""
        client = self._client
        thread = getattr(client, "_thread", None) if client is not None else None
        return (
            not self._stop.is_set()
            and isinstance(thread, threading.Thread)
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
        as the event is on disk; delivery happens on the drain thread.
        """
        outbox = self._open_outbox()
        synced = self._clock_synced()
        made: list[dict[str, Any]] = []

        def build(seq: int) -> tuple[str, bytes]:
            payload = build_event(
                decision,
                device_id=self.cfg.device.id,
                seq=seq,
                event_id=new_event_id(),
                clock_synced=synced,
                include_snapshot=self.cfg.mqtt.snapshot,
            )
            made.append(payload)
            return str(payload["id"]), encode(payload)

        outbox.append(self.topics.event, build)
        self._wake.set()
        return made[-1]

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]:
        """Store a door event (:func:`~edge.events.build_door_event`) in the outbox; the payload.

        Same path, sequence and delivery guarantees as :meth:`publish_decision`.
        """
        outbox = self._open_outbox()
        synced = self._clock_synced()
        t = time.time() if ts is None else ts
        made: list[dict[str, Any]] = []

        def build(seq: int) -> tuple[str, bytes]:
            payload = build_door_event(
                kind,
                fields,
                device_id=self.cfg.device.id,
                seq=seq,
                event_id=new_event_id(),
                clock_synced=synced,
                ts=t,
            )
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
        """Merge ``fields`` into the retained state and publish it now (when connected)."""
        with self._state_lock:
            self._state.update(fields)
        self._publish_state()

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
            try:
                fields["outbox_pending"] = len(self._outbox)
                fields["outbox_dropped"] = self._outbox.dropped
            except FacegateError:
                pass  # closed while stopping
        payload = build_state(self.cfg.device.id, **fields)
        client.publish(self.topics.state, encode(payload), qos=1, retain=True)

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

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("mqtt: broker refused the connection: %s", reason_code)
            return
        log.info(
            "mqtt: connected to %s:%d%s",
            self.cfg.mqtt.host,
            self.cfg.mqtt.port,
            f" after {self._failures} failed attempts" if self._failures else "",
        )
        self._failures = 0
        self._connected.set()
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        if self.cfg.mqtt.ha_discovery:
            discovery = build_ha_discovery(
                self.topics,
                device_id=self.cfg.device.id,
                device_name=self.cfg.device.name,
                ha_prefix=self.cfg.mqtt.ha_prefix,
                sw_version=__version__,
            )
            if self.cfg.door.enabled and discovery:  # door: its entities join the same device
                from edge.door import ha_discovery

                discovery += ha_discovery(self.topics.base, self.cfg, like=discovery[0][1])
            for topic, config in discovery:
                client.publish(topic, encode(config), qos=1, retain=True)
        with self._state_lock:  # door: the retained status topics, again after a reconnect
            statuses = list(self._status.items())
        for topic, payload in statuses:
            client.publish(topic, payload, qos=1, retain=True)
        if self.cfg.mqtt.commands:
            client.subscribe(self.topics.command, qos=1)
        self._publish_state()
        self._wake.set()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # TCP or TLS failure (paho retries with back-off); say so once per outage.
        self._failures += 1
        if self._failures == 1:
            log.warning(
                "mqtt: cannot connect to %s:%d (broker down, network or TLS); retrying",
                self.cfg.mqtt.host,
                self.cfg.mqtt.port,
            )

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stop.is_set():
            log.warning("mqtt: disconnected (%s); reconnecting", reason_code)

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        # Never take a lock here: paho holds its message mutex while calling us,
        # and the drain thread may be inside client.publish() waiting for it.
        self._acks.put((mid, not reason_code.is_failure))
        self._wake.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic != self.topics.command:
            return
        if msg.retain:
            # A retained command would fire again on every reconnect.
            self._reject("retained command ignored")
            return
        try:
            cmd = parse_command(bytes(msg.payload))
        except CommandError as e:
            self._reject(str(e))
            return
        log.info("mqtt: command %r received", cmd)
        if cmd == UNLOCK:  # door: only the door verifies and acts on it
            if self.on_unlock is None:
                self._reject("unlock: no door on this device")
            else:
                self.on_unlock(bytes(msg.payload))
            return
        callback = self.on_command
        if callback is not None:
            callback(cmd)

    def _reject(self, why: str) -> None:
        self.rejected_commands += 1
        n = self.rejected_commands
        # Rate-limited: a flood of junk must not flood the journal.
        if n <= REJECT_LOG_FIRST or n % REJECT_LOG_EVERY == 0:
            log.warning("mqtt: rejected command #%d: %s", n, why)

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
        outbox = self._open_outbox()
        rate = self.cfg.mqtt.drain_rate
        burst = max(1.0, min(rate, float(WINDOW)))
        tokens = burst
        refilled = time.monotonic()
        inflight = self._inflight  # paho mid -> outbox seq; only this thread writes it
        cursor = 0  # highest seq handed to paho in this process
        last_ack = time.monotonic()
        last_state = time.monotonic()
        interval = self.cfg.mqtt.state_interval_s
        wait = 0.5
        while True:
            self._wake.wait(timeout=wait)
            self._wake.clear()
            wait = 0.5
            now = time.monotonic()
            if self._apply_acks():
                last_ack = now
            connected = self._connected.is_set()
            if self._stop.is_set() and (
                not connected
                or now >= self._flush_deadline
                or (not inflight and not outbox.pending(cursor, 1))
            ):
                return
            if not connected:
                last_ack = now  # a stall is only measured while connected
                continue
            if now - last_state >= interval:
                last_state = now
                self._publish_state()
            if inflight and now - last_ack > STALL_S:
                # No PUBACK for a long time: assume paho lost them and re-send.
                log.warning(
                    "mqtt: %d events unacknowledged for %.0f s; re-sending", len(inflight), STALL_S
                )
                inflight.clear()
                cursor = (outbox.oldest_seq() or cursor + 1) - 1
                last_ack = now
            if not inflight:
                # Self-healing: stored events at or below the cursor that are
                # not in flight were lost somewhere; go back for them.
                oldest = outbox.oldest_seq()
                if oldest is not None and oldest <= cursor:
                    cursor = oldest - 1
            tokens = min(burst, tokens + (now - refilled) * rate)
            refilled = now
            free = WINDOW - len(inflight)
            if free <= 0:
                continue  # woken again by the next PUBACK
            n = min(free, int(tokens))
            if n <= 0:
                wait = (1.0 - tokens) / rate
                continue
            rows = outbox.pending(cursor, n)
            client = self._client
            if client is None:
                continue
            for row in rows:
                info = client.publish(row.topic, row.payload, qos=1)
                inflight[info.mid] = row.seq
                cursor = row.seq
                self.published += 1
                tokens -= 1.0
            if len(rows) == n and rows:
                wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate


class FakePublisher:
    """The :class:`Publisher` interface without a network: payloads kept in lists.

    Used by tests and by the daemon when MQTT is off (it prints the payloads).
    Sequence numbers start at 1 per instance; nothing is stored on disk.
    """

    def __init__(self, cfg: Config | None = None) -> None:
        from edge.config import Config

        self.cfg = cfg or Config()
        self.topics = Topics.for_device(self.cfg.mqtt.prefix, self.cfg.device.id)
        self.on_command: Callable[[str], None] | None = None
        self.on_unlock: Callable[[bytes], None] | None = None
        self.payloads: list[dict[str, Any]] = []
        self.statuses: dict[str, dict[str, Any]] = {}
        self.states: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {}
        self.rejected_commands = 0
        self.started = False
        self.stopped = False
        self._seq = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.started = True

    def publish_decision(self, decision: Decision) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            payload = build_event(
                decision,
                device_id=self.cfg.device.id,
                seq=self._seq,
                event_id=new_event_id(),
                clock_synced=clock_synced(),
                include_snapshot=self.cfg.mqtt.snapshot,
            )
            self.payloads.append(payload)
        return payload

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            payload = build_door_event(
                kind,
                fields,
                device_id=self.cfg.device.id,
                seq=self._seq,
                event_id=new_event_id(),
                clock_synced=clock_synced(),
                ts=time.time() if ts is None else ts,
            )
            self.payloads.append(payload)
        return payload

    def publish_status(self, name: str, fields: dict[str, Any]) -> None:
        with self._lock:
            self.statuses[name] = build_state(self.cfg.device.id, **fields)

    def set_state(self, **fields: Any) -> None:
        with self._lock:
            self.state.update(fields)
            self.states.append(build_state(self.cfg.device.id, **self.state))

    def command(self, payload: bytes) -> bool:
        """Feed a command payload as if it came from the broker; whether it was accepted."""
        try:
            cmd = parse_command(payload)
        except CommandError as e:
            self.rejected_commands += 1
            log.warning("rejected command: %s", e)
            return False
        if cmd == UNLOCK:  # door: the signed unlock goes to the door alone
            if self.on_unlock is None:
                self.rejected_commands += 1
                return False
            self.on_unlock(payload)
            return True
        if self.on_command is not None:
            self.on_command(cmd)
        return True

    def alive(self) -> bool:
        return self.started and not self.stopped

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True


__all__ = ["WINDOW", "FakePublisher", "Publisher", "outbox_path"]

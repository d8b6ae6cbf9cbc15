"""The MQTT transport: one paho client that connects, reconnects and publishes with acks.

What it does: credentials (``mqtt.username`` and the password from a file or
a systemd credential), TLS, the Last Will (``offline``, retained), paho's
limits, ``connect_async`` and paho's network thread (``loop_start``), which
reconnects with back-off. What it knows of facegate: nothing but the
``[mqtt]`` section. Its owner (:class:`edge.delivery.mqtt.MqttPublisher`)
hears of connections, messages, subscriptions and disconnections through
hooks; PUBACKs go to :attr:`MqttTransport.acks`, for the delivery loop
(:mod:`edge.delivery.drain`).

Every paho callback is wrapped: an exception (in a hook too) is logged and
counted (:attr:`~MqttTransport.callback_errors`), never propagated into
(and never kills) the network thread. The network thread is paho's; the
transport learns which thread it is from ``on_pre_connect``, which paho calls
on it before every connection attempt.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from edge.config import read_secret
from edge.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTMessageInfo
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from edge.config import Config

log = logging.getLogger("facegate.mqtt")

WINDOW = 20
"""Most messages handed to paho and not yet acknowledged (paho's inflight limit)."""

F = TypeVar("F", bound=Callable[..., Any])


def _nothing(*_args: Any) -> None:
    return None


@dataclass
class Hooks:
    """What the transport's owner hears, each called on paho's network thread.

    ``connected``: the broker accepted a connection (the transport's lock is
    held, :attr:`MqttTransport.connected` is set); ``message``: a message on
    a subscription (topic, payload, retained); ``subscribed``: a SUBACK (mid,
    granted); ``acked``: a PUBACK arrived (it is in :attr:`MqttTransport.acks`);
    ``disconnected``: the connection ended.
    """

    connected: Callable[[], None] = _nothing
    message: Callable[[str, bytes, bool], None] = _nothing
    subscribed: Callable[[int, bool], None] = _nothing
    acked: Callable[[], None] = _nothing
    disconnected: Callable[[], None] = _nothing


class MqttTransport:
    """One paho client for the device: connect, TLS, Last Will, publish and subscribe at QoS 1.

    ``will``: the availability topic and the payload the broker publishes
    (retained) when the connection dies without a DISCONNECT (None: no
    Will, for a client that is not a device: ``facegate fleet``). ``lock``: held
    while a new connection is marked connected and the ``connected`` hook
    runs, so whatever the owner publishes under the same lock sees one
    consistent state.
    """

    def __init__(
        self,
        cfg: Config,
        will: tuple[str, bytes] | None,
        hooks: Hooks | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.cfg = cfg
        self.will = will
        self.hooks = hooks or Hooks()
        self.lock = lock or threading.Lock()
        self.connected = threading.Event()
        """Set while the broker accepts this client (between CONNACK and disconnect)."""
        self.generation = 0
        """+1 per accepted connection: messages in flight to an older one are lost."""
        self.acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        """(mid, ok) of every PUBACK, in arrival order."""
        self.callback_errors = 0
        self.refused_connections = 0  # CONNACKs with a failure (bad credentials, ...)
        # Attempts that ended before a CONNACK: broker down, TLS refused (with
        # TLS 1.3 a missing client certificate closes the connection after the
        # handshake), or a refusal (which is also counted above).
        self.failed_connections = 0
        self._client: Client | None = None
        self._net_thread: threading.Thread | None = None  # paho's, seen in on_pre_connect
        self._failures = 0  # failed connection attempts since the last success
        self._stopping = False

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Configure the client and start connecting (an absent broker is no error)."""
        if self._client is not None:
            raise BrokerError("mqtt: transport already started")
        m = self.cfg.mqtt
        client = self._make_client()
        client.connect_async(m.host, m.port, keepalive=m.keepalive)
        self._client = client
        client.loop_start()

    def stop(self, end: float, farewell: Callable[[], None] | None = None) -> None:
        """``farewell()`` and the Will's payload while connected, then disconnect; by ``end``."""
        self._stopping = True
        client = self._client
        if client is None:
            return
        if self.connected.is_set():
            try:
                if farewell is not None:
                    farewell()
                if self.will is not None:
                    topic, payload = self.will
                    info = client.publish(topic, payload, qos=1, retain=True)
                    info.wait_for_publish(timeout=max(0.05, min(1.0, end - time.monotonic())))
            except Exception as e:  # best effort: the Will covers us anyway
                log.debug("mqtt: offline not confirmed: %s", e)
        self._client = None
        self._stop_network(client, end)
        self.connected.clear()

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
        """paho's network thread runs (part of the watchdog's view of MQTT health)."""
        thread = self._net_thread
        return (
            not self._stopping
            and self._client is not None
            and thread is not None
            and thread.is_alive()
        )

    # -- publishing ------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> MQTTMessageInfo | None:
        """Hand one message to paho (QoS 1 by default); paho's info, None when stopped."""
        client = self._client
        if client is None:
            return None
        return client.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> int | None:
        """Subscribe on the current connection; the mid of its SUBACK, None when stopped."""
        client = self._client
        if client is None:
            return None
        _, mid = client.subscribe(topic_filter, qos=qos)
        return mid

    def unsubscribe(self, topic_filter: str) -> int | None:
        """Unsubscribe on the current connection; the mid of its UNSUBACK, None when stopped."""
        client = self._client
        if client is None:
            return None
        _, mid = client.unsubscribe(topic_filter)
        return mid

    # -- the client ------------------------------------------------------------------

    def _make_client(self) -> Client:
        """A configured paho client (credentials, TLS, Will, limits, callbacks), not connected."""
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
        client.max_queued_messages_set(0)  # the outbox bounds the backlog
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if self.will is not None:
            topic, payload = self.will
            client.will_set(topic, payload, qos=1, retain=True)
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
        m = self.cfg.mqtt
        if reason_code.is_failure:
            self.refused_connections += 1
            log.error("mqtt: broker refused the connection: %s", reason_code)
            return
        after = f" after {self._failures} failed attempts" if self._failures else ""
        log.info("mqtt: connected to %s:%d%s", m.host, m.port, after)
        self._failures = 0
        # paho would now re-send its copies of unacknowledged messages as they
        # were; drop them, and let the delivery loop send them again from the
        # outbox, each with its delivery decided afresh.
        drop = getattr(client, "drop_out_messages", None)
        if callable(drop):
            drop()
        self.generation += 1
        with self.lock:
            self.connected.set()
            self.hooks.connected()

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        # TCP or TLS failure (paho retries with back-off); say so once per outage.
        self.failed_connections += 1
        self._failures += 1
        if self._failures == 1:
            m = self.cfg.mqtt
            log.warning(
                "mqtt: cannot connect to %s:%d (broker down, network or TLS); retrying",
                m.host,
                m.port,
            )

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        self.hooks.disconnected()
        if not was:
            self.failed_connections += 1
        if was and not self._stopping:
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
        # and the delivery loop may be inside client.publish() waiting for it.
        self.acks.put((mid, not reason_code.is_failure))
        self.hooks.acked()

    def _on_subscribe(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.hooks.subscribed(mid, not any(rc.is_failure for rc in reason_codes))

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        self.hooks.message(msg.topic, bytes(msg.payload), bool(msg.retain))


__all__ = ["WINDOW", "Hooks", "MqttTransport"]

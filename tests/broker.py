"""The tests' side of the real Mosquitto broker (:mod:`tools._broker` is the broker).

:class:`Broker` is :class:`tools._broker.Broker`; the tests start it with
``persistent=True``, so one killed and restarted still holds the sessions
and queued QoS 1 messages of its persistent subscribers. :class:`Collector` is a subscriber
that records every message; :meth:`Collector.ready` waits until the broker
acknowledged its subscriptions (SUBACK), so a test never sleeps to wait for
them. :func:`wait_for` polls a condition with a timeout.

Use the ``mqtt_broker`` fixture (import it into a test module or conftest:
``from broker import mqtt_broker``); it skips the test with a clear reason
when ``mosquitto`` is not installed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tools._broker import HOST, Broker, free_port, mosquitto_path, port_open


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` s passed; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Collector:
    """A subscriber that records every message it gets (thread-safe list).

    ``persistent=True`` uses a fixed client id and ``clean_session=False`` so
    the broker queues QoS 1 messages for it while it is disconnected.
    """

    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        client_id: str = "",
        persistent: bool = True,
        auth: tuple[str, str] | None = None,
    ) -> None:
        """``auth``: (user, password) for a broker without anonymous access."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self.arrivals: list[float] = []  # wall-clock time each message arrived
        self.connects = 0
        self._subacks = 0  # SUBACKs of the current connection
        self._lock = threading.Lock()
        self._topics = topics
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{os.getpid()}-{id(self)}",
            protocol=paho.MQTTv311,
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect_async(broker.host, broker.port, keepalive=10)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            return
        with self._lock:
            self._subacks = 0
            self.connects += 1
        for t in self._topics:
            client.subscribe(t, qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:
            self._subacks += 1

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.arrivals.append(time.time())

    def start(self) -> Collector:
        """Start the network thread (connecting in the background); see :meth:`ready`."""
        self.client.loop_start()
        return self

    def ready(self, timeout: float = 10.0) -> bool:
        """Wait until connected and every subscription is acknowledged (SUBACK).

        From then on every message published on the topics reaches this
        collector (retained ones may still be arriving).
        """

        def subscribed() -> bool:
            with self._lock:
                return self.connects > 0 and self._subacks >= len(self._topics)

        return wait_for(subscribed, timeout)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def timed(self, topic: str) -> list[tuple[float, bytes]]:
        """(arrival wall-clock time, payload) of every message on ``topic``."""
        with self._lock:
            pairs = zip(self.arrivals, self.messages, strict=True)
            return [(a, p) for a, (t, p, _) in pairs if t == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.snapshot() if t == topic]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return wait_for(predicate, timeout)


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    """A running mosquitto on a free loopback port (skips without mosquitto)."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path / "broker", persistent=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()


__all__ = [
    "HOST",
    "Broker",
    "Collector",
    "free_port",
    "mosquitto_path",
    "mqtt_broker",
    "port_open",
    "wait_for",
]

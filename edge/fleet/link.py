"""The admin's broker connection: :class:`AdminLink`, a synchronous face on the MQTT transport.

``facegate fleet push`` and ``status`` are short-lived commands that wait
for things: a connection, a SUBACK, the retained messages of a
subscription, the PUBACK of every message. :class:`AdminLink` runs the same
transport as the device (:class:`edge.delivery.transport.MqttTransport`:
credentials, TLS, reconnects with back-off) without a Last Will, under its
own client id, and turns its hooks into waits, each bounded by a deadline
on the monotonic clock.

:meth:`AdminLink.publish_all` survives a broker restart: it republishes,
after the reconnect, every message whose PUBACK had not arrived. It cannot
see a message the broker acknowledged and then lost (Mosquitto acknowledges
before it writes its persistence file): that is what ``push``'s read-back
is for.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from edge.delivery.transport import Hooks, MqttTransport
from edge.errors import BrokerError

if TYPE_CHECKING:
    from edge.config import Config

log = logging.getLogger("facegate.fleet")

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: how far a push is (tests act mid-push on it)."""


def _nothing(stage: str, done: int, total: int) -> None:
    return None


class AdminLink:
    """One MQTT connection for the admin's commands (see the module)."""

    def __init__(self, cfg: Config, name: str = "admin") -> None:
        m = cfg.mqtt
        client_id = m.client_id or f"facegate-fleet-{name}-{os.getpid()}"
        self.cfg = replace(cfg, mqtt=replace(m, client_id=client_id))
        self._cond = threading.Condition()
        self._inbox: list[tuple[str, bytes, bool]] = []
        self._subacks: dict[int, bool] = {}
        self.transport = MqttTransport(
            self.cfg,
            will=None,
            hooks=Hooks(
                connected=self._notify,
                message=self._on_message,
                subscribed=self._on_subscribed,
                acked=self._notify,
                disconnected=self._notify,
            ),
        )

    def __enter__(self) -> AdminLink:
        self.transport.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.stop(time.monotonic() + 2.0)

    # -- hooks (paho's thread) ------------------------------------------------------------
    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._cond:
            self._inbox.append((topic, payload, retained))
            self._cond.notify_all()

    def _on_subscribed(self, mid: int, granted: bool) -> None:
        with self._cond:
            self._subacks[mid] = granted
            self._cond.notify_all()

    # -- waits ---------------------------------------------------------------------------
    def _wait(self, until: Callable[[], bool], deadline: float) -> bool:
        with self._cond:
            while not until():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def wait_connected(self, deadline: float) -> int:
        """The generation of a live connection; BrokerError when none comes by ``deadline``."""
        if not self._wait(self.transport.connected.is_set, deadline):
            m = self.cfg.mqtt
            raise BrokerError(f"mqtt: cannot reach the broker at {m.host}:{m.port}")
        return self.transport.generation

    def take(self) -> list[tuple[str, bytes, bool]]:
        """Every message received since the last call: (topic, payload, retained)."""
        with self._cond:
            out, self._inbox = self._inbox, []
            return out

    def wait_message(self, deadline: float) -> bool:
        """Whether a message is waiting (or came) before ``deadline``."""
        return self._wait(lambda: bool(self._inbox), deadline)

    def subscribe(self, topic_filter: str, deadline: float) -> None:
        """Subscribe and wait for the SUBACK; BrokerError when refused or not answered."""
        self.wait_connected(deadline)
        mid = self.transport.subscribe(topic_filter)
        if mid is None or not self._wait(lambda: mid in self._subacks, deadline):
            raise BrokerError(f"mqtt: no answer to the subscription to {topic_filter}")
        if not self._subacks.pop(mid):
            raise BrokerError(f"mqtt: the broker refused the subscription to {topic_filter} (ACL?)")

    def unsubscribe(self, topic_filter: str) -> None:
        self.transport.unsubscribe(topic_filter)

    # -- publishing ------------------------------------------------------------------------
    def publish_all(
        self,
        messages: Sequence[tuple[str, bytes]],
        deadline: float,
        stage: str = "publish",
        progress: Progress = _nothing,
    ) -> None:
        """Publish each (topic, payload) retained, QoS 1, until its PUBACK (reconnects too)."""
        pending = dict(enumerate(messages))
        total = len(messages)
        while pending:
            generation = self.wait_connected(deadline)
            inflight: dict[int, int] = {}
            for i, (topic, payload) in sorted(pending.items()):
                info = self.transport.publish(topic, payload, retain=True)
                if info is not None:
                    inflight[info.mid] = i
            while inflight and self.transport.generation == generation:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"mqtt: {len(pending)} of {total} messages not acknowledged in time"
                    )
                try:
                    mid, ok = self.transport.acks.get(timeout=0.2)
                except queue.Empty:
                    continue
                i = inflight.pop(mid, -1)
                if ok and i in pending:
                    del pending[i]
                    progress(stage, total - len(pending), total)
            if pending:
                log.info(
                    "fleet: %d of %d messages to send again after a reconnect", len(pending), total
                )


__all__ = ["AdminLink", "Progress"]

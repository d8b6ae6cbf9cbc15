"""Extensions: features that watch the MQTT publisher's flow and add their own messages.

Like zigbee2mqtt's extensions, an extension is handed the broker link and
hears what happens; the publisher (:class:`edge.delivery.mqtt.MqttPublisher`)
knows nothing of what it does. Home Assistant is one
(:class:`edge.homeassistant.extension.HomeAssistant`); the publisher the
daemon runs is assembled with them in :mod:`edge.daemon`, so this stage never
imports a later one.

Every hook has a default that does nothing; an extension overrides the ones
it needs. The threads they are called on:

* :meth:`Extension.start`: the caller of ``start()``, before connecting;
* :meth:`Extension.connected`, :meth:`Extension.subscribed` and
  :meth:`Extension.disconnected`: paho's network thread, on every
  connection (ready or not; before the announcements), SUBACK and
  disconnection;
* :meth:`Extension.state`: whichever thread publishes the state message;
* :meth:`Extension.announce`: paho's network thread, on every connection once
  the device is ready, before the state, the presence and ``online`` (under
  the publisher's announce lock);
* :meth:`Extension.gallery_changed`: the daemon's thread (announce lock held);
* :meth:`Extension.message`: paho's network thread, for a message on a
  subscription that is not the command topic;
* :meth:`Extension.event_sent` and :meth:`Extension.tick`: the delivery loop's
  thread.
"""

from __future__ import annotations

from typing import Any, Protocol


class MqttLink(Protocol):
    """What an extension may do on the broker connection (QoS 1 always)."""

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> object: ...

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> int | None: ...

    def unsubscribe(self, topic_filter: str) -> int | None: ...


class Extension:
    """A feature hanging off the MQTT publisher; every hook does nothing by default."""

    def start(self) -> None:
        """The publisher starts (raise :class:`~edge.errors.ConfigError` to refuse)."""

    def connected(self, link: MqttLink) -> None:
        """A new connection, ready or not (its subscriptions are new: a clean session)."""

    def subscribed(self, link: MqttLink, mid: int, granted: bool) -> None:
        """The broker acknowledged a subscription (``mid`` as ``subscribe`` returned it)."""

    def disconnected(self) -> None:
        """The connection ended."""

    def state(self) -> dict[str, Any]:
        """Fields this extension adds to every state message (none by default)."""
        return {}

    def announce(self, link: MqttLink) -> None:
        """Connected and ready: publish what this extension owns (before ``online``)."""

    def gallery_changed(self, link: MqttLink | None, names: tuple[str, ...]) -> None:
        """The enrolled names changed; ``link`` is None unless connected and ready."""

    def message(self, link: MqttLink, topic: str, payload: bytes, retained: bool) -> bool:
        """A message on a subscription this extension made; True when it was its own."""
        return False

    def event_sent(self, link: MqttLink, event: dict[str, Any]) -> None:
        """A decision event went out ``live`` (its payload as sent)."""

    def tick(self, link: MqttLink, now: float) -> None:
        """About twice a second while connected (``now``: the monotonic clock)."""


__all__ = ["Extension", "MqttLink"]

"""Home Assistant as an extension of the MQTT publisher: what it announces, clears and follows.

:class:`HomeAssistant` hangs off :class:`edge.delivery.mqtt.MqttPublisher`
(:class:`edge.delivery.extension.Extension`); the daemon's publisher
(:class:`edge.daemon.Publisher`) always carries it, because with
``mqtt.ha_discovery = false`` it still has work: clearing what an earlier
run announced.

* **Discovery** (:meth:`~HomeAssistant.announce`, on every connection once
  the device is ready, and when the enrolled names change): the wanted
  configs (:mod:`edge.homeassistant.discovery`, the door's too when
  ``door.enabled``) are published retained; every other topic this device
  may own (a person removed, discovery switched off) is cleared with an
  empty retained payload, so Home Assistant removes the entity.
* **Stale configs**: after announcing, it subscribes to every discovery
  topic of this device; a retained config found there that it no longer
  wants is cleared (:meth:`~HomeAssistant.message`). Only then: before the
  wanted set is known every config would look stale, and clearing it would
  make Home Assistant drop the entities at every start. facegate 0.1's
  layout (the node id with ``-`` turned into ``_``) is cleared this way
  only, where found: the shipped broker ACL grants the device its own node
  id alone, and Mosquitto 2.0 drops the connection of a client whose
  publish it denies (a blind clear cost the device its connection on
  every connect).
* **Last person**: each live decision event sets the ``last_person`` topic
  (:func:`~edge.homeassistant.discovery.build_last_person`), blanked
  ``homeassistant.last_person_clear_s`` later (:meth:`~HomeAssistant.tick`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.delivery.codec import encode
from edge.delivery.extension import Extension, MqttLink
from edge.delivery.topics import Topics
from edge.errors import ConfigError
from edge.homeassistant.discovery import (
    build_ha_discovery,
    build_last_person,
    door_discovery,
    ha_discovery_subscription,
    ha_discovery_topic,
    ha_legacy_node,
    ha_person_object_id,
    ha_static_topics,
)

if TYPE_CHECKING:
    from edge.config import Config

log = logging.getLogger("facegate.mqtt")


class HomeAssistant(Extension):
    """Discovery configs, their clearing, and the "Last person" sensor's topic."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.topics = Topics.for_device(cfg.mqtt.prefix, cfg.device.id)
        self._people: tuple[str, ...] = ()
        self._announced_people: frozenset[str] = frozenset()
        self._wanted: frozenset[str] = frozenset()
        self._clear_last_person_at: float | None = None

    def start(self) -> None:
        prefix = self.cfg.mqtt.ha_prefix
        if not prefix.strip("/") or any(c in prefix for c in "+#\0"):
            raise ConfigError(f"mqtt.ha_prefix: {prefix!r} cannot be used in an MQTT topic")

    # -- discovery -------------------------------------------------------------------

    def wanted(self) -> list[tuple[str, dict[str, Any]]]:
        """The discovery configs this device wants now (none with ``mqtt.ha_discovery`` off)."""
        m = self.cfg.mqtt
        if not m.ha_discovery:
            return []
        wanted = build_ha_discovery(
            self.topics,
            device_id=self.cfg.device.id,
            device_name=self.cfg.device.name,
            ha_prefix=m.ha_prefix,
            sw_version=__version__,
            state_interval_s=m.state_interval_s,
            commands=m.commands,
            snapshot=m.snapshot,
            people=self._people,
            unknown_visitors=self.cfg.review.notify,
            enrol=self.cfg.review.enrol_command,
        )
        if self.cfg.door.enabled:  # door: its entities join the same device
            wanted += door_discovery(self.topics.base, self.cfg, like=wanted[0][1])
        return wanted

    def owned(self) -> set[str]:
        """Every discovery topic this device may have published (to clear what is not wanted)."""
        m, dev = self.cfg.mqtt, self.cfg.device.id
        owned = set(ha_static_topics(m.ha_prefix, dev))
        owned |= {
            ha_discovery_topic(m.ha_prefix, "device_automation", dev, ha_person_object_id(n))
            for n in self._announced_people | set(self._people)
        }
        return owned

    def publish_discovery(self, link: MqttLink) -> None:
        """Publish the wanted configs; clear every other topic this device owns."""
        wanted = self.wanted()
        topics = frozenset(t for t, _ in wanted)
        self._wanted = topics
        for topic in sorted(self.owned() - topics):
            link.publish(topic, b"", retain=True)
        for topic, config in wanted:
            link.publish(topic, encode(config), retain=True)
        self._announced_people = (
            frozenset(self._people) if self.cfg.mqtt.ha_discovery else frozenset()
        )

    def announce(self, link: MqttLink) -> None:
        self.publish_discovery(link)
        prefix, dev = self.cfg.mqtt.ha_prefix, self.cfg.device.id
        link.subscribe(ha_discovery_subscription(prefix, dev))
        legacy = ha_legacy_node(dev)
        if legacy is not None:  # where the ACL denies it, nothing comes, nothing is cleared
            link.subscribe(ha_discovery_subscription(prefix, legacy))

    def gallery_changed(self, link: MqttLink | None, names: tuple[str, ...]) -> None:
        self._people = names
        if link is not None:
            self.publish_discovery(link)

    def message(self, link: MqttLink, topic: str, payload: bytes, retained: bool) -> bool:
        """A retained config found on subscribing that is no longer wanted: cleared."""
        if not self._ours(topic):
            return False
        # Only retained configs found on subscribing matter; our own publishes
        # come back without the retain flag.
        if not retained or not payload or topic in self._wanted:
            return True
        log.info("mqtt: clearing the stale discovery config %s", topic)
        link.publish(topic, b"", retain=True)
        return True

    def _ours(self, topic: str) -> bool:
        """Whether ``topic`` is one of this device's discovery topics (the subscriptions')."""
        prefix = self.cfg.mqtt.ha_prefix.rstrip("/") + "/"
        levels = topic.removeprefix(prefix).split("/") if topic.startswith(prefix) else []
        nodes = {self.cfg.device.id, ha_legacy_node(self.cfg.device.id)}
        return len(levels) == 4 and levels[1] in nodes and levels[3] == "config"

    # -- last person ------------------------------------------------------------------

    def event_sent(self, link: MqttLink, event: dict[str, Any]) -> None:
        self._clear_last_person_at = time.monotonic() + self.cfg.homeassistant.last_person_clear_s
        link.publish(self.topics.last_person, encode(build_last_person(event)))

    def tick(self, link: MqttLink, now: float) -> None:
        clear_at = self._clear_last_person_at
        if clear_at is not None and now >= clear_at:
            self._clear_last_person_at = None
            link.publish(self.topics.last_person, encode(build_last_person(None)))


__all__ = ["HomeAssistant"]

"""Home Assistant's MQTT discovery: every entity config the device announces, built here.

Pure functions from the device's topics and config to ``(topic, config)``
pairs; :mod:`edge.homeassistant.extension` decides when they are published
and cleared. Topics are ``<ha_prefix>/<component>/<device_id>/<object_id>/config``
and unique ids ``facegate_<device_id>_<object_id>``: ``device.id`` is
restricted to ``[A-Za-z0-9_-]``, so the mapping is one-to-one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.delivery.commands import RELOAD_GALLERY
from edge.delivery.events import ABSENT, EVENT_TYPES, OFFLINE, ONLINE, PRESENT
from edge.delivery.topics import Topics
from edge.door.controller import STATUS_TOPIC

if TYPE_CHECKING:
    from edge.config import Config, DoorConfig

STRANGER = "Stranger"
"""What "Last person" shows for an unknown face (Home Assistant's ``unknown`` means "no value")."""
HA_COMMAND_SUFFIX = "door/set"
"""Home Assistant's lock entity publishes LOCK/UNLOCK here; the device never acts on it."""
HA_ENROL_NAME_SUFFIX = "enrol/name"
"""Home Assistant's "Enrol name" text entity publishes here; the device never acts on it."""
HA_ENROL_PRESS_SUFFIX = "enrol/set"
"""Home Assistant's "Enrol next face" button publishes ``PRESS`` here; the device never acts
on it: an automation signs the enrol command (README) and publishes that."""


def build_last_person(event: dict[str, Any] | None) -> dict[str, Any]:
    """The ``last_person`` payload for a live event, or the blank one (``event`` None).

    ``person`` is the name, :data:`STRANGER` for an unknown face, and ``""``
    once cleared; ``type``, ``name``, ``confidence``, ``ts``, ``id`` and ``liveness`` come
    from the event (Home Assistant shows them as the sensor's attributes).
    """
    if event is None:
        return {"person": ""}
    return {
        "person": event.get("name") or STRANGER,
        "type": event.get("type"),
        "name": event.get("name"),
        "confidence": event.get("confidence"),
        "ts": event.get("ts"),
        "id": event.get("id"),
        "liveness": event.get("liveness"),
    }


# The event entity's template: the attributes of a live, new event, and an
# empty render (which Home Assistant ignores) for a late one, a redelivery of
# the last event (same id) or an older event arriving after a newer one (a
# re-send after a reconnect). ``this`` is the entity's current state, i.e.
# the last event it accepted; ``ts`` strings are fixed-width ISO 8601 UTC, so
# they compare in time order, and only when both clocks were synchronised.
HA_EVENT_TEMPLATE = (
    "{%- set last = this.attributes -%}"
    "{%- if value_json.delivery == 'live' and value_json.id != last.get('id')"
    " and not (value_json.clock_synced and last.get('clock_synced')"
    " and value_json.ts < last.get('ts', '')) -%}"
    "{{ {'event_type': value_json.type, 'name': value_json.name,"
    " 'confidence': value_json.confidence, 'distance': value_json.distance,"
    " 'id': value_json.id, 'seq': value_json.seq, 'ts': value_json.ts,"
    " 'expires_at': value_json.expires_at, 'track_id': value_json.track_id,"
    " 'delivery': value_json.delivery, 'clock_synced': value_json.clock_synced,"
    " 'liveness': value_json.get('liveness')} | tojson }}"
    "{%- endif -%}"
)
# Device triggers cannot see the last event: they fire on every live event
# (a redelivery included); the door automation belongs on the event entity.
HA_TRIGGER_TEMPLATE = (
    "{{ value_json.type ~ ':' ~ (value_json.name or '') if value_json.delivery == 'live' else '' }}"
)
HA_ORIGIN = {"name": "facegate"}
# Every static entity the device may announce: (component, object id).
_HA_ENTITIES = (
    ("event", "face"),
    ("sensor", "last_person"),
    ("binary_sensor", "person_at_door"),
    ("button", "reload_gallery"),
    ("image", "snapshot"),
    ("image", "unknown_visitor"),
    ("text", "enrol_name"),
    ("button", "enrol_next_face"),
    ("sensor", "fps"),
    ("sensor", "gallery_size"),
    ("sensor", "outbox_pending"),
    ("device_automation", "unknown"),
    # The door's (door_discovery), when door.enabled.
    ("lock", "door_lock"),
    ("binary_sensor", "door"),
    ("binary_sensor", "tamper"),
)
# Published by facegate 0.1 under a node id with "-" turned into "_".
_HA_LEGACY = (
    ("event", "face"),
    ("sensor", "last_person"),
    ("sensor", "fps"),
    ("sensor", "gallery_size"),
    ("sensor", "outbox_pending"),
    ("lock", "door_lock"),
    ("binary_sensor", "door"),
    ("binary_sensor", "tamper"),
)


def ha_person_object_id(name: str) -> str:
    """The discovery object id of a person's device trigger: ``recognized_<slug>_<hash>``.

    ``slug`` keeps the ASCII letters and digits of the name (at most 32), the
    hash is the first 8 hex digits of SHA-256 of the UTF-8 name, so two names
    never share an id ("Zoë" and "Zoe" differ) and every id is legal in a
    Home Assistant discovery topic (``[A-Za-z0-9_-]``).
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:32].lower()
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"recognized_{slug}_{digest}" if slug else f"recognized_{digest}"


def ha_discovery_topic(ha_prefix: str, component: str, device_id: str, object_id: str) -> str:
    """``<ha_prefix>/<component>/<device_id>/<object_id>/config``."""
    return f"{ha_prefix.rstrip('/')}/{component}/{device_id}/{object_id}/config"


def ha_discovery_subscription(ha_prefix: str, device_id: str) -> str:
    """The filter matching every discovery topic of this device (to find stale ones)."""
    return f"{ha_prefix.rstrip('/')}/+/{device_id}/+/config"


def ha_static_topics(ha_prefix: str, device_id: str) -> list[str]:
    """Every discovery topic the device may own apart from per-person triggers."""
    return [ha_discovery_topic(ha_prefix, c, device_id, o) for c, o in _HA_ENTITIES]


def ha_legacy_node(device_id: str) -> str | None:
    """facegate 0.1's node id for this device (``-`` turned into ``_``), when it differs.

    Its configs are cleared only where a subscription finds them retained,
    never blindly: a broker ACL grants the device its own node id only, and
    Mosquitto 2.0 drops the connection of a client whose publish it denies.
    """
    legacy = device_id.replace("-", "_")
    return legacy if legacy != device_id else None


def ha_legacy_topics(ha_prefix: str, device_id: str) -> list[str]:
    """The discovery topics facegate 0.1 used for this device (none if its id has no ``-``)."""
    legacy = ha_legacy_node(device_id)
    if legacy is None:
        return []
    return [ha_discovery_topic(ha_prefix, c, legacy, o) for c, o in _HA_LEGACY]


Entity = tuple[str, dict[str, Any]]
"""One discovery message: ``(topic, config)``."""


@dataclass(frozen=True)
class _Device:
    """What every entity of one device shares: its topics, ids and common config keys."""

    topics: Topics
    device_id: str
    ha_prefix: str
    block: dict[str, Any]
    origin: dict[str, Any]

    @property
    def common(self) -> dict[str, Any]:
        return {
            "availability_topic": self.topics.availability,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "qos": 1,
            "device": self.block,
            "origin": self.origin,
        }

    def topic(self, component: str, object_id: str) -> str:
        return ha_discovery_topic(self.ha_prefix, component, self.device_id, object_id)

    def entity(self, component: str, object_id: str, name: str, **config: Any) -> Entity:
        """An entity with the common keys, ``name`` and ``unique_id`` ``facegate_<dev>_<obj>``."""
        uid = f"facegate_{self.device_id}_{object_id}"
        body = {**self.common, "name": name, "unique_id": uid, **config}
        return self.topic(component, object_id), body


def build_ha_discovery(
    topics: Topics,
    *,
    device_id: str,
    device_name: str,
    ha_prefix: str,
    sw_version: str,
    state_interval_s: float = 60.0,
    commands: bool = False,
    snapshot: bool = False,
    people: Sequence[str] = (),
    unknown_visitors: bool = False,
    enrol: bool = False,
) -> list[Entity]:
    """Home Assistant MQTT discovery messages: ``(topic, config)`` pairs, to publish retained.

    Topics are ``<ha_prefix>/<component>/<device_id>/<object_id>/config``
    and unique ids ``facegate_<device_id>_<object_id>``: ``device.id`` is
    restricted to ``[A-Za-z0-9_-]``, so the mapping is one-to-one. Entities,
    all with ``qos: 1``, the device's availability topic and an ``origin``:

    - ``event`` "Face": ``recognized``/``unknown`` with ``name``,
      ``confidence``, ``distance``, ``id``, ``seq``, ``ts``, ``expires_at``,
      ``track_id``, ``delivery`` and ``clock_synced`` as attributes; late
      events and redeliveries render empty and are ignored
      (:data:`HA_EVENT_TEMPLATE`);
    - ``sensor`` "Last person" from the ``last_person`` topic (with its
      attributes);
    - ``binary_sensor`` "Person at door" (occupancy) from ``presence``;
    - ``button`` "Reload gallery" (only with ``commands``);
    - ``image`` "Snapshot" (only with ``snapshot``);
    - ``image`` "Unknown visitor" (only with ``unknown_visitors``:
      ``review.notify``), the crop of the last unknown visit kept for review;
    - ``text`` "Enrol name" and ``button`` "Enrol next face" (only with
      ``enrol``: ``review.enrol_command``); they publish to topics the device
      ignores (:data:`HA_ENROL_NAME_SUFFIX`, :data:`HA_ENROL_PRESS_SUFFIX`):
      an automation signs the command (README);
    - diagnostic sensors from the state topic (fps, enrolled people,
      undelivered events) with ``state_class: measurement`` and
      ``expire_after`` of three state intervals;
    - device triggers ``recognized``/<name> per enrolled person in
      ``people`` and ``unknown``/``Stranger`` (live events only).
    """
    block = {
        "identifiers": [f"facegate_{device_id}"],
        "name": device_name,
        "manufacturer": "facegate",
        "model": "facegate edge",
        "sw_version": sw_version,
    }
    dev = _Device(topics, device_id, ha_prefix, block, {**HA_ORIGIN, "sw_version": sw_version})
    return [
        *_face_entities(dev),
        *_optional_entities(dev, commands=commands, snapshot=snapshot),
        *_review_entities(dev, unknown_visitors=unknown_visitors, enrol=enrol),
        *_diagnostics(dev, state_interval_s),
        *_triggers(dev, people),
    ]


def _face_entities(dev: _Device) -> list[Entity]:
    """The face event, "Last person" and "Person at door"."""
    t = dev.topics
    return [
        dev.entity(
            "event",
            "face",
            "Face",
            state_topic=t.event,
            event_types=list(EVENT_TYPES),
            value_template=HA_EVENT_TEMPLATE,
            icon="mdi:face-recognition",
        ),
        dev.entity(
            "sensor",
            "last_person",
            "Last person",
            state_topic=t.last_person,
            value_template="{{ value_json.person }}",
            json_attributes_topic=t.last_person,
            icon="mdi:account-clock",
        ),
        dev.entity(
            "binary_sensor",
            "person_at_door",
            "Person at door",
            state_topic=t.presence,
            payload_on=PRESENT,
            payload_off=ABSENT,
            device_class="occupancy",
        ),
    ]


def _optional_entities(dev: _Device, *, commands: bool, snapshot: bool) -> list[Entity]:
    """ "Reload gallery" (with ``mqtt.commands``) and "Snapshot" (with ``mqtt.snapshot``)."""
    out = []
    if commands:
        out.append(
            dev.entity(
                "button",
                "reload_gallery",
                "Reload gallery",
                command_topic=dev.topics.command,
                payload_press=json.dumps({"command": RELOAD_GALLERY}),
                retain=False,
                entity_category="config",
                icon="mdi:account-sync",
            )
        )
    if snapshot:
        out.append(
            dev.entity(
                "image",
                "snapshot",
                "Snapshot",
                image_topic=dev.topics.snapshot,
                content_type="image/jpeg",
            )
        )
    return out


def _review_entities(dev: _Device, *, unknown_visitors: bool, enrol: bool) -> list[Entity]:
    """ "Unknown visitor" (review.notify), "Enrol name" and "Enrol next face" (enrol_command)."""
    out = []
    if unknown_visitors:
        out.append(
            dev.entity(
                "image",
                "unknown_visitor",
                "Unknown visitor",
                image_topic=dev.topics.unknown_image,
                content_type="image/jpeg",
                icon="mdi:account-question",
            )
        )
    if enrol:
        base = dev.topics.base
        out.append(
            dev.entity(
                "text",
                "enrol_name",
                "Enrol name",
                command_topic=f"{base}/{HA_ENROL_NAME_SUFFIX}",
                min=1,
                max=128,
                retain=False,
                entity_category="config",
                icon="mdi:account-edit",
            )
        )
        out.append(
            dev.entity(
                "button",
                "enrol_next_face",
                "Enrol next face",
                command_topic=f"{base}/{HA_ENROL_PRESS_SUFFIX}",
                payload_press="PRESS",
                retain=False,
                entity_category="config",
                icon="mdi:account-plus",
            )
        )
    return out


def _diagnostics(dev: _Device, state_interval_s: float) -> list[Entity]:
    """Sensors from the state topic, expiring after three state intervals (whole seconds up)."""
    expire = max(1, int(-(-3 * state_interval_s // 1)))
    out = []
    for key, name, unit, icon in (
        ("fps", "Frames per second", "fps", "mdi:speedometer"),
        ("gallery_size", "Enrolled people", None, "mdi:account-group"),
        ("outbox_pending", "Undelivered events", None, "mdi:tray-full"),
    ):
        topic, cfg = dev.entity(
            "sensor",
            key,
            name,
            state_topic=dev.topics.state,
            value_template=f"{{{{ value_json.{key} }}}}",
            state_class="measurement",
            expire_after=expire,
            entity_category="diagnostic",
            icon=icon,
        )
        if unit:
            cfg["unit_of_measurement"] = unit
        out.append((topic, cfg))
    return out


def _triggers(dev: _Device, people: Sequence[str]) -> list[Entity]:
    """Device triggers: ``unknown``/``Stranger`` and ``recognized``/<name> per person."""
    triggers = [("unknown", STRANGER, "unknown:")]
    triggers += [(ha_person_object_id(n), n, f"recognized:{n}") for n in sorted(set(people))]
    return [
        (
            dev.topic("device_automation", object_id),
            {
                "automation_type": "trigger",
                "topic": dev.topics.event,
                "type": payload.split(":", 1)[0],
                "subtype": subtype,
                "payload": payload,
                "value_template": HA_TRIGGER_TEMPLATE,
                "qos": 1,
                "device": dev.block,
                "origin": dev.origin,
            },
        )
        for object_id, subtype, payload in triggers
    ]


_SHARED_KEYS = (
    "device",
    "availability",
    "availability_topic",
    "availability_mode",
    "payload_available",
    "payload_not_available",
    "origin",
)


def door_discovery(base_topic: str, cfg: Config, like: Mapping[str, Any]) -> list[Entity]:
    """Home Assistant discovery for the door: ``(topic, config)`` pairs, to publish retained.

    ``like`` is one of the device's other discovery configs: the door's
    entities copy its device block and availability, so they join the same
    device. Entities, all reading the retained ``<base>/door`` status:

    - ``lock``: the strike (``locked`` / ``unlocked``). Its LOCK/UNLOCK go to
      ``<base>/door/set``, which the device never acts on: an unlock from Home
      Assistant must be signed (README: a script publishes the signed command,
      and only with ``door.remote_unlock = true``).
    - ``binary_sensor`` door (``device_class: door``), when ``door.contact_pin`` is wired;
    - ``binary_sensor`` tamper (``device_class: tamper``), when ``door.tamper_pin`` is wired.
    """
    d = cfg.door
    common = {k: like[k] for k in _SHARED_KEYS if k in like}
    ident = str(common.get("device", {}).get("identifiers", ["facegate_door"])[0])
    node = ident.removeprefix("facegate_")
    prefix = cfg.mqtt.ha_prefix
    status = f"{base_topic}/{STATUS_TOPIC}"

    def entity(component: str, object_id: str, name: str, **config: Any) -> Entity:
        body = {**common, "name": name, "unique_id": f"{ident}_{object_id}"}
        body.update(state_topic=status, **config, qos=1)
        return f"{prefix}/{component}/{node}/{object_id}/config", body

    out = [
        entity(
            "lock",
            "door_lock",
            "Door lock",
            value_template="{{ value_json.lock }}",
            state_locked="locked",
            state_unlocked="unlocked",
            command_topic=f"{base_topic}/{HA_COMMAND_SUFFIX}",
            payload_lock="LOCK",
            payload_unlock="UNLOCK",
            optimistic=False,
            icon="mdi:door-closed-lock",
        )
    ]
    return out + _door_inputs(d, entity)


def _door_inputs(d: DoorConfig, entity: Callable[..., Entity]) -> list[Entity]:
    """The door contact's and the tamper switch's binary sensors, where they are wired."""
    out = []
    if d.contact_pin is not None:
        out.append(
            entity(
                "binary_sensor",
                "door",
                "Door",
                device_class="door",
                value_template="{{ value_json.door }}",
                payload_on="open",
                payload_off="closed",
            )
        )
    if d.tamper_pin is not None:
        out.append(
            entity(
                "binary_sensor",
                "tamper",
                "Tamper",
                device_class="tamper",
                entity_category="diagnostic",
                value_template="{{ 'ON' if value_json.tamper else 'OFF' }}",
            )
        )
    return out


__all__ = [
    "HA_COMMAND_SUFFIX",
    "HA_ENROL_NAME_SUFFIX",
    "HA_ENROL_PRESS_SUFFIX",
    "HA_EVENT_TEMPLATE",
    "HA_ORIGIN",
    "HA_TRIGGER_TEMPLATE",
    "STRANGER",
    "Entity",
    "build_ha_discovery",
    "build_last_person",
    "door_discovery",
    "ha_discovery_subscription",
    "ha_discovery_topic",
    "ha_legacy_node",
    "ha_legacy_topics",
    "ha_person_object_id",
    "ha_static_topics",
]

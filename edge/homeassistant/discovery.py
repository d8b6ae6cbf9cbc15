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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edge.delivery.commands import RELOAD_GALLERY
from edge.delivery.events import ABSENT, EVENT_TYPES, OFFLINE, ONLINE, PRESENT
from edge.door.controller import STATUS_TOPIC

if TYPE_CHECKING:
    from edge.config import Config
    from edge.delivery.topics import Topics

STRANGER = "Stranger"
"""What "Last person" shows for an unknown face (Home Assistant's ``unknown`` means "no value")."""
HA_COMMAND_SUFFIX = "door/set"
"""Home Assistant's lock entity publishes LOCK/UNLOCK here; the device never acts on it."""


def build_last_person(event: dict[str, Any] | None) -> dict[str, Any]:
    """The ``last_person`` payload for a live event, or the blank one (``event`` None).

    ``person`` is the name, :data:`STRANGER` for an unknown face, and ``""``
    once cleared; ``type``, ``name``, ``confidence``, ``ts`` and ``id`` come
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
    " 'delivery': value_json.delivery, 'clock_synced': value_json.clock_synced} | tojson }}"
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
    """Every discovery topic the device may own apart from per-person triggers.

    Includes those of facegate 0.1 (node id with ``-`` turned into ``_``), so
    switching discovery off, or upgrading, clears them.
    """
    out = [ha_discovery_topic(ha_prefix, c, device_id, o) for c, o in _HA_ENTITIES]
    legacy = device_id.replace("-", "_")
    if legacy != device_id:
        out += [ha_discovery_topic(ha_prefix, c, legacy, o) for c, o in _HA_LEGACY]
    return out


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
) -> list[tuple[str, dict[str, Any]]]:
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
    - diagnostic sensors from the state topic (fps, enrolled people,
      undelivered events) with ``state_class: measurement`` and
      ``expire_after`` of three state intervals;
    - device triggers ``recognized``/<name> per enrolled person in
      ``people`` and ``unknown``/``Stranger`` (live events only).
    """
    dev = {
        "identifiers": [f"facegate_{device_id}"],
        "name": device_name,
        "manufacturer": "facegate",
        "model": "facegate edge",
        "sw_version": sw_version,
    }
    origin = {**HA_ORIGIN, "sw_version": sw_version}
    common: dict[str, Any] = {
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": 1,
        "device": dev,
        "origin": origin,
    }

    def topic(component: str, object_id: str) -> str:
        return ha_discovery_topic(ha_prefix, component, device_id, object_id)

    def uid(object_id: str) -> str:
        return f"facegate_{device_id}_{object_id}"

    expire = max(1, int(-(-3 * state_interval_s // 1)))  # 3 intervals, whole seconds up
    out: list[tuple[str, dict[str, Any]]] = [
        (
            topic("event", "face"),
            {
                **common,
                "name": "Face",
                "unique_id": uid("face"),
                "state_topic": topics.event,
                "event_types": list(EVENT_TYPES),
                "value_template": HA_EVENT_TEMPLATE,
                "icon": "mdi:face-recognition",
            },
        ),
        (
            topic("sensor", "last_person"),
            {
                **common,
                "name": "Last person",
                "unique_id": uid("last_person"),
                "state_topic": topics.last_person,
                "value_template": "{{ value_json.person }}",
                "json_attributes_topic": topics.last_person,
                "icon": "mdi:account-clock",
            },
        ),
        (
            topic("binary_sensor", "person_at_door"),
            {
                **common,
                "name": "Person at door",
                "unique_id": uid("person_at_door"),
                "state_topic": topics.presence,
                "payload_on": PRESENT,
                "payload_off": ABSENT,
                "device_class": "occupancy",
            },
        ),
    ]
    if commands:
        out.append(
            (
                topic("button", "reload_gallery"),
                {
                    **common,
                    "name": "Reload gallery",
                    "unique_id": uid("reload_gallery"),
                    "command_topic": topics.command,
                    "payload_press": json.dumps({"command": RELOAD_GALLERY}),
                    "retain": False,
                    "entity_category": "config",
                    "icon": "mdi:account-sync",
                },
            )
        )
    if snapshot:
        out.append(
            (
                topic("image", "snapshot"),
                {
                    **common,
                    "name": "Snapshot",
                    "unique_id": uid("snapshot"),
                    "image_topic": topics.snapshot,
                    "content_type": "image/jpeg",
                },
            )
        )
    for key, name, unit, icon in (
        ("fps", "Frames per second", "fps", "mdi:speedometer"),
        ("gallery_size", "Enrolled people", None, "mdi:account-group"),
        ("outbox_pending", "Undelivered events", None, "mdi:tray-full"),
    ):
        cfg: dict[str, Any] = {
            **common,
            "name": name,
            "unique_id": uid(key),
            "state_topic": topics.state,
            "value_template": f"{{{{ value_json.{key} }}}}",
            "state_class": "measurement",
            "expire_after": expire,
            "entity_category": "diagnostic",
            "icon": icon,
        }
        if unit:
            cfg["unit_of_measurement"] = unit
        out.append((topic("sensor", key), cfg))
    triggers = [("unknown", STRANGER, "unknown:")]
    triggers += [(ha_person_object_id(n), n, f"recognized:{n}") for n in sorted(set(people))]
    for object_id, subtype, payload in triggers:
        out.append(
            (
                topic("device_automation", object_id),
                {
                    "automation_type": "trigger",
                    "topic": topics.event,
                    "type": payload.split(":", 1)[0],
                    "subtype": subtype,
                    "payload": payload,
                    "value_template": HA_TRIGGER_TEMPLATE,
                    "qos": 1,
                    "device": dev,
                    "origin": origin,
                },
            )
        )
    return out


def door_discovery(
    base_topic: str, cfg: Config, like: Mapping[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
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
    common = {
        k: like[k]
        for k in (
            "device",
            "availability",
            "availability_topic",
            "availability_mode",
            "payload_available",
            "payload_not_available",
            "origin",
        )
        if k in like
    }
    ident = str(common.get("device", {}).get("identifiers", ["facegate_door"])[0])
    node = ident.removeprefix("facegate_")
    prefix = cfg.mqtt.ha_prefix
    status = f"{base_topic}/{STATUS_TOPIC}"
    out: list[tuple[str, dict[str, Any]]] = [
        (
            f"{prefix}/lock/{node}/door_lock/config",
            {
                **common,
                "name": "Door lock",
                "unique_id": f"{ident}_door_lock",
                "state_topic": status,
                "value_template": "{{ value_json.lock }}",
                "state_locked": "locked",
                "state_unlocked": "unlocked",
                "command_topic": f"{base_topic}/{HA_COMMAND_SUFFIX}",
                "payload_lock": "LOCK",
                "payload_unlock": "UNLOCK",
                "optimistic": False,
                "qos": 1,
                "icon": "mdi:door-closed-lock",
            },
        )
    ]
    if d.contact_pin is not None:
        out.append(
            (
                f"{prefix}/binary_sensor/{node}/door/config",
                {
                    **common,
                    "name": "Door",
                    "unique_id": f"{ident}_door",
                    "device_class": "door",
                    "state_topic": status,
                    "value_template": "{{ value_json.door }}",
                    "payload_on": "open",
                    "payload_off": "closed",
                    "qos": 1,
                },
            )
        )
    if d.tamper_pin is not None:
        out.append(
            (
                f"{prefix}/binary_sensor/{node}/tamper/config",
                {
                    **common,
                    "name": "Tamper",
                    "unique_id": f"{ident}_tamper",
                    "device_class": "tamper",
                    "entity_category": "diagnostic",
                    "state_topic": status,
                    "value_template": "{{ 'ON' if value_json.tamper else 'OFF' }}",
                    "qos": 1,
                },
            )
        )
    return out


__all__ = [
    "HA_COMMAND_SUFFIX",
    "HA_EVENT_TEMPLATE",
    "HA_ORIGIN",
    "HA_TRIGGER_TEMPLATE",
    "STRANGER",
    "build_ha_discovery",
    "build_last_person",
    "door_discovery",
    "ha_discovery_subscription",
    "ha_discovery_topic",
    "ha_person_object_id",
    "ha_static_topics",
]

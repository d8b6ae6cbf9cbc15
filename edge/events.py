"""Every MQTT payload facegate sends or accepts, built (or parsed) in one place.

Topics, all under ``<mqtt.prefix>/<device.id>/``:

``event``
    One JSON object per decision, QoS 1, not retained (:func:`build_event`).
``availability``
    ``online`` / ``offline``, retained; ``offline`` is also the Last Will, so
    it appears when the process dies without saying goodbye.
``state``
    Retained JSON snapshot of the service (:func:`build_state`).
``command``
    Only subscribed when ``mqtt.commands = true``; the one accepted payload is
    ``{"command": "reload-gallery"}`` (:func:`parse_command`), plus the door's
    signed ``{"command": "unlock", ...}`` (:func:`edge.door.verify_unlock`).

Home Assistant discovery configs go to ``<mqtt.ha_prefix>/...`` when
``mqtt.ha_discovery = true`` (:func:`build_ha_discovery`).

The event payload is versioned by its ``v`` field: a consumer must ignore
unknown fields; a change that removes or re-types a field bumps ``v``.
Sequence numbers (``seq``) increase by one per event and device, across
restarts; a gap tells a subscriber that events were lost (outbox overflow).
Redeliveries repeat the same ``id`` and ``seq``, so duplicates are dropped by
``id``.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import json
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from edge.errors import FacegateError
from edge.types import Decision, Image

SCHEMA_VERSION = 1
"""The ``v`` field of event and state payloads."""

EVENT_TYPES = ("recognized", "unknown")
ONLINE = "online"
OFFLINE = "offline"
RELOAD_GALLERY = "reload-gallery"
COMMANDS = (RELOAD_GALLERY,)
UNLOCK = "unlock"
"""The door's signed remote unlock; its fields are checked by :func:`edge.door.verify_unlock`."""
MAX_COMMAND_BYTES = 256
"""Command payloads longer than this are rejected before they are parsed."""

SNAPSHOT_MAX_SIDE = 160
SNAPSHOT_JPEG_QUALITY = 85

# No wall clock before this instant is plausible on a device running this
# code (2025-01-01T00:00:00Z): a Pi without RTC boots in 1970 until NTP runs.
_PLAUSIBLE_EPOCH = 1_735_689_600.0


class CommandError(FacegateError):
    """A command payload received over MQTT is malformed or not allowed."""


@dataclass(frozen=True)
class Topics:
    """The MQTT topics of one device."""

    base: str
    event: str
    availability: str
    state: str
    command: str

    @classmethod
    def for_device(cls, prefix: str, device_id: str) -> Topics:
        """Topics under ``<prefix>/<device_id>/`` (a trailing ``/`` in prefix is ignored)."""
        for what, value in (("mqtt.prefix", prefix), ("device.id", device_id)):
            if not value.strip("/") or any(c in value for c in "+#\0"):
                raise FacegateError(f"{what}: {value!r} cannot be used in an MQTT topic")
        if "/" in device_id:
            raise FacegateError(f"device.id: {device_id!r} must not contain '/'")
        base = f"{prefix.rstrip('/')}/{device_id}"
        return cls(
            base=base,
            event=f"{base}/event",
            availability=f"{base}/availability",
            state=f"{base}/state",
            command=f"{base}/command",
        )


def new_event_id() -> str:
    """A random, globally unique event id (UUID4, 32 hex digits)."""
    return uuid.uuid4().hex


def iso_utc(t: float) -> str:
    """``t`` (Unix seconds) as ISO 8601 UTC with milliseconds, e.g. ``2026-01-02T03:04:05.678Z``."""
    return (
        datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>: the first field is ``modes`` (0 = read
    # only); the rest is padding large enough for every Linux ABI (208 bytes).
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 252)]


_TIME_ERROR = 5  # adjtimex(2) return value: the clock is not synchronised


def clock_synced(now: float | None = None) -> bool:
    """Whether the wall clock can be trusted for event timestamps.

    False when the time is implausibly early (no RTC, NTP not yet run), or
    when the kernel reports the clock as unsynchronised: ``adjtimex(2)``
    returns ``TIME_ERROR`` (what ``timedatectl``'s "System clock
    synchronized" shows). Where adjtimex is unavailable only the plausibility
    check applies.
    """
    t = time.time() if now is None else now
    if t < _PLAUSIBLE_EPOCH:
        return False
    if not sys.platform.startswith("linux"):
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return True
    return state != _TIME_ERROR


def encode_snapshot(image: Image, max_side: int = SNAPSHOT_MAX_SIDE) -> str:
    """An RGB face crop as base64 JPEG, downscaled so its longer side is at most ``max_side``."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w, 1))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
    ok, buf = cv2.imencode(
        ".jpg",
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_JPEG_QUALITY],
    )
    if not ok:
        raise FacegateError("snapshot: JPEG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def build_event(
    decision: Decision,
    *,
    device_id: str,
    seq: int,
    event_id: str,
    clock_synced: bool,
    include_snapshot: bool = False,
) -> dict[str, Any]:
    """The versioned JSON event for one decision.

    Fields: ``v`` (schema version), ``id`` (unique; repeated on redelivery),
    ``seq`` (per-device, +1 per event, survives restarts), ``device``,
    ``ts`` (ISO 8601 UTC of the deciding frame), ``ts_unix``,
    ``clock_synced`` (false: do not trust ``ts``), ``type``
    (``recognized``/``unknown``), ``name`` (null when unknown), ``distance``
    (cosine distance to the nearest enrolled face), ``confidence`` (calibrated
    probability in [0, 1]), ``track_id``, ``track_length`` (frames the face
    was tracked), ``box`` ([x, y, w, h] pixels) and, only when
    ``include_snapshot`` and the decision carries one, ``snapshot`` (base64
    JPEG face crop). Snapshots are off by default: biometric data stays on
    the device unless its owner asks otherwise.
    """
    if decision.kind not in EVENT_TYPES:
        raise FacegateError(f"event: unknown decision kind {decision.kind!r}")
    if seq < 1:
        raise FacegateError(f"event: sequence numbers start at 1, got {seq}")
    payload: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": event_id,
        "seq": seq,
        "device": device_id,
        "ts": iso_utc(decision.timestamp),
        "ts_unix": round(decision.timestamp, 3),
        "clock_synced": clock_synced,
        "type": decision.kind,
        "name": decision.name,
        "distance": round(float(decision.distance), 6),
        "confidence": round(float(decision.confidence), 6),
        "track_id": decision.track_id,
        "track_length": decision.track_length,
        "box": decision.box.as_list(),
    }
    if include_snapshot and decision.snapshot is not None and decision.snapshot.size:
        payload["snapshot"] = encode_snapshot(decision.snapshot)
    return payload


def encode(payload: dict[str, Any]) -> bytes:
    """The wire form of a JSON payload: compact UTF-8, keys sorted (stable for tests)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def build_state(device_id: str, now: float | None = None, **fields: Any) -> dict[str, Any]:
    """The retained ``state`` payload: ``v``, ``device``, ``ts`` plus the given fields.

    The daemon supplies ``status``, ``fps``, ``frames``, ``dropped``,
    ``events``, ``gallery_size``, ``uptime_s`` and ``model_sha256``; the
    publisher adds ``outbox_pending`` and ``outbox_dropped``.
    """
    t = time.time() if now is None else now
    return {"v": SCHEMA_VERSION, "device": device_id, "ts": iso_utc(t), **fields}


def parse_command(payload: bytes) -> str:
    """The command in a ``command`` topic payload, or :class:`CommandError`.

    Accepted is exactly a JSON object ``{"command": NAME}`` with NAME in
    :data:`COMMANDS`, at most :data:`MAX_COMMAND_BYTES` long. Anything else
    (other keys, other types, invalid UTF-8 or JSON) is rejected: nothing but
    a gallery reload can be triggered over the network.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command: payload of {len(payload)} bytes is too long")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CommandError("command: payload is not UTF-8 JSON") from None
    if isinstance(doc, dict) and doc.get("command") == UNLOCK:
        return UNLOCK  # door: the signed unlock, verified by edge.door (ts, nonce, hmac)
    if not isinstance(doc, dict) or set(doc) != {"command"}:
        raise CommandError('command: expected exactly {"command": ...}')
    cmd = doc["command"]
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise CommandError(f"command: {cmd!r} is not an accepted command")
    return cmd


def build_door_event(
    kind: str,
    fields: dict[str, Any],
    *,
    device_id: str,
    seq: int,
    event_id: str,
    clock_synced: bool,
    ts: float,
) -> dict[str, Any]:
    """A door event (:mod:`edge.door`): one audit entry, on the ``event`` topic.

    The envelope of a decision event (``v``, ``id``, ``seq``, ``device``,
    ``ts``, ``ts_unix``, ``clock_synced``) with ``type`` the audit kind
    (``access_granted``, ``access_denied``, ``exit_request``,
    ``door_held_open``, ``door_forced``, ``tamper``, ``lockout``,
    ``remote_unlock``, ``remote_refused``, ``door_test``) and the entry's
    fields (``audit_id``, ``name``, ``reason``, ``detail``, ...). These are
    records of what the door did, never a reason to open one.
    """
    if kind in EVENT_TYPES:
        raise FacegateError(f"event: {kind!r} is a decision, not a door event")
    if seq < 1:
        raise FacegateError(f"event: sequence numbers start at 1, got {seq}")
    return {
        **fields,
        "v": SCHEMA_VERSION,
        "id": event_id,
        "seq": seq,
        "device": device_id,
        "ts": iso_utc(ts),
        "ts_unix": round(ts, 3),
        "clock_synced": clock_synced,
        "type": kind,
    }


def build_ha_discovery(
    topics: Topics,
    *,
    device_id: str,
    device_name: str,
    ha_prefix: str,
    sw_version: str,
) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant MQTT discovery messages: ``(topic, config)`` pairs, to publish retained.

    Entities: an ``event`` entity firing ``recognized``/``unknown`` with the
    name as attribute, a "last person" sensor, and fps / gallery size /
    outbox sensors from the state topic. All share the availability topic.
    """
    node = device_id.replace("-", "_")
    dev = {
        "identifiers": [f"facegate_{node}"],
        "name": device_name,
        "manufacturer": "facegate",
        "model": "facegate edge",
        "sw_version": sw_version,
    }
    common = {
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": dev,
    }
    out: list[tuple[str, dict[str, Any]]] = [
        (
            f"{ha_prefix}/event/{node}/face/config",
            {
                **common,
                "name": "Face",
                "unique_id": f"facegate_{node}_face",
                "state_topic": topics.event,
                "event_types": list(EVENT_TYPES),
                "value_template": (
                    "{{ {'event_type': value_json.type, 'name': value_json.name,"
                    " 'confidence': value_json.confidence, 'seq': value_json.seq} | tojson }}"
                ),
            },
        ),
        (
            f"{ha_prefix}/sensor/{node}/last_person/config",
            {
                **common,
                "name": "Last person",
                "unique_id": f"facegate_{node}_last_person",
                "state_topic": topics.event,
                "value_template": "{{ value_json.name if value_json.name else 'unknown' }}",
                "icon": "mdi:account-check",
            },
        ),
    ]
    for key, name, unit in (
        ("fps", "Frames per second", "fps"),
        ("gallery_size", "Enrolled people", None),
        ("outbox_pending", "Undelivered events", None),
    ):
        cfg: dict[str, Any] = {
            **common,
            "name": name,
            "unique_id": f"facegate_{node}_{key}",
            "state_topic": topics.state,
            "value_template": f"{{{{ value_json.{key} }}}}",
            "entity_category": "diagnostic",
        }
        if unit:
            cfg["unit_of_measurement"] = unit
            cfg["state_class"] = "measurement"
        out.append((f"{ha_prefix}/sensor/{node}/{key}/config", cfg))
    return out


__all__ = [
    "COMMANDS",
    "EVENT_TYPES",
    "MAX_COMMAND_BYTES",
    "OFFLINE",
    "ONLINE",
    "RELOAD_GALLERY",
    "SCHEMA_VERSION",
    "UNLOCK",
    "CommandError",
    "Topics",
    "build_door_event",
    "build_event",
    "build_ha_discovery",
    "build_state",
    "clock_synced",
    "encode",
    "encode_snapshot",
    "iso_utc",
    "new_event_id",
    "parse_command",
]

"""The payloads facegate publishes: decision events, door events and the state.

The event payload is versioned by its ``v`` field: a consumer must ignore
unknown fields; a change that removes or re-types a field bumps ``v``.
Sequence numbers (``seq``) increase by one per event and device, across
restarts; a gap tells a subscriber that events were lost (outbox overflow).
Redeliveries repeat the same ``id`` and ``seq``, so duplicates are dropped by
``id``; ``delivery`` is decided again at every (re)send (:func:`delivery_of`).

Events are made here for every publisher (:func:`decision_event`,
:func:`door_event`), so a printed event and a published one are the same
payload. The topics they go to are :class:`edge.delivery.topics.Topics`;
signing is :mod:`edge.delivery.signing`; Home Assistant's payloads are
:mod:`edge.homeassistant`.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edge.errors import FacegateError
from edge.types import Decision, Image

if TYPE_CHECKING:
    from edge.config import Config

SCHEMA_VERSION = 2
"""The ``v`` of event and state payloads (2: ``expires_at``, ``delivery``; no ``snapshot``)."""

EVENT_TYPES = ("recognized", "unknown")
LIVE = "live"
LATE = "late"
PRESENT = "ON"
ABSENT = "OFF"
ONLINE = "online"
OFFLINE = "offline"

SNAPSHOT_MAX_SIDE = 160
SNAPSHOT_JPEG_QUALITY = 85


def new_event_id() -> str:
    """A random, globally unique event id (UUID4, 32 hex digits)."""
    return uuid.uuid4().hex


def iso_utc(t: float) -> str:
    """``t`` (Unix seconds) as ISO 8601 UTC with milliseconds, e.g. ``2026-01-02T03:04:05.678Z``."""
    return (
        datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def snapshot_jpeg(image: Image, max_side: int = SNAPSHOT_MAX_SIDE) -> bytes:
    """An RGB face crop as JPEG bytes, downscaled so its longer side is at most ``max_side``."""
    from edge.errors import ImageError
    from edge.imageio import encode_jpeg

    try:
        return encode_jpeg(image, max_side, SNAPSHOT_JPEG_QUALITY)
    except ImageError:
        raise FacegateError("snapshot: JPEG encoding failed") from None


def is_late(
    *,
    expires_at: float,
    valid_for_s: float,
    age_s: float | None,
    now: float,
    synced_then: bool,
    synced_now: bool,
) -> bool:
    """Whether an event published now is ``late`` (expired) rather than ``live``.

    Two clocks can tell, and the event is late as soon as either says so:

    - ``age_s``, the time since the face was seen measured on this process's
      monotonic clock: late when ``age_s > valid_for_s``. Immune to wall-clock
      steps, but unknown (None) for an event restored from the outbox after a
      restart: a monotonic clock does not survive the process.
    - the wall clock, trusted only when it was synchronised both when the
      face was seen (``synced_then``) and now (``synced_now``): late when
      ``now > expires_at``.

    With neither (restored from the outbox, and the wall clock untrusted at
    either end) the age cannot be known, so the event is late: it is still
    delivered, for the record, but nothing may act on it.
    """
    wall_ok = synced_then and synced_now
    if age_s is not None and age_s > valid_for_s:
        return True
    if wall_ok:
        return now > expires_at
    return age_s is None


def build_event(
    decision: Decision,
    *,
    device_id: str,
    seq: int,
    event_id: str,
    clock_synced: bool,
    valid_for_s: float,
    delivery: str = LIVE,
) -> dict[str, Any]:
    """The versioned JSON event (``v`` 2) for one decision.

    Fields: ``v`` (schema version), ``id`` (unique; repeated on redelivery),
    ``seq`` (per-device, +1 per event, survives restarts), ``device``,
    ``ts`` (ISO 8601 UTC of the deciding frame: when the face was seen),
    ``ts_unix``, ``expires_at`` / ``expires_at_unix`` (``ts + valid_for_s``:
    do not act on the event after this instant), ``delivery`` (``live`` when
    published before it expired, ``late`` after: see :func:`is_late`; set
    again at every re-send: :func:`delivery_of`), ``clock_synced`` (false:
    the device's wall clock, hence ``ts`` and ``expires_at``, is not to be
    trusted), ``type`` (``recognized``/``unknown``), ``name`` (null when
    unknown), ``distance`` (cosine distance to the nearest enrolled face),
    ``confidence`` (calibrated probability in [0, 1]), ``track_id``,
    ``track_length`` (frames the face was tracked), ``box`` ([x, y, w, h]
    pixels) and ``liveness`` (``{"passed": true|false|null, "score",
    "evidence": [...]}``, or null when ``[liveness] mode = "off"``: see
    docs/liveness.md). The face crop never travels in the event: with
    ``mqtt.snapshot`` it goes to the ``snapshot`` topic.
    """
    if decision.kind not in EVENT_TYPES:
        raise FacegateError(f"event: unknown decision kind {decision.kind!r}")
    if seq < 1:
        raise FacegateError(f"event: sequence numbers start at 1, got {seq}")
    if delivery not in (LIVE, LATE):
        raise FacegateError(f"event: delivery must be {LIVE!r} or {LATE!r}, got {delivery!r}")
    expires = decision.timestamp + valid_for_s
    return {
        "v": SCHEMA_VERSION,
        "id": event_id,
        "seq": seq,
        "device": device_id,
        "ts": iso_utc(decision.timestamp),
        "ts_unix": round(decision.timestamp, 3),
        "expires_at": iso_utc(expires),
        "expires_at_unix": round(expires, 3),
        "delivery": delivery,
        "clock_synced": clock_synced,
        "type": decision.kind,
        "name": decision.name,
        "distance": round(float(decision.distance), 6),
        "confidence": round(float(decision.confidence), 6),
        "track_id": decision.track_id,
        "track_length": decision.track_length,
        "box": decision.box.as_list(),
        "liveness": None if decision.liveness is None else decision.liveness.to_json(),
    }


def delivery_of(
    event: dict[str, Any],
    *,
    valid_for_s: float,
    age_s: float | None,
    now: float,
    synced_now: bool,
) -> str:
    """``live`` or ``late`` for a stored event about to be (re)sent (see :func:`is_late`).

    ``event`` is the payload of :func:`build_event`: its ``expires_at_unix``
    and ``clock_synced`` are what the device knew when the face was seen.
    """
    late = is_late(
        expires_at=float(event["expires_at_unix"]),
        valid_for_s=valid_for_s,
        age_s=age_s,
        now=now,
        synced_then=event.get("clock_synced") is True,
        synced_now=synced_now,
    )
    return LATE if late else LIVE


def build_state(device_id: str, now: float | None = None, **fields: Any) -> dict[str, Any]:
    """The retained ``state`` payload: ``v``, ``device``, ``ts`` plus the given fields.

    The daemon supplies ``status``, ``fps``, ``frames``, ``dropped``,
    ``events``, ``gallery_size``, ``uptime_s`` and ``model_sha256``; the
    publisher adds ``outbox_pending`` and ``outbox_dropped``.
    """
    t = time.time() if now is None else now
    return {"v": SCHEMA_VERSION, "device": device_id, "ts": iso_utc(t), **fields}


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
    records of what the door did, never a reason to open one: they carry no
    ``expires_at`` and no ``delivery``, so a consumer that acts only on
    ``delivery == "live"`` never acts on them (and Home Assistant's event
    entity ignores them).
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


def initial_delivery(
    payload: dict[str, Any], valid_for_s: float, age_s: float, synced_now: bool
) -> str:
    """The ``delivery`` an event gets when it is made (a replay of old frames is late at once)."""
    return delivery_of(
        payload, valid_for_s=valid_for_s, age_s=age_s, now=time.time(), synced_now=synced_now
    )


def decision_event(
    cfg: Config, decision: Decision, seq: int, synced: bool, age_s: float
) -> dict[str, Any]:
    """The event of ``decision`` numbered ``seq``, ``delivery`` as if sent at age ``age_s``."""
    valid_for = cfg.events.valid_for_s
    payload = build_event(
        decision,
        device_id=cfg.device.id,
        seq=seq,
        event_id=new_event_id(),
        clock_synced=synced,
        valid_for_s=valid_for,
    )
    payload["delivery"] = initial_delivery(payload, valid_for, age_s, synced)
    return payload


def door_event(
    cfg: Config, kind: str, fields: dict[str, Any], seq: int, synced: bool, ts: float
) -> dict[str, Any]:
    """A door event (:func:`build_door_event`) numbered ``seq``."""
    return build_door_event(
        kind,
        fields,
        device_id=cfg.device.id,
        seq=seq,
        event_id=new_event_id(),
        clock_synced=synced,
        ts=ts,
    )


__all__ = [
    "ABSENT",
    "EVENT_TYPES",
    "LATE",
    "LIVE",
    "OFFLINE",
    "ONLINE",
    "PRESENT",
    "SCHEMA_VERSION",
    "SNAPSHOT_JPEG_QUALITY",
    "SNAPSHOT_MAX_SIDE",
    "build_door_event",
    "build_event",
    "build_state",
    "decision_event",
    "delivery_of",
    "door_event",
    "initial_delivery",
    "is_late",
    "iso_utc",
    "new_event_id",
    "snapshot_jpeg",
]

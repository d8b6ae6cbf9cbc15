"""Every MQTT payload facegate sends or accepts, built (or parsed) in one place.

Topics, all under ``<mqtt.prefix>/<device.id>/``:

``event``
    One JSON object per decision, QoS 1, not retained (:func:`build_event`).
    It says when the face was seen (``ts``), until when it may be acted on
    (``expires_at``) and whether it was published in time (``delivery``:
    ``live`` or ``late``, see :func:`is_late`).
``availability``
    ``online`` / ``offline``, retained. ``online`` only once the device is
    ready (models loaded, first camera frame processed); ``offline`` is also
    the Last Will, so it appears when the process dies without saying goodbye.
``state``
    Retained JSON snapshot of the service (:func:`build_state`).
``last_person``
    The person of the last live event (``Stranger`` for an unknown face),
    blanked ``homeassistant.last_person_clear_s`` later (:func:`build_last_person`).
``presence``
    ``ON`` while a face is tracked in front of the camera, else ``OFF``; retained.
``snapshot``
    Only with ``mqtt.snapshot = true``: the face crop of a live event as a raw
    JPEG, published just before that event; never retained, never stored.
``command``
    Only subscribed when ``mqtt.commands = true``; the one accepted payload is
    ``{"command": "reload-gallery"}`` (:func:`parse_command`), plus the door's
    signed ``{"command": "unlock", ...}`` (:func:`edge.door.verify_unlock`).

Home Assistant discovery configs go to ``<mqtt.ha_prefix>/...`` when
``mqtt.ha_discovery = true`` (:func:`build_ha_discovery`); when it is off the
same topics are cleared (empty retained payloads), so the entities go away.

The event payload is versioned by its ``v`` field: a consumer must ignore
unknown fields; a change that removes or re-types a field bumps ``v``.
Sequence numbers (``seq``) increase by one per event and device, across
restarts; a gap tells a subscriber that events were lost (outbox overflow).
Redeliveries repeat the same ``id`` and ``seq``, so duplicates are dropped by
``id``; ``delivery`` is decided again at every (re)send.

With ``events.sign_key_file`` (or ``sign_key_credential``) every payload on
the ``event`` topic is signed: ``"sig"`` is appended as its last member
(:func:`sign_payload`, :func:`verify_payload`), so a consumer holding the key
can tell the device's events from ones any other broker client wrote.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import hmac
import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from edge.errors import FacegateError, SignatureError
from edge.types import Decision, Image

SCHEMA_VERSION = 2
"""The ``v`` of event and state payloads (2: ``expires_at``, ``delivery``; no ``snapshot``)."""

EVENT_TYPES = ("recognized", "unknown")
LIVE = "live"
LATE = "late"
STRANGER = "Stranger"
"""What "Last person" shows for an unknown face (Home Assistant's ``unknown`` means "no value")."""
PRESENT = "ON"
ABSENT = "OFF"
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
    last_person: str
    presence: str
    snapshot: str

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
            last_person=f"{base}/last_person",
            presence=f"{base}/presence",
            snapshot=f"{base}/snapshot",
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


def adjtimex_state() -> int | None:
    """The kernel's clock state, ``adjtimex(2)`` called read-only; None where unavailable.

    0 (``TIME_OK``) to 4 mean synchronised (leap-second states included),
    5 (``TIME_ERROR``) not synchronised.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        return int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None


def clock_synced(
    now: float | None = None, kernel_state: Callable[[], int | None] = adjtimex_state
) -> bool:
    """Whether the wall clock can be trusted for event timestamps.

    False when the time is implausibly early (no RTC, NTP not yet run), or
    when the kernel reports the clock as unsynchronised: ``kernel_state()``
    (:func:`adjtimex_state`) is ``TIME_ERROR``, what ``timedatectl``'s
    "System clock synchronized" shows. Where adjtimex is unavailable (None)
    only the plausibility check applies.
    """
    t = time.time() if now is None else now
    if t < _PLAUSIBLE_EPOCH:
        return False
    return kernel_state() != _TIME_ERROR


def snapshot_jpeg(image: Image, max_side: int = SNAPSHOT_MAX_SIDE) -> bytes:
    """An RGB face crop as JPEG bytes, downscaled so its longer side is at most ``max_side``."""
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
    return bytes(buf.tobytes())


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
    ``track_length`` (frames the face was tracked) and ``box`` ([x, y, w, h]
    pixels). The face crop never travels in the event: with
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


# -- signed events ---------------------------------------------------------------------

EVENT_SIG_CONTEXT = b"facegate-event-v1\n"
"""What the MAC of an event starts with, so it can never pass for another of the
device's MACs (a remote unlock's message starts ``facegate-unlock-v1``)."""
_SIG_SUFFIX = re.compile(rb',"sig":"([0-9a-f]{64})"\}\Z')


def event_mac(key: bytes, body: bytes) -> str:
    """``hex(HMAC-SHA256(key, b"facegate-event-v1\\n" + body))``: the ``sig`` of ``body``."""
    return hmac.new(key, EVENT_SIG_CONTEXT + body, hashlib.sha256).hexdigest()


def sign_payload(body: bytes, key: bytes) -> bytes:
    """``body`` with ``"sig"`` appended as its last member.

    The result is ``body[:-1] + b',"sig":"' + mac + b'"}'``.

    ``body`` is the compact JSON object :func:`encode` writes (it must start
    with ``{``, end with ``}`` and hold at least one member); ``mac`` is
    :func:`event_mac` of exactly those bytes. The signature covers bytes, not
    a re-serialisation, so a consumer in any language checks it without
    re-encoding JSON: strip the 74-byte suffix ``,"sig":"<64 hex>"}``, put
    back the ``}``, and compute the MAC of the result (:func:`verify_payload`).
    """
    if len(body) < 3 or body[:1] != b"{" or body[-1:] != b"}" or b"\n" in body:
        raise FacegateError("sign: the body must be a compact, non-empty JSON object")
    return body[:-1] + b',"sig":"' + event_mac(key, body).encode() + b'"}'


def verify_payload(payload: bytes, key: bytes) -> dict[str, Any]:
    """The event inside a signed payload, after its signature is checked.

    ``payload`` is exactly what was received (a trailing newline, as a line
    reader leaves it, is tolerated). It must end with ``,"sig":"<64 hex>"}``;
    the body is the payload without that suffix, closed again with ``}``, and
    its :func:`event_mac` must equal the hex digits (compared in constant
    time). Only the body is parsed (:func:`loads_strict`: a key named twice
    is refused), so nothing outside the signed bytes reaches the caller.
    Raises :class:`~edge.errors.SignatureError` saying why otherwise.
    """
    data = payload[:-1] if payload.endswith(b"\n") else payload
    m = _SIG_SUFFIX.search(data)
    if m is None:
        raise SignatureError('unsigned: no "sig" member at the end of the payload')
    body = data[: m.start()] + b"}"
    if not hmac.compare_digest(event_mac(key, body), m.group(1).decode()):
        raise SignatureError("bad signature: not signed with this key, or altered")
    try:
        doc = loads_strict(body)
    except ValueError as e:  # only a key holder could have signed it: a bug, still refused
        raise SignatureError(f"signed body is not JSON ({e})") from None
    if not isinstance(doc, dict) or "sig" in doc:
        raise SignatureError("signed body is not one event object")
    return doc


def why_not_act(
    event: dict[str, Any], *, now: float, device: str | None = None, last_seq: int | None = None
) -> str | None:
    """Why a door must not act on ``event`` now, or None when it may.

    A consumer that opens something on an event refuses it unless all hold:
    it is a decision (it has ``expires_at_unix``; door records never do),
    ``delivery == "live"``, ``clock_synced`` is true (else ``expires_at``
    means nothing), ``now <= expires_at_unix`` by the consumer's own clock,
    ``device`` is the expected one, and ``seq > last_seq`` (a captured event
    published again, signed or not, repeats its ``seq``). Checking the
    signature (:func:`verify_payload`) comes first; this is the rest.
    """
    if device is not None and event.get("device") != device:
        return f"from device {event.get('device')!r}, not {device!r}"
    expires = event.get("expires_at_unix")
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        return "not a decision (no expires_at_unix)"
    if event.get("delivery") != LIVE:
        return f"delivery is {event.get('delivery')!r}, not 'live'"
    if event.get("clock_synced") is not True:
        return "the device's clock is not synchronised: expires_at cannot be trusted"
    if now > float(expires):
        return f"expired {now - float(expires):.1f} s ago"
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return "no integer seq"
    if last_seq is not None and seq <= last_seq:
        return f"seq {seq} is not newer than {last_seq} (a repeat or a replay)"
    return None


class DuplicateKeyError(ValueError):
    """A JSON object names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook: an object that names a key twice is refused."""
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise DuplicateKeyError(f"duplicate key {key!r}")
        doc[key] = value
    return doc


def loads_strict(payload: bytes) -> Any:
    """Parse UTF-8 JSON in which no object names a key twice; ValueError otherwise
    (:class:`DuplicateKeyError` for a repeated key).

    Python's ``json`` keeps the last of two equal keys silently, so
    ``{"command": "reload-gallery", "command": "x"}`` would be read
    differently by other parsers; a command that two readers can disagree on
    is refused.
    """
    return json.loads(payload.decode("utf-8"), object_pairs_hook=_unique_keys)


def parse_command(payload: bytes) -> str:
    """The command in a ``command`` topic payload, or :class:`CommandError`.

    Accepted is exactly a JSON object ``{"command": NAME}`` with NAME in
    :data:`COMMANDS`, at most :data:`MAX_COMMAND_BYTES` long, each key once
    (:func:`loads_strict`). Anything else (other or repeated keys, other
    types, invalid UTF-8 or JSON) is rejected: nothing but a gallery reload
    (and the door's signed unlock) can be triggered over the network.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command: payload of {len(payload)} bytes is too long")
    try:
        doc = loads_strict(payload)
    except DuplicateKeyError as e:
        raise CommandError(f"command: {e}") from None
    except ValueError:  # UnicodeDecodeError too
        raise CommandError("command: payload is not UTF-8 JSON") from None
    if isinstance(doc, dict) and doc.get("command") == UNLOCK:
        return UNLOCK  # door: the signed unlock, verified by edge.door (ts, nonce, hmac)
    if not isinstance(doc, dict) or set(doc) != {"command"}:
        raise CommandError('command: expected exactly {"command": ...}')
    cmd = doc["command"]
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise CommandError(f"command: {cmd!r} is not an accepted command")
    return cmd


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
    # The door's (edge.door.ha_discovery), when door.enabled.
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


__all__ = [
    "COMMANDS",
    "EVENT_SIG_CONTEXT",
    "EVENT_TYPES",
    "HA_EVENT_TEMPLATE",
    "HA_TRIGGER_TEMPLATE",
    "LATE",
    "LIVE",
    "MAX_COMMAND_BYTES",
    "OFFLINE",
    "ONLINE",
    "RELOAD_GALLERY",
    "SCHEMA_VERSION",
    "STRANGER",
    "UNLOCK",
    "CommandError",
    "DuplicateKeyError",
    "Topics",
    "adjtimex_state",
    "build_door_event",
    "build_event",
    "build_ha_discovery",
    "build_last_person",
    "build_state",
    "clock_synced",
    "delivery_of",
    "encode",
    "event_mac",
    "ha_discovery_subscription",
    "ha_discovery_topic",
    "ha_person_object_id",
    "ha_static_topics",
    "is_late",
    "iso_utc",
    "loads_strict",
    "new_event_id",
    "parse_command",
    "sign_payload",
    "snapshot_jpeg",
    "verify_payload",
    "why_not_act",
]

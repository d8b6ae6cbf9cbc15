"""The MQTT topics of one device, all under ``<mqtt.prefix>/<device.id>/``.

``event``
    One JSON object per decision, QoS 1, not retained
    (:func:`edge.delivery.events.build_event`). It says when the face was
    seen (``ts``), until when it may be acted on (``expires_at``) and whether
    it was published in time (``delivery``: ``live`` or ``late``).
``availability``
    ``online`` / ``offline``, retained. ``online`` only once the device is
    ready (models loaded, first camera frame processed); ``offline`` is also
    the Last Will, so it appears when the process dies without saying goodbye.
``state``
    Retained JSON snapshot of the service (:func:`edge.delivery.events.build_state`).
``last_person``
    The person of the last live event (``Stranger`` for an unknown face),
    blanked ``homeassistant.last_person_clear_s`` later
    (:func:`edge.homeassistant.discovery.build_last_person`).
``presence``
    ``ON`` while a face is tracked in front of the camera, else ``OFF``; retained.
``snapshot``
    Only with ``mqtt.snapshot = true``: the face crop of a live event as a raw
    JPEG, published just before that event; never retained, never stored.
``command``
    Only subscribed when ``mqtt.commands = true``; the one accepted payload is
    ``{"command": "reload-gallery"}`` (:func:`edge.delivery.commands.parse_command`),
    plus the door's signed ``{"command": "unlock", ...}``
    (:func:`edge.door.remote.verify_unlock`).
``door``
    The door's retained status (:mod:`edge.door.controller`), when ``door.enabled``.
``unknown`` and ``unknown/image``
    Only with ``review.notify = true``: each new unknown visit kept for review
    (:mod:`edge.review`), its entry as JSON and its crop as a raw JPEG (the
    picture first); never retained.

Home Assistant discovery configs go to ``<mqtt.ha_prefix>/...``
(:mod:`edge.homeassistant`).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import FacegateError


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
    unknown: str
    unknown_image: str

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
            unknown=f"{base}/unknown",
            unknown_image=f"{base}/unknown/image",
        )


__all__ = ["Topics"]

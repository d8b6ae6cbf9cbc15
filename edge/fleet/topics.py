"""Where a site's bundles live on the broker: ``<prefix>/_fleet/<site>/gallery/...``.

``<prefix>/_fleet/<site>/gallery/manifest``
    The signed manifest of the newest bundle, retained, QoS 1. Published
    last, after every chunk was acknowledged.
``<prefix>/_fleet/<site>/gallery/<version>/<index>``
    The bundle's chunks (``index`` from 0), retained, QoS 1. A door
    subscribes to ``.../gallery/<version>/+`` once it has verified that
    version's manifest, and unsubscribes when it has them all. The chunks of
    older versions are cleared (an empty retained message) once a newer
    manifest is in place.

``_fleet`` cannot be a device's topic level (``device.id`` ``_fleet`` is
refused with fleet on), and the levels below differ from a device's
(``<prefix>/<id>/event``...), so an ACL tells them apart. The doors' own
state stays on ``<prefix>/<device.id>/state``: its ``fleet`` member is
what ``facegate fleet status`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import FleetError

FLEET_LEVEL = "_fleet"


@dataclass(frozen=True)
class FleetTopics:
    """The topics of one site."""

    site: str
    base: str
    manifest: str
    chunks_all: str
    """Every chunk of every version (the admin's sweep)."""
    gallery_all: str
    """The manifest and every chunk (``.../gallery/#``)."""

    @classmethod
    def for_site(cls, prefix: str, site: str) -> FleetTopics:
        if not site or any(c in site for c in "/+#\0"):
            raise FleetError(f"fleet.site: {site!r} cannot be used in an MQTT topic")
        base = f"{prefix.rstrip('/')}/{FLEET_LEVEL}/{site}/gallery"
        return cls(site, base, f"{base}/manifest", f"{base}/+/+", f"{base}/#")

    def chunk(self, version: int, index: int) -> str:
        return f"{self.base}/{version}/{index}"

    def chunks(self, version: int) -> str:
        """The subscription for every chunk of ``version``."""
        return f"{self.base}/{version}/+"

    def parse_chunk(self, topic: str) -> tuple[int, int] | None:
        """(version, index) of a chunk topic of this site, or None."""
        head = self.base + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or not all(p.isdigit() and len(p) <= 16 for p in parts):
            return None
        return int(parts[0]), int(parts[1])


def state_subscription(prefix: str) -> str:
    """Every device's retained state (``facegate fleet status`` reads their ``fleet`` member)."""
    return f"{prefix.rstrip('/')}/+/state"


def device_of_state(prefix: str, topic: str) -> str | None:
    """The device id of a state topic, or None."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head) or not topic.endswith("/state"):
        return None
    device = topic[len(head) : -len("/state")]
    return device if device and "/" not in device else None


__all__ = ["FLEET_LEVEL", "FleetTopics", "device_of_state", "state_subscription"]

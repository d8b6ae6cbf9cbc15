"""Many sites: the shipped bridge example between a site's Mosquitto and a central one.

Two real brokers on loopback, the site one configured with
``systemd/mosquitto-bridge.example`` (its address pointed at the central
broker, without TLS and credentials). The admin pushes to the central broker;
a door on the site broker applies the bundle; ``status`` on the central
broker sees the door; a door that joins the site broker later catches up
from the site broker's own retained copy; and the next push's clearing of
old chunks reaches the site broker too.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _fleet import MANIFEST, MODEL, SIZE, gallery
from broker import Broker, mosquitto_path, wait_for

from edge.config import Config, parse_config
from edge.delivery.mqtt import MqttPublisher
from edge.fleet.admin import push, snapshot, status
from edge.fleet.device import FleetDevice
from edge.fleet.keys import admin_keys, generate
from edge.fleet.link import AdminLink
from edge.fleet.topics import FleetTopics

pytestmark = [
    pytest.mark.mqtt,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed"),
]

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "mosquitto-bridge.example"
TOPICS = FleetTopics.for_site("facegate", "hq")


def _bridge_conf(central: Broker) -> str:
    """The shipped example, pointed at ``central``, without TLS and credentials."""
    out = []
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith(("remote_", "bridge_cafile")):
            continue
        if line.startswith("address "):
            line = f"address {central.host}:{central.port}"
        out.append(line)
    return "\n".join(out)


class Door:
    """The daemon's publisher with the fleet extension, applying bundles when asked."""

    def __init__(self, cfg: Config) -> None:
        self.fleet = FleetDevice(cfg, model=(MODEL, MANIFEST, SIZE))
        self.pub = MqttPublisher(cfg, extensions=[self.fleet])
        self.fleet.events = self.pub
        self.pub.start()
        self.pub.set_state(status="running")
        self.pub.set_ready()

    def at(self, version: int) -> bool:
        p = self.fleet.take_pending()
        if p is not None:
            self.fleet.applied(p)
            self.pub.set_gallery(p.gallery.names)
        return self.fleet.sync.version == version


def test_a_site_broker_bridged_to_the_central_one(tmp_path: Path) -> None:
    files = generate(tmp_path / "keys")
    central = Broker(tmp_path / "central").start()
    site = Broker(tmp_path / "site", extra_conf=_bridge_conf(central)).start()
    doors: list[Door] = []
    try:

        def cfg(broker: Broker, d: Path, **fleet: object) -> Config:
            d.mkdir(exist_ok=True)
            return parse_config(
                {
                    "device": {"id": d.name},
                    "mqtt": {"enabled": True, "host": broker.host, "port": broker.port},
                    "fleet": {"site": "hq", "site_key_file": str(files.site), **fleet},
                    "service": {"state_dir": str(d)},
                },
                base_dir=d,
            )

        admin = cfg(central, tmp_path / "admin", signing_key_file=str(files.signing))
        door = lambda name: Door(  # noqa: E731
            cfg(site, tmp_path / name, enabled=True, public_key_file=str(files.public))
        )
        doors.append(door("door1"))
        keys = admin_keys(admin)
        # Pushed maybe before the bridge connected: it gets the retained bundle then.
        first = push(admin, gallery(["Alice", "Bob"]), keys)
        assert wait_for(lambda: doors[0].at(1), 30), site.log_tail()
        st = status(admin, keys, wait_s=1.0)
        assert [(d.device, d.version) for d in st.doors] == [("door1", 1)]
        doors.append(door("door2"))  # joins later: the site broker's retained copy
        assert wait_for(lambda: doors[1].at(1), 30)
        second = push(admin, gallery(["Alice"]), keys)
        assert wait_for(lambda: all(d.at(2) for d in doors), 30)
        with AdminLink(cfg(site, tmp_path / "check"), "check") as link:
            found = snapshot(link, TOPICS.gallery_all, time.monotonic() + 20)
        assert found[TOPICS.manifest] == second.bundle.manifest
        chunks = {TOPICS.parse_chunk(t) for t in found if t != TOPICS.manifest}
        assert chunks == {(2, i) for i in range(len(second.bundle.chunks))}
        assert first.bundle.info.version == 1
    finally:
        for d in doors:
            d.pub.stop(timeout=2.0)
        site.stop()
        central.stop()

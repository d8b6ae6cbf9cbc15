"""The shipped Mosquitto ACL and the fleet: only the admin publishes bundles, doors read them.

``systemd/mosquitto-acl.example`` as shipped, with passwords for the door
``door1``, the admin ``fleet-admin``, ``homeassistant`` and ``mallory``.
The admin pushes with :func:`edge.fleet.admin.push` and reads the doors with
``status``; the door is the daemon's publisher with the fleet extension.
A bundle published by anyone else (even one signed with the admin's key,
as a copied file would be) never reaches the broker's retained store.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from _fleet import MANIFEST, MODEL, SIZE, bundle, gallery
from broker import Broker, mosquitto_path, wait_for
from test_broker_acl import attempt

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
    pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd"),
]

ROOT = Path(__file__).resolve().parents[1]
ACL = ROOT / "systemd" / "mosquitto-acl.example"
USERS = {"door1": "door-pw", "fleet-admin": "admin-pw", "homeassistant": "ha-pw", "mallory": "m-pw"}
SITE = "hq"
TOPICS = FleetTopics.for_site("facegate", SITE)


@pytest.fixture
def fleet_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import test_broker_acl

    monkeypatch.setattr(test_broker_acl, "USERS", USERS)  # attempt() logs in with these
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, pw in USERS.items():
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, capture_output=True
        )
    extra = f"password_file {passwd}\nacl_file {ACL}"
    b = Broker(tmp_path / "broker", extra_conf=extra, anonymous=False, persistent=False)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _config(broker: Broker, d: Path, user: str, **fleet: Any) -> Config:
    (d / f"{user}.pw").write_text(USERS[user])
    return parse_config(
        {
            "device": {"id": user},
            "mqtt": {
                "enabled": True,
                "host": broker.host,
                "port": broker.port,
                "username": user,
                "password_file": f"{user}.pw",
            },
            "fleet": {"site": SITE, **fleet},
            "service": {"state_dir": str(d)},
        },
        base_dir=d,
    )


def test_only_the_fleet_admin_publishes_bundles(fleet_broker: Broker, tmp_path: Path) -> None:
    files = generate(tmp_path / "keys")
    admin = _config(
        fleet_broker, tmp_path, "fleet-admin",
        site_key_file=str(files.site), signing_key_file=str(files.signing),
    )  # fmt: skip
    state = tmp_path / "door1"
    state.mkdir()
    door_cfg = _config(
        fleet_broker, state, "door1",
        enabled=True, site_key_file=str(files.site), public_key_file=str(files.public),
    )  # fmt: skip
    fleet = FleetDevice(door_cfg, model=(MODEL, MANIFEST, SIZE))
    pub = MqttPublisher(door_cfg, extensions=[fleet])
    fleet.events = pub
    pub.start()
    try:
        pub.set_state(status="running")
        pub.set_ready()

        def applied(version: int) -> bool:
            p = fleet.take_pending()
            if p is not None:
                fleet.applied(p)
                pub.set_gallery(p.gallery.names)
            return fleet.sync.version == version

        keys = admin_keys(admin)
        first = push(admin, gallery(["Alice", "Bob"]), keys)
        assert wait_for(lambda: applied(1), 30), fleet_broker.log_tail()
        st = status(admin, keys, wait_s=1.0)
        assert [(d.device, d.version, d.online) for d in st.doors] == [("door1", 1, True)]
        # Everyone else's bundle, even one the admin's key signed, is dropped by the broker.
        genuine_v9 = bundle(keys, ["Mallory"], 9)
        for user in ("door1", "homeassistant", "mallory"):
            for i, c in enumerate(genuine_v9.chunks):
                attempt(fleet_broker, user, TOPICS.chunk(9, i), c, True)
            attempt(fleet_broker, user, TOPICS.manifest, genuine_v9.manifest, True)
        with AdminLink(admin, "check") as link:
            found = snapshot(link, TOPICS.gallery_all, time.monotonic() + 20)
        assert found[TOPICS.manifest] == first.bundle.manifest
        assert not [t for t in found if (w := TOPICS.parse_chunk(t)) and w[0] == 9]
        assert fleet.sync.version == 1 and fleet.gallery().names == ["Alice", "Bob"]
        # The admin's next push still goes through.
        push(admin, gallery(["Alice"]), keys)
        assert wait_for(lambda: applied(2), 30)
        assert fleet.gallery().names == ["Alice"]
    finally:
        pub.stop(timeout=2.0)

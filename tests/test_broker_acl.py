"""The shipped Mosquitto ACL on a real broker: only the device writes its own topics.

``systemd/mosquitto-acl.example`` is used as shipped (prefix ``facegate``,
each device's user named after its ``device.id``), with passwords for the
device ``door1``, the controller ``homeassistant`` and ``mallory``, any
other user of the broker. Mosquitto drops a publish the ACL denies after
acknowledging it, so each check sends a marker on a topic the sender may
use: messages from one client arrive in order, so once the marker is there
a forged message would have been too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from broker import Broker, Collector, mosquitto_path, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import parse_config
from edge.daemon import Publisher
from edge.delivery.topics import Topics
from edge.types import Box, Decision

pytestmark = [
    pytest.mark.mqtt,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed"),
    pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd"),
]

ROOT = Path(__file__).resolve().parents[1]
ACL = ROOT / "systemd" / "mosquitto-acl.example"
CONF = ROOT / "systemd" / "mosquitto-facegate.conf"
USERS = {
    "door1": "door-pw",
    "door2": "other-pw",
    "front-door": "fd-pw",
    "homeassistant": "ha-pw",
    "mallory": "m-pw",
}
T = Topics.for_device("facegate", "door1")


@pytest.fixture
def acl_broker(tmp_path: Path) -> Any:
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, pw in USERS.items():
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, capture_output=True
        )
    b = shipped_broker(tmp_path, passwd)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def shipped_broker(tmp_path: Path, passwd: Path) -> Broker:
    """A broker with every setting of the shipped snippet; this test's port, files and user."""
    lines = [ln for ln in CONF.read_text().splitlines() if ln and not ln.startswith("#")]
    settings = dict(ln.split(None, 1) for ln in lines)
    assert settings["allow_anonymous"] == "false"
    own = {"listener", "password_file", "acl_file", "allow_anonymous", "per_listener_settings"}
    kept = [f"{k} {v}" for k, v in settings.items() if k not in own]
    assert "use_username_as_clientid true" in kept and any(k.startswith("max_packet") for k in kept)
    extra = "\n".join([*kept, f"password_file {passwd}", f"acl_file {ACL}"])
    return Broker(tmp_path / "broker", extra_conf=extra, anonymous=False, persistent=False)


def client(broker: Broker, user: str, client_id: str = "") -> paho.Client:
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{user}-raw",
        protocol=paho.MQTTv311,
        reconnect_on_failure=False,
    )
    c.username_pw_set(user, USERS[user])
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert wait_for(c.is_connected, 10), broker.log_tail()
    return c


def publish_all(c: paho.Client, messages: list[tuple[str, bytes, bool]]) -> None:
    for topic, payload, retain in messages:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=10)


def attempt(broker: Broker, user: str, topic: str, payload: bytes, retain: bool) -> None:
    """Publish once as ``user`` on a connection of its own, and close it.

    Mosquitto acknowledges a publish its ACL denies and drops it (2.0 may
    also close the connection); either way the broker is done with it once
    this returns, so a later marker from anyone arrives after it would have.
    """
    c = client(broker, user)
    info = c.publish(topic, payload, qos=1, retain=retain)
    wait_for(lambda: info.is_published() or not c.is_connected(), 10)
    c.disconnect()
    c.loop_stop()


def forged_event() -> bytes:
    return json.dumps(
        {"v": 2, "id": "f" * 32, "seq": 1, "device": "door1", "type": "recognized",
         "name": "Alice", "delivery": "live", "clock_synced": True}
    ).encode()  # fmt: skip


def test_only_the_device_writes_its_topics(acl_broker: Broker, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(USERS["door1"])
    cfg = parse_config(
        {
            "device": {"id": "door1"},
            "mqtt": {
                "enabled": True,
                "host": acl_broker.host,
                "port": acl_broker.port,
                "prefix": "facegate",
                "username": "door1",
                "password_file": "pw",
                "commands": True,
                "ha_discovery": True,
                "state_interval_s": 60.0,
            },
        },
        base_dir=tmp_path,
    )
    ha = Collector(
        acl_broker, ["facegate/#", "homeassistant/#"], persistent=False, auth=("homeassistant",
        USERS["homeassistant"]),
    ).start()  # fmt: skip
    assert ha.ready()
    pub = Publisher(cfg)
    commands: list[str] = []
    pub.on_command = commands.append
    pub.start()
    try:
        # The device user may do all it needs: online, state, discovery, events, commands.
        pub.set_state(status="running")
        pub.set_ready()
        d = Decision("recognized", "Alice", 0.2, 0.9, 1, 3, time.time(), Box(0, 0, 9, 9))
        sent = pub.publish_decision(d)
        assert ha.wait_for(lambda: ha.payloads(T.availability)[-1:] == [b"online"], 10)
        assert ha.wait_for(lambda: len(ha.payloads(T.event)) == 1, 10), acl_broker.log_tail()
        assert json.loads(ha.payloads(T.event)[0])["id"] == sent["id"]
        assert ha.payloads(T.state) and any(t.startswith("homeassistant/") for t, *_ in
                                            ha.snapshot())  # fmt: skip
        assert wait_for(pub.listening.is_set, 10)  # the SUBACK granted the command topic
        # The controller's commands reach the device (one connection per user: the
        # broker names each client after its user, so Home Assistant reads and writes
        # on this one).
        control = ha.client
        publish_all(control, [(T.command, b'{"command": "reload-gallery"}', False)])
        assert wait_for(lambda: commands == ["reload-gallery"], 10)

        # Any other user (and another device) cannot write the device's topics,
        # retained or not; the marker on their own topic arrives, the forgeries never.
        for intruder in ("mallory", "door2"):
            for topic, payload, retain in [
                (T.event, forged_event(), True),
                (T.event, forged_event(), False),
                (T.availability, b"offline", True),
                (T.state, b'{"status": "forged"}', True),
                (T.presence, b"ON", True),
            ]:
                attempt(acl_broker, intruder, topic, payload, retain)
            marker = f"facegate/{intruder}/event"
            publish_all(client(acl_broker, intruder), [(marker, b"marker", False)])
            assert ha.wait_for(lambda m=marker: ha.payloads(m) == [b"marker"], 10)
        assert [json.loads(p)["id"] for p in ha.payloads(T.event)] == [sent["id"]]
        assert ha.payloads(T.availability)[-1] == b"online"
        assert all(b"forged" not in p for p in ha.payloads(T.state))
        # What a subscriber arriving now finds retained is the device's own word.
        ha.stop()
        late = Collector(acl_broker, [f"{T.base}/#"], persistent=False,
                         auth=("homeassistant", USERS["homeassistant"])).start()  # fmt: skip
        assert late.ready()
        control = late.client
        publish_all(control, [("facegate/homeassistant/command", b"marker", False)])
        assert late.wait_for(lambda: late.payloads(T.availability) == [b"online"], 10)
        assert late.payloads(T.event) == [] and late.payloads(T.presence) == [b"OFF"]

        # Nobody but the device reads its commands: Mosquitto grants mallory's
        # subscription (MQTT 3.1.1) but a command for door1 never reaches her.
        spy = Collector(acl_broker, [T.command, "facegate/mallory/command"], persistent=False,
                        auth=("mallory", USERS["mallory"])).start()  # fmt: skip
        assert spy.ready()
        publish_all(
            control,
            [
                (T.command, b'{"command": "reload-gallery"}', False),
                ("facegate/mallory/command", b"marker", False),
            ],
        )
        assert spy.wait_for(lambda: spy.payloads("facegate/mallory/command") == [b"marker"], 10)
        assert spy.payloads(T.command) == []
        assert wait_for(lambda: commands == ["reload-gallery"] * 2, 10)
        spy.stop()
        late.stop()
    finally:
        pub.stop(timeout=2.0)
        ha.stop()


def _device(broker: Broker, tmp_path: Path) -> tuple[Publisher, list[str]]:
    (tmp_path / "pw").write_text(USERS["door1"])
    cfg = parse_config(
        {
            "device": {"id": "door1"},
            "mqtt": {"enabled": True, "host": broker.host, "port": broker.port,
                     "username": "door1", "password_file": "pw", "commands": True},
        },
        base_dir=tmp_path,
    )  # fmt: skip
    pub = Publisher(cfg)
    commands: list[str] = []
    pub.on_command = commands.append
    pub.start()
    pub.set_ready()
    assert wait_for(pub.listening.is_set, 10), broker.log_tail()
    return pub, commands


def test_another_user_cannot_take_over_the_device_client_id(
    acl_broker: Broker, tmp_path: Path
) -> None:
    """D8: connecting as the device's client id every 0.5 s never knocks the device off."""
    pub, commands = _device(acl_broker, tmp_path)
    try:
        assert pub.transport.generation == 1
        for cid in ["facegate-door1", "door1"] * 5:  # its configured id, and its user name
            c = client(acl_broker, "mallory", client_id=cid)
            time.sleep(0.5)
            c.disconnect()
            c.loop_stop()
        control = client(acl_broker, "homeassistant")
        publish_all(control, [(T.command, b'{"command": "reload-gallery"}', False)])
        assert wait_for(lambda: commands == ["reload-gallery"], 10)
        control.disconnect()
        control.loop_stop()
        # Never disconnected: still its first connection.
        assert pub.transport.generation == 1 and pub.transport.connected.is_set()
    finally:
        pub.stop(timeout=2.0)


def test_an_oversize_payload_never_reaches_the_device(acl_broker: Broker, tmp_path: Path) -> None:
    """max_packet_size: 5 MB on the command topic disconnects its sender; the device sees none."""
    pub, commands = _device(acl_broker, tmp_path)
    sizes: list[int] = []
    handle = pub.commands.handle

    def spy(payload: bytes, retained: bool = False) -> bool:
        sizes.append(len(payload))
        return handle(payload, retained)

    pub.commands.handle = spy  # type: ignore[method-assign]
    try:
        big = client(acl_broker, "homeassistant")
        big.publish(T.command, b"x" * (5 * 1024 * 1024), qos=1)
        assert wait_for(lambda: not big.is_connected(), 10)  # the broker hung up on it
        big.loop_stop()
        control = client(acl_broker, "homeassistant")
        publish_all(control, [(T.command, b'{"command": "reload-gallery"}', False)])
        assert wait_for(lambda: commands == ["reload-gallery"], 10)
        control.disconnect()
        control.loop_stop()
        assert sizes == [len(b'{"command": "reload-gallery"}')]
        assert "oversize packet" in acl_broker.log_tail(100_000)
    finally:
        pub.stop(timeout=2.0)


def test_a_device_id_with_a_dash_stays_connected(acl_broker: Broker, tmp_path: Path) -> None:
    """The README's front-door under the shipped ACL: no denied publish, no dropped connection.

    facegate 0.1's discovery layout for it ("front_door") is outside what the
    ACL grants the device; Mosquitto 2.0 drops the connection of a client whose
    publish it denies, so clearing it blindly on every connect kept the device
    off the broker. It is cleared only where found.
    """
    (tmp_path / "pw").write_text(USERS["front-door"])
    cfg = parse_config(
        {
            "device": {"id": "front-door"},
            "mqtt": {"enabled": True, "host": acl_broker.host, "port": acl_broker.port,
                     "username": "front-door", "password_file": "pw", "commands": True,
                     "ha_discovery": True},
            "door": {"enabled": True, "pin_factory": "mock"},
        },
        base_dir=tmp_path,
    )  # fmt: skip
    pub = Publisher(cfg)
    pub.start()
    try:
        pub.set_state(status="running")
        pub.set_gallery(["Alice"])
        pub.set_ready()
        assert wait_for(pub.listening.is_set, 10)
        time.sleep(2.0)  # a dropped connection would have shown by now
        assert pub.transport.generation == 1, acl_broker.log_tail()
        assert "Bad socket read/write" not in acl_broker.log_tail(100_000)
    finally:
        pub.stop(timeout=2.0)

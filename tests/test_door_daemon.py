"""The door inside the daemon loop: decisions in-process, fail-secure stops, no MQTT in the way.

:func:`edge.daemon.run` is driven in-process with scripted stand-ins for the
camera and the recognizer (frames carry wall-clock timestamps, as a camera's
do) and the door on gpiozero's MockFactory, injected through ``door_factory``.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _standins import ScriptedRecognizer
from broker import Broker, Collector, mqtt_broker, wait_for

pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")
from gpiozero.pins.mock import MockFactory

from edge.config import Config, parse_config
from edge.daemon import run
from edge.delivery.publishers import StdoutPublisher
from edge.door.controller import DoorController
from edge.identity.gallery import Gallery
from edge.sdnotify import Notifier
from edge.types import Box, Decision, Frame

__all__ = ["mqtt_broker"]

RELAY = 17


class Capture:
    """Frames named by ``names`` ("" no face, "?" a stranger, "!" the recognizer fails).

    ``on_frame(i)`` runs before frame ``i`` is delivered (to act mid-run).
    """

    def __init__(
        self,
        names: list[str],
        period: float = 0.0,
        on_frame: Callable[[int], None] | None = None,
    ) -> None:
        self.names = names
        self.period = period
        self.on_frame = on_frame
        self.dropped = 0
        self.captured = 0
        self.joined = False

    def bind(self, _cfg: Config, _stop: threading.Event) -> Capture:
        return self

    def start(self) -> None:
        pass

    def get(self, timeout: float) -> Frame | None:
        if self.captured >= len(self.names):
            return None
        if self.period:
            time.sleep(self.period)
        i = self.captured
        if self.on_frame is not None:
            self.on_frame(i)
        self.captured += 1
        return Frame(np.zeros((48, 64, 3), np.uint8), i, time.time(), source=self.names[i])

    def join(self, timeout: float) -> None:
        self.joined = True

    @property
    def alive(self) -> bool:
        return not self.joined

    @property
    def finished(self) -> bool:
        return self.captured >= len(self.names)


def door_recognizer() -> ScriptedRecognizer:
    """Alice and Bob enrolled; each person stands elsewhere, so tracks never mix."""
    gallery = Gallery("sha-test", 4)
    for name in ("Alice", "Bob"):
        gallery.add(name, np.ones((1, 4), np.float32))
    return ScriptedRecognizer(gallery, spread=True)


class Doors:
    """A door_factory that keeps the controller and its mock pins for the test."""

    def __init__(self) -> None:
        self.factory = MockFactory()
        self.ctl: DoorController | None = None

    def __call__(self, cfg: Config, pub: Any) -> DoorController:
        self.ctl = DoorController(cfg, events=pub, factory=self.factory)
        return self.ctl

    def states(self) -> list[bool]:
        return [bool(s.state) for s in self.factory.pin(RELAY).states]


class Publisher:
    """The publisher interface, remembering the relay level when it is stopped."""

    def __init__(self, doors: Doors) -> None:
        self.doors = doors
        self.on_command: Callable[[str], None] | None = None
        self.on_unlock: Callable[[bytes], None] | None = None
        self.decisions: list[Decision] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.relay_at_stop: bool | None = None

    def start(self) -> None:
        pass

    def publish_decision(self, decision: Decision) -> dict[str, Any]:
        self.decisions.append(decision)
        return {"seq": len(self.decisions)}

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]:
        self.events.append((kind, fields))
        return {"type": kind, **fields}

    def publish_status(self, name: str, fields: dict[str, Any]) -> None:
        pass

    def set_state(self, **fields: Any) -> None:
        pass

    def set_gallery(self, names: list[str] | tuple[str, ...]) -> None:
        pass

    def set_presence(self, present: bool) -> None:
        pass

    def set_ready(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    def stop(self, timeout: float) -> None:
        self.relay_at_stop = bool(self.doors.factory.pin(RELAY).state)


def config(tmp_path: Path, **door: Any) -> Config:
    keys: dict[str, Any] = {"enabled": True, "pin_factory": "mock", "allow": ["Alice"]}
    keys.update(door)
    return parse_config(
        {
            "door": keys,
            "decision": {"k": 3, "n": 4, "cooldown_s": 30.0},
            # Scripted faces on blank frames test the door's own rules; what
            # liveness adds is tested end to end on real clips (test_liveness_e2e).
            "liveness": {"mode": "off"},
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )


def people(*who: str, frames: int = 4, gap: int = 25) -> list[str]:
    """Each person for ``frames`` frames, then empty frames (longer than a track's life)."""
    out: list[str] = []
    for w in who:
        out += [w] * frames + [""] * gap
    return out


def test_an_exception_in_the_pipeline_releases_at_once(tmp_path: Path) -> None:
    doors = Doors()
    pub = Publisher(doors)
    cap = Capture(["Alice"] * 4 + ["!"])
    rc = run(
        config(tmp_path, unlock_s=60.0),
        threading.Event(),
        pub,  # type: ignore[arg-type]
        notifier=Notifier(""),
        recognizer=door_recognizer(),
        capture_factory=cap.bind,
        door_factory=doors,
    )
    assert rc == 1
    assert doors.states() == [False, True, False]
    assert doors.ctl is not None
    assert doors.ctl.relay_log[-1][2] == "service stopping"
    # Released first: before the capture and the publisher were stopped.
    assert pub.relay_at_stop is False
    assert [k for k, _ in pub.events] == ["access_granted"]


def test_the_door_works_with_mqtt_disabled(tmp_path: Path) -> None:
    cfg = config(tmp_path, unlock_s=60.0)
    assert not cfg.mqtt.enabled
    out = io.StringIO()
    doors = Doors()
    rc = run(
        cfg,
        threading.Event(),
        StdoutPublisher(cfg, out=out),
        notifier=Notifier(""),
        recognizer=door_recognizer(),
        capture_factory=Capture(people("Alice", "?", "Bob")).bind,
        door_factory=doors,
    )
    assert rc == 0
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    got = [(x["type"], x.get("name"), x.get("reason")) for x in lines]
    # The door's records are written by its own thread (never holding up the relay or
    # the loop): each kind of event is in order, the two interleave as they come.
    decisions = [g for g in got if not g[0].startswith("access")]
    assert decisions == [("recognized", "Alice", None), ("unknown", None, None),
                         ("recognized", "Bob", None)]  # fmt: skip
    door = [g for g in got if g[0].startswith("access")]
    assert door == [
        ("access_granted", "Alice", None),
        ("access_denied", None, "unknown"),
        ("access_denied", "Bob", "not_allowed"),
    ]
    assert [x["seq"] for x in lines] == list(range(1, 7))
    assert doors.states() == [False, True, False]  # one pulse, released at the stop
    from edge.door.audit import read_entries

    audit = [(e.kind, e.name, e.reason) for e in read_entries(tmp_path / "audit.sqlite")]
    assert audit == door


def test_a_reload_releases_the_relay(tmp_path: Path) -> None:
    doors = Doors()
    pub = Publisher(doors)
    names = ["Alice"] * 4 + [""] * 6

    def on_frame(i: int) -> None:
        if i == 6 and pub.on_command is not None:
            pub.on_command("reload-gallery")  # as if from the MQTT thread

    rc = run(
        config(tmp_path, unlock_s=60.0),
        threading.Event(),
        pub,  # type: ignore[arg-type]
        notifier=Notifier(""),
        recognizer=door_recognizer(),
        capture_factory=Capture(names, on_frame=on_frame).bind,
        door_factory=doors,
    )
    assert rc == 0
    assert doors.ctl is not None
    assert [(on, why) for _, on, why in doors.ctl.relay_log] == [
        (True, "granted Alice"),
        (False, "reload"),
    ]


@pytest.mark.mqtt
def test_outbox_redelivery_and_reconnects_never_open_the_door(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    """Old recognitions of an allowed person reach the broker; the relay never moves."""
    from edge.daemon import Publisher as MqttPublisher
    from edge.delivery.codec import encode
    from edge.delivery.events import build_door_event, build_event
    from edge.delivery.mqtt import outbox_path
    from edge.delivery.outbox import Outbox
    from edge.delivery.topics import Topics

    cfg = parse_config(
        {
            "device": {"id": "door-test"},
            "door": {"enabled": True, "pin_factory": "mock", "allow": ["Alice"]},
            "mqtt": {
                "enabled": True,
                "host": mqtt_broker.host,
                "port": mqtt_broker.port,
                "commands": True,
            },
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )
    # A previous run left a recognition of Alice and its grant in the outbox.
    old = Decision("recognized", "Alice", 0.2, 0.99, 1, 4, time.time() - 30, Box(0, 0, 9, 9))
    topics = Topics.for_device("facegate", "door-test")
    box = Outbox(outbox_path(cfg))
    box.append(
        topics.event,
        lambda seq: ("a", encode(build_event(old, device_id="door-test", seq=seq,
                                             event_id="a" * 32, clock_synced=True,
                                             valid_for_s=5.0))),
    )  # fmt: skip
    box.append(
        topics.event,
        lambda seq: ("b", encode(build_door_event("access_granted", {"name": "Alice"},
                                                  device_id="door-test", seq=seq,
                                                  event_id="b" * 32, clock_synced=True,
                                                  ts=old.timestamp))),
    )  # fmt: skip
    box.close()
    sub = Collector(mqtt_broker, [f"{topics.base}/#"], persistent=False).start()
    doors = Doors()
    pub = MqttPublisher(cfg)

    def on_frame(i: int) -> None:
        if i == 20:
            # Everything delivered so far comes again to a command topic, and the
            # broker goes away and comes back (a reconnect).
            replays = sub.payloads(topics.event)
            for payload in replays:
                sub.client.publish(topics.command, payload, qos=1)
            assert sub.wait_for(lambda: pub.rejected_commands >= len(replays), 10)
            mqtt_broker.restart(kill=True)

    cap = Capture([""] * 80, period=0.05, on_frame=on_frame)
    try:
        rc = run(
            cfg,
            threading.Event(),
            pub,
            notifier=Notifier(""),
            recognizer=door_recognizer(),
            capture_factory=cap.bind,
            door_factory=doors,
        )
        assert rc == 0
        events = [json.loads(p) for p in sub.payloads(topics.event)]
        assert {e["id"] for e in events} >= {"a" * 32, "b" * 32}  # delivered, late
        # The restored recognition says so itself (issue 11): nothing may act on it.
        assert {e["delivery"] for e in events if e["id"] == "a" * 32} == {"late"}
        assert pub.rejected_commands >= 2
    finally:
        sub.stop()
    assert doors.states() == [False]
    assert doors.ctl is not None and not doors.ctl.relay_log
    assert mqtt_broker.restarts == 1


@pytest.mark.mqtt
def test_home_assistant_sees_the_door(tmp_path: Path, mqtt_broker: Broker) -> None:
    """Discovery for the lock, contact and tamper entities; the retained door status."""
    from edge.daemon import Publisher as MqttPublisher
    from edge.delivery.topics import Topics

    cfg = parse_config(
        {
            "device": {"id": "front-door"},
            "door": {"enabled": True, "pin_factory": "mock", "contact_pin": 5, "tamper_pin": 13},
            "mqtt": {
                "enabled": True,
                "host": mqtt_broker.host,
                "port": mqtt_broker.port,
                "ha_discovery": True,
            },
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )
    topics = Topics.for_device("facegate", "front-door")
    pub = MqttPublisher(cfg)
    factory = MockFactory()
    pub.start()
    pub.set_ready()  # discovery goes out once the device is ready (issue 11)
    door = DoorController(cfg, events=pub, factory=factory)
    try:
        factory.pin(5).drive_low()  # the door is shut
        factory.pin(13).drive_low()  # the cover is on
        assert door.sync()
        sub = Collector(mqtt_broker, ["homeassistant/#", f"{topics.base}/door"], persistent=False)
        sub.start()
        status_topic = f"{topics.base}/door"

        def status() -> dict[str, Any]:
            got = sub.payloads(status_topic)
            return json.loads(got[-1]) if got else {}

        # Each input change publishes a status; wait for the one after both (a busy
        # machine may deliver "door closed" while the tamper input is still on its way).
        shut = {"door": "closed", "lock": "locked", "tamper": False}
        assert sub.wait_for(lambda: shut.items() <= status().items(), 30), status()
        configs = {t: json.loads(p) for t, p, _ in sub.snapshot() if t.startswith("homeassistant/")}
        lock = configs["homeassistant/lock/front-door/door_lock/config"]
        assert lock["state_topic"] == status_topic
        assert "homeassistant/binary_sensor/front-door/door/config" in configs
        assert "homeassistant/binary_sensor/front-door/tamper/config" in configs
        face = configs["homeassistant/event/front-door/face/config"]
        assert lock["device"] == face["device"]
        door.pulse(60.0, "test")
        assert sub.wait_for(lambda: status().get("lock") == "unlocked", 30)
        sub.stop()
    finally:
        door.stop()
        pub.stop(2.0)


@pytest.mark.mqtt
def test_a_wrong_key_flood_does_not_starve_real_unlocks_on_the_daemon(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    """D1 on the daemon: 10/s wrong-key unlocks; 6 signed unlocks and 2 reloads all act."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.daemon import Publisher as MqttPublisher
    from edge.door.audit import read_entries
    from edge.door.remote import sign_unlock

    key = b"remote-unlock-key-0123456789abcdef"
    (tmp_path / "unlock.key").write_bytes(key)
    cfg = parse_config(
        {
            "device": {"id": "flood-door"},
            "door": {"enabled": True, "pin_factory": "mock", "allow": ["Alice"],
                     "remote_unlock": True, "remote_key_file": "unlock.key", "unlock_s": 0.2},
            "mqtt": {"enabled": True, "host": mqtt_broker.host, "port": mqtt_broker.port,
                     "commands": True},
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )  # fmt: skip
    topic = "facegate/flood-door/command"
    factory = MockFactory()
    doors: list[DoorController] = []

    def door_factory(c: Config, pub: Any) -> DoorController:
        doors.append(DoorController(c, events=pub, factory=factory, synced=lambda: True))
        return doors[0]

    def client(name: str) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv311)
        c.connect(mqtt_broker.host, mqtt_broker.port)
        c.loop_start()
        return c

    pub = MqttPublisher(cfg)
    stop = threading.Event()
    flooder, operator = client("flooder"), client("operator")
    sent: list[str] = []

    def script() -> None:
        assert wait_for(pub.listening.is_set, 30)
        for i in range(120):  # 12 s at 10/s
            wrong = sign_unlock(b"w" * 32, "flood-door")
            flooder.publish(topic, json.dumps(wrong), qos=1)
            if i % 20 == 10:
                operator.publish(topic, json.dumps(sign_unlock(key, "flood-door")), qos=1)
                sent.append("unlock")
            if i in (35, 95):
                operator.publish(topic, b'{"command": "reload-gallery"}', qos=1)
                sent.append("reload")
            time.sleep(0.1)
        wait_for(lambda: pub.commands.accepted >= 8, 30)
        stop.set()

    driver = threading.Thread(target=script, daemon=True)
    driver.start()
    try:
        rc = run(
            cfg,
            stop,
            pub,
            notifier=Notifier(""),
            recognizer=door_recognizer(),
            capture_factory=Capture([""] * 100000, period=0.02).bind,
            door_factory=door_factory,
        )
    finally:
        stop.set()
        driver.join(timeout=60)
        for c in (flooder, operator):
            c.disconnect()
            c.loop_stop()
    assert rc == 0
    assert sent.count("unlock") == 6 and sent.count("reload") == 2
    kinds = [e.kind for e in read_entries(tmp_path / "audit.sqlite")]
    assert kinds.count("remote_unlock") == 6, kinds
    assert pub.commands.accepted == 8 and pub.commands.limited == 0
    assert pub.commands.rejected >= 100
    assert [on for _, on, _ in doors[0].relay_log].count(True) == 6

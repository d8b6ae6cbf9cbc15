"""Home Assistant discovery as the broker sees it (a real Mosquitto, no Home Assistant).

The payload contract itself is checked in ``test_events.py``; here: what the
publisher announces and when (only once ready, one complete state message, no
second state per period), and that every config it no longer wants is
cleared: a person removed, discovery switched off, the 0.1 topic layout.
``test_homeassistant.py`` runs the same configs through Home Assistant.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from broker import Broker, Collector, mosquitto_path, mqtt_broker
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import Config, parse_config
from edge.daemon import Publisher
from edge.delivery.topics import Topics
from edge.homeassistant.discovery import build_ha_discovery, ha_person_object_id

pytestmark = [
    pytest.mark.mqtt,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed"),
]
__all__ = ["mqtt_broker"]

DEVICE = "front-door"
T = Topics.for_device("facegate", DEVICE)
STATE_FIELDS = {
    "status": "running",
    "fps": 0.0,
    "frames": 1,
    "dropped": 0,
    "events": 0,
    "gallery_size": 2,
    "uptime_s": 1.0,
    "model_sha256": "ab" * 32,
}


def config(tmp: Path, broker: Broker, **mqtt: Any) -> Config:
    values: dict[str, Any] = {
        "enabled": True,
        "host": broker.host,
        "port": broker.port,
        "keepalive": 5,
        "ha_discovery": True,
        **mqtt,
    }
    return parse_config(
        {"device": {"id": DEVICE, "name": "Front door"}, "mqtt": values}, base_dir=tmp
    )


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    made: list[Publisher] = []
    yield made
    for p in made:
        p.stop(timeout=2.0)


def ready(made: list[Publisher], cfg: Config, people: list[str]) -> Publisher:
    pub = Publisher(cfg)
    made.append(pub)
    pub.start()
    pub.set_state(**STATE_FIELDS)
    pub.set_gallery(people)
    pub.set_ready()
    return pub


def retained(broker: Broker, topic_filter: str) -> dict[str, bytes]:
    """Every retained message under ``topic_filter`` right now.

    After subscribing, a marker is published to a topic of our own: the
    broker sends the retained messages before it, so when the marker arrives
    they all have (no sleep, no guess).
    """
    marker = f"marker/{uuid.uuid4().hex}"
    col = Collector(broker, [topic_filter, marker], persistent=False).start()
    try:
        assert col.ready()  # both SUBACKs: the marker cannot overtake the retained ones
        col.client.publish(marker, b"x", qos=1)
        assert col.wait_for(lambda: col.payloads(marker) != [], 10)
        return {t: p for t, p, r in col.snapshot() if r and t != marker and p}
    finally:
        col.stop()


def wait_retained(broker: Broker, topic_filter: str, want: set[str], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while set(retained(broker, topic_filter)) != want:
        assert time.monotonic() < end, sorted(set(retained(broker, topic_filter)) ^ want)
        time.sleep(0.1)


def person_topic(name: str) -> str:
    return f"homeassistant/device_automation/{DEVICE}/{ha_person_object_id(name)}/config"


def test_announced_only_when_ready_with_one_complete_state(
    tmp_path: Path, mqtt_broker: Broker, publishers: list[Publisher]
) -> None:
    col = Collector(mqtt_broker, ["facegate/#", "homeassistant/#"], persistent=False).start()
    assert col.ready()
    pub = Publisher(config(tmp_path, mqtt_broker, commands=True, state_interval_s=60.0))
    publishers.append(pub)
    pub.start()
    assert col.wait_for(lambda: col.payloads(T.availability) == [b"offline"], 10)
    pub.set_state(**STATE_FIELDS)  # merged, not published: not ready yet
    pub.set_gallery(["Alice", "Bob"])
    assert not any(t.startswith("homeassistant/") for t, p, _ in col.snapshot() if p)
    pub.set_ready()
    assert col.wait_for(lambda: col.payloads(T.availability)[-1:] == [b"online"], 10)
    topics = [t for t, _, _ in col.snapshot()]
    # Discovery first, then the state, the presence, and "online" last.
    first_state = topics.index(T.state)
    assert all(t.startswith("homeassistant/") for t in topics[1:first_state])
    assert topics[first_state:] == [T.state, T.presence, T.availability]
    states = [json.loads(p) for p in col.payloads(T.state)]
    assert len(states) == 1 and STATE_FIELDS.items() <= states[0].items()
    assert states[0]["v"] == 2 and "outbox_pending" in states[0]
    # set_state only merges: the drain thread publishes once per period.
    for i in range(5):
        pub.set_state(fps=float(i))
    pub.set_presence(True)
    assert col.wait_for(lambda: col.payloads(T.presence)[-1:] == [b"ON"], 5)
    assert len(col.payloads(T.state)) == 1
    # A gallery change re-announces the triggers and sends the state at once.
    pub.set_state(gallery_size=3)
    pub.set_gallery(["Alice", "Bob", "Carol"])
    assert col.wait_for(lambda: len(col.payloads(T.state)) == 2, 5)
    assert json.loads(col.payloads(T.state)[-1])["gallery_size"] == 3
    assert col.payloads(person_topic("Carol"))
    col.stop()


def test_state_goes_out_once_per_period(
    tmp_path: Path, mqtt_broker: Broker, publishers: list[Publisher]
) -> None:
    # The old daemon published each periodic state twice: its own set_state
    # published, and so did the drain thread's timer. Count over 4 periods.
    col = Collector(mqtt_broker, [T.state], persistent=False).start()
    assert col.ready()
    pub = ready(publishers, config(tmp_path, mqtt_broker, state_interval_s=0.5), [])
    assert col.wait_for(lambda: len(col.payloads(T.state)) >= 1, 10)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:  # the daemon refreshes its fields often
        pub.set_state(fps=1.0)
        time.sleep(0.05)
    n = len(col.payloads(T.state))
    assert 2 <= n <= 6, n  # 1 on connect + one per 0.5 s period (4), not two per period
    col.stop()


def test_stale_configs_are_cleared(
    tmp_path: Path, mqtt_broker: Broker, publishers: list[Publisher]
) -> None:
    # What facegate 0.1 left for this device: its node id had "-" turned into "_".
    legacy = "homeassistant/event/front_door/face/config"
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="seed", protocol=paho.MQTTv311)
    c.connect(mqtt_broker.host, mqtt_broker.port)
    c.loop_start()
    c.publish(legacy, b'{"name": "Face"}', qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    everything = config(tmp_path / "a", mqtt_broker, commands=True, snapshot=True)
    first = ready(publishers, everything, ["Alice", "Bob"])
    static = {
        f"homeassistant/{c}/{DEVICE}/{o}/config"
        for c, o in [
            ("event", "face"),
            ("sensor", "last_person"),
            ("binary_sensor", "person_at_door"),
            ("button", "reload_gallery"),
            ("image", "snapshot"),
            ("sensor", "fps"),
            ("sensor", "gallery_size"),
            ("sensor", "outbox_pending"),
            ("device_automation", "unknown"),
        ]
    }
    wait_retained(
        mqtt_broker, "homeassistant/#", static | {person_topic("Alice"), person_topic("Bob")}
    )
    first.stop(timeout=2.0)
    # Bob was removed while the device was off, commands and snapshots turned off.
    second = ready(publishers, config(tmp_path / "b", mqtt_broker), ["Alice"])
    fewer = static - {
        f"homeassistant/button/{DEVICE}/reload_gallery/config",
        f"homeassistant/image/{DEVICE}/snapshot/config",
    }
    wait_retained(mqtt_broker, "homeassistant/#", fewer | {person_topic("Alice")})
    second.stop(timeout=2.0)
    # Discovery switched off: every entity goes away.
    ready(publishers, config(tmp_path / "c", mqtt_broker, ha_discovery=False), ["Alice"])
    wait_retained(mqtt_broker, "homeassistant/#", set())


def test_a_starting_device_leaves_its_entities_alone(
    tmp_path: Path, mqtt_broker: Broker, publishers: list[Publisher]
) -> None:
    # Connected but not ready (models loading, camera warming up): the configs
    # stay, or Home Assistant would drop the entities at every restart.
    cfg = config(tmp_path, mqtt_broker)
    first = ready(publishers, cfg, ["Alice"])
    wanted = {
        t
        for t, _ in build_ha_discovery(
            T, device_id=DEVICE, device_name="x", ha_prefix="homeassistant", sw_version="1",
            people=["Alice"],
        )
    }  # fmt: skip
    wait_retained(mqtt_broker, "homeassistant/#", wanted)
    first.stop(timeout=2.0)
    starting = Publisher(cfg)
    publishers.append(starting)
    starting.start()
    col = Collector(mqtt_broker, [T.availability], persistent=False).start()
    assert col.wait_for(lambda: starting.connected, 10)
    assert set(retained(mqtt_broker, "homeassistant/#")) == wanted
    assert retained(mqtt_broker, T.availability) == {T.availability: b"offline"}
    col.stop()

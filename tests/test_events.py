"""The MQTT payload contract: events, state, discovery, commands, topics."""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import replace

import cv2
import numpy as np
import pytest

from edge.clock import adjtimex_state, clock_synced
from edge.config import parse_config
from edge.delivery.codec import encode
from edge.delivery.commands import MAX_COMMAND_BYTES, CommandError, parse_command
from edge.delivery.events import (
    LATE,
    LIVE,
    SCHEMA_VERSION,
    build_event,
    build_state,
    delivery_of,
    is_late,
    iso_utc,
    new_event_id,
    snapshot_jpeg,
)
from edge.delivery.publishers import MemoryPublisher
from edge.delivery.topics import Topics
from edge.errors import FacegateError
from edge.homeassistant.discovery import (
    HA_EVENT_TEMPLATE,
    STRANGER,
    build_ha_discovery,
    build_last_person,
    ha_discovery_subscription,
    ha_person_object_id,
    ha_static_topics,
)
from edge.types import Box, Decision, Liveness


def decision(kind: str = "recognized", name: str | None = "Alice", **kw: object) -> Decision:
    base: dict[str, object] = {
        "kind": kind,
        "name": name,
        "distance": 0.31234567,
        "confidence": 0.87654321,
        "track_id": 7,
        "track_length": 4,
        "timestamp": 1_767_323_045.678,
        "box": Box(10.4, 20.6, 100, 120),
    }
    base.update(kw)
    return Decision(**base)  # type: ignore[arg-type]


def event(d: Decision | None = None, **kw: object) -> dict[str, object]:
    args: dict[str, object] = {
        "device_id": "door1",
        "seq": 5,
        "event_id": "abc",
        "clock_synced": True,
        "valid_for_s": 5.0,
    }
    args.update(kw)
    return build_event(d or decision(), **args)  # type: ignore[arg-type]


def test_event_has_every_documented_field() -> None:
    # v2 (the contract changed on purpose): expires_at and delivery added, no snapshot.
    e = event()
    assert SCHEMA_VERSION == 2
    assert e == {
        "v": 2,
        "id": "abc",
        "seq": 5,
        "device": "door1",
        "ts": "2026-01-02T03:04:05.678Z",
        "ts_unix": 1_767_323_045.678,
        "expires_at": "2026-01-02T03:04:10.678Z",
        "expires_at_unix": 1_767_323_050.678,
        "delivery": "live",
        "clock_synced": True,
        "type": "recognized",
        "name": "Alice",
        "distance": 0.312346,
        "confidence": 0.876543,
        "track_id": 7,
        "track_length": 4,
        "box": [10, 21, 100, 120],
        "liveness": None,  # [liveness] mode = "off": not measured
    }
    # The wire form is plain JSON and round-trips.
    assert json.loads(encode(e)) == e
    assert event(valid_for_s=0.5)["expires_at"] == "2026-01-02T03:04:06.178Z"
    assert event(delivery=LATE)["delivery"] == "late"
    # With liveness on, the track's verdict travels with the decision.
    lv = Liveness(False, 0.0, ("prop: 30 points beyond the head move with the face at 0.5s",))
    got = event(replace(decision(), liveness=lv))["liveness"]
    assert got == {"passed": False, "score": 0.0, "evidence": list(lv.evidence)}
    assert json.loads(encode(event(replace(decision(), liveness=lv))))["liveness"] == got


def test_unknown_event_has_null_name_and_never_a_face_crop() -> None:
    face = np.full((200, 150, 3), 128, np.uint8)
    e = event(decision("unknown", None, snapshot=face), clock_synced=False)
    assert e["name"] is None and e["type"] == "unknown" and e["clock_synced"] is False
    assert "snapshot" not in e  # crops go to the snapshot topic (opt-in), never in events


def test_snapshot_is_a_downscaled_jpeg() -> None:
    rng = np.random.default_rng(0)
    face = rng.integers(0, 255, (320, 240, 3), dtype=np.uint8)
    jpeg = snapshot_jpeg(face)
    assert jpeg[:3] == b"\xff\xd8\xff"  # raw JPEG bytes, not base64
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and max(img.shape[:2]) == 160 and img.shape[0] > img.shape[1]


@pytest.mark.parametrize(
    ("kind", "seq", "delivery"),
    [("maybe", 1, LIVE), ("recognized", 0, LIVE), ("recognized", 1, "soon")],
)
def test_event_rejects_bad_kind_seq_and_delivery(kind: str, seq: int, delivery: str) -> None:
    with pytest.raises(FacegateError):
        event(decision(kind), seq=seq, delivery=delivery)


T0 = 1_767_323_045.0


@pytest.mark.parametrize(
    ("age_s", "now", "synced_then", "synced_now", "late"),
    [
        # In-process, both clocks agree.
        (1.0, T0 + 1.0, True, True, False),
        (6.0, T0 + 6.0, True, True, True),
        # The monotonic age alone decides when the wall clock cannot be trusted.
        (1.0, 0.0, False, False, False),
        (6.0, 0.0, False, True, True),
        (4.9, T0 + 999.0, False, True, False),
        # Either clock saying "expired" is enough (a wall-clock step forward).
        (1.0, T0 + 60.0, True, True, True),
        # Restored from the outbox after a restart: no monotonic age.
        (None, T0 + 2.0, True, True, False),
        (None, T0 + 9.0, True, True, True),
        (None, T0 + 2.0, False, True, True),  # ts was not trustworthy when made
        (None, T0 + 2.0, True, False, True),  # cannot tell what time it is now
    ],
)
def test_is_late_uses_every_trustworthy_clock(
    age_s: float | None, now: float, synced_then: bool, synced_now: bool, late: bool
) -> None:
    got = is_late(
        expires_at=T0 + 5.0,
        valid_for_s=5.0,
        age_s=age_s,
        now=now,
        synced_then=synced_then,
        synced_now=synced_now,
    )
    assert got is late


def test_delivery_of_reads_expiry_and_clock_from_the_event() -> None:
    e = event(decision(timestamp=T0), valid_for_s=5.0)
    kw = {"valid_for_s": 5.0, "age_s": None, "synced_now": True}
    assert delivery_of(e, now=T0 + 4.0, **kw) == LIVE  # type: ignore[arg-type]
    assert delivery_of(e, now=T0 + 5.5, **kw) == LATE  # type: ignore[arg-type]
    unsynced = event(decision(timestamp=T0), clock_synced=False)
    assert delivery_of(unsynced, now=T0 + 1.0, **kw) == LATE  # type: ignore[arg-type]


def test_last_person_says_stranger_and_clears() -> None:
    alice = build_last_person(event())
    assert alice["person"] == "Alice" and alice["id"] == "abc" and alice["type"] == "recognized"
    stranger = build_last_person(event(decision("unknown", None)))
    assert stranger["person"] == STRANGER == "Stranger" and stranger["name"] is None
    assert build_last_person(None) == {"person": ""}


def test_event_ids_are_unique() -> None:
    ids = {new_event_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 for i in ids)


def test_iso_utc() -> None:
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1767323045.678) == "2026-01-02T03:04:05.678Z"


def test_clock_synced_follows_the_epoch_and_the_kernel() -> None:
    now = 1_767_323_045.0  # 2026: plausible
    synced, unsynced, unknown = (lambda: 0), (lambda: 5), (lambda: None)
    # A Pi without RTC before NTP: 1970 is never trusted, whatever the kernel says.
    assert clock_synced(now=0.0, kernel_state=synced) is False
    assert clock_synced(now=1_700_000_000.0, kernel_state=synced) is False  # before 2025
    # A plausible time: the kernel decides (TIME_ERROR = 5: not synchronised).
    assert clock_synced(now=now, kernel_state=synced) is True
    assert clock_synced(now=now, kernel_state=lambda: 1) is True  # a leap second pending
    assert clock_synced(now=now, kernel_state=unsynced) is False
    # No adjtimex (not Linux): only the plausibility check.
    assert clock_synced(now=now, kernel_state=unknown) is True
    # On this Linux host the real call answers with a clock state.
    state = adjtimex_state()
    if sys.platform.startswith("linux"):
        assert state is not None and 0 <= state <= 5
        assert clock_synced(now=now) is (state != 5)


def test_encode_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode({"distance": float("nan")})


def test_state_payload() -> None:
    s = build_state("door1", now=0.0, fps=9.5, gallery_size=3)
    assert s == {
        "v": SCHEMA_VERSION,
        "device": "door1",
        "ts": "1970-01-01T00:00:00.000Z",
        "fps": 9.5,
        "gallery_size": 3,
    }


def test_topics() -> None:
    t = Topics.for_device("site/facegate/", "door1")
    assert (t.event, t.availability, t.state, t.command) == (
        "site/facegate/door1/event",
        "site/facegate/door1/availability",
        "site/facegate/door1/state",
        "site/facegate/door1/command",
    )
    for prefix, dev in [("a/+", "d"), ("p", "d#"), ("p", "a/b"), ("", "d"), ("p", "")]:
        with pytest.raises(FacegateError):
            Topics.for_device(prefix, dev)


def test_command_accepts_exactly_reload_gallery() -> None:
    assert parse_command(b'{"command": "reload-gallery"}') == "reload-gallery"
    assert parse_command(b' {"command":"reload-gallery"}\n') == "reload-gallery"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"reload-gallery",
        b'"reload-gallery"',
        b'["reload-gallery"]',
        b"{}",
        b'{"command": "shutdown"}',
        b'{"command": "reload-gallery", "path": "/etc/passwd"}',
        b'{"command": 1}',
        b'{"command": null}',
        b'{"Command": "reload-gallery"}',
        b"\xff\xfe{",
        b'{"command": "reload-gallery"' + b" " * MAX_COMMAND_BYTES + b"}",
        b"NaN",
    ],
)
def test_command_rejects_everything_else(payload: bytes) -> None:
    with pytest.raises(CommandError):
        parse_command(payload)


HA_ID = re.compile(r"[A-Za-z0-9_-]+")


def discovery(**kw: object) -> dict[str, dict[str, object]]:
    t = Topics.for_device("facegate", "front-door")
    args: dict[str, object] = {
        "device_id": "front-door",
        "device_name": "Front door",
        "ha_prefix": "homeassistant",
        "sw_version": "1",
        "state_interval_s": 60.0,
    }
    args.update(kw)
    return dict(build_ha_discovery(t, **args))  # type: ignore[arg-type]


def test_ha_discovery_contract() -> None:
    t = Topics.for_device("facegate", "front-door")
    msgs = discovery(commands=True, snapshot=True, people=["Alice", "Zoë", "Zoe"])
    for topic, cfg in msgs.items():
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, node, last) == ("homeassistant", "front-door", "config")
        assert HA_ID.fullmatch(node) and HA_ID.fullmatch(object_id), topic
        assert cfg["qos"] == 1 and cfg["origin"] == {"name": "facegate", "sw_version": "1"}
        assert cfg["device"]["identifiers"] == ["facegate_front-door"]  # type: ignore[index]
        if component != "device_automation":
            assert cfg["unique_id"] == f"facegate_front-door_{object_id}"
            assert cfg["availability_topic"] == t.availability
    entities = {tuple(k.split("/")[1:4:2]) for k in msgs}
    assert {
        ("event", "face"),
        ("sensor", "last_person"),
        ("binary_sensor", "person_at_door"),
        ("button", "reload_gallery"),
        ("image", "snapshot"),
        ("sensor", "fps"),
        ("sensor", "gallery_size"),
        ("sensor", "outbox_pending"),
        ("device_automation", "unknown"),
    } <= entities
    face = msgs["homeassistant/event/front-door/face/config"]
    assert face["state_topic"] == t.event and face["event_types"] == ["recognized", "unknown"]
    assert face["value_template"] == HA_EVENT_TEMPLATE
    # The template renders nothing for late events, repeated ids and older events.
    for needle in ("delivery == 'live'", "value_json.id != last.get('id')", "value_json.ts <"):
        assert needle in HA_EVENT_TEMPLATE
    for attr in ("ts", "id", "track_id", "delivery", "clock_synced", "expires_at", "name"):
        assert f"'{attr}': value_json.{attr}" in HA_EVENT_TEMPLATE
    last = msgs["homeassistant/sensor/front-door/last_person/config"]
    assert last["state_topic"] == last["json_attributes_topic"] == t.last_person
    presence = msgs["homeassistant/binary_sensor/front-door/person_at_door/config"]
    assert (presence["state_topic"], presence["payload_on"], presence["payload_off"]) == (
        t.presence,
        "ON",
        "OFF",
    )
    button = msgs["homeassistant/button/front-door/reload_gallery/config"]
    assert button["command_topic"] == t.command
    assert parse_command(str(button["payload_press"]).encode()) == "reload-gallery"
    image = msgs["homeassistant/image/front-door/snapshot/config"]
    assert (image["image_topic"], image["content_type"]) == (t.snapshot, "image/jpeg")
    for key in ("fps", "gallery_size", "outbox_pending"):
        sensor = msgs[f"homeassistant/sensor/front-door/{key}/config"]
        assert sensor["state_topic"] == t.state and sensor["state_class"] == "measurement"
        assert sensor["expire_after"] == 180  # 3 state intervals
    triggers = {c["subtype"]: c for k, c in msgs.items() if k.split("/")[1] == "device_automation"}
    assert set(triggers) == {"Stranger", "Alice", "Zoë", "Zoe"}
    assert (
        triggers["Alice"]["type"] == "recognized"
        and triggers["Alice"]["payload"] == "recognized:Alice"
    )
    assert (
        triggers["Stranger"]["type"] == "unknown" and triggers["Stranger"]["payload"] == "unknown:"
    )
    assert all("delivery == 'live'" in str(c["value_template"]) for c in triggers.values())
    assert all(
        c["automation_type"] == "trigger" and c["topic"] == t.event for c in triggers.values()
    )
    # Unique everywhere, JSON all the way.
    ids = [c["unique_id"] for c in msgs.values() if "unique_id" in c]
    assert len(set(ids)) == len(ids)
    json.loads(encode(msgs))


def test_ha_discovery_optional_entities_and_expiry() -> None:
    plain = discovery(state_interval_s=10.5)
    assert not any("/button/" in k or "/image/" in k for k in plain)
    assert plain["homeassistant/sensor/front-door/fps/config"]["expire_after"] == 32


def test_ha_ids_are_one_to_one() -> None:
    # Device ids are used verbatim: "front-door" and "front_door" stay apart.
    a = set(discovery(device_id="front-door"))
    b = set(discovery(device_id="front_door"))
    assert not a & b
    names = ["Alice", "alice", "Zoë", "Zoe", "Zoe!", "李", "陈", "", "a b", "a_b", "x" * 80]
    ids = [ha_person_object_id(n) for n in names]
    assert len(set(ids)) == len(ids)
    assert all(HA_ID.fullmatch(i) for i in ids)


def test_ha_topics_to_clear_cover_every_entity_and_the_old_layout() -> None:
    full = discovery(commands=True, snapshot=True)
    static = ha_static_topics("homeassistant", "front-door")
    assert set(full) <= set(static)
    # facegate 0.1 used "front_door" as the node id for "front-door": cleared only where
    # found retained (a blind clear is denied by the shipped ACL, and Mosquitto 2.0 then
    # drops the device's connection), so it is not among the topics cleared blindly.
    from edge.homeassistant.discovery import ha_legacy_node, ha_legacy_topics

    assert "homeassistant/event/front_door/face/config" in ha_legacy_topics(
        "homeassistant", "front-door"
    )
    assert not any("front_door" in t for t in static)
    assert ha_legacy_node("front-door") == "front_door" and ha_legacy_node("door1") is None
    assert ha_discovery_subscription("homeassistant/", "front-door") == (
        "homeassistant/+/front-door/+/config"
    )


def test_fake_publisher_numbers_events_and_handles_commands() -> None:
    cfg = parse_config({"device": {"id": "door9"}, "mqtt": {"prefix": "x"}})
    pub = MemoryPublisher(cfg)
    got: list[str] = []
    pub.on_command = got.append
    pub.start()
    assert pub.alive()
    a = pub.publish_decision(decision())
    b = pub.publish_decision(decision("unknown", None))
    assert (a["seq"], b["seq"]) == (1, 2) and a["id"] != b["id"] and a["device"] == "door9"
    assert pub.command(b'{"command": "reload-gallery"}') and got == ["reload-gallery"]
    assert not pub.command(b'{"command": "rm -rf"}') and pub.rejected_commands == 1
    pub.set_state(fps=3.0)
    pub.set_state(gallery_size=2)
    assert pub.states[-1]["fps"] == 3.0 and pub.states[-1]["gallery_size"] == 2
    # delivery as if published now: a fresh decision is live, an hour-old one late.
    fresh = pub.publish_decision(decision(timestamp=time.time()))
    old = pub.publish_decision(decision(timestamp=time.time() - 3600))
    assert (fresh["delivery"], old["delivery"]) == ("live", "late")
    pub.set_gallery(["bob", "alice", "bob"])
    pub.set_presence(True)
    pub.set_ready()
    assert pub.people == ("alice", "bob") and pub.presence == [True] and pub.ready
    pub.stop(1.0)
    assert not pub.alive() and len(pub.payloads) == 4


@pytest.mark.parametrize("device_id", ["Front Door", "haustür", "door/1", "door+", "", "x" * 65])
def test_device_ids_outside_the_ha_alphabet_are_refused(device_id: str) -> None:
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"device\.id"):
        parse_config({"device": {"id": device_id}})


def test_device_ids_inside_the_ha_alphabet_pass() -> None:
    for device_id in ("front-door", "front_door", "Door7"):
        assert parse_config({"device": {"id": device_id}}).device.id == device_id

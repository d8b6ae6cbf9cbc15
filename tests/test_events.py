"""The MQTT payload contract: events, state, discovery, commands, topics."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from edge.config import parse_config
from edge.errors import FacegateError
from edge.events import (
    MAX_COMMAND_BYTES,
    SCHEMA_VERSION,
    CommandError,
    Topics,
    build_event,
    build_ha_discovery,
    build_state,
    clock_synced,
    encode,
    iso_utc,
    new_event_id,
    parse_command,
)
from edge.mqtt import FakePublisher
from edge.types import Box, Decision


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


def test_event_has_every_documented_field() -> None:
    e = build_event(decision(), device_id="door1", seq=5, event_id="abc", clock_synced=True)
    assert e == {
        "v": SCHEMA_VERSION,
        "id": "abc",
        "seq": 5,
        "device": "door1",
        "ts": "2026-01-02T03:04:05.678Z",
        "ts_unix": 1_767_323_045.678,
        "clock_synced": True,
        "type": "recognized",
        "name": "Alice",
        "distance": 0.312346,
        "confidence": 0.876543,
        "track_id": 7,
        "track_length": 4,
        "box": [10, 21, 100, 120],
    }
    # The wire form is plain JSON and round-trips.
    assert json.loads(encode(e)) == e


def test_unknown_event_has_null_name_and_no_snapshot_by_default() -> None:
    face = np.full((200, 150, 3), 128, np.uint8)
    d = decision("unknown", None, snapshot=face)
    e = build_event(d, device_id="d", seq=1, event_id=new_event_id(), clock_synced=False)
    assert e["name"] is None and e["type"] == "unknown" and e["clock_synced"] is False
    assert "snapshot" not in e  # biometric data stays on the device unless asked


def test_snapshot_only_when_asked_and_downscaled_jpeg() -> None:
    rng = np.random.default_rng(0)
    face = rng.integers(0, 255, (320, 240, 3), dtype=np.uint8)
    e = build_event(
        decision(snapshot=face),
        device_id="d",
        seq=1,
        event_id="x",
        clock_synced=True,
        include_snapshot=True,
    )
    jpeg = base64.b64decode(e["snapshot"])
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and max(img.shape[:2]) == 160 and img.shape[0] > img.shape[1]
    # Asked for, but the decision carries none: no field.
    e2 = build_event(
        decision(), device_id="d", seq=1, event_id="x", clock_synced=True, include_snapshot=True
    )
    assert "snapshot" not in e2


@pytest.mark.parametrize(("kind", "seq"), [("maybe", 1), ("recognized", 0)])
def test_event_rejects_bad_kind_and_seq(kind: str, seq: int) -> None:
    with pytest.raises(FacegateError):
        build_event(decision(kind), device_id="d", seq=seq, event_id="x", clock_synced=True)


def test_event_ids_are_unique() -> None:
    ids = {new_event_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 for i in ids)


def test_iso_utc_and_implausible_clock() -> None:
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert clock_synced(now=0.0) is False  # a Pi without RTC before NTP
    assert isinstance(clock_synced(), bool)


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


def test_ha_discovery_configs() -> None:
    t = Topics.for_device("facegate", "door-1")
    msgs = build_ha_discovery(
        t, device_id="door-1", device_name="Front door", ha_prefix="homeassistant", sw_version="1"
    )
    topics = [m[0] for m in msgs]
    assert all(x.startswith("homeassistant/") and x.endswith("/config") for x in topics)
    assert len(set(topics)) == len(topics)
    ids = [c["unique_id"] for _, c in msgs]
    assert len(set(ids)) == len(ids)
    assert all(c["availability_topic"] == t.availability for _, c in msgs)
    event = next(c for x, c in msgs if x.startswith("homeassistant/event/"))
    assert event["state_topic"] == t.event and event["event_types"] == ["recognized", "unknown"]
    json.loads(encode(dict(msgs)))  # all JSON-serialisable


def test_fake_publisher_numbers_events_and_handles_commands() -> None:
    cfg = parse_config({"device": {"id": "door9"}, "mqtt": {"prefix": "x"}})
    pub = FakePublisher(cfg)
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
    pub.stop(1.0)
    assert not pub.alive() and len(pub.payloads) == 2

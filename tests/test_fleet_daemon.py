"""The real daemon (``facegate run``) as a fleet door, on real photos, its door on mock pins.

The admin pushes a gallery enrolled from real photos; the daemon, whose
camera replays an allowed person over and over, takes it from the broker
and opens the door for them. The admin then removes that person and pushes
again: once the door reports the new version (``fleet_applied``, in the
same sequence as the door's own events), it never grants them again; their
face is now unknown and denied, and the relay stays released.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Collector, mqtt_broker, wait_for
from test_daemon import (
    REPLAY_FPS,
    Enrolled,
    _replay_folder,
    _spawn,
    _write_config,
    enrolled,
    needs_faces,
    needs_pipeline,
)
from test_door_process import relay_states

from edge.config import parse_config
from edge.fleet.admin import push
from edge.fleet.keys import admin_keys, generate
from edge.identity.gallery import Gallery

pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")

__all__ = ["enrolled", "mqtt_broker"]

ALLOWED = "Barack_Obama"
SITE = "office"


def _events(sub: Collector, topic: str) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.payloads(topic)]


def _without(g: Gallery, name: str) -> Gallery:
    out = Gallery(g.model_sha256, g.embedding_size, manifest_sha256=g.manifest_sha256)
    for n in g.names:
        if n != name:
            out.add(n, g.person(n).embeddings)
    return out


@pytest.mark.slow
@pytest.mark.mqtt
@needs_pipeline
@needs_faces
def test_after_a_revocation_the_daemon_never_grants_the_revoked_person(
    enrolled: Enrolled, tmp_path: Path, mqtt_broker: Broker
) -> None:
    _replay_folder(tmp_path, enrolled.held_out, [ALLOWED])
    files = generate(tmp_path / "keys")
    admin = parse_config(
        {
            "mqtt": {"enabled": True, "host": mqtt_broker.host, "port": mqtt_broker.port},
            "fleet": {
                "site": SITE,
                "site_key_file": str(files.site),
                "signing_key_file": str(files.signing),
            },
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )
    assert push(admin, enrolled.gallery, admin_keys(admin)).bundle.info.version == 1
    state = tmp_path / "state"
    state.mkdir()
    config = _write_config(
        tmp_path,
        "door.toml",
        {
            "device": {"id": "fleet-door"},
            "gallery": {"path": "unused.fgg"},
            "camera": {"source": "folder", "path": "replay", "fps": REPLAY_FPS, "loop": True},
            "decision": {"k": 3, "n": 4, "cooldown_s": 0.5, "max_track_age_s": 0.6},
            "mqtt": {"enabled": True, "host": mqtt_broker.host, "port": mqtt_broker.port},
            "fleet": {
                "enabled": True,
                "site": SITE,
                "site_key_file": str(files.site),
                "public_key_file": str(files.public),
            },
            "door": {
                "enabled": True,
                "pin_factory": "mock",
                "mock_log": str(state / "relay.log"),
                "allow": [ALLOWED],
                "unlock_s": 0.5,
                "max_denials": 1000,
            },
            "service": {"state_dir": str(state)},
        },
    )
    topic = "facegate/fleet-door/event"
    sub = Collector(mqtt_broker, [topic], client_id="fleet-door-sub").start()
    assert sub.ready()
    proc = _spawn(config, None)
    try:

        def kinds(kind: str, **match: Any) -> list[dict[str, Any]]:
            return [
                e
                for e in _events(sub, topic)
                if e["type"] == kind and all(e.get(k) == v for k, v in match.items())
            ]

        assert wait_for(lambda: kinds("access_granted", name=ALLOWED), 180), proc.poll()
        r = push(admin, _without(enrolled.gallery, ALLOWED), admin_keys(admin))
        assert r.newly_revoked == [ALLOWED]
        assert wait_for(lambda: kinds("fleet_applied", version=2), 120), proc.poll()
        applied = kinds("fleet_applied", version=2)[0]["seq"]
        pulses = relay_states(state / "relay.log", proc.pid)

        def denied_after() -> list[dict[str, Any]]:
            return [e for e in kinds("access_denied") if e["seq"] > applied]

        assert wait_for(lambda: len(denied_after()) >= 3, 180), proc.poll()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        sub.stop()
    assert proc.returncode == 0, err[-3000:]
    events = sorted(_events(sub, topic), key=lambda e: e["seq"])
    before = [e for e in events if e["seq"] < applied and e["type"] == "access_granted"]
    after = [e for e in events if e["seq"] > applied]
    assert before and all(e["name"] == ALLOWED for e in before)
    assert not [e for e in after if e["type"] == "access_granted"], after
    assert {e["reason"] for e in after if e["type"] == "access_denied"} <= {
        "unknown",
        "not_allowed",
    }
    # The relay: pulses for the grants before, none after (a stop only releases it again).
    final = relay_states(state / "relay.log", proc.pid)
    assert final[: len(pulses)] == pulses and set(final[len(pulses) :]) <= {0}, (pulses, final)
    assert "fleet: applied version 2" in err

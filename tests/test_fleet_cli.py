"""``facegate fleet keygen | push | status`` as a user runs them, and what a fleet door refuses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from broker import Broker, mqtt_broker, wait_for

from edge.config import Config, parse_config
from edge.delivery.mqtt import MqttPublisher
from edge.fleet.device import FleetDevice
from edge.identity.gallery import Gallery

__all__ = ["mqtt_broker"]

ROOT = Path(__file__).resolve().parents[1]


def facegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def _toml(sections: dict[str, dict[str, object]]) -> str:
    return "".join(
        f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()) + "\n"
        for s, keys in sections.items()
    )


def test_keygen_writes_three_0600_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    r = facegate("fleet", "keygen", "--out", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert names == ["fleet-public.pem", "fleet-signing.pem", "fleet-site.key"]
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in (tmp_path / "k").iterdir())
    assert "key id" in r.stdout and "never the signing key" in r.stdout
    again = facegate("fleet", "keygen", "--out", str(tmp_path / "k"))
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr


def _door_toml(d: Path) -> Path:
    (d / "site.key").write_text("s" * 32)
    (d / "public.pem").write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
    path = d / "door.toml"
    path.write_text(
        _toml(
            {
                "mqtt": {"enabled": True},
                "fleet": {
                    "enabled": True,
                    "site": "hq",
                    "site_key_file": "site.key",
                    "public_key_file": "public.pem",
                },
            }
        )
    )
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["enroll", "--gallery", "gallery.fgg", "--name", "Alice", "photo.jpg"],
        ["gallery", "remove", "Alice", "--gallery", "gallery.fgg"],
        ["gallery", "set-groups", "Alice", "staff", "--gallery", "gallery.fgg"],
    ],
)
def test_a_fleet_door_refuses_local_gallery_changes(tmp_path: Path, args: list[str]) -> None:
    config = _door_toml(tmp_path)
    r = facegate(*args, "--config", str(config))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "fleet.enabled = true" in r.stderr
    assert "facegate fleet push" in r.stderr


def test_push_refuses_a_door_config(tmp_path: Path) -> None:
    r = facegate("fleet", "push", "--config", str(_door_toml(tmp_path)))
    assert r.returncode == 2 and "this is a door's config" in r.stderr


def _admin(tmp_path: Path, broker: Broker, embedder: Path) -> Path:
    from edge.vision.manifest import load_manifest

    assert facegate("fleet", "keygen", "--out", str(tmp_path / "keys")).returncode == 0
    (tmp_path / "gallery.key").write_text("g" * 32)
    g = Gallery.for_manifest(load_manifest(embedder))
    rng = np.random.default_rng(1)
    for name in ("Alice", "Bob", "Carol"):
        g.add(name, rng.normal(size=(2, g.embedding_size)).astype(np.float32))
    g.save(tmp_path / "gallery.fgg", b"g" * 32)
    path = tmp_path / "admin.toml"
    path.write_text(
        _toml(
            {
                "embedder": {"model": str(embedder)},
                "gallery": {"path": "gallery.fgg", "key_file": "gallery.key"},
                "mqtt": {"enabled": True, "host": broker.host, "port": broker.port},
                "fleet": {
                    "site": "hq",
                    "site_key_file": "keys/fleet-site.key",
                    "signing_key_file": "keys/fleet-signing.pem",
                },
            }
        )
    )
    return path


def _door(tmp_path: Path, broker: Broker, embedder: Path) -> tuple[FleetDevice, MqttPublisher]:
    d = tmp_path / "door1"
    d.mkdir()
    cfg: Config = parse_config(
        {
            "device": {"id": "door1"},
            "embedder": {"model": str(embedder)},
            "mqtt": {"enabled": True, "host": broker.host, "port": broker.port},
            "fleet": {
                "enabled": True,
                "site": "hq",
                "site_key_file": str(tmp_path / "keys" / "fleet-site.key"),
                "public_key_file": str(tmp_path / "keys" / "fleet-public.pem"),
            },
            "service": {"state_dir": str(d)},
        },
        base_dir=d,
    )
    fleet = FleetDevice(cfg)  # the embedder's identity from its manifest, as the daemon's
    pub = MqttPublisher(cfg, extensions=[fleet])
    pub.start()
    pub.set_state(status="running")
    pub.set_ready()
    return fleet, pub


@pytest.mark.mqtt
def test_push_and_status_from_the_command_line(
    tmp_path: Path, mqtt_broker: Broker, models: Path
) -> None:
    embedder = models / "sface_int8.tflite"
    admin = _admin(tmp_path, mqtt_broker, embedder)
    r = facegate("fleet", "push", "--config", str(admin))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pushed version 1 (was 0) to site 'hq': 3 people")
    fleet, pub = _door(tmp_path, mqtt_broker, embedder)
    try:

        def applied() -> bool:
            p = fleet.take_pending()
            if p is not None:
                fleet.applied(p)
                pub.set_gallery(p.gallery.names)
            return fleet.sync.version == 1

        assert wait_for(applied, 30)
        st = facegate("fleet", "status", "--config", str(admin), "--json", "--wait", "1")
        assert st.returncode == 0, st.stderr
        lines = [json.loads(x) for x in st.stdout.splitlines()]
        assert [(x["device"], x["version"], x["lagging"]) for x in lines[:-1]] == [
            ("door1", 1, False)
        ]
        assert lines[-1]["version"] == 1 and lines[-1]["lagging"] == []
    finally:
        pub.stop(timeout=2.0)  # the door goes away still holding version 1
    g = Gallery.load(tmp_path / "gallery.fgg", b"g" * 32, fleet.model_sha256, manifest_sha256=None)
    g.remove("Bob")
    g.save(tmp_path / "gallery.fgg", b"g" * 32)
    r = facegate("fleet", "push", "--config", str(admin))
    assert r.returncode == 0, r.stderr
    assert "pushed version 2 (was 1)" in r.stdout and "revoked: Bob" in r.stdout
    st = facegate("fleet", "status", "--config", str(admin), "--wait", "1")
    assert st.returncode == 1  # a door lags behind
    assert "door1: version 1" in st.stdout and "BEHIND; still grants Bob" in st.stdout
    assert "0 of 1 doors hold the site's version" in st.stdout

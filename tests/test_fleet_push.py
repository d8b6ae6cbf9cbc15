"""``push`` on a real broker: two admins at once, and a broker that forgot everything.

The admin's side alone (no doors needed): what the broker holds after each
push is read back from its retained store.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _fleet import gallery
from broker import Broker, mqtt_broker

from edge.config import Config, parse_config
from edge.fleet.admin import PushConflict, Record, push, snapshot
from edge.fleet.bundle import peek_manifest
from edge.fleet.keys import admin_keys, generate
from edge.fleet.link import AdminLink
from edge.fleet.topics import FleetTopics

__all__ = ["mqtt_broker"]

pytestmark = pytest.mark.mqtt
TOPICS = FleetTopics.for_site("facegate", "hq")


def _admin(broker: Broker, d: Path, keys_dir: Path, client_id: str = "") -> Config:
    d.mkdir(parents=True, exist_ok=True)
    return parse_config(
        {
            "mqtt": {
                "enabled": True,
                "host": broker.host,
                "port": broker.port,
                "client_id": client_id,
            },
            "fleet": {
                "site": "hq",
                "site_key_file": str(keys_dir / "fleet-site.key"),
                "signing_key_file": str(keys_dir / "fleet-signing.pem"),
                "chunk_kib": 1,
            },
            "service": {"state_dir": str(d)},
        },
        base_dir=d,
    )


def _retained(cfg: Config) -> dict[str, bytes]:
    with AdminLink(cfg, "check") as link:
        return snapshot(link, TOPICS.gallery_all, time.monotonic() + 20)


def test_two_admins_at_once_the_second_to_publish_is_told(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    generate(tmp_path / "keys")
    a = _admin(mqtt_broker, tmp_path / "a", tmp_path / "keys", "admin-a")
    b = _admin(mqtt_broker, tmp_path / "b", tmp_path / "keys", "admin-b")
    keys = admin_keys(a)
    push(a, gallery(["Alice", "Bob"]), keys)
    won: list[int] = []

    def meanwhile(stage: str, done: int, total: int) -> None:
        if stage == "chunks" and not won:  # admin b pushes while a is sending chunks
            won.append(push(b, gallery(["Carol"]), keys).bundle.info.version)

    people = [f"P{i}" for i in range(40)]
    with pytest.raises(PushConflict, match="another push published version 2") as e:
        push(a, gallery(people), keys, progress=meanwhile)
    assert e.value.exit_code == 3 and "run push again" in str(e.value)
    assert won == [2]
    found = _retained(a)
    info = peek_manifest(found[TOPICS.manifest])
    assert info is not None and (info.version, info.people) == (2, 1)
    # The next push (from either machine) goes on from the winner's version.
    assert push(a, gallery(people), keys).bundle.info.version == 3


def test_a_broker_that_lost_its_retained_messages_never_takes_versions_back(
    tmp_path: Path,
) -> None:
    from tools._broker import mosquitto_path

    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")
    generate(tmp_path / "keys")
    broker = Broker(tmp_path / "broker", persistent=False).start()
    try:
        cfg = _admin(broker, tmp_path / "a", tmp_path / "keys")
        keys = admin_keys(cfg)
        for names in (["Alice", "Bob"], ["Alice"]):
            push(cfg, gallery(names), keys)
        broker.restart(kill=False)  # comes back with nothing retained
        assert _retained(cfg) == {}
        r = push(cfg, gallery(["Alice", "Dave"]), keys)
        assert r.bundle.info.version == 3  # this machine's record: never back to 1
        # The record also kept the revocation history the broker forgot.
        assert [(x.name, x.version) for x in r.revoked] == [("Bob", 2)]
        assert Record.load(cfg).version == 3
    finally:
        broker.stop()

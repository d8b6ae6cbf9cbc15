"""The door's fleet state machine and its extension, driven by hand (no broker, a fake clock).

What a broker would do is played by the test: a connect, the SUBACK, the
retained manifest, the chunks. Each refusal keeps the gallery in force and
says why; the gate holds grants exactly while the door is catching up.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _fleet import MANIFEST, MODEL, SITE, SIZE, FakeLink, bundle, keys

from edge.config import parse_config
from edge.fleet import bundle as b
from edge.fleet.device import FleetDevice
from edge.fleet.keys import AdminKeys, DoorKeys
from edge.fleet.store import FleetStore
from edge.fleet.sync import (
    BEHIND,
    CURRENT,
    FLEET_STALE,
    FLEET_SYNCING,
    OFFLINE,
    DeviceSync,
    Limits,
    Refusal,
)
from edge.fleet.topics import FleetTopics

TOPICS = FleetTopics.for_site("facegate", SITE)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def ks(tmp_path_factory: pytest.TempPathFactory) -> tuple[AdminKeys, DoorKeys]:
    return keys(tmp_path_factory.mktemp("keys"))


class Door:
    """A DeviceSync with a fake link and clock, applying pending bundles at once."""

    def __init__(self, door: DoorKeys, max_age_s: float = 0.0) -> None:
        self.link = FakeLink()
        self.clock = Clock()
        self.refusals: list[Refusal] = []
        self.sync = DeviceSync(
            TOPICS,
            door,
            (MODEL, MANIFEST),
            None,
            0,
            Limits(sync_wait_s=2.0, fetch_timeout_s=10.0, max_age_s=max_age_s),
            now=self.clock(),
            confirmed=self.clock(),
            refused=self.refusals.append,
            pending=lambda: None,
        )

    def connect(self) -> None:
        self.sync.connected(self.link, self.clock())
        self.sync.subscribed(self.link.mid, True, self.clock())

    def deliver(self, bd: b.Bundle, chunks: bool = True) -> None:
        self.sync.message(self.link, TOPICS.manifest, bd.manifest, self.clock())
        if chunks:
            for i, c in enumerate(bd.chunks):
                self.sync.message(self.link, TOPICS.chunk(bd.info.version, i), c, self.clock())
        self.apply()

    def apply(self) -> None:
        from edge.fleet.store import Held

        p = self.sync.take_pending()
        if p is not None:
            self.sync.applied(Held(p.info, p.gallery, 0.0, p.chunks), self.clock())

    @property
    def names(self) -> list[str]:
        return self.sync.held.gallery.names if self.sync.held else []


def test_connect_holds_grants_until_the_newer_bundle_is_applied(ks: tuple) -> None:
    admin, door = ks
    d = Door(door)
    d.connect()
    assert d.link.subscribed == [TOPICS.manifest]
    assert d.sync.gate(d.clock())[0] == FLEET_SYNCING
    bd = bundle(admin, ["Alice", "Bob"], 1)
    d.sync.message(d.link, TOPICS.manifest, bd.manifest, d.clock())
    assert d.link.subscribed[-1] == TOPICS.chunks(1)
    assert d.sync.gate(d.clock())[0] == FLEET_SYNCING  # fetching
    for i, c in enumerate(bd.chunks):
        d.sync.message(d.link, TOPICS.chunk(1, i), c, d.clock())
    assert d.link.unsubscribed == [TOPICS.chunks(1)]
    assert d.sync.gate(d.clock())[0] == FLEET_SYNCING  # complete, not yet swapped in
    d.apply()
    assert d.sync.gate(d.clock()) is None and d.sync.phase == CURRENT
    assert d.names == ["Alice", "Bob"] and d.sync.version == 1
    # A revocation arrives live: held until it is in force, then Bob is gone.
    d.deliver(bundle(admin, ["Alice"], 2))
    assert d.names == ["Alice"] and d.sync.gate(d.clock()) is None


def test_no_bundle_on_the_broker_ends_the_wait_after_sync_wait_s(ks: tuple) -> None:
    _, door = ks
    d = Door(door)
    d.connect()
    d.clock.t += 1.0
    d.sync.tick(d.link, d.clock())
    assert d.sync.gate(d.clock())[0] == FLEET_SYNCING
    d.clock.t += 1.5
    d.sync.tick(d.link, d.clock())
    assert d.sync.gate(d.clock()) is None and d.sync.phase == CURRENT


def test_starting_holds_at_most_sync_wait_s_without_a_broker(ks: tuple) -> None:
    _, door = ks
    d = Door(door)
    assert d.sync.gate(d.clock())[0] == FLEET_SYNCING
    d.clock.t += 2.5
    assert d.sync.gate(d.clock()) is None and d.sync.phase == OFFLINE


@pytest.mark.parametrize(
    "case", ["forged", "replayed", "wrong_model", "wrong_site", "same_version"]
)
def test_refused_manifests_keep_the_gallery_in_force(ks: tuple, tmp_path: Path, case: str) -> None:
    admin, door = ks
    d = Door(door)
    d.connect()
    d.deliver(bundle(admin, ["Alice", "Bob"], 5))
    assert d.names == ["Alice", "Bob"]
    bad = {
        "forged": lambda: bundle(keys(tmp_path)[0], ["Mallory"], 9),
        "replayed": lambda: bundle(admin, ["Alice", "Bob", "Eve"], 3),
        "wrong_model": lambda: bundle(admin, ["Eve"], 9, model="x" * 64),
        "wrong_site": lambda: bundle(admin, ["Eve"], 9, site="branch"),
        "same_version": lambda: bundle(admin, ["Eve"], 5),
    }[case]()
    d.deliver(bad)
    reason = {
        "forged": b.BAD_SIGNATURE,
        "replayed": b.NOT_NEWER,
        "wrong_model": b.WRONG_MODEL,
        "wrong_site": b.WRONG_SITE,
        "same_version": b.NOT_NEWER,
    }[case]
    assert [r.reason for r in d.refusals] == [reason]
    assert d.names == ["Alice", "Bob"] and d.sync.version == 5
    assert d.sync.gate(d.clock()) is None
    assert d.sync.phase == (BEHIND if case == "wrong_model" else CURRENT)


@pytest.mark.parametrize("cut", ["truncated", "missing"])
def test_bad_or_missing_chunks_are_refused(ks: tuple, cut: str) -> None:
    admin, door = ks
    d = Door(door)
    d.connect()
    d.deliver(bundle(admin, ["Alice", "Bob"], 1))
    bd = bundle(admin, ["Alice"], 2)
    d.sync.message(d.link, TOPICS.manifest, bd.manifest, d.clock())
    for i, c in enumerate(bd.chunks):
        if i == 1 and cut == "missing":
            continue
        d.sync.message(d.link, TOPICS.chunk(2, i), c[:-3] if i == 1 else c, d.clock())
    if cut == "missing":
        assert d.sync.gate(d.clock())[0] == FLEET_SYNCING
        d.clock.t += 11.0
        d.sync.tick(d.link, d.clock())
    assert [r.reason for r in d.refusals] == [b.BAD_CHUNK if cut == "truncated" else b.INCOMPLETE]
    assert d.link.unsubscribed[-1] == TOPICS.chunks(2)
    assert d.names == ["Alice", "Bob"] and d.sync.phase == BEHIND
    assert d.sync.gate(d.clock()) is None


def test_forgery_does_not_interrupt_a_fetch_or_clear_behind(ks: tuple, tmp_path: Path) -> None:
    admin, door = ks
    d = Door(door)
    d.connect()
    bd = bundle(admin, ["Alice"], 1)
    d.sync.message(d.link, TOPICS.manifest, bd.manifest, d.clock())
    d.deliver(bundle(keys(tmp_path)[0], ["Mallory"], 9), chunks=False)
    for i, c in enumerate(bd.chunks):
        d.sync.message(d.link, TOPICS.chunk(1, i), c, d.clock())
    d.apply()
    assert d.names == ["Alice"]
    d.deliver(bundle(admin, ["Eve"], 9, model="x" * 64))
    assert d.sync.phase == BEHIND
    d.deliver(bundle(keys(tmp_path / "2")[0], ["Mallory"], 10), chunks=False)
    assert d.sync.phase == BEHIND


def test_max_age_refuses_grants_offline_after_the_limit(ks: tuple) -> None:
    admin, door = ks
    d = Door(door, max_age_s=60.0)
    d.connect()
    d.deliver(bundle(admin, ["Alice"], 1))
    d.clock.t += 600
    d.sync.tick(d.link, d.clock())
    assert d.sync.gate(d.clock()) is None  # connected and current: never stale
    d.sync.disconnected(d.clock())
    d.clock.t += 59
    assert d.sync.gate(d.clock()) is None
    d.clock.t += 2
    assert d.sync.gate(d.clock())[0] == FLEET_STALE
    d.connect()
    d.deliver(bundle(admin, ["Alice"], 1))  # the one held: current again
    assert d.sync.gate(d.clock()) is None


# -- the extension: start, the store, a restart ------------------------------------------


def _config(tmp_path: Path, ks_dir: Path, **fleet: object) -> object:
    return parse_config(
        {
            "mqtt": {"enabled": True},
            "fleet": {
                "enabled": True,
                "site": SITE,
                "site_key_file": str(ks_dir / "fleet-site.key"),
                "public_key_file": str(ks_dir / "fleet-public.pem"),
                **fleet,
            },
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )


def test_restart_keeps_the_gallery_and_refuses_a_rollback(tmp_path: Path) -> None:
    admin, _ = keys(tmp_path / "k")
    cfg = _config(tmp_path, tmp_path / "k")
    events: list[tuple[str, dict]] = []

    class Sink:
        def publish_event(self, kind: str, fields: dict, ts: float | None = None) -> dict:
            events.append((kind, fields))
            return fields

        def publish_status(self, name: str, fields: dict) -> None:
            pass

    def start() -> tuple[FleetDevice, FakeLink]:
        dev = FleetDevice(cfg, model=(MODEL, MANIFEST, SIZE))  # type: ignore[arg-type]
        dev.events = Sink()
        dev.start()
        link = FakeLink()
        dev.connected(link)
        dev.subscribed(link, link.mid, True)
        return dev, link

    def deliver(dev: FleetDevice, link: FakeLink, bd: b.Bundle) -> None:
        dev.message(link, TOPICS.manifest, bd.manifest, True)
        for i, c in enumerate(bd.chunks):
            dev.message(link, TOPICS.chunk(bd.info.version, i), c, True)
        p = dev.take_pending()
        if p is not None:
            dev.applied(p)

    dev, link = start()
    assert dev.gallery().names == []
    deliver(dev, link, bundle(admin, ["Alice", "Bob"], 4))
    assert dev.state()["fleet"]["version"] == 4 and dev.state()["fleet"]["people"] == 2
    assert [k for k, _ in events] == ["fleet_applied"]
    dev2, link2 = start()  # a restart
    assert dev2.gallery().names == ["Alice", "Bob"]
    deliver(dev2, link2, bundle(admin, ["Alice", "Bob", "Eve"], 3))
    assert events[-1][0] == "fleet_refused" and events[-1][1]["reason"] == b.NOT_NEWER
    assert dev2.gallery().names == ["Alice", "Bob"]
    # The held file swapped for an older one: not loaded; the floor still refuses v3.
    store = FleetStore(tmp_path, SITE)
    old = bundle(admin, ["Alice", "Bob", "Eve"], 3)
    store_floor = store.floor()
    store.save(old.info, old.chunks, 0.0)
    (tmp_path / f"fleet-{SITE}.version").write_text(f"{store_floor}\n")
    dev3, _ = start()
    assert dev3.gallery().names == []  # refused at start: nobody, never Eve

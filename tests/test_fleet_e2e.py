"""Many doors, one gallery, end to end: a real Mosquitto and 20 door processes.

Each door is ``python -m tools.fleet_device``: the daemon's fleet code (the
MQTT publisher with :class:`edge.fleet.device.FleetDevice`) without models
or a camera. The admin's side is :func:`edge.fleet.admin.push` and
``status`` in this process. Door 0 reaches the broker through a proxy the
test can cut, and probes its gate for a few names (a JSON line each time
the answer changes). The tests run in order on one site:

1. a push reaches all 20;
2. a revocation is applied by all of them;
3. door 0, offline during a revocation, is reported lagging (naming whom
   it still grants), and on reconnect applies it before it grants anyone;
4. a broker killed mid-push loses nothing (the broker keeps no persistence
   file, so it comes back empty: the push's read-back sends it all again);
5. forged, replayed, wrong-model, truncated and wrong-site bundles are
   each refused by every door with its reason, the gallery in force unchanged;
   a push afterwards is applied again.

No timing is asserted: every wait is for a condition, with a generous bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _fleet import MANIFEST, MODEL, SIZE, gallery
from _proxy import Proxy
from broker import Broker, Collector, mosquitto_path, wait_for

from edge.config import Config, parse_config
from edge.fleet import bundle as b
from edge.fleet.admin import PushResult, push, snapshot, status
from edge.fleet.keys import admin_keys, generate
from edge.fleet.link import AdminLink
from edge.fleet.topics import FleetTopics

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DOORS = 20
SITE = "hq"
TOPICS = FleetTopics.for_site("facegate", SITE)
STAFF = ["Alice", "Bob", "Carol", "Dave", "Erin"]
WAIT = 90.0


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    return "".join(
        f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()) + "\n"
        for s, keys in sections.items()
    )


@dataclass
class Site:
    """The broker, the keys, the admin's config and the doors."""

    dir: Path
    broker: Broker
    proxy: Proxy
    admin: Config
    sub: Collector
    doors: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pushed: dict[int, PushResult] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [f"door{i:02d}" for i in range(DOORS)]

    def push(self, names: list[str], **kw: Any) -> PushResult:
        r = push(self.admin, gallery(names), admin_keys(self.admin), **kw)
        self.pushed[r.bundle.info.version] = r
        return r

    def states(self) -> dict[str, dict[str, Any]]:
        """The newest ``fleet`` member of each door's state."""
        out: dict[str, dict[str, Any]] = {}
        for topic, payload, _ in self.sub.snapshot():
            if topic.endswith("/state") and payload:
                out[topic.split("/")[1]] = json.loads(payload).get("fleet") or {}
        return out

    def at(self, version: int, doors: list[str] | None = None) -> bool:
        s = self.states()
        return all(s.get(d, {}).get("version") == version for d in doors or self.names)

    def events(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for topic, payload, _ in self.sub.snapshot():
            if topic.endswith("/event"):
                e = json.loads(payload)
                if e.get("type") == kind:
                    out.append((e["device"], e))
        return out

    def probes(self) -> list[dict[str, Any]]:
        log = self.dir / "door00" / "probe.log"
        return [json.loads(line) for line in log.read_text().splitlines()]

    def publish_raw(self, messages: list[tuple[str, bytes]]) -> None:
        """What someone with write access to the site's topics could publish (no checks)."""
        with AdminLink(self.admin, "raw") as link:
            import time

            link.publish_all(messages, time.monotonic() + 30)


def _door_config(site_dir: Path, i: int, port: int, files: Any) -> Path:
    state = site_dir / f"door{i:02d}"
    state.mkdir()
    path = state / "door.toml"
    path.write_text(
        _toml(
            {
                "device": {"id": f"door{i:02d}"},
                "mqtt": {
                    "enabled": True,
                    "host": "127.0.0.1",
                    "port": port,
                    "state_interval_s": 2.0,
                },
                "fleet": {
                    "enabled": True,
                    "site": SITE,
                    "site_key_file": str(files.site),
                    "public_key_file": str(files.public),
                    "sync_wait_s": 1.0,
                },
                "service": {"state_dir": str(state)},
            }
        )
    )
    return path


def _spawn_door(path: Path, probe: bool) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tools.fleet_device", "--config", str(path)]
    cmd += ["--model", f"{MODEL}:{MANIFEST}:{SIZE}"]
    if probe:
        cmd += ["--probe", "Alice", "--probe", "Carol", "--probe-every", "0.005"]
        cmd += ["--apply-delay", "0.3", "--log", str(path.parent / "probe.log")]
    else:
        cmd += ["--probe-every", "0.2"]
    err = (path.parent / "stderr.log").open("wb")
    return subprocess.Popen(
        ["nice", "-n", "10", *cmd], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    d = tmp_path_factory.mktemp("fleet")
    # No persistence: a killed broker comes back empty, the worst case for a push.
    broker = Broker(d / "broker", persistent=False).start()
    proxy = Proxy(broker.port).start()
    files = generate(d / "keys")
    admin = parse_config(
        {
            "mqtt": {"enabled": True, "host": broker.host, "port": broker.port},
            "fleet": {
                "site": SITE,
                "site_key_file": str(files.site),
                "signing_key_file": str(files.signing),
                "chunk_kib": 1,
            },
            "service": {"state_dir": str(d)},
        },
        base_dir=d,
    )
    sub = Collector(
        broker, ["facegate/+/state", "facegate/+/event", "facegate/+/availability"], "site-sub"
    ).start()
    s = Site(d, broker, proxy, admin, sub)
    try:
        assert sub.ready()
        for i in range(DOORS):
            port = proxy.port if i == 0 else broker.port
            s.doors.append(_spawn_door(_door_config(d, i, port, files), probe=i == 0))
        online = lambda: all(  # noqa: E731
            p in {t.split("/")[1] for t, pl, _ in sub.snapshot() if pl == b"online"}
            for p in s.names
        )
        assert wait_for(online, WAIT), _stderr(s)
        yield s
    finally:
        for p in s.doors:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in s.doors:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        sub.stop()
        proxy.stop()
        broker.stop()


def _stderr(s: Site) -> str:
    tails = []
    for n in s.names[:3]:
        p = s.dir / n / "stderr.log"
        if p.exists():
            tails.append(f"{n}: {p.read_text()[-800:]}")
    return "\n".join(tails)


def test_1_a_push_reaches_all_20_doors(site: Site) -> None:
    r = site.push(STAFF)
    v = r.bundle.info.version
    assert v == 1 and r.previous == 0
    assert wait_for(lambda: site.at(v), WAIT), (site.states(), _stderr(site))
    for d, f in site.states().items():
        assert f["digest"] == r.bundle.info.digest[:16] and f["people"] == len(STAFF), d
        assert f["sync"] == "current" and f["model"] == MODEL


def test_2_a_revocation_is_applied_by_every_online_door(site: Site) -> None:
    r = site.push([n for n in STAFF if n != "Bob"])
    assert r.newly_revoked == ["Bob"]
    assert wait_for(lambda: site.at(2), WAIT), site.states()
    st = status(site.admin, admin_keys(site.admin), wait_s=1.0)
    assert st.current is not None and st.current.version == 2
    assert [(x.name, x.version) for x in st.revoked] == [("Bob", 2)]
    assert len(st.doors) == DOORS and not st.lagging


def test_3_an_offline_door_applies_the_revocation_on_reconnect_before_any_grant(
    site: Site,
) -> None:
    door0 = "facegate/door00/availability"
    site.proxy.cut()
    assert wait_for(lambda: site.sub.payloads(door0)[-1:] == [b"offline"], WAIT)
    cut_at = max(p["conn"] for p in site.probes())
    r = site.push([n for n in STAFF if n not in ("Bob", "Carol")])
    assert r.newly_revoked == ["Carol"]
    others = site.names[1:]
    assert wait_for(lambda: site.at(3, others), WAIT), site.states()
    # status names the lagging door and whom it still grants.
    st = status(site.admin, admin_keys(site.admin), wait_s=1.0)
    lagging = {x.device: x for x in st.lagging}
    assert list(lagging) == ["door00"] and lagging["door00"].still_grants == ("Carol",)
    assert lagging["door00"].online is False
    # Offline, the door goes on with what it holds: Carol is still granted there.
    offline = [p for p in site.probes() if p["conn"] == cut_at and p["phase"] == "offline"]
    assert any(p["name"] == "Carol" and p["grant"] for p in offline), site.probes()
    site.proxy.restore()
    assert wait_for(lambda: site.at(3), WAIT), site.states()
    after = [p for p in site.probes() if p["conn"] > cut_at]
    assert after, site.probes()
    # From the reconnect on: never Carol; nobody before version 3 is in force.
    assert not [p for p in after if p["name"] == "Carol" and p["grant"]], after
    grants = [p for p in after if p["grant"]]
    assert grants and all(p["version"] >= 3 for p in grants), after
    first_grant = after.index(grants[0])
    assert any(p["why"] == "fleet_syncing" for p in after[:first_grant]), after


def test_4_a_broker_killed_mid_push_loses_nothing(site: Site) -> None:
    killed: list[int] = []
    people = [f"Person {i:03d}" for i in range(300)] + ["Alice", "Dave", "Erin"]

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "chunks" and not killed and done >= total // 2:
            killed.append(done)
            site.broker.restart(kill=True)  # SIGKILL: what it acknowledged may be gone

    r = site.push(people, progress=progress, timeout=120.0)
    assert killed and len(r.bundle.chunks) > 20
    # The broker keeps nothing across a restart here (no persistence): every chunk it had
    # acknowledged before the kill was gone, and the read-back sent them again.
    assert r.republished >= killed[0]
    v = r.bundle.info.version
    assert wait_for(lambda: site.at(v), WAIT), (site.states(), _stderr(site))
    assert all(f["people"] == len(people) for f in site.states().values())
    # The broker holds this version complete and nothing of the others.
    import time

    with AdminLink(site.admin, "check") as link:
        found = snapshot(link, TOPICS.gallery_all, time.monotonic() + 30)
    chunks = {t for t in found if TOPICS.parse_chunk(t) is not None}
    assert chunks == {TOPICS.chunk(v, i) for i in range(len(r.bundle.chunks))}
    assert found[TOPICS.manifest] == r.bundle.manifest


def _bad_bundles(site: Site) -> list[tuple[str, list[tuple[str, bytes]], int | None]]:
    """(reason, messages to publish, version) for each bundle a door must refuse."""
    from _fleet import bundle, keys

    admin = admin_keys(site.admin)
    thief, _ = keys(site.dir / "thief")
    old = site.pushed[2].bundle
    wrong_model = bundle(admin, ["Mallory"], 50, model="x" * 64)
    truncated = bundle(admin, ["Mallory", "Alice"], 51, chunk_bytes=64)
    wrong_site = bundle(admin, ["Mallory"], 52, site="branch")
    forged = bundle(thief, ["Mallory"], 53)

    def full(bd: b.Bundle, cut: int | None = None) -> list[tuple[str, bytes]]:
        v = bd.info.version
        msgs = [(TOPICS.chunk(v, i), c[:-5] if i == cut else c) for i, c in enumerate(bd.chunks)]
        return [*msgs, (TOPICS.manifest, bd.manifest)]

    return [
        (b.BAD_SIGNATURE, full(forged), 53),
        (b.NOT_NEWER, [(TOPICS.manifest, old.manifest)], 2),
        (b.WRONG_MODEL, full(wrong_model), 50),
        (b.BAD_CHUNK, full(truncated, cut=1), 51),
        (b.WRONG_SITE, full(wrong_site), 52),
    ]


def test_5_bad_bundles_are_refused_with_a_reason_and_change_nothing(site: Site) -> None:
    good = max(site.pushed.values(), key=lambda r: r.bundle.info.version).bundle
    held = {d: f["digest"] for d, f in site.states().items()}
    assert set(held.values()) == {good.info.digest[:16]}
    for reason, messages, version in _bad_bundles(site):
        seen = len(site.events("fleet_refused"))
        site.publish_raw(messages)

        def refused(r: str = reason, v: int | None = version, n: int = seen) -> bool:
            new = site.events("fleet_refused")[n:]
            return {d for d, e in new if e["reason"] == r and e["version"] == v} == set(site.names)

        assert wait_for(refused, WAIT), (reason, site.events("fleet_refused")[seen:])
        for _, e in site.events("fleet_refused")[seen:]:
            assert e["detail"] and e["site"] == SITE
        # The genuine manifest back on the broker: the doors already hold it (no event).
        site.publish_raw([(TOPICS.manifest, good.manifest)])
    assert wait_for(lambda: site.states().get("door00", {}).get("refused") is not None, WAIT)
    assert {d: f["digest"] for d, f in site.states().items()} == held
    assert all(f["version"] == good.info.version for f in site.states().values())
    # Door 0 still grants Alice with the gallery in force.
    assert site.probes()[-1]["version"] == good.info.version
    last_alice = [p for p in site.probes() if p["name"] == "Alice"][-1]
    assert last_alice["grant"], site.probes()[-5:]
    # And the next genuine push is applied everywhere.
    r = site.push(["Alice", "Erin"])
    assert r.bundle.info.version == good.info.version + 1
    assert wait_for(lambda: site.at(r.bundle.info.version), WAIT), site.states()


def test_no_door_process_died(site: Site) -> None:
    dead = {n: p.returncode for n, p in zip(site.names, site.doors, strict=True) if p.poll()}
    assert not dead, (dead, _stderr(site))
    assert os.path.exists(site.dir / "door00" / f"fleet-{SITE}.bundle")

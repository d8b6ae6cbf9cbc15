"""The door controller on gpiozero's MockFactory: pin states over time, injected clocks.

Every test drives :class:`edge.door.controller.DoorController` with a fake monotonic and
wall clock (no sleeps, no timing assertions on the real clock) and reads the
strike relay's mock pin: the states it went through (``MockPin.states``) and
the controller's own ``relay_log`` stamped with the injected clock. ``sync()``
waits until the relay owner thread handled everything posted so far.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

gpiozero = pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")
from gpiozero.pins.mock import MockFactory  # noqa: E402

from edge.config import Config, parse_config  # noqa: E402
from edge.config.values import Window, parse_window  # noqa: E402
from edge.delivery.publishers import MemoryPublisher  # noqa: E402
from edge.door import audit as aud  # noqa: E402
from edge.door.controller import DoorController  # noqa: E402
from edge.door.policy import (  # noqa: E402
    CLOCK_NOT_SYNCED,
    LOCKOUT,
    NOT_ALLOWED,
    OUTSIDE_SCHEDULE,
    STALE,
    UNKNOWN,
    in_schedule,
    is_allowed,
)
from edge.door.remote import (  # noqa: E402
    BAD_SIGNATURE,
    MALFORMED,
    REMOTE_DISABLED,
    REPLAYED,
    NonceCache,
    sign_unlock,
    verify_unlock,
)
from edge.errors import ConfigError  # noqa: E402
from edge.identity.gallery import Gallery  # noqa: E402
from edge.types import Box, Decision, Liveness  # noqa: E402

# What the liveness gate attaches to a live person's decision (edge.decide.gate).
LIVE = Liveness(True, 0.9, ("turn 9deg (texture 8deg, z=7) at 0.5s",), 0.5)

RELAY, CONTACT, EXIT, TAMPER = 17, 5, 6, 13
# Wednesday 7 January 2026, 10:00 UTC.
WALL0 = datetime(2026, 1, 7, 10, 0, tzinfo=UTC).timestamp()
KEY = b"remote-unlock-key-0123456789abcdef"


class FakeClock:
    """The injected monotonic and wall clocks; ``advance`` moves both."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = WALL0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += s


@dataclass
class Rig:
    ctl: DoorController
    factory: MockFactory
    clock: FakeClock
    pub: MemoryPublisher
    cfg: Config
    gallery: Gallery
    synced: list[bool] = field(default_factory=lambda: [True])
    tracks: list[int] = field(default_factory=lambda: [0])

    @property
    def relay(self) -> Any:
        return self.factory.pin(RELAY)

    def relay_states(self) -> list[bool]:
        return [bool(s.state) for s in self.relay.states]

    def decide(
        self,
        name: str | None,
        *,
        age: float = 0.2,
        kind: str | None = None,
        liveness: Liveness | None = LIVE,
    ) -> tuple[Decision, Any]:
        self.tracks[0] += 1
        d = Decision(
            kind=kind or ("recognized" if name else "unknown"),
            name=name,
            distance=0.2 if name else 0.7,
            confidence=0.99 if name else 0.01,
            track_id=self.tracks[0],
            track_length=4,
            timestamp=self.clock.wall - age,
            box=Box(10, 10, 50, 50),
            liveness=liveness,
        )
        v = self.ctl.on_decision(d, self.gallery)
        assert self.ctl.sync()
        return d, v

    def advance(self, s: float) -> None:
        self.clock.advance(s)
        assert self.ctl.sync()

    def entries(self) -> list[aud.AuditEntry]:
        assert self.ctl.sync()  # entries are written by the door's own thread
        return self.ctl.audit.entries()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [p for p in self.pub.payloads if kind is None or p["type"] == kind]


def _gallery() -> Gallery:
    g = Gallery("sha-test", 4)
    rng = np.random.default_rng(0)
    for name in ("Alice", "Bob", "Carol", "Dave"):
        g.add(name, rng.normal(size=(1, 4)).astype(np.float32))
    g.set_groups("Carol", ["staff"])
    g.set_groups("Dave", ["night"])
    return g


def make_rig(
    tmp_path: Path, inputs: bool = False, liveness_mode: str | None = None, **door: Any
) -> Rig:
    keys: dict[str, Any] = {
        "enabled": True,
        "pin_factory": "mock",
        "relay_pin": RELAY,
        "allow": ["Alice", "group:staff"],
        "timezone": "UTC",
        **door,
    }
    if inputs:
        keys.update(contact_pin=CONTACT, exit_pin=EXIT, tamper_pin=TAMPER)
    tmp_path.mkdir(parents=True, exist_ok=True)
    sections: dict[str, Any] = {"door": keys, "service": {"state_dir": str(tmp_path)}}
    if liveness_mode is not None:
        sections["liveness"] = {"mode": liveness_mode}
    if keys.get("remote_unlock"):
        (tmp_path / "unlock.key").write_bytes(KEY)
        keys.setdefault("remote_key_file", "unlock.key")
        sections["mqtt"] = {"enabled": True, "commands": True}
    cfg = parse_config(sections, base_dir=tmp_path)
    clock = FakeClock()
    factory = MockFactory()
    pub = MemoryPublisher(cfg)
    synced = [True]
    ctl = DoorController(
        cfg,
        events=pub,
        factory=factory,
        clock=clock.monotonic,
        wall=clock.time,
        synced=lambda: synced[0],
    )
    rig = Rig(ctl, factory, clock, pub, cfg, _gallery(), synced)
    assert ctl.sync()
    if inputs:
        # MockPins start pulled up (switch open): close the door contact and
        # the tamper switch, as on a healthy installation.
        factory.pin(CONTACT).drive_low()
        factory.pin(TAMPER).drive_low()
        assert ctl.sync()
    return rig


@pytest.fixture
def rigs(tmp_path: Path) -> Any:
    made: list[Rig] = []

    def make(**kw: Any) -> Rig:
        rig = make_rig(tmp_path / f"rig{len(made)}", **kw)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.ctl.stop()


# -- start-up and the pulse ---------------------------------------------------------


def test_relay_is_released_at_start(rigs: Any) -> None:
    rig = rigs()
    assert rig.relay.function == "output"
    assert rig.relay_states() == [False]
    assert rig.ctl.relay_log == type(rig.ctl.relay_log)()  # nothing energised
    # Active-low relay boards: "released" is the high level, written first.
    low = rigs(active_high=False)
    assert low.relay.function == "output"
    assert low.relay_states() == [False, True]  # floating input, then driven released
    assert not low.ctl.energised


def test_failed_start_leaves_the_relay_released_and_freed(tmp_path: Path) -> None:
    (tmp_path / "audit.sqlite").mkdir()  # the audit log cannot be opened
    cfg = parse_config(
        {
            "door": {"enabled": True, "pin_factory": "mock"},
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )
    factory = MockFactory()
    with pytest.raises(aud.AuditError):
        DoorController(cfg, factory=factory)
    relay = factory.pin(RELAY)
    assert [s.state for s in relay.states] == [False]
    assert relay.function == "input"  # closed again: nothing holds the line


def test_allowed_live_recognition_pulses_for_unlock_s(rigs: Any) -> None:
    rig = rigs(unlock_s=3.0)
    _, v = rig.decide("Alice")
    assert v.granted
    assert rig.relay_states() == [False, True]
    rig.advance(2.999)
    assert rig.relay_states() == [False, True]
    rig.advance(0.001)
    rig.relay.assert_states([False, True, False])
    assert rig.relay_states() == [False, True, False]
    (t_on, on, _), (t_off, off, why) = rig.ctl.relay_log
    assert (on, off, why) == (True, False, "pulse ended")
    assert t_off - t_on == pytest.approx(3.0)
    [entry] = rig.entries()
    assert (entry.kind, entry.name, entry.reason) == ("access_granted", "Alice", None)
    [event] = rig.events()
    assert event["type"] == "access_granted" and event["name"] == "Alice"
    assert event["audit_id"] == entry.id and event["age_ms"] == 200


def test_group_membership_from_the_gallery_allows(rigs: Any) -> None:
    rig = rigs()
    _, carol = rig.decide("Carol")  # group:staff is allowed
    _, dave = rig.decide("Dave")  # group night is not
    assert carol.granted and not dave.granted and dave.reason == NOT_ALLOWED
    assert [e.data.get("groups") for e in rig.entries()] == [["staff"], ["night"]]


# -- every denial reason: relay stays released, reason in the audit log and the event ------


WORKDAYS = {"Alice": ["mon-fri 07:00-19:00"]}


def _deny_unknown(rig: Rig) -> None:
    rig.decide(None)


def _deny_not_allowed(rig: Rig) -> None:
    rig.decide("Bob")


def _deny_late(rig: Rig) -> None:
    rig.decide("Alice", age=1.001)


def _deny_future(rig: Rig) -> None:
    rig.decide("Alice", age=-1.0)


def _deny_outside_schedule(rig: Rig) -> None:
    rig.clock.wall = datetime(2026, 1, 10, 10, 0, tzinfo=UTC).timestamp()  # a Saturday
    rig.decide("Alice")


def _deny_clock_not_synced(rig: Rig) -> None:
    rig.synced[0] = False
    rig.decide("Alice")  # Wednesday 10:00 is inside the window: the clock is the reason


def _deny_lockout(rig: Rig) -> None:
    for _ in range(3):
        rig.decide(None)
    rig.pub.payloads.clear()
    rig.decide("Alice")


@pytest.mark.parametrize(
    ("scenario", "reason", "door"),
    [
        (_deny_unknown, UNKNOWN, {}),
        (_deny_not_allowed, NOT_ALLOWED, {}),
        (_deny_late, STALE, {}),
        (_deny_future, STALE, {}),
        (_deny_outside_schedule, OUTSIDE_SCHEDULE, {"schedule": WORKDAYS}),
        (_deny_clock_not_synced, CLOCK_NOT_SYNCED, {"schedule": WORKDAYS}),
        (_deny_lockout, LOCKOUT, {"max_denials": 3}),
    ],
    ids=["unknown", "not_allowed", "late", "future", "outside_schedule", "clock", "lockout"],
)
def test_each_denial_keeps_the_relay_released(
    rigs: Any, scenario: Any, reason: str, door: dict[str, Any]
) -> None:
    rig = rigs(**door)
    scenario(rig)
    rig.advance(10.0)
    assert rig.relay_states() == [False]
    assert not rig.ctl.relay_log
    last = rig.entries()[-1]
    assert (last.kind, last.reason) == ("access_denied", reason)
    assert last.detail  # says why in words
    event = rig.events("access_denied")[-1]
    assert event["reason"] == reason and event["audit_id"] == last.id


def test_a_replayed_decision_never_energises_again(rigs: Any) -> None:
    rig = rigs(unlock_s=3.0)
    d, first = rig.decide("Alice")
    rig.advance(1.0)
    again = rig.ctl.on_decision(d, rig.gallery)  # the very same decision, handed in again
    assert first.granted and not again.granted and again.reason == STALE
    assert "replayed" in again.detail
    rig.advance(2.0)  # the pulse was not extended by the replay
    assert rig.relay_states() == [False, True, False]
    assert [why for _, _, why in rig.ctl.relay_log] == ["granted Alice", "pulse ended"]


def test_max_decision_age_is_the_boundary(rigs: Any) -> None:
    rig = rigs(max_decision_age_ms=500)
    _, ok = rig.decide("Alice", age=0.5)
    _, late = rig.decide("Alice", age=0.501)
    assert ok.granted and not late.granted and late.reason == STALE


# -- schedules --------------------------------------------------------------------------


def test_parse_window_forms() -> None:
    w = parse_window("mon-fri 07:00-19:00")
    assert w == Window(frozenset(range(5)), 420, 1140)
    assert parse_window("sat,sun 10:00-14:00").days == frozenset({5, 6})
    assert parse_window("fri-mon 00:00-24:00").days == frozenset({4, 5, 6, 0})
    assert parse_window("* 22:00-06:00").days == frozenset(range(7))
    assert parse_window("daily 00:00-24:00").contains(3, 1439)
    for bad in ("mon 7-19", "funday 07:00-19:00", "mon 25:00-26:00", "mon 08:00-08:00", ""):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_windows_hours_days_and_overnight() -> None:
    w = parse_window("mon-fri 07:00-19:00")
    assert w.contains(0, 7 * 60) and w.contains(4, 19 * 60 - 1)
    assert not w.contains(0, 19 * 60) and not w.contains(5, 12 * 60)
    night = parse_window("fri 22:00-06:00")  # Friday night into Saturday morning
    assert night.contains(4, 23 * 60) and night.contains(5, 5 * 60 + 59)
    assert not night.contains(5, 6 * 60) and not night.contains(4, 21 * 60)
    assert not night.contains(3, 23 * 60) and not night.contains(4, 3 * 60)


def test_schedule_in_the_device_time_zone() -> None:
    from zoneinfo import ZoneInfo

    w = [parse_window("mon-fri 08:00-17:00")]
    # 07:30 UTC on a Wednesday in July is 09:30 in Berlin (summer time), 03:30 in New York.
    t = datetime(2026, 7, 8, 7, 30, tzinfo=UTC).timestamp()
    assert in_schedule(w, t, ZoneInfo("Europe/Berlin"))
    assert not in_schedule(w, t, ZoneInfo("America/New_York"))
    assert not in_schedule(w, t, ZoneInfo("UTC"))


def test_schedules_deny_outside_and_follow_groups(rigs: Any) -> None:
    rig = rigs(
        schedule={"Alice": ["mon-fri 07:00-19:00"], "group:staff": ["sat 09:00-12:00"]},
    )
    _, inside = rig.decide("Alice")  # Wednesday 10:00
    rig.clock.wall = datetime(2026, 1, 7, 19, 0, tzinfo=UTC).timestamp()
    _, evening = rig.decide("Alice")
    rig.clock.wall = datetime(2026, 1, 10, 9, 30, tzinfo=UTC).timestamp()  # Saturday
    _, carol_sat = rig.decide("Carol")
    _, alice_sat = rig.decide("Alice")
    assert inside.granted and carol_sat.granted
    assert (evening.reason, alice_sat.reason) == (OUTSIDE_SCHEDULE, OUTSIDE_SCHEDULE)


def test_unsynced_clock_only_matters_when_a_schedule_applies(rigs: Any) -> None:
    rig = rigs(schedule={"group:staff": ["* 00:00-24:00"]})
    rig.synced[0] = False
    _, alice = rig.decide("Alice")  # no schedule applies to Alice
    _, carol = rig.decide("Carol")  # staff have one: no trusted clock, no entry
    assert alice.granted
    assert not carol.granted and carol.reason == CLOCK_NOT_SYNCED
    assert "not synchronised" in rig.entries()[-1].detail


# -- lockout ------------------------------------------------------------------------------------


def test_lockout_engages_raises_an_alarm_and_expires(rigs: Any) -> None:
    rig = rigs(max_denials=3, lockout_window_s=60.0, lockout_s=300.0)
    rig.decide(None)
    rig.advance(30.0)
    rig.decide(None)
    assert not rig.events("lockout")
    rig.advance(29.0)
    rig.decide(None)  # the third unknown face within 60 s
    [alarm] = rig.events("lockout")
    assert alarm["reason"] == UNKNOWN and alarm["lockout_s"] == 300.0
    assert rig.pub.statuses["door"]["lockout"] is True
    _, during = rig.decide("Alice")
    assert during.reason == LOCKOUT
    rig.advance(299.0)
    _, still = rig.decide("Alice")
    assert still.reason == LOCKOUT
    rig.advance(1.0)
    assert rig.pub.statuses["door"]["lockout"] is False
    _, after = rig.decide("Alice")
    assert after.granted
    assert rig.relay_states() == [False, True]
    kinds = [e.kind for e in rig.entries()]
    assert kinds.count("lockout") == 1


def test_unknown_faces_spread_out_do_not_lock(rigs: Any) -> None:
    rig = rigs(max_denials=3, lockout_window_s=60.0)
    for _ in range(6):
        rig.decide(None)
        rig.advance(31.0)
    assert not rig.events("lockout")
    _, v = rig.decide("Alice")
    assert v.granted


# -- failures while energised ------------------------------------------------------------------


def test_an_error_in_the_owner_thread_releases_at_once(
    rigs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = rigs(inputs=True, unlock_s=30.0)
    rig.decide("Alice")
    assert rig.ctl.energised

    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("a bug in supervision")

    monkeypatch.setattr(rig.ctl._sup, "input", broken)
    rig.factory.pin(CONTACT).drive_high()  # any input now raises inside the owner thread
    assert rig.ctl.sync()
    assert rig.relay_states() == [False, True, False]
    assert rig.ctl.relay_log[-1][2] == "error"
    assert rig.ctl.relay_log[-1][0] == rig.clock.mono  # no time passed: at once
    assert rig.ctl.alive()  # the door keeps working
    monkeypatch.undo()
    _, v = rig.decide("Alice")
    assert v.granted and rig.ctl.energised


def test_stop_and_release_end_a_pulse_at_once(rigs: Any) -> None:
    rig = rigs(unlock_s=30.0)
    rig.decide("Alice")
    rig.ctl.release("reload")
    assert rig.ctl.sync()
    assert rig.relay_states() == [False, True, False]
    rig.decide("Alice")
    rig.ctl.stop(why="SIGTERM")
    assert rig.relay_states() == [False, True, False, True, False]
    assert rig.ctl.relay_log[-1][2] == "SIGTERM"
    assert not rig.ctl.alive()
    assert rig.relay.function == "input"  # pins freed


def test_a_dead_owner_thread_releases(rigs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = rigs(unlock_s=30.0)
    rig.decide("Alice")

    def fatal(*_a: Any, **_k: Any) -> None:
        raise SystemExit("owner killed")  # not an Exception: ends the thread

    monkeypatch.setattr(rig.ctl, "_handle", fatal)
    rig.ctl.pulse(1.0)
    rig.ctl._thread.join(timeout=5)
    assert not rig.ctl.alive()  # the daemon sees this and exits for a restart
    assert rig.relay_states() == [False, True, False]


# -- supervision: forced, held open, exit, tamper ----------------------------------------------


def test_door_forced_without_grant(rigs: Any) -> None:
    rig = rigs(inputs=True)
    rig.factory.pin(CONTACT).drive_high()  # the contact opens: the door is open
    assert rig.ctl.sync()
    [forced] = rig.events("door_forced")
    assert rig.entries()[-1].kind == "door_forced" and forced["audit_id"] == rig.entries()[-1].id
    assert rig.pub.statuses["door"]["door"] == "open"
    assert rig.relay_states() == [False]


def test_opening_after_a_grant_is_not_forced_until_the_grace_ends(rigs: Any) -> None:
    rig = rigs(inputs=True, unlock_s=3.0)
    contact = rig.factory.pin(CONTACT)
    rig.decide("Alice")
    rig.advance(1.0)
    contact.drive_high()
    rig.advance(1.0)
    contact.drive_low()
    rig.advance(3.0)  # released at 3 s; opening 1 s later is within the grace
    contact.drive_high()
    rig.advance(1.0)
    contact.drive_low()
    assert rig.ctl.sync()
    assert not rig.events("door_forced")
    rig.advance(10.0)
    contact.drive_high()
    assert rig.ctl.sync()
    assert len(rig.events("door_forced")) == 1


def test_held_open(rigs: Any) -> None:
    rig = rigs(inputs=True, held_open_s=30.0)
    contact = rig.factory.pin(CONTACT)
    rig.decide("Alice")
    contact.drive_high()
    rig.advance(29.999)
    assert not rig.events("door_held_open")
    rig.advance(0.001)
    rig.advance(60.0)
    [held] = rig.events("door_held_open")
    assert held["held_open_s"] == 30.0
    contact.drive_low()
    assert rig.ctl.sync()
    assert rig.pub.statuses["door"]["door"] == "closed"
    assert not rig.events("door_forced")


def test_request_to_exit_pulses_and_is_logged(rigs: Any) -> None:
    rig = rigs(inputs=True, unlock_s=3.0, max_denials=1)
    rig.decide(None)  # lockout in force: exit still works (egress is safety)
    button = rig.factory.pin(EXIT)
    button.drive_low()  # pressed
    button.drive_high()
    assert rig.ctl.sync()
    assert rig.relay_states() == [False, True]
    rig.factory.pin(CONTACT).drive_high()  # walks out
    rig.advance(3.0)
    assert rig.relay_states() == [False, True, False]
    assert [e["type"] for e in rig.events()][-1] == "exit_request"
    assert not rig.events("door_forced")
    assert rig.ctl.relay_log[0][2] == "exit request"


def test_tamper(rigs: Any) -> None:
    rig = rigs(inputs=True)
    # At start the (mock) tamper switch was open: reported, then restored.
    assert [(e["type"], e["active"]) for e in rig.events("tamper")] == [
        ("tamper", True),
        ("tamper", False),
    ]
    rig.factory.pin(TAMPER).drive_high()  # the cover comes off
    assert rig.ctl.sync()
    assert rig.events("tamper")[-1]["active"] is True
    assert rig.pub.statuses["door"]["tamper"] is True
    assert rig.entries()[-1].kind == "tamper"
    assert rig.relay_states() == [False]


def test_inputs_of_the_other_polarity(rigs: Any) -> None:
    rig = rigs(inputs=True, contact_closed_when_shut=False, tamper_closed_when_ok=False)
    # With these switches, the closed contact (driven low by make_rig) means open / tampered.
    assert rig.pub.statuses["door"]["door"] == "open"
    assert rig.pub.statuses["door"]["tamper"] is True


# -- remote unlock ------------------------------------------------------------------------------


def _verify(doc: Any, now: float = WALL0, nonces: NonceCache | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "key": KEY,
        "device_id": "front-door",
        "now": now,
        "mono": 50.0,
        "synced": True,
        "nonces": nonces if nonces is not None else NonceCache(),
    }
    args.update(kw)
    return verify_unlock(doc, **args)


def test_verify_unlock_pure() -> None:
    t = int(WALL0)
    fresh = sign_unlock(KEY, "front-door", ts=t)
    nonces = NonceCache()
    assert _verify(json.dumps(fresh).encode(), nonces=nonces) is None
    assert _verify(fresh, nonces=nonces) == REPLAYED
    assert _verify(sign_unlock(KEY, "front-door", ts=t - 6)) == STALE
    assert _verify(sign_unlock(KEY, "front-door", ts=t + 6)) == STALE
    assert _verify(sign_unlock(KEY, "front-door", ts=t - 5)) is None
    assert _verify(sign_unlock(b"another-key-0123456789", "front-door", ts=t)) == BAD_SIGNATURE
    assert _verify(sign_unlock(KEY, "back-door", ts=t)) == BAD_SIGNATURE  # other door
    tampered = dict(sign_unlock(KEY, "front-door", ts=t), ts=t + 1)
    assert _verify(tampered) == BAD_SIGNATURE
    assert _verify(sign_unlock(KEY, "front-door", ts=t), synced=False) == CLOCK_NOT_SYNCED
    for junk in (
        b"not json",
        b'{"command": "unlock"}',
        json.dumps({**sign_unlock(KEY, "front-door", ts=t), "extra": 1}).encode(),
        json.dumps({**sign_unlock(KEY, "front-door", ts=t), "ts": float(t)}).encode(),
        json.dumps({**sign_unlock(KEY, "front-door", ts=t), "nonce": "short"}).encode(),
        b"\xff\xfe",
    ):
        assert _verify(junk) == MALFORMED, junk


def test_nonces_survive_a_wall_clock_step_back() -> None:
    t = int(WALL0)
    nonces = NonceCache()
    cmd = sign_unlock(KEY, "front-door", ts=t)
    assert _verify(cmd, now=t, mono=0.0, nonces=nonces) is None
    # 20 s later the command is stale; the clock is then stepped back 20 s.
    assert _verify(cmd, now=t + 20, mono=20.0, nonces=nonces) == STALE
    assert _verify(cmd, now=t, mono=21.0, nonces=nonces) == REPLAYED
    # Unsigned junk never fills the cache.
    for i in range(10):
        _verify({**cmd, "nonce": f"junk-nonce-{i:08d}"}, nonces=nonces)
    assert len(nonces) == 1


def test_remote_unlock_accepts_fresh_and_refuses_the_rest(rigs: Any) -> None:
    rig = rigs(remote_unlock=True, unlock_s=3.0)
    t = int(rig.clock.wall)
    dev = rig.cfg.device.id
    fresh = json.dumps(sign_unlock(KEY, dev, ts=t)).encode()
    assert rig.ctl.remote_command(fresh)
    assert rig.ctl.sync()
    assert rig.relay_states() == [False, True]
    rig.advance(3.0)
    refused = [
        fresh,  # replayed
        json.dumps(sign_unlock(KEY, dev, ts=t - 10)).encode(),  # stale
        json.dumps(sign_unlock(b"wrong-key-wrong-key-wrong", dev, ts=t + 3)).encode(),
        b'{"command": "unlock", "ts": 1}',
    ]
    assert not any(rig.ctl.remote_command(p) for p in refused)
    assert rig.ctl.sync()
    assert rig.relay_states() == [False, True, False]  # only the fresh one opened
    got = [(e.kind, e.reason) for e in rig.entries()]
    assert got == [
        ("remote_unlock", None),
        ("remote_refused", REPLAYED),
        ("remote_refused", STALE),
        ("remote_refused", BAD_SIGNATURE),
        ("remote_refused", MALFORMED),
    ]
    assert [e["type"] for e in rig.events()] == [k for k, _ in got]


def test_remote_unlock_is_off_by_default(rigs: Any) -> None:
    rig = rigs()
    cmd = json.dumps(sign_unlock(KEY, rig.cfg.device.id, ts=int(rig.clock.wall))).encode()
    assert not rig.ctl.remote_command(cmd)
    assert rig.ctl.sync()
    assert rig.relay_states() == [False]
    assert rig.entries()[-1].reason == REMOTE_DISABLED


def test_refused_commands_are_rate_limited_in_the_audit_log(rigs: Any) -> None:
    rig = rigs(remote_unlock=True)
    for _ in range(100):
        rig.ctl.remote_command(b"junk")
    assert len(rig.entries()) == 30 and rig.ctl.refused_unrecorded == 70
    rig.advance(61.0)
    rig.ctl.remote_command(b"junk")
    assert len(rig.entries()) == 31


def test_commands_reach_the_door_only_as_signed_unlocks(rigs: Any) -> None:
    """Wired like the daemon: the command topic's payloads go through the publisher."""
    rig = rigs(remote_unlock=True, unlock_s=3.0)
    rig.pub.on_unlock = rig.ctl.remote_command
    reloads: list[str] = []
    rig.pub.on_command = reloads.append
    # A recorded event (say, a replayed outbox row) is no command at all.
    rig.decide("Alice")
    rig.advance(3.0)
    for payload in list(rig.pub.payloads):
        assert not rig.pub.command(json.dumps(payload).encode())
    assert rig.pub.command(b'{"command": "reload-gallery"}') and reloads == ["reload-gallery"]
    cmd = sign_unlock(KEY, rig.cfg.device.id, ts=int(rig.clock.wall))
    assert rig.pub.command(json.dumps(cmd).encode())
    assert rig.ctl.sync()
    assert rig.relay_states() == [False, True, False, True]


def test_the_readme_signing_script_makes_a_valid_command(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    script = readme.split("```python\n# facegate-unlock.py", 1)[1].split("```", 1)[0]
    (tmp_path / "key").write_bytes(KEY + b"\n")
    out = tmp_path / "out.json"
    code = "# facegate-unlock.py" + script
    ns: dict[str, Any] = {"__name__": "not_main"}
    exec(compile(code, "facegate-unlock.py", "exec"), ns)
    cmd = ns["signed_unlock"](str(tmp_path / "key"), "front-door")
    out.write_text(cmd)
    doc = json.loads(out.read_text())
    import time

    assert _verify(doc, now=time.time()) is None


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("door", "mqtt", "message"),
    [
        ({"contact_pin": 17}, {}, "door.contact_pin: GPIO17 is already door.relay_pin"),
        ({"relay_pin": 40}, {}, "door.relay_pin: must be in [0, 27]"),
        ({"schedule": {"Alice": ["mon 9-5"]}}, {}, "door.schedule.Alice[0]:"),
        ({"schedule": {"group:bad group": ["* 00:00-24:00"]}}, {}, "door.schedule.group:bad"),
        ({"allow": ["group:"]}, {}, "door.allow[0]"),
        ({"allow": "Alice"}, {}, "door.allow: expected an array"),
        ({"timezone": "Mars/Olympus"}, {}, "door.timezone"),
        ({"remote_unlock": True}, {}, "door.remote_unlock: needs door.remote_key_file"),
        ({"remote_unlock": True, "remote_key_file": "k"}, {}, "mqtt.commands = true"),
        ({"mock_log": "x"}, {}, "door.mock_log"),
        ({"unlock_s": 0}, {}, "door.unlock_s: must be in"),
        ({"max_decision_age_ms": 60000}, {}, "door.max_decision_age_ms"),
        ({"pin_factory": "wiringpi"}, {}, "door.pin_factory: must be one of"),
        ({"relay": 17}, {}, "door.relay: unknown key"),
    ],
)
def test_door_config_errors_name_the_key(
    door: dict[str, Any], mqtt: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config({"door": door, "mqtt": mqtt})


@pytest.mark.skipif(Path("/dev/gpiochip0").exists(), reason="this machine has GPIO")
def test_no_gpio_is_one_clear_error(tmp_path: Path) -> None:
    from edge.door.pins import DoorError

    cfg = parse_config(
        {"door": {"enabled": True}, "service": {"state_dir": str(tmp_path)}}, base_dir=tmp_path
    )
    with pytest.raises(DoorError, match=r"no GPIO pin factory works here.*pin_factory = 'mock'"):
        DoorController(cfg)
    assert not (tmp_path / "audit.sqlite").exists()  # nothing else was started


def test_a_stopped_door_takes_no_more_commands(rigs: Any) -> None:
    rig = rigs(remote_unlock=True)
    rig.ctl.stop()
    cmd = json.dumps(sign_unlock(KEY, rig.cfg.device.id, ts=int(rig.clock.wall))).encode()
    assert not rig.ctl.remote_command(cmd)
    assert rig.relay_states() == [False]


def test_door_is_off_by_default() -> None:
    d = Config().door
    assert not d.enabled and not d.remote_unlock and d.allow == ()
    assert (d.unlock_s, d.max_decision_age_ms) == (3.0, 1000)


def test_importing_the_door_loads_no_gpio_library() -> None:
    import subprocess
    import sys

    code = "import sys, edge.door.controller, edge.door.audit; print('gpiozero' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- Home Assistant ----------------------------------------------------------------------------


def test_ha_entities_join_the_device() -> None:
    from edge.delivery.topics import Topics
    from edge.homeassistant.discovery import build_ha_discovery
    from edge.homeassistant.discovery import door_discovery as ha_discovery

    cfg = parse_config(
        {
            "device": {"id": "front-door"},
            "door": {"enabled": True, "contact_pin": CONTACT, "tamper_pin": TAMPER},
        }
    )
    topics = Topics.for_device("facegate", "front-door")
    face = build_ha_discovery(
        topics, device_id="front-door", device_name="Front", ha_prefix="homeassistant",
        sw_version="0",
    )  # fmt: skip
    door = dict(ha_discovery(topics.base, cfg, like=face[0][1]))
    lock = door["homeassistant/lock/front-door/door_lock/config"]
    contact = door["homeassistant/binary_sensor/front-door/door/config"]
    tamper = door["homeassistant/binary_sensor/front-door/tamper/config"]
    for c in (lock, contact, tamper):
        assert c["device"] == face[0][1]["device"]
        assert c["availability_topic"] == topics.availability
        assert c["state_topic"] == f"{topics.base}/door"
    assert lock["command_topic"] == f"{topics.base}/door/set" != topics.command
    assert (contact["device_class"], tamper["device_class"]) == ("door", "tamper")
    no_inputs = ha_discovery(topics.base, parse_config({"door": {"enabled": True}}), face[0][1])
    assert [t.split("/")[1] for t, _ in no_inputs] == ["lock"]


# -- door test ----------------------------------------------------------------------------------


def test_door_test_pulses_once_and_reads_the_inputs(tmp_path: Path) -> None:
    from edge.door.selftest import door_test

    cfg = parse_config(
        {
            "door": {"enabled": True, "pin_factory": "mock", "contact_pin": CONTACT},
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )
    factory = MockFactory()
    lines: list[str] = []
    stop = threading.Event()
    stop.set()  # no need to wait the pulse out
    got = door_test(cfg, seconds=0.5, stop=stop, out=lines.append, factory=factory)
    assert [s.state for s in factory.pin(RELAY).states] == [False, True, False]
    assert got["before"] == {"contact": False, "exit": None, "tamper": None}
    assert any("door open (GPIO5)" in ln for ln in lines)
    [entry] = aud.AuditLog(tmp_path / "audit.sqlite").entries()
    assert entry.kind == "door_test"


def test_a_name_is_never_matched_against_a_group_entry() -> None:
    allow = ["Alice", "group:staff"]
    assert is_allowed("Alice", (), allow)
    assert is_allowed("Carol", ("staff",), allow)
    assert not is_allowed("Bob", ("night",), allow)
    # A person named like the group entry (an older gallery; enrolment now refuses
    # such names) is not thereby in the group.
    assert not is_allowed("group:staff", (), allow)
    assert not is_allowed("GROUP:staff", (), [*allow, "GROUP:staff"])
    assert is_allowed("group:staff", ("staff",), allow)


# -- issue 19: storage never holds the relay; flapping is summarised; tamper may deny ----------


def test_the_relay_is_released_on_time_while_the_audit_log_is_locked(tmp_path: Path) -> None:
    """D3: audit.sqlite write-locked for 8 s: released within unlock_s + 0.2 s; entry written after.

    Real clocks and a real SQLite lock (another connection in BEGIN EXCLUSIVE).
    The bound is the design's (the relay's owner thread never waits on
    storage), measured on the owner thread's own timestamps.
    """
    import sqlite3
    import time

    from broker import wait_for

    cfg = parse_config(
        {
            "door": {"enabled": True, "pin_factory": "mock", "relay_pin": RELAY,
                     "exit_pin": EXIT, "unlock_s": 1.0, "debounce_ms": 0},
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )  # fmt: skip
    factory = MockFactory()
    ctl = DoorController(cfg, factory=factory)
    try:
        assert ctl.sync()
        locker = sqlite3.connect(cfg.audit_file, timeout=0, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        try:
            factory.pin(EXIT).drive_low()  # the exit button: a pulse, then its entry
            factory.pin(EXIT).drive_high()
            assert wait_for(lambda: len(ctl.relay_log) >= 2, 15), list(ctl.relay_log)
            (t_on, on, _), (t_off, off, why) = list(ctl.relay_log)[:2]
            assert (on, off, why) == (True, False, "pulse ended")
            assert t_off - t_on <= 1.0 + 0.2, t_off - t_on
            assert time.monotonic() - locked_at < 8.0  # released while the lock still held
            time.sleep(max(0.0, 8.0 - (time.monotonic() - locked_at)))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # Written once the lock goes, exactly once.
        assert wait_for(lambda: [e.kind for e in aud.read_entries(cfg.audit_file)] != [], 30)
        assert ctl.sync(timeout=30)
        assert [e.kind for e in aud.read_entries(cfg.audit_file)] == ["exit_request"]
    finally:
        ctl.stop()


def test_ten_thousand_tamper_toggles_never_push_a_grant_out(rigs: Any) -> None:
    """D5: 10,000 toggles, audit_max_rows = 200: a few entries and a summary; the grant stays."""
    rig = rigs(inputs=True, audit_max_rows=200, debounce_ms=0)
    _, v = rig.decide("Alice")
    assert v.granted
    before = len(rig.entries())
    tamper = rig.factory.pin(TAMPER)
    for _ in range(5000):
        tamper.drive_high()
        rig.clock.advance(0.001)
        tamper.drive_low()
        rig.clock.advance(0.001)
    assert rig.ctl.sync(timeout=60)
    rig.advance(61.0)  # the burst is over: its summary is written
    entries = rig.entries()
    assert "access_granted" in [e.kind for e in entries]
    tampers = [e for e in entries[before:] if e.kind == "tamper"]
    assert len(tampers) <= 25, len(tampers)
    [summary] = [e for e in tampers if e.data.get("summary")]
    one_by_one = len(tampers) - 1
    assert summary.data["suppressed"] + one_by_one == 10_000
    assert "10,000" not in summary.detail and f"{summary.data['suppressed']:,}" in summary.detail
    assert "tamper" in summary.detail and " in 10 s" in summary.detail
    assert rig.pub.statuses["door"]["tamper"] is False  # the state itself is never dropped
    # Sustained flapping is rate-limited, not silenced: an entry now and then, a summary a minute.
    for _ in range(20):
        tamper.drive_high()
        rig.advance(6.0)
        tamper.drive_low()
        rig.advance(6.0)
    later = [e for e in rig.entries()[before:] if e.kind == "tamper"][len(tampers) :]
    assert 0 < len(later) <= 40


def test_deny_while_tampered(rigs: Any) -> None:
    """[door] deny_while_tampered: a tamper alarm in force denies grants (reason tampered)."""
    from edge.door.policy import TAMPERED

    off = rigs(inputs=True)  # the default: tamper raises an alarm, access goes on
    off.factory.pin(TAMPER).drive_high()
    assert off.ctl.sync()
    assert off.decide("Alice")[1].granted
    rig = rigs(inputs=True, deny_while_tampered=True)
    _, ok = rig.decide("Alice")
    rig.advance(3.0)
    rig.factory.pin(TAMPER).drive_high()  # the cover comes off
    assert rig.ctl.sync()
    _, denied = rig.decide("Alice")
    rig.factory.pin(TAMPER).drive_low()
    assert rig.ctl.sync()
    _, again = rig.decide("Alice")
    assert ok.granted and again.granted
    assert not denied.granted and denied.reason == TAMPERED
    [entry] = [e for e in rig.entries() if e.kind == "access_denied"]
    assert entry.reason == TAMPERED and "tamper" in entry.detail
    assert [why for _, _, why in rig.ctl.relay_log] == ["granted Alice", "pulse ended",
                                                        "granted Alice"]  # fmt: skip


# -- the door state on disk (D2, D11): its edge cases --------------------------------------------


def test_door_state_edges(tmp_path: Path) -> None:
    import os

    from edge.door.remote import UNSAVED
    from edge.door.state import NONCES_KEPT, DoorState

    p = tmp_path / "door-state.json"
    st = DoorState(p, WALL0)
    assert st.remember("a" * 16, WALL0) and st.seen("a" * 16)
    assert DoorState(p, WALL0).seen("a" * 16)  # on disk
    for i in range(NONCES_KEPT + 5):  # kept by number, never by the clock
        st.remember(f"n{i:015d}", WALL0)
    assert not DoorState(p, WALL0).seen("a" * 16) and DoorState(p, WALL0).seen(f"n{5:015d}")
    # A lockout: the rest of it after a restart; all of it when the clock went back (no RTC).
    st.set_lockout(WALL0, WALL0 + 300)
    assert DoorState(p, WALL0 + 100).lockout_left(WALL0 + 100, 300) == 200
    assert DoorState(p, 86400.0).lockout_left(86400.0, 300) == 300
    assert DoorState(p, WALL0 + 400).lockout_left(WALL0 + 400, 300) == 0
    # Unreadable: moved aside; unlocks signed before the start (+ the window) are refused.
    p.write_text("{not json")
    lost = DoorState(p, WALL0)
    assert lost.not_before == WALL0 + 5.0 and list(tmp_path.glob("door-state.json.corrupt-*"))
    cache = NonceCache(store=lost)
    assert cache.add("b" * 16, WALL0, WALL0, 0.0) == REPLAYED
    assert cache.add("c" * 16, WALL0 + 6, WALL0 + 6, 1.0) is None
    # A nonce that cannot be saved refuses its unlock (fail closed).
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        st = DoorState(ro / "door-state.json", WALL0)
        ro.chmod(0o500)
        try:
            assert NonceCache(store=st).add("d" * 16, WALL0, WALL0, 0.0) == UNSAVED
        finally:
            ro.chmod(0o700)


def test_remote_unlock_fails_closed_when_its_nonce_cannot_be_saved(
    rigs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.door.remote import UNSAVED
    from edge.door.state import DoorState

    rig = rigs(remote_unlock=True)
    monkeypatch.setattr(DoorState, "_save", lambda self: (_ for _ in ()).throw(
        ConfigError("disk full")))  # fmt: skip
    cmd = json.dumps(sign_unlock(KEY, rig.cfg.device.id, ts=int(rig.clock.wall))).encode()
    assert not rig.ctl.remote_command(cmd)
    assert rig.entries()[-1].reason == UNSAVED
    assert rig.relay_states() == [False]


# -- liveness: with mode "require" only a track that passed opens ------------------------


def test_a_spoof_or_a_track_without_liveness_never_opens_and_the_audit_says_why(
    rigs: Any,
) -> None:
    rig = rigs(liveness_mode="require")
    prop = Liveness(False, 0.0, ("prop: 31 points beyond the head move with the face",), 0.6)
    _, v = rig.decide("Alice", liveness=prop)
    assert not v.granted and v.reason == "spoof"
    _, v = rig.decide("Alice", liveness=Liveness(None, 0.3))
    assert not v.granted and v.reason == "no_liveness"
    _, v = rig.decide("Alice", liveness=None)  # not measured at all: never a pass
    assert not v.granted and v.reason == "no_liveness"
    rig.advance(5.0)
    assert rig.relay_states() == [False]
    denied = [e for e in rig.entries() if e.kind == "access_denied"]
    assert [e.reason for e in denied] == ["spoof", "no_liveness", "no_liveness"]
    assert denied[0].data["liveness"]["passed"] is False
    assert denied[0].data["liveness"]["evidence"] == list(prop.evidence)
    # A live track of the same person opens.
    _, v = rig.decide("Alice")
    assert v.granted
    assert rig.relay_states() == [False, True]


def test_report_mode_leaves_the_door_to_the_other_rules(rigs: Any) -> None:
    rig = rigs()
    assert rig.cfg.liveness.mode == "report"  # the default (docs/liveness.md says why)
    _, v = rig.decide("Alice", liveness=Liveness(None, 0.1))
    assert v.granted
    # A stranger is still a stranger, live or not.
    _, v = rig.decide(None, liveness=Liveness(True, 0.9))
    assert not v.granted and v.reason == "unknown"

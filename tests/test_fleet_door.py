"""The door's grant gate with the fleet's state machine behind it (mock pins, fake clocks).

A grant the fleet holds becomes ``access_denied`` with the fleet's reason, in
the audit log and the event, and the relay stays released; every other
rule and its reason (an unknown face, the lockout count) is untouched.
"""

from __future__ import annotations

from typing import Any

import pytest
from _fleet import MANIFEST, MODEL, SITE, FakeLink, keys

pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")
from test_door import make_rig

from edge.fleet.sync import FLEET_STALE, FLEET_SYNCING, DeviceSync, Limits
from edge.fleet.topics import FleetTopics


def _denials(rig: Any) -> list[tuple[str | None, str | None]]:
    return [(e.name, e.reason) for e in rig.entries() if e.kind == "access_denied"]


def test_the_gate_turns_grants_into_fleet_denials(tmp_path: Any) -> None:
    _, door = keys(tmp_path / "keys")
    rig = make_rig(tmp_path / "rig", max_denials=2)
    try:
        sync = DeviceSync(
            FleetTopics.for_site("facegate", SITE),
            door,
            (MODEL, MANIFEST),
            None,
            0,
            Limits(sync_wait_s=2.0, fetch_timeout_s=10.0, max_age_s=60.0),
            now=rig.clock.monotonic(),
            confirmed=rig.clock.monotonic(),
            refused=lambda r: None,
            pending=lambda: None,
        )
        rig.ctl.gate = lambda: sync.gate(rig.clock.monotonic())
        # Just started, not connected yet: held.
        assert not rig.decide("Alice")[1].granted
        sync.connected(FakeLink(), rig.clock.monotonic())
        assert not rig.decide("Alice")[1].granted  # connected, not synced
        assert rig.relay_states() == [False]
        assert _denials(rig) == [("Alice", FLEET_SYNCING)] * 2
        e = rig.events("access_denied")[-1]
        assert e["reason"] == FLEET_SYNCING and "brought up to date" in e["detail"]
        # The gate leaves other denials alone: an unknown face is "unknown" and counts.
        rig.decide(None)
        assert _denials(rig)[-1] == (None, "unknown")
        # Offline for longer than max_age_s: fail-secure.
        sync.disconnected(rig.clock.monotonic())
        rig.advance(61.0)
        assert not rig.decide("Alice")[1].granted
        assert _denials(rig)[-1] == ("Alice", FLEET_STALE)
        assert rig.relay_states() == [False]
        rig.ctl.gate = None
        assert rig.decide("Alice")[1].granted  # no fleet: the door as before
    finally:
        rig.ctl.stop()

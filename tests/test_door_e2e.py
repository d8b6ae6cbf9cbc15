"""End to end: real photos at the door, a real Mosquitto, the door on mock pins.

``facegate run`` replays held-out photos of an allowed person, a stranger and
an enrolled person who is not allowed. The audit log and the broker must
both show grant, deny (unknown), deny (not allowed), in that order; once
with the broker up, once with it stopped for the first half of the run. The
relay does exactly the same in both runs: the broker plays no part in it.
The same daemon is then SIGKILLed during a pulse and started again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Collector, mqtt_broker, wait_for
from test_daemon import (
    ENROLLED,
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

pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")

__all__ = ["enrolled", "mqtt_broker"]

ALLOWED, STRANGER, NOT_ALLOWED = "Barack_Obama", "Paul_Rudd", "Jennifer_Aniston"
DOOR_TYPES = ("access_granted", "access_denied")
EXPECTED = [
    ("access_granted", ALLOWED, None),
    ("access_denied", None, "unknown"),
    ("access_denied", NOT_ALLOWED, "not_allowed"),
]


def _setup(tmp_path: Path, enrolled: Enrolled, tail_s: float) -> None:
    """Gallery, key and a replay folder in ``tmp_path``, with ``tail_s`` of empty frames."""
    assert ALLOWED in ENROLLED and NOT_ALLOWED in ENROLLED
    enrolled.gallery.save(tmp_path / "gallery.fgg", enrolled.key)
    (tmp_path / "gallery.key").write_bytes(enrolled.key)
    _replay_folder(tmp_path, enrolled.held_out, [ALLOWED, STRANGER, NOT_ALLOWED])
    folder = tmp_path / "replay"
    n = len(list(folder.iterdir()))
    for i in range(int(tail_s * REPLAY_FPS)):
        (folder / f"{n + i:04d}.png").symlink_to(tmp_path / "blank.png")


def _config(tmp_path: Path, run: str, broker: Broker | None, unlock_s: float = 3.0) -> Path:
    """A daemon config for one run (MQTT off without a broker), its state in ``tmp_path/run``."""
    state = tmp_path / run
    state.mkdir()
    mqtt: dict[str, object] = {"enabled": False}
    if broker is not None:
        mqtt = {"enabled": True, "host": broker.host, "port": broker.port}
    sections: dict[str, dict[str, object]] = {
        "camera": {"source": "folder", "path": "replay", "fps": REPLAY_FPS},
        "mqtt": mqtt,
        # Still photos, and the broker's part in the door: liveness (which no
        # photo passes) has its own end-to-end test, test_liveness_e2e.
        "liveness": {"mode": "off"},
        "door": {
            "enabled": True,
            "pin_factory": "mock",
            "mock_log": str(state / "relay.log"),
            "allow": [ALLOWED],
            "unlock_s": unlock_s,
        },
        "service": {"state_dir": str(state)},
    }
    return _write_config(tmp_path, f"{run}.toml", sections)


def _audit(state: Path) -> list[tuple[str, str | None, str | None]]:
    from edge.door.audit import read_entries

    if not (state / "audit.sqlite").exists():
        return []
    return [(e.kind, e.name, e.reason) for e in read_entries(state / "audit.sqlite")]


def _door_events(sub: Collector, topic: str) -> list[dict[str, Any]]:
    out = [json.loads(p) for p in sub.payloads(topic)]
    return [e for e in out if e["type"] in DOOR_TYPES]


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.mark.slow
@needs_pipeline
@needs_faces
@pytest.mark.mqtt
def test_grant_and_denials_reach_the_audit_log_and_the_broker_in_order(
    enrolled: Enrolled, tmp_path: Path, mqtt_broker: Broker
) -> None:
    from edge.delivery.topics import Topics

    _setup(tmp_path, enrolled, tail_s=40.0)
    topics = Topics.for_device("facegate", "test-door")
    relays: dict[str, list[int]] = {}
    for run, broker_down in (("up", False), ("half-down", True)):
        state = tmp_path / run
        sub = Collector(mqtt_broker, [topics.event], client_id=f"sub-{run}").start()
        assert sub.ready()
        if broker_down:
            mqtt_broker.stop()
        proc = _spawn(_config(tmp_path, run, mqtt_broker), None)
        try:
            if broker_down:
                # The first half (the grant and the stranger) happens with no broker.
                assert wait_for(lambda st=state: len(_audit(st)) >= 2, 120), proc.poll()
                mqtt_broker.start()
            assert wait_for(lambda st=state: len(_audit(st)) >= 3, 120), proc.poll()
            assert sub.wait_for(lambda s=sub: len(_door_events(s, topics.event)) >= 3, 60)
        finally:
            err = _stop(proc)
            sub.stop()
        assert proc.returncode == 0, err
        assert _audit(state) == EXPECTED, err
        events = _door_events(sub, topics.event)
        assert [(e["type"], e["name"], e["reason"]) for e in events] == EXPECTED
        assert [e["audit_id"] for e in events] == [1, 2, 3]
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        relays[run] = relay_states(state / "relay.log", proc.pid)
    # One pulse for the allowed person, in both runs: the broker changed nothing.
    assert relays["up"] == relays["half-down"] == [0, 1, 0]


@pytest.mark.slow
@needs_pipeline
@needs_faces
def test_sigterm_and_sigkill_of_the_daemon_during_a_pulse(
    enrolled: Enrolled, tmp_path: Path
) -> None:
    _setup(tmp_path, enrolled, tail_s=60.0)
    config = _config(tmp_path, "kill", None, unlock_s=60.0)
    log = tmp_path / "kill" / "relay.log"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = _spawn(config, None)
        try:
            assert wait_for(lambda p=proc: relay_states(log, p.pid) == [0, 1], 120), proc.poll()
            t0 = time.monotonic()
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=10)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if sig == signal.SIGTERM:
            assert proc.returncode == 0 and took < 5.0, err
            assert relay_states(log, proc.pid) == [0, 1, 0]
        else:
            assert relay_states(log, proc.pid) == [0, 1]  # a dead process released nothing
    # The next start: released before anything else, whatever the last process left.
    nxt = _spawn(config, None)
    try:
        assert wait_for(lambda: relay_states(log, nxt.pid) != [], 60), nxt.poll()
        first = next(ln for ln in log.read_text().splitlines() if ln.startswith(f"{nxt.pid} "))
        assert first == f"{nxt.pid} GPIO17 0"
    finally:
        _stop(nxt)

"""What the door remembers across a crash, and who may run on its state (issue 19: D2, D11, D13).

Each test runs the daemon as a process of its own (``tests/_door_child.py``:
:func:`edge.daemon.run` with the real MQTT publisher, door and audit log,
stand-ins for the camera and the models), kills it with SIGKILL and starts
it again on the same ``service.state_dir``:

* D2: a captured remote unlock replayed after the restart is refused
  (``replayed``), though its ``ts`` is still fresh;
* D11: a lockout in force when the process died is still in force after it;
* D13: a second daemon on the same state_dir stops at once, in one line,
  without touching the relay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from broker import Broker, mqtt_broker, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from test_door_process import relay_states

pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")

from edge.door.audit import read_entries
from edge.door.remote import sign_unlock

__all__ = ["mqtt_broker"]

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().parent / "_door_child.py"
KEY = b"remote-unlock-key-0123456789abcdef"
DEVICE = "restart-door"


class Wall:
    """The child's wall clock (``FACEGATE_TEST_WALL``), read the same way here."""

    def __init__(self, rate: float) -> None:
        self.base = time.time()
        self.t0 = self.base
        self.rate = rate

    def env(self) -> str:
        return f"{self.base},{self.t0},{self.rate}"

    def now(self) -> float:
        return self.base + (time.time() - self.t0) * self.rate


class Child:
    def __init__(self, config: Path, frames: str, wall: Wall, name: str) -> None:
        self.err = config.parent / f"{name}.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        env["FACEGATE_TEST_WALL"] = wall.env()
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), str(config), frames],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        ok = wait_for(lambda: text in self.log() or self.proc.poll() is not None, timeout)
        assert ok and self.proc.poll() is None, f"{text!r} not logged:\n{self.log()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)


def _config(d: Path, broker: Broker | None, door: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "unlock.key").write_bytes(KEY)
    (d / "unlock.key").chmod(0o600)
    mqtt = "[mqtt]\nenabled = false\n"
    if broker is not None:
        mqtt = (
            f'[mqtt]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
            "commands = true\n"
        )
    cfg = d / "door.toml"
    cfg.write_text(
        f'[device]\nid = "{DEVICE}"\n[service]\nstate_dir = "{d}"\n'
        "[decision]\nk = 1\nn = 1\nmax_track_age_s = 0.3\n"
        + mqtt
        + '[door]\nenabled = true\npin_factory = "mock"\nmock_log = "relay.log"\n'
        'allow = ["Alice"]\nunlock_s = 0.5\n' + door
    )
    return cfg


def _audit(d: Path) -> list[tuple[str, str | None]]:
    p = d / "audit.sqlite"
    return [(e.kind, e.reason) for e in read_entries(p)] if p.exists() else []


def _publisher(broker: Broker) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="d2-sender", protocol=paho.MQTTv311)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


REMOTE = 'remote_unlock = true\nremote_key_file = "unlock.key"\n'


@pytest.mark.mqtt
def test_a_captured_unlock_does_not_work_again_after_a_restart(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    """D2: accepted, kill -9, restart, the same bytes again: refused as ``replayed``."""
    wall = Wall(rate=0.1)  # 5 s of the door's window last 50 s here: any restart fits
    cfg = _config(tmp_path, mqtt_broker, REMOTE)
    topic = f"facegate/{DEVICE}/command"
    sender = _publisher(mqtt_broker)
    first = Child(cfg, "", wall, "first")
    second: Child | None = None
    try:
        first.wait_log("mqtt: listening for commands")
        captured = json.dumps(sign_unlock(KEY, DEVICE, ts=int(wall.now()))).encode()
        sender.publish(topic, captured, qos=1).wait_for_publish(10)
        assert wait_for(lambda: _audit(tmp_path) == [("remote_unlock", None)], 30), first.log()
        assert relay_states(tmp_path / "relay.log", first.pid)[:2] == [0, 1]
        first.kill()

        second = Child(cfg, "", wall, "second")
        second.wait_log("mqtt: listening for commands")
        assert abs(wall.now() - json.loads(captured)["ts"]) < 4.0  # still fresh: only the nonce
        sender.publish(topic, captured, qos=1).wait_for_publish(10)
        marker = json.dumps(sign_unlock(KEY, DEVICE, ts=int(wall.now()))).encode()
        sender.publish(topic, marker, qos=1).wait_for_publish(10)
        want = [("remote_unlock", None), ("remote_refused", "replayed"), ("remote_unlock", None)]
        assert wait_for(lambda: len(_audit(tmp_path)) >= 3, 30), second.log()
        assert _audit(tmp_path) == want, second.log()
        assert relay_states(tmp_path / "relay.log", second.pid) in ([0, 1], [0, 1, 0])
    finally:
        first.kill()
        if second is not None:
            second.kill()
        sender.disconnect()
        sender.loop_stop()


def test_a_lockout_survives_a_crash(tmp_path: Path) -> None:
    """D11: two strangers lock the door; after kill -9 and a restart Alice is still refused."""
    wall = Wall(rate=1.0)
    cfg = _config(tmp_path, None, "max_denials = 2\nlockout_window_s = 60.0\nlockout_s = 600.0\n")
    strangers = ",".join(["?"] + [""] * 20 + ["?"])
    first = Child(cfg, strangers, wall, "first")
    second: Child | None = None
    try:
        assert wait_for(lambda: ("lockout", "unknown") in _audit(tmp_path), 60), first.log()
        first.kill()
        second = Child(cfg, ",".join(["Alice"] * 3), wall, "second")
        assert wait_for(lambda: len(_audit(tmp_path)) >= 5, 60), second.log()
        assert _audit(tmp_path) == [
            ("access_denied", "unknown"),
            ("access_denied", "unknown"),
            ("lockout", "unknown"),  # engaged, and saved
            ("lockout", "unknown"),  # the second process resumes it, and says so
            ("access_denied", "lockout"),
        ], second.log()
        resumed = list(read_entries(tmp_path / "audit.sqlite"))[3]
        assert resumed.data["resumed"] is True and 590 <= resumed.data["left_s"] <= 600
        assert relay_states(tmp_path / "relay.log", second.pid) == [0]
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_a_second_daemon_on_the_same_state_dir_stops_in_one_line(tmp_path: Path) -> None:
    """D13: the state_dir is locked (flock); the second start never touches the relay."""
    wall = Wall(rate=1.0)
    cfg = _config(tmp_path, None)
    first = Child(cfg, "", wall, "first")
    try:
        first.wait_log("ready: first frame processed")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        second = subprocess.run(
            [sys.executable, "-m", "edge", "run", "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("facegate: error: service.state_dir:"), lines
        assert f"pid {first.pid}" in lines[0] and "in use by another facegate process" in lines[0]
        pids = {ln.split()[0] for ln in (tmp_path / "relay.log").read_text().splitlines()}
        assert pids == {str(first.pid)}  # only the first process ever wrote the relay
        assert first.proc.poll() is None  # and it runs on
    finally:
        first.kill()

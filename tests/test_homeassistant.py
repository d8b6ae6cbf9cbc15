"""The discovery configs and a live event stream through a real Home Assistant.

Home Assistant 2024.1 (the newest release that installs on Python 3.11) runs
from its own virtualenv, ``.venv-ha/`` in the checkout (git-ignored), which
``bash tools/setup.sh --dev`` builds (:mod:`tools.ha_venv`, about 2 minutes,
needs the package index). Nothing is installed here: when the venv is missing
or stale the tests are skipped, saying how to build it. It runs as a process with its
config folder in a temporary directory; its MQTT integration is configured
through a config entry written to ``.storage/core.config_entries`` (2024.1 has
no YAML for the broker) and pointed at the test's Mosquitto. Home Assistant
reports its states back on MQTT (``mqtt_statestream``), so the test needs no
API token.

What it shows: every entity appears with no warning or error in Home
Assistant's log; the README's unlock automation fires once for a live
recognition and not for a late event, a redelivery (same id, or an older
event after a newer one), an expired event, or a reconnect (availability
offline -> online, which restores the last event, and does fire a naive
state trigger). Also: "Last person" says Alice, then Stranger, and clears;
the snapshot image and "Person at door" update; the "Reload gallery" button
reaches the device as a command. The door (on gpiozero's mock pins): the lock
entity follows the relay through a granted recognition, the door and tamper
sensors follow their inputs, and Home Assistant's own unsigned "unlock" never
moves the relay.

Run it alone with ``pytest -m homeassistant``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from broker import Broker, Collector, free_port, mosquitto_path, mqtt_broker
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import Config, parse_config
from edge.daemon import Publisher
from edge.delivery.codec import encode
from edge.delivery.events import build_event, iso_utc
from edge.delivery.topics import Topics
from edge.types import Box, Decision, Liveness
from tools import ha_venv

pytestmark = [
    pytest.mark.homeassistant,
    pytest.mark.mqtt,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed"),
]
__all__ = ["mqtt_broker"]

REPO = Path(__file__).resolve().parents[1]
# The one warning we cause on purpose (--skip-pip: the setup installed everything).
EXPECTED_WARNINGS = ("Skipping pip installation of required modules",)

DEVICE = "front-door"
T = Topics.for_device("facegate", DEVICE)
STATE = "hastate"
FACE = "event/front_door_face"
UNLOCKS = "counter/unlocks"
NAIVE = "counter/naive"


def ha_python() -> Path:
    """Home Assistant's python (``.venv-ha/``, built by the setup), else skip saying why."""
    python, why = ha_venv.status()
    if python is None:
        pytest.skip(why)
    return python


def readme_automation(automation_id: str) -> str:
    """The YAML of one automation from the README (the test runs what users copy)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S):
        if f"id: {automation_id}\n" in block:
            return str(block)
    raise AssertionError(f"no automation {automation_id!r} in the README")


TEST_AUTOMATIONS = """
- id: test_naive_unlock
  alias: "Naive: any state change of the event entity"
  mode: queued
  trigger:
    - platform: state
      entity_id: event.front_door_face
  action:
    - service: counter.increment
      target:
        entity_id: counter.naive
- id: test_started
  alias: "Tell the test Home Assistant has started"
  trigger:
    - platform: homeassistant
      event: start
  action:
    - service: mqtt.publish
      data:
        topic: test/ha/started
        payload: "1"
- id: test_door_unlock
  alias: "Ask the device's door lock to unlock when the test asks"
  trigger:
    - platform: mqtt
      topic: test/ha/door_unlock
  action:
    - service: lock.unlock
      target:
        entity_id: lock.front_door_door_lock
- id: test_enrol_name
  alias: "Type a name into the device's Enrol name when the test asks"
  trigger:
    - platform: mqtt
      topic: test/ha/enrol_name
  action:
    - service: text.set_value
      target:
        entity_id: text.front_door_enrol_name
      data:
        value: "{{ trigger.payload }}"
- id: test_enrol_press
  alias: "Press Enrol next face when the test asks"
  trigger:
    - platform: mqtt
      topic: test/ha/enrol_press
  action:
    - service: button.press
      target:
        entity_id: button.front_door_enrol_next_face
- id: test_press
  alias: "Press the reload button when the test asks"
  trigger:
    - platform: mqtt
      topic: test/ha/press
  action:
    - service: button.press
      target:
        entity_id: button.front_door_reload_gallery
"""

CONFIGURATION = """
homeassistant:
  name: facegate test
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: DE
http:
  server_host: 127.0.0.1
  server_port: {http_port}
logger:
  default: warning
mqtt_statestream:
  base_topic: {state}
  publish_attributes: true
counter:
  unlocks:
  naive:
lock:
  - platform: template
    name: Front door
    value_template: "{{{{ true }}}}"
    lock:
      service: counter.increment
      target:
        entity_id: counter.naive
    unlock:
      service: counter.increment
      target:
        entity_id: counter.unlocks
automation: !include automations.yaml
"""


ENROL_KEY = b"enrol-key-" * 4


def readme_enrolment(cfg_dir: Path) -> tuple[str, str]:
    """The README's "Enrol next face" set-up, as users copy it: the signing script and its
    key into the config folder, its ``shell_command`` (configuration) and its automation."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (script,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "enrol-v1" in b]
    (cfg_dir / "facegate-enrol.py").write_text(script)
    (cfg_dir / "facegate-enrol.key").write_bytes(ENROL_KEY)
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "sign_enrol" in b]
    shell, automation = block.replace("/config/", f"{cfg_dir}/").split("\nautomation:\n")
    listed = "\n".join(line.removeprefix("  ") for line in automation.splitlines())
    return shell.rstrip("\n") + "\n", listed + "\n"


def write_ha_config(
    cfg_dir: Path,
    broker: Broker,
    *,
    login: tuple[str, str] | None = None,
    configuration: str = "",
    automations: str = "",
) -> None:
    """Home Assistant's config folder: the test's configuration and automations, the broker.

    ``login``: Home Assistant's broker user; ``configuration`` and
    ``automations``: YAML added to ``configuration.yaml`` and ``automations.yaml``.
    """
    (cfg_dir / ".storage").mkdir(parents=True)
    shell, enrol = readme_enrolment(cfg_dir)
    if "shell_command:\n" in configuration:  # one shell_command table: both recipes' entries
        configuration = configuration.replace("shell_command:\n", shell, 1)
    else:
        configuration = shell + configuration
    (cfg_dir / "configuration.yaml").write_text(
        CONFIGURATION.format(http_port=free_port(), state=STATE) + configuration
    )
    (cfg_dir / "automations.yaml").write_text(
        readme_automation("facegate_unlock_alice") + enrol + TEST_AUTOMATIONS + automations
    )
    data: dict[str, Any] = {"broker": broker.host, "port": broker.port, "discovery": True}
    if login is not None:
        data.update(username=login[0], password=login[1])
    entry = {
        "entry_id": uuid.uuid4().hex,
        "version": 1,
        "minor_version": 1,
        "domain": "mqtt",
        "title": "test broker",
        "data": data,
        "options": {},
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
        "source": "user",
        "unique_id": None,
        "disabled_by": None,
    }
    store = {"version": 1, "minor_version": 1, "key": "core.config_entries"}
    store["data"] = {"entries": [entry]}
    (cfg_dir / ".storage" / "core.config_entries").write_text(json.dumps(store))


class HomeAssistant:
    """A Home Assistant process and what it tells the broker (states via statestream).

    ``auth``: the test's own broker user (a broker with the shipped ACL).
    """

    def __init__(
        self, python: Path, cfg_dir: Path, broker: Broker, auth: tuple[str, str] | None = None
    ) -> None:
        self.cfg_dir = cfg_dir
        self.log = cfg_dir / "home-assistant.log"
        self.states = Collector(
            broker, [f"{STATE}/#", "test/ha/#"], persistent=False, auth=auth
        ).start()
        out = (cfg_dir / "stdout.txt").open("wb")
        self.proc = subprocess.Popen(
            [
                *(str(python), "-m", "homeassistant", "-c", str(cfg_dir), "--skip-pip"),
                *("--log-no-color", "--log-file", str(self.log)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        )
        out.close()

    def values(self, entity: str, attr: str = "state") -> list[str]:
        """Every value statestream reported for ``<domain>/<object_id>`` (live, not retained)."""
        topic = f"{STATE}/{entity}/{attr}"
        return [
            p.decode() for t, p, retained in self.states.snapshot() if t == topic and not retained
        ]

    def last(self, entity: str, attr: str = "state") -> str | None:
        v = self.values(entity, attr)
        return v[-1] if v else None

    def count(self, counter: str) -> int:
        return int(self.last(counter) or 0)

    def wait(self, what: Callable[[], bool], timeout: float = 30.0, why: str = "") -> None:
        if not self.states.wait_for(lambda: what() or self.proc.poll() is not None, timeout):
            raise AssertionError(f"timed out: {why}\n{self.log_tail()}")
        assert self.proc.poll() is None, f"Home Assistant exited\n{self.log_tail()}"

    def problems(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return [
            ln
            for ln in lines
            if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", ln)
            and not any(w in ln for w in EXPECTED_WARNINGS)
        ]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.states.stop()


@pytest.fixture
def home_assistant(tmp_path: Path, mqtt_broker: Broker) -> Iterator[HomeAssistant]:
    python = ha_python()
    write_ha_config(tmp_path / "ha", mqtt_broker)
    t0 = time.monotonic()
    ha = HomeAssistant(python, tmp_path / "ha", mqtt_broker)
    try:
        ha.wait(lambda: ha.states.payloads("test/ha/started") != [], 120, "Home Assistant start")
        print(f"\nHome Assistant started in {time.monotonic() - t0:.1f} s")
        yield ha
    finally:
        ha.stop()


def device_config(tmp: Path, broker: Broker, door: dict[str, Any] | None = None) -> Config:
    doc: dict[str, Any] = {
        "device": {"id": DEVICE, "name": "Front door"},
        "mqtt": {
            "enabled": True,
            "host": broker.host,
            "port": broker.port,
            "keepalive": 5,
            "ha_discovery": True,
            "commands": True,
            "snapshot": True,
        },
        # Long enough that the reconnect below happens while the last event is
        # still valid: only not_from: unavailable stands between it and the lock.
        "events": {"valid_for_s": 20.0},
        "homeassistant": {"last_person_clear_s": 2.0},
        "service": {"state_dir": str(tmp)},
    }
    if door is not None:
        doc["door"] = door
    return parse_config(doc, base_dir=tmp)


def online(cfg: Config) -> Publisher:
    pub = Publisher(cfg)
    pub.start()
    pub.set_state(
        status="running",
        fps=9.5,
        frames=1,
        dropped=0,
        events=0,
        gallery_size=2,
        uptime_s=1.0,
        model_sha256="ab" * 32,
    )
    pub.set_gallery(["Alice", "Bob"])
    pub.set_ready()
    return pub


def face(name: str | None, age_s: float = 0.0) -> Decision:
    return Decision(
        kind="recognized" if name else "unknown",
        name=name,
        distance=0.25 if name else 0.8,
        confidence=0.95 if name else 0.05,
        track_id=1,
        track_length=4,
        timestamp=time.time() - age_s,
        box=Box(200, 100, 120, 140),
        snapshot=np.full((140, 120, 3), 120, np.uint8),
        liveness=Liveness(True, 0.8158, ("turn 21deg (texture 15deg, z=11) at 1.1s",)),
    )


def raw(broker: Broker, topic: str, payload: bytes) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw", protocol=paho.MQTTv311)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def test_home_assistant_runs_the_readme_unlock_automation_safely(
    home_assistant: HomeAssistant,
    mqtt_broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ha = home_assistant
    # A door's clock is synchronised; this test machine's may not be.
    monkeypatch.setattr("edge.delivery.mqtt.clock_synced", lambda: True)
    cfg = device_config(tmp_path / "device", mqtt_broker)
    commands: list[str] = []
    pub = online(cfg)
    pub.on_command = commands.append
    entities = [
        FACE,
        "sensor/front_door_last_person",
        "binary_sensor/front_door_person_at_door",
        "button/front_door_reload_gallery",
        "image/front_door_snapshot",
        "sensor/front_door_frames_per_second",
        "sensor/front_door_enrolled_people",
        "sensor/front_door_undelivered_events",
    ]
    ha.wait(lambda: ha.last("sensor/front_door_enrolled_people") == "2", 60, "discovery")
    ha.wait(lambda: all(ha.last(e) not in (None, "unavailable") for e in entities), 30, "entities")
    assert ha.last("sensor/front_door_frames_per_second") == "9.5"
    assert ha.last("binary_sensor/front_door_person_at_door") == "off"

    def face_event(event_id: str) -> bool:
        return ha.last(FACE, "id") == json.dumps(event_id)

    def sentinel() -> str:
        # A live unknown face: the entity changes, so everything sent before
        # it has been processed by now (one connection, in order).
        e = pub.publish_decision(face(None))
        ha.wait(lambda: face_event(e["id"]), why="sentinel event")
        return str(e["id"])

    # 1. A live recognition of Alice: the automation fires once.
    alice = pub.publish_decision(face("Alice"))
    ha.wait(lambda: ha.count(UNLOCKS) == 1, why="unlock on a live recognition")
    # Statestream publishes each attribute as its own message: wait for all of them.
    ha.wait(
        lambda: (
            face_event(alice["id"])
            and ha.last(FACE, "delivery") == '"live"'
            and ha.last(FACE, "name") == '"Alice"'
            and ha.last(FACE, "liveness") is not None
        ),
        why="the event's attributes",
    )
    assert json.loads(ha.last(FACE, "liveness") or "null") == alice["liveness"]
    assert alice["liveness"]["passed"] is True
    ha.wait(lambda: "Alice" in ha.values("sensor/front_door_last_person"), why="Last person")
    ha.wait(lambda: ha.last("sensor/front_door_last_person") == "", why="Last person cleared")

    # 2. A redelivery of that event (same id, same bytes): nothing.
    wire = encode(alice)
    raw(mqtt_broker, T.event, wire)
    stranger = sentinel()
    assert ha.count(UNLOCKS) == 1
    assert "Stranger" in ha.values("sensor/front_door_last_person")
    # ... nor when it comes again after a newer event (a re-send after a reconnect).
    raw(mqtt_broker, T.event, wire)
    sentinel()
    assert ha.count(UNLOCKS) == 1

    # 3. A late event (decided a minute ago, published now): delivered, ignored.
    late = pub.publish_decision(face("Alice", age_s=60.0))
    assert late["delivery"] == "late"
    sentinel()
    assert ha.count(UNLOCKS) == 1 and not face_event(late["id"])

    # 4. "live" but already expired (a broker that held it back): the condition refuses it.
    seq = int(late["seq"]) + 100
    expired = build_event(
        face("Alice"),
        device_id=DEVICE,
        seq=seq,
        event_id=uuid.uuid4().hex,
        clock_synced=True,
        valid_for_s=20.0,
    )
    expired["expires_at"] = iso_utc(time.time() - 1.0)
    raw(mqtt_broker, T.event, encode(expired))
    ha.wait(lambda: face_event(expired["id"]), why="the expired event reaches the entity")
    sentinel()
    assert ha.count(UNLOCKS) == 1
    assert stranger != expired["id"]

    # 5. Alice again, live: fires (the automation still works) ...
    again = pub.publish_decision(face("Alice"))
    ha.wait(lambda: ha.count(UNLOCKS) == 2, why="second live recognition")
    ha.wait(lambda: face_event(again["id"]), why="the event's attributes")
    # ... then the device reconnects (offline -> online) while that event is valid.
    naive_before = ha.count(NAIVE)
    pub.stop(timeout=3.0)
    ha.wait(lambda: ha.last(FACE) == "unavailable", why="offline")
    pub = online(cfg)
    pub.on_command = commands.append
    ha.wait(lambda: ha.last(FACE) not in (None, "unavailable"), why="online again")
    assert face_event(again["id"])  # Home Assistant restored the last event ...
    ha.wait(lambda: ha.count(NAIVE) > naive_before, why="the naive trigger fires on reconnect")
    sentinel()
    assert ha.count(UNLOCKS) == 2  # ... and the README's automation did not fire

    # The rest of the device: presence, snapshot, the reload button.
    pictures = len(ha.values("image/front_door_snapshot"))
    pub.set_presence(True)
    ha.wait(lambda: ha.last("binary_sensor/front_door_person_at_door") == "on", why="presence")
    sentinel()
    assert len(ha.values("image/front_door_snapshot")) > pictures
    raw(mqtt_broker, "test/ha/press", b"1")
    ha.states.wait_for(lambda: commands == ["reload-gallery"], 15)
    assert commands == ["reload-gallery"]
    pub.stop(timeout=3.0)

    problems = ha.problems()
    assert ha.log.stat().st_size > 0
    assert not problems, "\n".join(problems)
    print(f"unlocks={ha.count(UNLOCKS)} naive={ha.count(NAIVE)} log={ha.log.stat().st_size} B")


RELAY, CONTACT, TAMPER = 17, 27, 22
LOCK = "lock/front_door_door_lock"
DOOR = "binary_sensor/front_door_door"
TAMPERED = "binary_sensor/front_door_tamper"


def test_home_assistant_shows_the_door_and_cannot_open_it(
    home_assistant: HomeAssistant,
    mqtt_broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The door's entities in a real Home Assistant, on gpiozero's mock pins.

    The lock follows the relay (a granted recognition unlocks, then locks
    again), the door and tamper sensors follow their inputs, and Home
    Assistant's own "unlock" (which has no signature) never moves the relay.
    """
    pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")
    from gpiozero.pins.mock import MockFactory

    from edge.door.controller import DoorController

    ha = home_assistant
    monkeypatch.setattr("edge.delivery.mqtt.clock_synced", lambda: True)
    door = {
        "enabled": True,
        "pin_factory": "mock",
        "relay_pin": RELAY,
        "contact_pin": CONTACT,
        "tamper_pin": TAMPER,
        "allow": ["Alice"],
        "unlock_s": 1.5,
    }
    device = tmp_path / "device"
    device.mkdir()
    cfg = device_config(device, mqtt_broker, door)
    pub = online(cfg)
    factory = MockFactory()
    ctl = DoorController(cfg, events=pub, factory=factory)
    set_topic = f"{T.base}/door/set"
    asked = Collector(mqtt_broker, [set_topic], persistent=False).start()
    try:
        # The inputs' MockPins start pulled up (switches open): a shut door and
        # an intact cover close both, as on a healthy installation.
        factory.pin(CONTACT).drive_low()
        factory.pin(TAMPER).drive_low()
        assert asked.ready() and ctl.sync()
        ha.wait(lambda: ha.last(LOCK) == "locked", 60, "the lock entity, locked")
        ha.wait(lambda: ha.last(DOOR) == "off" and ha.last(TAMPERED) == "off", 30, "sensors")

        # A live recognition of an allowed person: the relay pulses, and the
        # lock shows it unlocked, then locked again.
        verdict = ctl.on_decision(face("Alice"))
        assert verdict.granted, verdict
        ha.wait(lambda: "unlocked" in ha.values(LOCK), why="unlocked during the pulse")
        ha.wait(lambda: ha.last(LOCK) == "locked", why="locked after unlock_s")
        pulses = [e for e in ctl.relay_log if e[1]]
        assert len(pulses) == 1

        factory.pin(CONTACT).drive_high()  # the door opens
        ha.wait(lambda: ha.last(DOOR) == "on", why="door open")
        factory.pin(CONTACT).drive_low()
        ha.wait(lambda: ha.last(DOOR) == "off", why="door shut")
        factory.pin(TAMPER).drive_high()  # the cover comes off
        ha.wait(lambda: ha.last(TAMPERED) == "on", why="tamper")

        # Home Assistant's unlock reaches the broker, unsigned: the relay stays off.
        unlocked_before = len([v for v in ha.values(LOCK) if v == "unlocked"])
        raw(mqtt_broker, "test/ha/door_unlock", b"1")
        assert asked.wait_for(lambda: asked.payloads(set_topic) == [b"UNLOCK"], 30), ha.log_tail()
        time.sleep(1.0)
        assert ctl.sync()
        assert not ctl.energised and [e for e in ctl.relay_log if e[1]] == pulses
        assert len([v for v in ha.values(LOCK) if v == "unlocked"]) == unlocked_before
        assert ha.last(LOCK) == "locked"
    finally:
        asked.stop()
        ctl.stop()
        pub.stop(timeout=3.0)
    problems = ha.problems()
    assert not problems, "\n".join(problems)


# -- the README's door recipe, end to end, with the shipped broker config and ACL ---------------

ROOT_SYSTEMD = REPO / "systemd"
ACL_USERS = {
    "front-door": "door-pw",
    "homeassistant": "ha-pw",
    "tester": "t-pw",  # reads Home Assistant's state stream
    "poker": "p-pw",  # pokes Home Assistant's test automations
    "watcher": "w-pw",  # reads facegate/#: what reaches the broker's subscribers
    "widened": "x-pw",  # an admin widened the ACL: may write door/set
    "mallory": "m-pw",  # any other user
}
# The shipped ACL, plus what only this test needs (one user per connection: the shipped
# config names each client after its user). Nothing here widens facegate/ but "widened".
TEST_ACL = """
# -- test only ------------------------------------------------------------------------
user homeassistant
topic write hastate/#
topic readwrite test/ha/#
user tester
topic read hastate/#
topic read test/ha/#
user poker
topic write test/ha/#
user watcher
topic read facegate/#
user widened
topic write facegate/+/door/set
"""
UNLOCK_KEY = b"ha-remote-unlock-key-0123456789abcdef"


def readme_yaml(marker: str) -> str:
    """The README's YAML block that holds ``marker``."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S):
        if marker in block:
            return str(block)
    raise AssertionError(f"no YAML block with {marker!r} in the README")


def readme_signing_script() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return (
        "# facegate-unlock.py"
        + readme.split("```python\n# facegate-unlock.py", 1)[1].split("```", 1)[0]
    )


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto with every setting of systemd/mosquitto-facegate.conf and the shipped ACL."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto_passwd")
    d = tmp_path / "acl"
    d.mkdir()
    passwd = d / "passwd"
    passwd.touch()
    for user, pw in ACL_USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True)
    acl = d / "facegate.acl"
    acl.write_text((ROOT_SYSTEMD / "mosquitto-acl.example").read_text() + TEST_ACL)
    conf = (ROOT_SYSTEMD / "mosquitto-facegate.conf").read_text().splitlines()
    settings = dict(ln.split(None, 1) for ln in conf if ln and not ln.startswith("#"))
    own = {"listener", "password_file", "acl_file", "allow_anonymous", "per_listener_settings"}
    extra = [f"{k} {v}" for k, v in settings.items() if k not in own]
    extra += [f"password_file {passwd}", f"acl_file {acl}"]
    b = Broker(d / "broker", extra_conf="\n".join(extra), anonymous=False)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_the_readme_door_recipe_with_the_shipped_acl(
    acl_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Home Assistant's lock opens the door only through a command it signs itself.

    The README's recipe (a shell command that signs with a key only Home
    Assistant holds, an automation on Home Assistant's own lock.unlock) on a
    broker with the shipped config and ACL: the lock entity's UNLOCK pulses
    the relay once (remote_unlock in the audit log) and the entity shows it;
    nobody who writes ``door/set`` or the command topic (another user, the
    test's own) gets a pulse: ``door/set`` reaches the broker (Home Assistant's
    own UNLOCK, one from a user an admin allowed to write it) and opens nothing.
    """
    pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")
    from gpiozero.pins.mock import MockFactory

    from edge.door.audit import read_entries
    from edge.door.controller import DoorController

    python = ha_python()
    ha_dir = tmp_path / "ha"
    config = readme_yaml("shell_command:").replace("/config/", f"{ha_dir}/")
    automation = readme_yaml("id: facegate_door_unlock")
    write_ha_config(ha_dir, acl_broker, login=("homeassistant", ACL_USERS["homeassistant"]),
                    configuration=config, automations=automation)  # fmt: skip
    (ha_dir / "facegate-unlock.py").write_text(readme_signing_script())
    (ha_dir / "facegate-unlock.key").write_bytes(UNLOCK_KEY + b"\n")
    (ha_dir / "facegate-unlock.key").chmod(0o600)
    user = {u: (u, pw) for u, pw in ACL_USERS.items()}
    ha = HomeAssistant(python, ha_dir, acl_broker, auth=user["tester"])
    device = tmp_path / "device"
    device.mkdir()
    (device / "pw").write_text(ACL_USERS["front-door"])
    (device / "unlock.key").write_bytes(UNLOCK_KEY)
    monkeypatch.setattr("edge.delivery.mqtt.clock_synced", lambda: True)
    cfg = parse_config(
        {
            "device": {"id": DEVICE, "name": "Front door"},
            "mqtt": {"enabled": True, "host": acl_broker.host, "port": acl_broker.port,
                     "username": "front-door", "password_file": "pw", "keepalive": 5,
                     "ha_discovery": True, "commands": True},
            "door": {"enabled": True, "pin_factory": "mock", "relay_pin": RELAY,
                     "allow": ["Alice"], "unlock_s": 1.5, "remote_unlock": True,
                     "remote_key_file": "unlock.key"},
            "service": {"state_dir": str(device)},
        },
        base_dir=device,
    )  # fmt: skip
    set_topic = f"{T.base}/door/set"
    pub: Publisher | None = None
    ctl: DoorController | None = None
    watch = Collector(acl_broker, [set_topic], persistent=False, auth=user["watcher"]).start()
    try:
        ha.wait(lambda: ha.states.payloads("test/ha/started") != [], 120, "Home Assistant start")
        pub = online(cfg)
        ctl = DoorController(cfg, events=pub, factory=MockFactory(), synced=lambda: True)
        pub.on_unlock = ctl.remote_command
        pub.verify_unlock = ctl.authentic
        assert watch.ready() and ctl.sync()
        ha.wait(lambda: ha.last(LOCK) == "locked", 60, "the lock entity, locked")

        # Home Assistant's own UNLOCK: the recipe signs and sends; one pulse, shown.
        raw_as(acl_broker, user["poker"], "test/ha/door_unlock", b"1")
        ha.wait(lambda: "unlocked" in ha.values(LOCK), 60, "unlocked by the signed command")
        ha.wait(lambda: ha.last(LOCK) == "locked", why="locked again after unlock_s")
        assert ctl.sync()
        pulses = [e for e in ctl.relay_log if e[1]]
        assert len(pulses) == 1 and pulses[0][2] == "remote unlock"
        assert [e.kind for e in read_entries(cfg.audit_file)] == ["remote_unlock"]
        # The lock entity's own UNLOCK on door/set reached the broker; nothing acted on it.
        assert watch.wait_for(lambda: watch.payloads(set_topic) == [b"UNLOCK"], 10)

        # Everyone else: UNLOCK on door/set (allowed for "widened"), an unsigned command.
        forged = json.dumps({"command": "unlock", "ts": int(time.time()), "nonce": "x" * 16,
                             "hmac": "0" * 64}).encode()  # fmt: skip
        for who in ("mallory", "poker", "widened"):
            raw_as(acl_broker, user[who], set_topic, b"UNLOCK")
            raw_as(acl_broker, user[who], T.command, forged)
        assert watch.wait_for(lambda: watch.payloads(set_topic) == [b"UNLOCK"] * 2, 10)
        time.sleep(3.0)  # what should not happen gets time to happen
        assert ctl.sync()
        assert [e for e in ctl.relay_log if e[1]] == pulses
        assert [e.kind for e in read_entries(cfg.audit_file)] == ["remote_unlock"]
        assert ha.last(LOCK) == "locked"
        ctl.stop()
        pub.stop(timeout=3.0)
        ha.wait(lambda: ha.last(LOCK) == "unavailable", why="the device went offline")
        problems = ha.problems()  # before Home Assistant's own shutdown
        assert not problems, "\n".join(problems)
    finally:
        watch.stop()
        if ctl is not None:
            ctl.stop()
        if pub is not None:
            pub.stop(timeout=3.0)
        ha.stop()


def raw_as(broker: Broker, auth: tuple[str, str], topic: str, payload: bytes) -> None:
    """Publish once as a broker user (on a broker with passwords); a denied publish is dropped."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=auth[0], protocol=paho.MQTTv311)
    c.username_pw_set(*auth)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


UNKNOWN_IMAGE = "image/front_door_unknown_visitor"
ENROL_NAME = "text/front_door_enrol_name"
ENROL_BUTTON = "button/front_door_enrol_next_face"


def test_home_assistant_shows_unknown_visitors_and_its_button_enrols_signed(
    home_assistant: HomeAssistant, mqtt_broker: Broker, tmp_path: Path
) -> None:
    """The review's entities: the "Unknown visitor" image follows each new visit; "Enrol
    name" and "Enrol next face", through the README's automation and signing script, put a
    command on the command topic that the device's check accepts, for that name."""
    from edge.door.remote import NonceCache, verify_enrol
    from edge.imageio import encode_jpeg
    from edge.review.ring import Visit

    ha = home_assistant
    device = tmp_path / "device"
    device.mkdir()
    base = device_config(device, mqtt_broker)
    cfg = parse_config(
        {
            "device": {"id": DEVICE, "name": "Front door"},
            "mqtt": {
                "enabled": True, "host": mqtt_broker.host, "port": mqtt_broker.port,
                "ha_discovery": True, "commands": True,
            },
            "gallery": {"key_file": "g.key"},
            "review": {
                "keep_unknown": True, "notify": True, "enrol_command": True,
                "enrol_key_file": "e.key",
            },
            "service": {"state_dir": str(device)},
        },
        base_dir=base.base_dir,
    )  # fmt: skip
    pub = online(cfg)
    got: list[tuple[str | None, str | None]] = []
    nonces = NonceCache()
    pub.on_enrol = lambda payload: got.append(
        verify_enrol(
            payload,
            key=ENROL_KEY,
            device_id=DEVICE,
            now=time.time(),
            mono=time.monotonic(),
            synced=True,
            nonces=nonces,
        )
    )
    try:
        ha.wait(lambda: ha.last(ENROL_BUTTON) not in (None, "unavailable"), 60, "the button")
        ha.wait(lambda: ha.last(ENROL_NAME) not in (None, "unavailable"), 30, "the text")
        ha.wait(lambda: ha.last(UNKNOWN_IMAGE) not in (None, "unavailable"), 30, "the image")
        pictures = len(ha.values(UNKNOWN_IMAGE))
        jpeg = encode_jpeg(np.full((96, 80, 3), 140, np.uint8), 320, 90)
        pub.unknown_notifier.push(Visit(7, time.time(), 7, 0.8, 4, "m", np.zeros(4), jpeg), 1)
        ha.wait(lambda: len(ha.values(UNKNOWN_IMAGE)) > pictures, why="a new unknown visitor")
        raw(mqtt_broker, "test/ha/enrol_name", "Zoë Adams".encode())
        ha.wait(lambda: ha.last(ENROL_NAME) == "Zoë Adams", why="the name typed in")
        # A bare PRESS on the button's topic (what any broker client could send) enrols nobody.
        raw(mqtt_broker, f"{T.base}/enrol/set", b"PRESS")
        raw(mqtt_broker, "test/ha/enrol_press", b"1")
        ha.wait(lambda: bool(got), 60, "the signed command from the README's automation")
        time.sleep(1.0)
        assert got == [(None, "Zoë Adams")]
    finally:
        pub.stop(timeout=3.0)
    problems = ha.problems()
    assert not problems, "\n".join(problems)

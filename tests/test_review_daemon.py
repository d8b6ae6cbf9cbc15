"""Unknown review end to end, through the daemon: a stranger's clip gives one entry,
``facegate unknowns enroll`` makes them known, the next clip names them. And the signed
"enrol the next face" over a real Mosquitto: refused unsigned, with another key, and with
review off; accepted signed, after which the next clip names the person.

The clips are generated from registry photos (the demo's: scikit-image's astronaut Eileen
Collins as the stranger, matplotlib's Grace Hopper enrolled), so these tests need no
../shared: a person walking up to the camera, scaled, shifted and re-lit frame by frame.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from broker import Broker, Collector, wait_for

from edge.cli import main
from edge.config import Config, load_config
from edge.delivery.publishers import MemoryPublisher
from edge.door.remote import sign_enrol

FPS = 10.0
KEY = b"g" * 32
ENROL_KEY = b"e" * 32


def _write_clip(folder: Path, visits: int, *, zoom: float = 1.0, shift: int = 0) -> Path:
    """Frames: an empty doorway, the astronaut walking up ``visits`` times, empty between."""
    import cv2

    from edge.demo import demo_photos, place
    from edge.imageio import read_image

    photos = {k: read_image(p) for k, p in demo_photos().items()}
    frames: list[np.ndarray] = []

    def empty(n: int) -> None:
        frames.extend(place(photos["coffee" if i % 2 else "rocket"], 1.0, 0, 0) for i in range(n))

    empty(3)
    for _ in range(visits):
        for i in range(6):
            s = zoom * (0.85 + 0.03 * i)
            frames.append(
                place(photos["astronaut"], s, shift + 8 * i - 20, 4 - 2 * i, 0.9 + 0.03 * i)
            )
        empty(10)  # 1 s: longer than max_track_age_s, so the next walk-up is a new track
    folder.mkdir(parents=True)
    for n, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{n:04d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return folder


def _config(d: Path, clip: str, extra: str = "") -> Path:
    (d / "gallery.key").write_bytes(KEY)
    path = d / f"{clip}.toml"
    path.write_text(
        f'[device]\nid = "test-door"\n'
        f'[camera]\nsource = "folder"\npath = "{clip}"\nfps = {FPS}\nrealtime = true\n'
        '[gallery]\npath = "gallery.fgg"\nkey_file = "gallery.key"\n'
        "[decision]\nk = 3\nn = 4\ncooldown_s = 30.0\nmax_track_age_s = 0.5\n"
        f'[service]\nstate_dir = "{d}"\n'
        '[review]\nkeep_unknown = true\npath = "unknowns"\n' + extra
    )
    return path


def _enrol_grace(d: Path) -> None:
    """Someone else is enrolled: the stranger is unknown against a real gallery."""
    from edge.demo import demo_photos

    (d / "gallery.key").write_bytes(KEY)
    assert (
        main(
            [
                "enroll",
                "--gallery",
                str(d / "gallery.fgg"),
                "--key-file",
                str(d / "gallery.key"),
                "--name",
                "Grace Hopper",
                str(demo_photos()["grace_hopper"]),
            ]
        )
        == 0
    )


def _run(cfg: Config, publisher: Any = None) -> list[dict[str, Any]]:
    from edge.daemon import run

    pub = publisher or MemoryPublisher(cfg)
    assert run(cfg, threading.Event(), pub) == 0  # the replay ends the daemon
    return [p for p in pub.payloads if p.get("type") in ("recognized", "unknown")]


@pytest.mark.slow
def test_a_stranger_becomes_one_entry_then_known_then_named(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _enrol_grace(tmp_path)
    _write_clip(tmp_path / "clip1", visits=2)
    cfg1 = _config(tmp_path, "clip1")
    events = _run(load_config(cfg1))
    assert [(e["type"], e["name"]) for e in events] == [("unknown", None)] * 2
    capsys.readouterr()
    assert main(["unknowns", "list", "--config", str(cfg1)]) == 0
    (entry,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entry["visits"] == 2  # came twice: one entry
    jpeg = tmp_path / "crop.jpg"
    assert (
        main(["unknowns", "show", str(entry["id"]), "--config", str(cfg1), "--jpeg", str(jpeg)])
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["visit_list"]) == 2 and jpeg.read_bytes()[:2] == b"\xff\xd8"
    assert (
        main(
            [
                "unknowns",
                "enroll",
                str(entry["id"]),
                "--name",
                "Eileen Collins",
                "--config",
                str(cfg1),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "enrolled 'Eileen Collins'" in out and "is now 'Eileen Collins'" in out
    assert [p for p in (tmp_path / "unknowns").iterdir() if p.suffix == ".fgu"] == []
    # The next visit, framed differently, is named.
    _write_clip(tmp_path / "clip2", visits=1, zoom=1.1, shift=30)
    events = _run(load_config(_config(tmp_path, "clip2")))
    assert [(e["type"], e["name"]) for e in events] == [("recognized", "Eileen Collins")]
    assert main(["unknowns", "list", "--config", str(cfg1)]) == 0
    assert capsys.readouterr().out == ""  # a known person is no unknown visitor


# -- the signed enrol command over MQTT ----------------------------------------------------


def _signed(name: str, key: bytes = ENROL_KEY) -> bytes:
    return json.dumps(sign_enrol(key, "test-door", name)).encode()


def _mqtt_config(d: Path, broker: Broker, enrol: bool) -> Config:
    (d / "enrol.key").write_bytes(ENROL_KEY)
    review = (
        'enrol_command = true\nenrol_key_file = "enrol.key"\n'
        "enrol_timeout_s = 60.0\nenrol_photos = 2\n"
        if enrol
        else ""
    )
    text = (
        _config(d, "loop", review)
        .read_text()
        .replace("realtime = true", "realtime = true\nloop = true")
    )
    text += (
        f'[mqtt]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\ncommands = true\n'
        'outbox_path = "outbox.sqlite"\n'
    )
    path = d / ("enrol.toml" if enrol else "off.toml")
    path.write_text(text)
    return load_config(path)


class _Daemon:
    """``run`` on its own thread with the real MQTT publisher, stopped at the end."""

    def __init__(self, cfg: Config) -> None:
        from edge.daemon import Publisher, run

        self.stop = threading.Event()
        self.pub = Publisher(cfg)
        self.rc: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.rc.append(run(cfg, self.stop, self.pub)), daemon=True
        )

    def __enter__(self) -> _Daemon:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _events(sub: Collector, topic: str) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.payloads(topic)]


@pytest.mark.slow
@pytest.mark.mqtt
def test_enrol_command_over_a_real_broker(
    models: Path, tmp_path: Path, mqtt_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.delivery.topics import Topics

    # The command, like the door's remote unlock, needs a synchronised clock.
    monkeypatch.setattr("edge.clock.clock_synced", lambda: True)
    _enrol_grace(tmp_path)
    _write_clip(tmp_path / "loop", visits=1)
    before = (tmp_path / "gallery.fgg").read_bytes()
    topics = Topics.for_device("facegate", "test-door")
    sub = Collector(mqtt_broker, [topics.event], persistent=False).start()
    try:
        with _Daemon(_mqtt_config(tmp_path, mqtt_broker, enrol=True)) as daemon:
            ev = lambda: _events(sub, topics.event)  # noqa: E731
            assert sub.wait_for(lambda: any(e["type"] == "unknown" for e in ev()), 90)
            publish = lambda p: sub.client.publish(topics.command, p, qos=1)  # noqa: E731
            publish(json.dumps({"command": "enrol", "name": "Eileen Collins"}))  # unsigned
            publish(_signed("Eileen Collins", key=b"x" * 32))  # another key
            # Both stop at the command gate's signature check (no token spent, no event).
            assert wait_for(lambda: daemon.pub.commands.rejected == 2, 30)
            stale = json.loads(_signed("Eileen Collins"))
            stale = sign_enrol(ENROL_KEY, "test-door", "Eileen Collins", ts=stale["ts"] - 60)
            publish(json.dumps(stale))  # signed, but a minute old: the watcher refuses it
            refusals = lambda: [e["reason"] for e in ev() if e["type"] == "enrol_refused"]  # noqa: E731
            assert sub.wait_for(lambda: refusals() == ["stale"], 30), ev()
            assert (tmp_path / "gallery.fgg").read_bytes() == before  # nobody enrolled yet
            publish(_signed("Eileen Collins"))
            assert sub.wait_for(lambda: any(e["type"] == "enrolled" for e in ev()), 90), ev()
            (done,) = [e for e in ev() if e["type"] == "enrolled"]
            assert done["name"] == "Eileen Collins" and done["photos"] >= 1
            # The gallery was written and reloaded: the next walk-up is named.
            assert sub.wait_for(
                lambda: any(
                    e["type"] == "recognized" and e["name"] == "Eileen Collins" for e in ev()
                ),
                90,
            ), ev()
            assert daemon.pub.commands.rejected == 2
    finally:
        sub.stop()
    assert daemon.rc == [0]


@pytest.mark.slow
@pytest.mark.mqtt
def test_enrol_command_is_refused_with_review_off(
    models: Path, tmp_path: Path, mqtt_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.delivery.topics import Topics

    monkeypatch.setattr("edge.clock.clock_synced", lambda: True)
    _enrol_grace(tmp_path)
    _write_clip(tmp_path / "loop", visits=1)
    before = (tmp_path / "gallery.fgg").read_bytes()
    topics = Topics.for_device("facegate", "test-door")
    sub = Collector(mqtt_broker, [topics.event], persistent=False).start()
    try:
        with _Daemon(_mqtt_config(tmp_path, mqtt_broker, enrol=False)) as daemon:
            assert sub.wait_for(lambda: bool(_events(sub, topics.event)), 90)
            sub.client.publish(topics.command, _signed("Eileen Collins"), qos=1)  # validly signed
            assert wait_for(lambda: daemon.pub.commands.rejected >= 1, 30)
            time.sleep(1.0)  # frames keep flowing: nothing may start enrolling
    finally:
        sub.stop()
    assert not any(e["type"].startswith("enrol") for e in _events(sub, topics.event))
    assert (tmp_path / "gallery.fgg").read_bytes() == before  # nobody was enrolled

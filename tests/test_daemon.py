"""The service loop: decisions published, sd_notify, watchdog health, reload, stop.

The first tests drive :func:`edge.daemon.run` in-process with scripted
stand-ins for the camera and the recognizer (fast, no models). The last ones
run the real daemon as a process (``python -m edge.daemon``) on real photos
from ``../shared/faces`` and on ``../shared/video/video.mp4``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from _standins import ScriptedRecognizer
from broker import Broker, Collector, mqtt_broker
from conftest import SHARED

from edge.config import Config, parse_config
from edge.daemon import CaptureLike, run
from edge.identity.gallery import Gallery
from edge.sdnotify import Notifier
from edge.types import Box, Decision, Frame

__all__ = ["mqtt_broker"]  # the fixture, re-exported for pytest

MANIFEST_TEST = "manifest-test"  # the scripted embedder's manifest hash

# -- stand-ins for the hardware and the models ------------------------------------


class ScriptedCapture:
    """Frames from a list; ``frame.source`` names who the scripted recognizer sees."""

    def __init__(self, names: list[str | None], finite: bool = True, period: float = 0.0):
        self.names = names
        self.finite = finite
        self.period = period
        self.dropped = 0
        self.captured = 0
        self.started = False
        self.joined = False
        self._stop: threading.Event | None = None

    def bind(self, _cfg: Config, stop: threading.Event) -> ScriptedCapture:
        self._stop = stop
        return self

    def start(self) -> None:
        self.started = True

    def get(self, timeout: float) -> Frame | None:
        if self.captured >= len(self.names):
            if self.finite:
                return None
            time.sleep(timeout)  # a live camera that stalled
            return None
        if self.period:
            time.sleep(self.period)
        i = self.captured
        self.captured += 1
        name = self.names[i] or ""
        return Frame(np.zeros((48, 64, 3), np.uint8), i, i * 0.1, source=name)

    def join(self, timeout: float) -> None:
        assert self._stop is not None and self._stop.is_set()
        self.joined = True

    @property
    def alive(self) -> bool:
        return not self.joined

    @property
    def finished(self) -> bool:
        return self.finite and self.captured >= len(self.names)


def scripted() -> ScriptedRecognizer:
    """A scripted recognizer with an empty gallery of the test manifest."""
    return ScriptedRecognizer(Gallery("sha-test", manifest_sha256=MANIFEST_TEST))


class RecordingPublisher:
    """The publisher interface, keeping what the daemon sends it."""

    def __init__(self, alive: bool = True) -> None:
        self.on_command: Callable[[str], None] | None = None
        self.decisions: list[Decision] = []
        self.states: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self._alive = alive

    def start(self) -> None:
        self.calls.append("start")

    def publish_decision(self, decision: Decision) -> dict[str, Any]:
        self.decisions.append(decision)
        self.calls.append(f"event {decision.kind}")
        return {"seq": len(self.decisions), "kind": decision.kind, "name": decision.name}

    def set_state(self, **fields: Any) -> None:
        self.states.append(fields)

    def set_gallery(self, names: list[str] | tuple[str, ...]) -> None:
        self.calls.append(f"gallery {len(names)}")

    def set_presence(self, present: bool) -> None:
        self.calls.append(f"presence {present}")

    def set_ready(self) -> None:
        self.calls.append("ready")

    def alive(self) -> bool:
        return self._alive

    def stop(self, timeout: float) -> None:
        assert timeout > 0
        self.calls.append("stop")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.0)
    yield s, path
    s.close()


def drain(s: socket.socket) -> list[str]:
    """Every notify message received so far, one string per datagram."""
    msgs: list[str] = []
    while True:
        try:
            msgs.append(s.recv(4096).decode())
        except BlockingIOError:
            return msgs


def run_scripted(
    names: list[str | None],
    notify: str | None = None,
    publisher: RecordingPublisher | None = None,
    finite: bool = True,
    stop: threading.Event | None = None,
    decision: dict[str, Any] | None = None,
) -> tuple[int, RecordingPublisher, ScriptedCapture]:
    # Scripted faces on blank frames: the decisions alone (liveness: test_liveness_gate).
    cfg = parse_config(
        {"decision": decision or {}, "liveness": {"mode": "off"}}, base_dir=Path.cwd()
    )
    cap = ScriptedCapture(names, finite=finite)
    pub = publisher or RecordingPublisher()
    rc = run(
        cfg,
        stop or threading.Event(),
        pub,
        notifier=Notifier(notify or ""),
        recognizer=scripted(),
        capture_factory=cap.bind,
    )
    return rc, pub, cap


# -- in-process tests --------------------------------------------------------------


def test_replay_publishes_k_of_n_decisions_and_exits_0(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    script: list[str | None] = ["alice"] * 4 + [None] * 30 + ["?"] * 4
    rc, pub, cap = run_scripted(script, notify=path)
    assert rc == 0
    assert [(d.kind, d.name) for d in pub.decisions] == [("recognized", "alice"), ("unknown", None)]
    # Ready (online) after the first frame; presence follows the tracks.
    assert pub.calls == [
        "start",
        "gallery 0",
        "ready",
        "presence True",
        "event recognized",
        "presence False",
        "presence True",
        "event unknown",
        "presence False",
        "stop",
    ]
    assert cap.started and cap.joined
    msgs = drain(sock)
    assert msgs[0] == "STATUS=starting"
    assert any(m.startswith("READY=1") for m in msgs)
    assert msgs[-1].startswith("STOPPING=1")
    assert pub.states and pub.states[-1]["status"] == "offline"


def test_single_frame_mode_decides_on_the_first_frame() -> None:
    rc, pub, _ = run_scripted(["bob"], decision={"single_frame": True})
    assert rc == 0
    assert [(d.kind, d.name) for d in pub.decisions] == [("recognized", "bob")]
    # Online before the first frame's decision goes out.
    assert pub.calls.index("ready") < pub.calls.index("event recognized")


def test_watchdog_pings_only_while_healthy(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # 0.4 s: pings at most every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    # Healthy: frames flow (one every 20 ms) and the publisher is alive.
    def replay(publisher: RecordingPublisher) -> int:
        cfg = parse_config({}, base_dir=Path.cwd())
        cap = ScriptedCapture(["alice"] * 30, period=0.02)
        rec = scripted()
        run(
            cfg,
            threading.Event(),
            publisher,
            notifier=Notifier(path),
            recognizer=rec,
            capture_factory=cap.bind,
        )
        return drain(sock).count("WATCHDOG=1")

    assert replay(RecordingPublisher()) >= 3
    # Frames flow but the MQTT thread is dead: no pings at all.
    assert replay(RecordingPublisher(alive=False)) == 0

    # The camera stalls: pings stop once no frame came for half a period.
    stop = threading.Event()
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    try:
        run_scripted(["alice"] * 2, notify=path, finite=False, stop=stop)
    finally:
        timer.cancel()
    stalled = drain(sock).count("WATCHDOG=1")
    assert 1 <= stalled <= 3  # only during the first 0.2 s after start-up


def test_stop_event_ends_a_live_loop(notify_socket: tuple[socket.socket, str]) -> None:
    """A live camera that delivers nothing: the loop still sees the stop event and ends."""
    sock, path = notify_socket
    stop = threading.Event()
    waiting = threading.Event()

    class StalledCapture(ScriptedCapture):
        def get(self, timeout: float) -> Frame | None:
            waiting.set()  # the loop is inside its bounded wait for a frame
            return super().get(timeout)

    cap = StalledCapture([], finite=False)
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(
            run(
                parse_config({}, base_dir=Path.cwd()),
                stop,
                RecordingPublisher(),
                notifier=Notifier(path),
                recognizer=scripted(),
                capture_factory=cap.bind,
            )
        )
    )
    t.start()
    assert waiting.wait(timeout=10)
    stop.set()
    t.join(timeout=10)  # every wait in the loop is bounded (FRAME_WAIT_S)
    assert not t.is_alive()
    assert result == [0] and cap.joined
    assert any("STOPPING=1" in m for m in drain(sock))


def test_reload_gallery_command_swaps_the_gallery(tmp_path: Path) -> None:
    g = Gallery("sha-test", manifest_sha256=MANIFEST_TEST)
    g.add("carol", np.ones((1, 8), np.float32))
    g.save(tmp_path / "gallery.fgg")
    cfg = parse_config({"gallery": {"path": "gallery.fgg"}}, base_dir=tmp_path)
    rec = scripted()
    pub = RecordingPublisher()
    stop = threading.Event()

    class CommandingCapture(ScriptedCapture):
        def get(self, timeout: float) -> Frame | None:
            if self.captured == 3 and pub.on_command is not None:
                pub.on_command("reload-gallery")
                pub.on_command("something-else")  # ignored
            if self.captured == 6:
                stop.set()
            return super().get(timeout)

    cap = CommandingCapture([None] * 10, finite=False)
    assert run(cfg, stop, pub, notifier=Notifier(""), recognizer=rec, capture_factory=cap.bind) == 0
    assert rec.swaps == 1
    assert rec.gallery.names == ["carol"]


def test_failed_reload_keeps_the_old_gallery(tmp_path: Path) -> None:
    (tmp_path / "gallery.fgg").write_bytes(b"not a gallery")
    cfg = parse_config({"gallery": {"path": "gallery.fgg"}}, base_dir=tmp_path)
    rec = scripted()
    reload = threading.Event()
    reload.set()
    cap = ScriptedCapture(["alice"] * 4)
    rc = run(
        cfg,
        threading.Event(),
        RecordingPublisher(),
        reload=reload,
        notifier=Notifier(""),
        recognizer=rec,
        capture_factory=cap.bind,
    )
    assert rc == 0
    assert rec.swaps == 0


def test_dead_source_exits_1_for_a_restart() -> None:
    class DyingCapture(ScriptedCapture):
        @property
        def alive(self) -> bool:
            return self.captured < 3

        @property
        def finished(self) -> bool:
            return False

    cap = DyingCapture(["alice"] * 3, finite=True)
    cfg = parse_config({}, base_dir=Path.cwd())
    rc = run(
        cfg,
        threading.Event(),
        RecordingPublisher(),
        notifier=Notifier(""),
        recognizer=scripted(),
        capture_factory=cap.bind,
    )
    assert rc == 1


def test_main_run_reports_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.daemon import main_run

    before = signal.getsignal(signal.SIGTERM)
    assert main_run(str(tmp_path / "missing.toml")) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[embedder]\nmodel = "no-such-model.tflite"\n[mqtt]\nenabled = false\n')
    assert main_run(str(bad)) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("facegate: error:")]
    assert len(lines) == 2, err
    assert "missing.toml" in lines[0]
    assert "no-such-model" in lines[1]
    assert "Traceback" not in err
    # Signal handlers are only borrowed while the service runs.
    assert signal.getsignal(signal.SIGTERM) == before


# -- the real daemon, as a process, on real photos and a real clip ------------------

ROOT = Path(__file__).resolve().parents[1]
FACES = SHARED / "faces"  # used through the ``shared`` fixture's gate (needs_faces)
# Enrolled: people with at least 3 single-face photos; all but the last one are
# enrolled, the last one is replayed at the "door". Strangers: never enrolled.
# (Kate_Siegel is no stranger here: she resembles Angelina_Jolie closely enough
# to be a calibration question, not a daemon one.)
ENROLLED = ("Angelina_Jolie", "Barack_Obama", "Jennifer_Aniston", "Mark_Zuckerberg")
STRANGERS = ("Paul_Rudd", "Shea_Whigham", "Lin_Manuel_Miranda")
GAP_FRAMES = 7  # empty frames between people: longer than max_track_age_s at REPLAY_FPS
REPLAY_FPS = 8.0
COPIES = 4  # frames per person (a person standing at the door)


def _models() -> tuple[Path, Path]:
    cfg = Config()
    return cfg.model_path(cfg.detector.model), cfg.model_path(cfg.embedder.model)


def _photos(person: str) -> list[Path]:
    from edge.imageio import list_images

    return list_images(FACES / person)


needs_pipeline = pytest.mark.skipif(
    not all(p.exists() for p in _models()),
    reason="models not built (python -m tools.models build)",
)
needs_faces = pytest.mark.usefixtures("shared")


class Enrolled(NamedTuple):
    dir: Path
    held_out: dict[str, Path]
    gallery: Gallery
    key: bytes


@pytest.fixture(scope="session")
def enrolled(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Enrolled:
    """An encrypted gallery of ENROLLED (and its key) in a folder; each one's held-out photo."""
    from edge.decide.recognizer import Recognizer
    from edge.errors import NoFaceError
    from edge.imageio import read_image

    det, emb = _models()
    rec = Recognizer.from_models(det, emb)
    gallery = Gallery.for_manifest(rec.embedder.manifest)
    held_out: dict[str, Path] = {}
    for person in ENROLLED:
        usable: list[tuple[Path, np.ndarray]] = []
        for p in _photos(person):
            try:
                usable.append((p, rec.embed_single_face(read_image(p))))
            except NoFaceError:
                continue  # e.g. a photo with two people: enrolment needs exactly one face
        gallery.add(person, np.stack([v for _, v in usable[:-1]]))
        held_out[person] = usable[-1][0]
    d = tmp_path_factory.mktemp("daemon")
    key = b"k" * 32
    (d / "gallery.key").write_bytes(key)
    gallery.save(d / "gallery.fgg", key)
    return Enrolled(d, held_out, gallery, key)


def _replay_folder(
    d: Path, held_out: dict[str, Path], people: Sequence[str] = ENROLLED + STRANGERS
) -> list[str | None]:
    """Held-out photos, COPIES frames each, separated by empty frames; the truth per person."""
    import cv2

    blank = d / "blank.png"
    cv2.imwrite(str(blank), np.zeros((480, 640, 3), np.uint8))
    folder = d / "replay"
    folder.mkdir()
    truth: list[str | None] = []
    n = 0
    for person in people:
        photo = held_out.get(person) or _photos(person)[0]
        for target in [photo] * COPIES + [blank] * GAP_FRAMES:
            (folder / f"{n:04d}{target.suffix.lower()}").symlink_to(target)
            n += 1
        truth.append(person if person in ENROLLED else None)
    return truth


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _write_config(d: Path, name: str, sections: dict[str, dict[str, object]]) -> Path:
    base: dict[str, dict[str, object]] = {
        "device": {"id": "test-door"},
        "gallery": {"path": "gallery.fgg", "key_file": "gallery.key"},
        "decision": {"k": 3, "n": 4, "cooldown_s": 30.0, "max_track_age_s": 0.6},
        "mqtt": {"enabled": False},
        "service": {"log_level": "INFO"},
    }
    base.update(sections)
    text = "".join(
        f"[{sec}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items()) + "\n"
        for sec, keys in base.items()
    )
    path = d / name
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def replay(enrolled: Enrolled) -> tuple[Path, list[str | None]]:
    return enrolled.dir, _replay_folder(enrolled.dir, enrolled.held_out)


def _spawn(config: Path, notify: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    if notify:
        env["NOTIFY_SOCKET"] = notify
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
@needs_pipeline
@needs_faces
def test_daemon_on_a_folder_replay_of_real_photos(
    replay: tuple[Path, list[str | None]], notify_socket: tuple[socket.socket, str]
) -> None:
    d, truth = replay
    sock, path = notify_socket
    camera: dict[str, object] = {
        "source": "folder",
        "path": "replay",
        "fps": REPLAY_FPS,
        "realtime": True,
    }
    proc = _spawn(_write_config(d, "folder.toml", {"camera": camera}), path)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    events = _events(out)
    # One decision per person at the door: enrolled people by name, strangers as unknown.
    expected = [("recognized", t) if t else ("unknown", None) for t in truth]
    assert [(e["type"], e["name"]) for e in events] == expected, err
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["device"] == "test-door" and e["track_length"] >= 3 for e in events)
    msgs = drain(sock)
    assert any(m.startswith("READY=1") for m in msgs)
    assert msgs[-1].startswith("STOPPING=1")
    assert "replay finished" in err


@pytest.mark.slow
@needs_pipeline
@needs_faces
def test_sigterm_stops_cleanly_within_5_s(
    replay: tuple[Path, list[str | None]], notify_socket: tuple[socket.socket, str]
) -> None:
    d, _ = replay
    sock, path = notify_socket
    camera: dict[str, object] = {
        "source": "folder",
        "path": "replay",
        "fps": REPLAY_FPS,
        "loop": True,
    }
    proc = _spawn(_write_config(d, "loop.toml", {"camera": camera}), path)
    try:
        msgs: list[str] = []
        deadline = time.monotonic() + 120
        while not any(m.startswith("READY=1") for m in msgs):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no READY=1 within 120 s"
            time.sleep(0.05)
            msgs += drain(sock)
        proc.send_signal(signal.SIGHUP)  # systemctl reload: re-read the gallery
        time.sleep(1.5)  # frames flowing, models busy
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, err
    assert took < 5.0, err
    assert any(m.startswith("STOPPING=1") for m in drain(sock))
    assert "stopped in" in err
    assert f"gallery reloaded: {len(ENROLLED)} people" in err
    assert "Traceback" not in err


FULL_RANGE = Config().model_path("face_detection_full_range.tflite")


@pytest.mark.slow
@needs_pipeline
@pytest.mark.skipif(not FULL_RANGE.exists(), reason="full-range detector not built")
def test_daemon_on_the_real_clip(enrolled: Enrolled, shared_video: Path) -> None:
    """A street crowd in 1080p: nobody enrolled, so every decision must be "unknown".

    The faces are far from the camera, so this uses BlazeFace's full-range
    model (the short-range one is for faces within ~2 m of a door camera).
    Tracks do not expire by time here (``max_track_age_s`` longer than the
    clip): the decisions then depend on the frames only, not on CPU speed.
    """
    import cv2

    from edge.config import load_config
    from edge.decide.recognizer import Recognizer
    from edge.decide.tracker import Tracker
    from edge.sources import OpenCVSource, frames

    camera: dict[str, object] = {"source": "opencv", "uri": str(shared_video), "realtime": False}
    decision: dict[str, object] = {"k": 3, "n": 4, "cooldown_s": 30.0, "max_track_age_s": 60.0}
    detector: dict[str, object] = {"model": str(FULL_RANGE)}
    # The tracker's decisions, compared frame for frame (liveness would hold them).
    liveness: dict[str, object] = {"mode": "off"}
    config = _write_config(
        enrolled.dir,
        "video.toml",
        {"camera": camera, "decision": decision, "detector": detector, "liveness": liveness},
    )
    proc = _spawn(config, None)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    got = [(e["type"], e["name"], e["track_id"]) for e in _events(out)]

    # The same pipeline in-process over the same frames gives the same decisions.
    cfg = load_config(config)
    rec = Recognizer.from_config(cfg)
    tracker = Tracker(cfg.decision, identity_threshold=rec.threshold)  # as the daemon does
    expected = []
    n = 0
    for frame in frames(OpenCVSource(shared_video, realtime=False)):
        expected += [(d.kind, d.name, d.track_id) for d in tracker.update(rec.process(frame))]
        n += 1
    assert got == expected, err
    # The clip has faces, and none of them is enrolled: no one may be let in.
    assert got, "no decision at all on a clip with faces"
    assert {kind for kind, _, _ in got} == {"unknown"}
    cap = cv2.VideoCapture(str(shared_video))
    assert n == int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert f"replay finished after {n} frames, {len(got)} events" in err


@pytest.mark.slow
@needs_pipeline
@needs_faces
@pytest.mark.mqtt
def test_daemon_over_a_real_broker_with_reload(
    enrolled: Enrolled, tmp_path: Path, mqtt_broker: Broker
) -> None:
    """Events reach a real Mosquitto; ``reload-gallery`` over MQTT takes effect live."""
    from edge.delivery.topics import Topics

    newcomer = ENROLLED[-1]
    partial = Gallery(
        enrolled.gallery.model_sha256, manifest_sha256=enrolled.gallery.manifest_sha256
    )
    for name in enrolled.gallery.names:
        if name != newcomer:
            partial.add(name, enrolled.gallery.person(name).embeddings)
    partial.save(tmp_path / "gallery.fgg", enrolled.key)
    (tmp_path / "gallery.key").write_bytes(enrolled.key)
    _replay_folder(tmp_path, enrolled.held_out, [newcomer])
    camera: dict[str, object] = {
        "source": "folder", "path": "replay", "fps": REPLAY_FPS, "loop": True
    }  # fmt: skip
    mqtt: dict[str, object] = {
        "enabled": True,
        "host": mqtt_broker.host,
        "port": mqtt_broker.port,
        "commands": True,
        "outbox_path": "outbox.sqlite",
    }
    service: dict[str, object] = {"state_dir": str(tmp_path)}
    config = _write_config(
        tmp_path, "mqtt.toml", {"camera": camera, "mqtt": mqtt, "service": service}
    )
    topics = Topics.for_device("facegate", "test-door")
    sub = Collector(mqtt_broker, [f"{topics.base}/#"], persistent=False).start()
    proc = _spawn(config, None)
    try:

        def events() -> list[tuple[str, str | None]]:
            return [(e["type"], e["name"]) for e in map(json.loads, sub.payloads(topics.event))]

        # Not enrolled yet: the newcomer is a stranger at the door.
        assert sub.wait_for(lambda: ("unknown", None) in events(), 60), mqtt_broker.log_tail()
        # Enrol them (the gallery file is replaced atomically), then tell the device.
        enrolled.gallery.save(tmp_path / "gallery.fgg", enrolled.key)
        sub.client.publish(topics.command, json.dumps({"command": "reload-gallery"}), qos=1)
        assert sub.wait_for(lambda: ("recognized", newcomer) in events(), 30)
        assert not any(name not in (None, newcomer) for _, name in events())
        states = [json.loads(p) for p in sub.payloads(topics.state)]
        assert any(s.get("gallery_size") == len(ENROLLED) for s in states)
        assert any(s.get("model_sha256") == enrolled.gallery.model_sha256 for s in states)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 5.0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
        sub.stop()
    assert proc.returncode == 0, err
    assert f"gallery reloaded: {len(ENROLLED)} people" in err
    assert sub.payloads(topics.availability)[-1] == b"offline"


@pytest.mark.slow
@needs_pipeline
@needs_faces
@pytest.mark.mqtt
def test_replays_of_real_photos_and_the_clip_reach_the_broker(
    replay: tuple[Path, list[str | None]],
    enrolled: Enrolled,
    tmp_path: Path,
    mqtt_broker: Broker,
    shared_video: Path,
) -> None:
    """``facegate run`` on the photo replay and on the real clip: the decisions arrive on MQTT."""
    from edge.delivery.topics import Topics

    d, truth = replay
    topics = Topics.for_device("facegate", "test-door")
    sub = Collector(mqtt_broker, [topics.event], persistent=False).start()
    mqtt: dict[str, object] = {
        "enabled": True,
        "host": mqtt_broker.host,
        "port": mqtt_broker.port,
        "outbox_path": str(tmp_path / "outbox.sqlite"),
    }

    def run(name: str, sections: dict[str, dict[str, object]]) -> list[dict[str, Any]]:
        before = len(sub.payloads(topics.event))
        proc = _spawn(_write_config(d, name, {**sections, "mqtt": mqtt}), None)
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        n = int(err.rsplit("frames, ", 1)[1].split(" events")[0])
        assert sub.wait_for(lambda: len(sub.payloads(topics.event)) - before >= n, 20)
        return [json.loads(p) for p in sub.payloads(topics.event)[before:]]

    try:
        photos = run(
            "broker-folder.toml",
            {"camera": {"source": "folder", "path": "replay", "fps": REPLAY_FPS}},
        )
        expected = [("recognized", t) if t else ("unknown", None) for t in truth]
        assert [(e["type"], e["name"]) for e in photos] == expected
        clip = run(
            "broker-clip.toml",
            {
                "camera": {"source": "opencv", "uri": str(shared_video), "realtime": False},
                "detector": {"model": str(FULL_RANGE)},
                "decision": {"k": 3, "n": 4, "cooldown_s": 30.0, "max_track_age_s": 60.0},
            },
        )
        # The street crowd holds nobody enrolled: unknowns only, and some.
        assert clip and {e["type"] for e in clip} == {"unknown"}
        assert all(e["name"] is None for e in clip)
        # One device, one sequence: dense across both runs (the outbox persists it).
        seqs = [e["seq"] for e in photos + clip]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        sub.stop()


# -- availability means ready -------------------------------------------------------


@pytest.mark.mqtt
def test_a_daemon_whose_camera_fails_never_says_online(tmp_path: Path, mqtt_broker: Broker) -> None:
    """Models load, the publisher connects, the camera fails: ``offline`` only, every time.

    Under systemd's ``Restart=`` a daemon that said ``online`` before failing
    flapped its availability every few seconds, and every flap fired
    automations. Three starts in a row here, as systemd would do them.
    """
    from edge.daemon import Publisher
    from edge.delivery.topics import Topics
    from edge.errors import SourceError

    topics = Topics.for_device("facegate", "test-door")
    sub = Collector(mqtt_broker, [topics.availability], persistent=False).start()
    assert sub.ready()
    mqtt: dict[str, Any] = {"enabled": True, "host": mqtt_broker.host, "port": mqtt_broker.port}
    cfg = parse_config(
        {"device": {"id": "test-door"}, "mqtt": mqtt, "service": {"state_dir": str(tmp_path)}},
        base_dir=tmp_path,
    )

    class DeadCamera(ScriptedCapture):
        """Opens, then stops before its first frame (a camera unplugged at start)."""

        @property
        def alive(self) -> bool:
            return False

        @property
        def finished(self) -> bool:
            return False

    connected = 0

    def failing_camera(pub: Publisher, dies: bool) -> Callable[[Config, threading.Event], Any]:
        def camera(c: Config, stop: threading.Event) -> CaptureLike:
            nonlocal connected
            # Fail only once the broker has seen the device: that is when the
            # old publisher had already said "online".
            assert sub.wait_for(lambda: pub.connected, 10)
            connected += 1
            if dies:
                return DeadCamera([]).bind(c, stop)
            raise SourceError("opencv:0: cannot open camera or stream")

        return camera

    for attempt in range(3):
        pub = Publisher(cfg)
        camera = failing_camera(pub, dies=attempt == 1)
        if attempt == 1:
            rc = run(cfg, threading.Event(), pub, notifier=Notifier(""),
                     recognizer=scripted(), capture_factory=camera)  # fmt: skip
            assert rc == 1
        else:
            with pytest.raises(SourceError):
                run(cfg, threading.Event(), pub, notifier=Notifier(""),
                    recognizer=scripted(), capture_factory=camera)  # fmt: skip
    assert connected == 3
    assert sub.wait_for(lambda: len(sub.payloads(topics.availability)) >= 3, 5)
    assert set(sub.payloads(topics.availability)) == {b"offline"}
    sub.stop()


# -- one identity per track, on real photos ------------------------------------------

BIDEN = FACES / "Joe_Biden"
BEZOS = FACES / "Jeff_Bezos"


def _face_box(rec: Any, photo: np.ndarray) -> Box:
    faces = rec.identify(photo)
    assert len(faces) == 1
    box: Box = faces[0].detection.box
    return box


def _place(photo: np.ndarray, box: Box, side: float, cx: float, cy: float) -> np.ndarray:
    """The photo on a 640x480 canvas, its face ``side`` px wide and centred at (cx, cy)."""
    import cv2

    s = side / box.w
    img = cv2.resize(photo, (round(photo.shape[1] * s), round(photo.shape[0] * s)))
    x0 = round(cx - (box.x + box.w / 2) * s)
    y0 = round(cy - (box.y + box.h / 2) * s)
    canvas = np.full((480, 640, 3), 90, np.uint8)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(480, y0 + img.shape[0]), min(640, x0 + img.shape[1])
    canvas[ys:ye, xs:xe] = img[ys - y0 : ye - y0, xs - x0 : xe - x0]
    return canvas


@needs_pipeline
@needs_faces
@pytest.mark.mqtt
def test_a_newcomer_stepping_into_the_box_just_left_is_reported_unknown(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    """The Biden -> Bezos replay: Bezos steps where Biden stood (face boxes overlap
    above the tracker's IoU 0.3). His frames used to continue Biden's recognized
    track, so no ``unknown`` was ever sent for him."""
    from edge.daemon import Publisher
    from edge.decide.recognizer import Recognizer
    from edge.decide.tracker import Tracker
    from edge.delivery.topics import Topics
    from edge.imageio import read_image
    from edge.sources import CaptureThread, FakeSource

    det, emb = _models()
    rec = Recognizer.from_models(det, emb)
    gallery = Gallery(rec.model_sha256)
    gallery.add("Joe_Biden", rec.embed_single_face(read_image(BIDEN / "biden.jpg"))[None, :])
    rec.set_gallery(gallery)
    biden = read_image(BIDEN / "knn_train_biden_biden2.jpg")  # not the enrolled photo
    bezos = read_image(BEZOS / "img20.jpg")
    frames = [_place(biden, _face_box(rec, biden), 140, 300 + 2 * i, 220) for i in range(5)]
    frames += [_place(bezos, _face_box(rec, bezos), 140, 345, 230) for _ in range(6)]
    # The scenario: Bezos's detected box overlaps Biden's last one above the IoU gate.
    overlap = _face_box(rec, frames[5]).iou(_face_box(rec, frames[4]))
    print(f"\nBezos's box overlaps Biden's last one: IoU {overlap:.2f}")
    assert overlap > 0.3, overlap

    decision: dict[str, Any] = {"k": 3, "n": 4, "cooldown_s": 30.0, "max_track_age_s": 2.0}
    # Without the identity check the same frames give Biden only (the old behaviour).
    blind = Tracker(parse_config({"decision": decision}).decision)
    t = 0.0
    old: list[tuple[str, str | None]] = []
    for i, f in enumerate(frames):
        old += [(d.kind, d.name) for d in blind.update(rec.process(Frame(f, i, t + 0.1 * i)))]
    assert old == [("recognized", "Joe_Biden")]

    mqtt: dict[str, Any] = {"enabled": True, "host": mqtt_broker.host, "port": mqtt_broker.port}
    cfg = parse_config(
        {
            "device": {"id": "test-door"},
            "decision": decision,
            "mqtt": mqtt,
            "service": {"state_dir": str(tmp_path)},
        },
        base_dir=tmp_path,
    )
    topics = Topics.for_device("facegate", "test-door")
    sub = Collector(mqtt_broker, [topics.event], persistent=False).start()
    try:
        assert sub.ready()

        def capture(c: Config, stop: threading.Event) -> CaptureThread:
            return CaptureThread(FakeSource(frames, fps=10.0, label="replay"), stop, keep_all=True)

        rc = run(cfg, threading.Event(), Publisher(cfg), notifier=Notifier(""),
                 recognizer=rec, capture_factory=capture)  # fmt: skip
        assert rc == 0
        assert sub.wait_for(lambda: len(sub.payloads(topics.event)) >= 2, 10)
        events = [json.loads(p) for p in sub.payloads(topics.event)]
    finally:
        sub.stop()
    assert [(e["type"], e["name"]) for e in events] == [
        ("recognized", "Joe_Biden"),
        ("unknown", None),
    ]
    assert events[0]["track_id"] != events[1]["track_id"]
    assert all(e["delivery"] == "live" for e in events)

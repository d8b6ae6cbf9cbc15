"""A full disk (a real, small tmpfs filled to the last byte) never stops recognition.

Each test runs its process with the state folder on a full file system (see
``_hostile.on_full_fs``: a private mount namespace, no root needed).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _hostile import FACEGATE, assert_one_line_error, face_photo, on_full_fs, write_config
from broker import Broker, Collector, mqtt_broker

__all__ = ["mqtt_broker"]

OUTBOX_SCRIPT = """
import json, os, sys
from edge.delivery.outbox import Outbox
d = sys.argv[1]
box = Outbox(os.path.join(d, "outbox.sqlite"), max_rows=1000)
def add(n):
    return [box.append("t/event", lambda s: (f"id{s}", b"x" * 400))[0].seq for _ in range(n)]
before = add(40)
box.ack(before[:3])
fd = os.open(os.path.join(d, "filler3"), os.O_WRONLY | os.O_CREAT, 0o600)
for size in (65536, 4096, 1):
    try:
        while True:
            os.write(fd, b"\\0" * size)
    except OSError:
        pass
after = add(int(sys.argv[2]))
print(json.dumps({
    "before": before, "after": after, "dropped": box.dropped, "lost": box.lost,
    "stored": [r.seq for r in box.pending(0, 100000)], "last_error": box.last_error,
}))
"""


def test_outbox_on_a_full_disk_drops_its_oldest_events_and_goes_on(tmp_path: Path) -> None:
    """The disk fills up under a live outbox: no exception, the newest events are kept."""
    d = tmp_path / "state"
    r = on_full_fs(d, [sys.executable, "-c", OUTBOX_SCRIPT, str(d), "600"], fill=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    after = out["after"]
    assert after == list(range(41, 41 + 600))  # numbering never jumps
    assert out["lost"] == 0
    assert out["dropped"] > 0  # the oldest gave way ...
    assert out["stored"][-20:] == after[-20:]  # ... the newest are there
    assert "database or disk is full" in out["last_error"]  # the real error
    assert "outbox" in r.stderr and "disk full" in r.stderr
    assert "Traceback" not in r.stderr


def test_enroll_on_a_full_disk_is_one_line(tmp_path: Path, models: Path) -> None:
    d = tmp_path / "full"
    r = on_full_fs(
        d,
        [*FACEGATE, "enroll", "--gallery", str(d / "gallery.fgg"), "--name", "Grace",
         str(face_photo())],
    )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert_one_line_error(r.stderr, "cannot write gallery", "No space left on device")


@pytest.mark.mqtt
def test_daemon_keeps_recognizing_on_a_full_disk(
    tmp_path: Path, models: Path, mqtt_broker: Broker
) -> None:
    """State folder (outbox) on a full disk: the service runs on, says why, stops cleanly.

    The retained state message shows it too: events lost or dropped, and the
    outbox's real error.
    """
    import cv2

    replay = tmp_path / "replay"
    replay.mkdir()
    face = cv2.imread(str(face_photo()))
    canvas = np.zeros((480, 640, 3), np.uint8)
    h, w = face.shape[:2]
    s = min(400 / h, 400 / w)
    small = cv2.resize(face, (int(w * s), int(h * s)))
    canvas[40 : 40 + small.shape[0], 100 : 100 + small.shape[1]] = small
    cv2.imwrite(str(replay / "0_face.png"), canvas)
    for i in range(1, 5):  # the face leaves: the next pass is a new visitor
        cv2.imwrite(str(replay / f"{i}_empty.png"), np.zeros((480, 640, 3), np.uint8))
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "door.toml",
        {
            "device": {"id": "full-door"},
            "camera": {"source": "folder", "path": "replay", "fps": 20.0, "loop": True},
            "gallery": {"path": "gallery.fgg"},
            "decision": {"k": 1, "n": 1, "max_track_age_s": 0.1},
            "mqtt": {
                "enabled": True,
                "host": mqtt_broker.host,
                "port": mqtt_broker.port,
                "state_interval_s": 0.5,
            },
            "service": {"state_dir": str(state), "log_level": "INFO"},
        },
    )
    sub = Collector(mqtt_broker, ["facegate/full-door/state"], persistent=False).start()
    assert sub.ready()

    def full_disk_states() -> list[dict[str, object]]:
        states = [json.loads(p) for p in sub.payloads("facegate/full-door/state")]
        return [s for s in states if s.get("outbox_error")]

    proc = on_full_fs(state, [*FACEGATE, "run", "--config", str(config)], popen=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if sum("event seq=" in ln for ln in lines) >= 3:
                break
            time.sleep(0.2)
        log = "".join(lines)
        assert proc.poll() is None, f"the service exited ({proc.returncode}):\n{log}"
        assert sum("event seq=" in ln for ln in lines) >= 3, log
        assert sub.wait_for(lambda: full_disk_states() != [], 20), log
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(timeout=5)
    log = "".join(lines)
    assert proc.returncode == 0, log
    assert "Traceback" not in log
    # The outbox said what was wrong: no space, not a misleading rollback error.
    assert "outbox" in log and ("disk is full" in log or "No space left" in log), log
    assert "cannot rollback" not in log
    reported = full_disk_states()[-1]
    error = str(reported["outbox_error"])
    assert "disk is full" in error or "No space left" in error, reported
    assert int(str(reported["outbox_lost"])) + int(str(reported["outbox_dropped"])) > 0, reported
    sub.stop()

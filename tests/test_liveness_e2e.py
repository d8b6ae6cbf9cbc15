"""End to end: a photo held to the door camera never opens it; the person does.

A real person walking up to a camera (a 640x480 window of the shared street
clip that follows one face, as a door camera frames a visitor) is enrolled
from three of its frames. The daemon (``facegate run``) then replays clips
through its video-file source with the door on mock pins and
``[liveness] mode = "require"``:

* print and screen attacks rendered from a photo of that person
  (:mod:`tools.liveness.attacks`: a flat prop moved or held still in front
  of a pinhole camera) are recognized as the person, yet the relay never
  moves and the audit log says ``spoof`` or ``no_liveness``;
* the person's own clip opens the door, and its grant carries the evidence.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_daemon import _spawn, _write_config, needs_pipeline
from test_door_process import relay_states

pytest.importorskip("gpiozero", reason="gpiozero is not installed (the door extra)")

NAME = "Visitor"
# The window of the shared clip that follows one face (track 0 of its faces:
# 79-118 px wide, walking towards the camera), as a door camera frames them.
WINDOW = (591, 486, 1231, 966)  # x0, y0, x1, y1 in the 1920x1080 clip
ENROL_FRAMES = (5, 50, 95)
KEY = b"liveness-e2e-gallery-key-0123456789"[:32]


def _write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    import cv2

    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert out.isOpened(), "OpenCV cannot write MJPG video here"
    for f in frames:
        out.write(np.ascontiguousarray(f[..., ::-1]))
    out.release()
    return path


def _real_window(video: Path) -> tuple[list[np.ndarray], float]:
    import cv2

    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    x0, y0, x1, y1 = WINDOW
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(bgr[y0:y1, x0:x1, ::-1]))
    cap.release()
    return frames, fps


@pytest.fixture(scope="module")
def door_scene(shared_video: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real clip's window, the enrolled gallery and attack clips of the same person."""
    import cv2

    from edge.config import MODELS_DIR
    from edge.vision.detector import FaceDetector
    from tools.liveness.attacks import AttackSpec, frames, make_scene, registry_backgrounds

    d = tmp_path_factory.mktemp("liveness-e2e")
    real, fps = _real_window(shared_video)
    clips = {"real": _write_video(d / "real.avi", real, fps)}
    photos = []
    for i in ENROL_FRAMES:
        p = d / f"enrol-{i}.png"
        cv2.imwrite(str(p), real[i][..., ::-1])
        photos.append(str(p))
    (d / "gallery.key").write_bytes(KEY)
    r = subprocess.run(
        [sys.executable, "-m", "edge", "enroll", "--gallery", str(d / "gallery.fgg"),
         "--name", NAME, "--key-file", str(d / "gallery.key"), "--force", *photos],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    # The attacker's photo of the person: a sharp frame of the same clip.
    photo = real[75]
    det = FaceDetector.load(MODELS_DIR / "face_detection_short_range.tflite")
    b = max(det.detect(photo), key=lambda x: x.box.w * x.box.h).box
    backgrounds = registry_backgrounds()
    for prop, motion, seed in (("print", "moved", 3), ("screen", "still", 4)):
        spec = AttackSpec(prop, motion, seed=seed, fps=12.5, seconds=6.0)
        scene = make_scene(spec, photo, (b.x, b.y, b.w, b.h), backgrounds)
        clips[f"{prop}-{motion}"] = _write_video(d / f"{prop}-{motion}.avi",
                                                 list(frames(scene)), spec.fps)  # fmt: skip
    return {"dir": d, "clips": clips}


def _run_door(scene: dict[str, Any], clip: str, tmp_path: Path) -> tuple[list[Any], list[int]]:
    """``facegate run`` over one clip with the door on mock pins: (audit entries, relay)."""
    from edge.door.audit import read_entries

    state = tmp_path / clip
    state.mkdir()
    d = scene["dir"]
    config = _write_config(
        tmp_path,
        f"{clip}.toml",
        {
            "camera": {"source": "opencv", "uri": str(scene["clips"][clip]), "realtime": False},
            "gallery": {"path": str(d / "gallery.fgg"), "key_file": str(d / "gallery.key")},
            "decision": {"k": 3, "n": 5, "max_track_age_s": 60.0},
            "mqtt": {"enabled": False},
            "liveness": {"mode": "require"},
            "door": {
                "enabled": True,
                "pin_factory": "mock",
                "allow": [NAME],
                "mock_log": str(state / "relay.log"),
            },
            "service": {"state_dir": str(state)},
        },
    )
    proc = _spawn(config, None)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    entries = list(read_entries(state / "audit.sqlite"))
    return entries, relay_states(state / "relay.log", proc.pid)


@pytest.mark.slow
@needs_pipeline
@pytest.mark.parametrize("clip", ["print-moved", "screen-still"])
def test_an_attack_clip_of_an_enrolled_person_never_moves_the_relay(
    door_scene: dict[str, Any], clip: str, tmp_path: Path
) -> None:
    entries, relay = _run_door(door_scene, clip, tmp_path)
    decided = [e for e in entries if e.kind in ("access_granted", "access_denied")]
    assert decided, "the attack's face was never decided on"
    assert all(e.kind == "access_denied" for e in decided)
    # The prop is recognized as the person: only liveness stands between it and the door.
    assert any(e.name == NAME and e.reason in ("spoof", "no_liveness") for e in decided), [
        (e.kind, e.name, e.reason) for e in decided
    ]
    assert relay == [0]


@pytest.mark.slow
@needs_pipeline
def test_the_enrolled_persons_real_clip_opens_the_door(
    door_scene: dict[str, Any], tmp_path: Path
) -> None:
    entries, relay = _run_door(door_scene, "real", tmp_path)
    granted = [e for e in entries if e.kind == "access_granted"]
    assert [e.name for e in granted] == [NAME], [(e.kind, e.name, e.reason) for e in entries]
    assert granted[0].data["liveness"]["passed"] is True
    assert granted[0].data["liveness"]["evidence"]
    assert relay == [0, 1, 0]

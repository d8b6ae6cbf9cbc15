"""Enrolment from a camera (edge.identity.camera): the pose numbers, the frame choice, the words,
and ``facegate enroll --camera`` on a folder source standing in for the camera."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.identity.camera import (
    DONE_ADVICE,
    POSE_ADVICE,
    CameraCollector,
    CameraRules,
    collect,
    frame_advice,
    head_pose,
)
from edge.identity.enrol import FaceQuality, PhotoMeasure
from edge.numerics import pitch_ratio


def _keypoints(yaw: float = 0.0, pitch: float = 0.55) -> np.ndarray:
    """Six BlazeFace keypoints of an upright face, eyes 40 px apart, mouth 50 px below them."""
    r, le = np.array([80.0, 100.0]), np.array([120.0, 100.0])
    nose = np.array([100.0 + yaw * 40.0, 100.0 + pitch * 50.0])
    mouth = np.array([100.0, 150.0])
    return np.array([r, le, nose, mouth, [60.0, 110.0], [140.0, 110.0]], np.float32)


def _frame(
    emb: np.ndarray, yaw: float = 0.0, pitch: float = 0.55, sharp: float = 200.0, **q: float
) -> PhotoMeasure:
    quality = FaceQuality(
        face_px=float(q.get("face_px", 120.0)),
        sharpness=sharp,
        yaw=yaw,
        faces=int(q.get("faces", 1)),
        area_ratio=float(q.get("area_ratio", math.inf)),
    )
    e = np.asarray(emb, np.float32)
    return PhotoMeasure(e / np.linalg.norm(e), quality, keypoints=_keypoints(yaw, pitch))


def _unit(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([math.cos(a), math.sin(a), 0.0, 0.0], np.float32)


def test_pitch_ratio_exact_and_rotation_invariant() -> None:
    r, le, mouth = np.array([0.0, 0.0]), np.array([10.0, 0.0]), np.array([5.0, 12.0])
    assert pitch_ratio(r, le, np.array([5.0, 6.0]), mouth) == pytest.approx(0.5)
    assert pitch_ratio(r, le, np.array([7.0, 3.0]), mouth) == pytest.approx(0.25)  # looking up
    a = math.radians(-23)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = [rot @ p * 3.0 + 7.0 for p in (r, le, np.array([7.0, 3.0]), mouth)]
    assert pitch_ratio(*pts) == pytest.approx(0.25)  # rotation, scale and shift do not matter
    assert math.isnan(pitch_ratio(r, le, np.array([5.0, 6.0]), np.array([3.0, 0.0])))
    pose = head_pose(_keypoints(0.3, 0.4), 0.3)
    assert pose.yaw == 0.3 and pose.pitch == pytest.approx(0.4)
    assert math.isnan(head_pose(None, 0.1).pitch)


def test_collector_keeps_one_frame_per_pose_and_says_what_it_needs() -> None:
    c = CameraCollector(CameraRules(photos=5))
    assert c.advice == POSE_ADVICE["straight"]
    c.offer(_frame(_unit(0), sharp=100.0))
    c.offer(_frame(_unit(1), sharp=300.0))  # sharper, same pose: replaces it
    assert c.advice == "turn your head slightly left"
    c.offer(_frame(_unit(10), yaw=0.3))
    assert c.advice == "turn your head slightly right"
    c.offer(_frame(_unit(20), yaw=-0.3))
    c.offer(_frame(_unit(30), pitch=0.55 - 0.1))  # up, against the straight frames' pitch
    assert c.advice == "tilt your head slightly down"
    assert not c.done
    c.offer(_frame(_unit(40), pitch=0.55 + 0.1))
    assert c.done and c.advice == DONE_ADVICE
    chosen = c.chosen()
    assert len(chosen) == 5
    assert chosen[0].quality is not None and chosen[0].quality.sharpness == 300.0
    assert [m.quality.yaw for m in chosen if m.quality] == [0.0, 0.3, -0.3, 0.0, 0.0]


def test_collector_fills_spare_slots_with_the_most_different_frames_only() -> None:
    c = CameraCollector(CameraRules(photos=3))
    for deg in (0.0, 1.0, 2.0, 40.0, 20.0):  # all straight: one pose, five frames
        c.offer(_frame(_unit(deg)))
    angles = [
        math.degrees(math.atan2(m.embedding[1], m.embedding[0]))
        for m in c.chosen()
        if m.embedding is not None
    ]
    # The sharpest straight frame (the first: equal sharpness keeps the first), then the
    # farthest (25 degrees), then the farthest from both (12).
    assert angles == pytest.approx([0.0, 40.0, 20.0], abs=1e-3)
    # Frames that add nothing (a still head) are not taken to fill the slots.
    still = CameraCollector(CameraRules(photos=3))
    for _ in range(10):
        still.offer(_frame(_unit(0.0)))
    assert len(still.chosen()) == 1


def test_refused_frames_come_with_words_a_person_can_act_on() -> None:
    e = _unit(0)
    assert frame_advice(PhotoMeasure(None, None, "no face found")) == "step in front of the camera"
    assert "only the person" in str(frame_advice(_frame(e, faces=2, area_ratio=1.2)))
    assert frame_advice(_frame(e, face_px=30.0)) == "come closer to the camera"
    assert "turn back" in str(frame_advice(_frame(e, yaw=0.8)))
    assert "hold still" in str(frame_advice(_frame(e, sharp=5.0)))
    assert frame_advice(_frame(e)) is None
    c = CameraCollector()
    assert c.offer(_frame(e, face_px=30.0)) == "come closer to the camera"
    assert c.advice == "come closer to the camera" and c.used == 0 and c.offered == 1


def test_collect_stops_when_done_or_out_of_time() -> None:
    frames = [_frame(_unit(d), yaw=y) for d, y in ((0, 0.0), (10, 0.3), (20, -0.3))]
    said: list[str] = []
    c = collect(
        iter(range(3)), lambda i: frames[i], CameraCollector(CameraRules(photos=3)), 60, said.append
    )
    assert c.done and said[-1] == DONE_ADVICE and c.offered == 3
    t = iter([0.0, 100.0, 200.0])
    c = collect(
        iter(range(3)), lambda i: frames[0], CameraCollector(), 10, said.append, lambda: next(t)
    )
    assert c.offered == 1 and not c.done  # the clock ran out after the first frame


def test_enroll_camera_from_a_folder_source(
    shared: Path, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``enroll --camera``: the configured folder source stands in for the camera; frames of
    one person (real photos) give up to --photos embeddings through enroll's checks."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((shared / "faces" / "Barack_Obama").iterdir()):
        (frames / p.name).symlink_to(p)
    (tmp_path / "g.key").write_bytes(b"k" * 32)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[camera]\nsource = "folder"\npath = "frames"\nrealtime = false\n'
        '[gallery]\npath = "g.fgg"\nkey_file = "g.key"\n'
    )
    assert (
        main(
            ["enroll", "--camera", "--config", str(cfg), "--name", "Barack Obama", "--photos", "3"]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert "enrolled 'Barack Obama': 3 of 3 image(s) used" in out, err
    assert "camera: only the person enrolling in front of the camera, please" in err  # 2 faces
    assert "camera: turn your head slightly" in err
    assert (
        main(
            [
                "gallery",
                "list",
                "--gallery",
                str(tmp_path / "g.fgg"),
                "--key-file",
                str(tmp_path / "g.key"),
            ]
        )
        == 0
    )
    out, _ = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == [
        {"name": "Barack Obama", "embeddings": 3, "groups": []}
    ]
    # Photos and --camera together, or neither, is a usage error in one line.
    assert main(["enroll", "--camera", "--config", str(cfg), "--name", "X", str(frames)]) == 2
    assert "not both" in capsys.readouterr().err


def test_signed_enrol_command_is_printed_for_the_running_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.door.remote import NonceCache, verify_enrol

    key = b"e" * 32
    (tmp_path / "enrol.key").write_bytes(key)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[device]\nid = "front"\n[mqtt]\nenabled = true\ncommands = true\n'
        '[review]\nenrol_command = true\nenrol_key_file = "enrol.key"\n'
    )
    assert main(["enroll", "--config", str(cfg), "--name", "Zoë", "--signed-command"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["command"] == "enrol" and doc["name"] == "Zoë"
    got = verify_enrol(
        doc, key=key, device_id="front", now=doc["ts"], mono=0.0, synced=True, nonces=NonceCache()
    )
    assert got == (None, "Zoë")

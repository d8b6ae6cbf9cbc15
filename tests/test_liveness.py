"""The liveness stage: the mesh model and its manifest, the decision, the config, the CLI.

The CLI runs on the real clip (``../shared/video``) and on attacks generated
by ``tools.liveness.attacks`` from a registry photo; bad input (an unreadable
video, a clip without a face, a one-frame clip) is one line, never a traceback.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import DETECTOR, DETECTOR_FULL, MODELS, REPO

from edge.config import parse_config
from edge.errors import ConfigError, ManifestMismatch, ModelError
from edge.liveness.blink import Blink
from edge.liveness.decide import PROP_MIN_STILL, LivenessParams, decide, decide_progressive
from edge.liveness.geometry import Parallax
from edge.liveness.mesh import FaceMesh, roi_from_keypoints, roi_matrix
from edge.liveness.motion import ContextCount, Window
from edge.vision.manifest import load_manifest, save_manifest

MESH = MODELS / "face_landmark.tflite"
needs_mesh = pytest.mark.skipif(
    not MESH.exists() or not DETECTOR.exists(),
    reason="face mesh or detector not built (python -m tools.models build)",
)


def _window(
    mesh_deg: float = 0.0,
    klt_deg: float = 0.0,
    z: float = 0.0,
    prop: int = 0,
    t: float = 0.5,
    klt_dir: tuple[float, float] = (1.0, 0.0),
    still: int = 10,
) -> Window:
    klt = Parallax(math.radians(klt_deg), z * z, z, z, 0.2, 80, klt_dir)
    mesh = Parallax(math.radians(mesh_deg), 100.0, 10.0, 10.0, 0.5, 468, (1.0, 0.0))
    beyond = ContextCount(prop, still, 0)
    return Window(t - 0.5, t, 120.0, 80, 0.1, klt, beyond, ContextCount(), mesh)


# -- the decision ------------------------------------------------------------------------


def test_decision_a_turn_passes_a_prop_is_a_spoof_nothing_is_null() -> None:
    p = LivenessParams(min_turn_deg=6.0, min_z=4.5, min_prop_points=12)
    live = decide([_window(), _window(9.0, 7.0, 8.0, t=1.0)], [], p)
    assert live.passed is True and live.score > 0.5 and live.decided_at == 1.0
    assert live.evidence and live.evidence[0].startswith("turn 9deg")
    # The mesh alone, the texture alone, or too little significance: not evidence.
    for w in (_window(9.0, 0.5, 1.0), _window(2.0, 7.0, 8.0), _window(9.0, 7.0, 3.0)):
        assert decide([w], [], p).passed is None
    # Both turned, but in directions 90 degrees apart: not one rigid turn.
    assert decide([_window(9.0, 7.0, 8.0, klt_dir=(0.0, 1.0))], [], p).passed is None
    assert decide([_window(9.0, 7.0, 8.0, klt_dir=(0.8, 0.6))], [], p).passed is True
    # A prop wins over any live evidence, and scores 0.
    spoof = decide([_window(9.0, 7.0, 8.0), _window(prop=20, t=1.0)], [], p)
    assert spoof.passed is False and spoof.score == 0.0 and "prop" in spoof.evidence[0]
    # Held still, nothing seen: not enough evidence, which is never a pass.
    null = decide([_window(0.5, 0.3, 1.0)] * 6, [], p)
    assert null.passed is None and null.score < 0.5 and null.reason == "no_liveness"


def test_a_prop_needs_the_room_seen_still_and_a_final_verdict_stays() -> None:
    p = LivenessParams(min_prop_points=12)
    # Everything around the face moves with it and nothing stands still: a crowd
    # walking along (or the camera itself moving), not a prop in front of a room.
    assert decide([_window(prop=40, still=0)], [], p).passed is None
    assert decide([_window(prop=40, still=PROP_MIN_STILL - 1)], [], p).passed is None
    assert decide([_window(prop=40, still=PROP_MIN_STILL)], [], p).passed is False
    # The stage stops at the first final verdict: later evidence cannot change it.
    turn_then_prop = [_window(9.0, 7.0, 8.0, t=0.5), _window(prop=40, t=1.0)]
    v = decide_progressive(turn_then_prop, [], p)
    assert v.passed is True and v.decided_at == 0.5
    prop_then_turn = [_window(prop=40, t=0.5), _window(9.0, 7.0, 8.0, t=1.0)]
    assert decide_progressive(prop_then_turn, [], p).passed is False
    # A blink counts when the eyes reopen, in time order with the windows.
    v = decide_progressive([_window(prop=40, t=1.0)], [Blink(0.3, 0.5, 0.1)], p)
    assert v.passed is True and v.decided_at == 0.5
    assert decide_progressive([_window(0.5, 0.3, 1.0)] * 3, [], p).passed is None


def test_decision_blinks_texture_and_an_unmounted_camera() -> None:
    p = LivenessParams()
    blink = decide([], [Blink(1.0, 1.2, 0.1)], p)
    assert blink.passed is True and "blink" in blink.evidence[0]
    assert decide([], [Blink(1.0, 1.2, 0.1)], replace(p, blinks=False)).passed is None
    # A camera that moves: a prop cannot be told from the room moving.
    assert decide([_window(prop=50)], [], replace(p, mounted=False)).passed is None
    # The optional texture model can only refuse.
    assert decide([_window(9.0, 7.0, 8.0)], [], p, texture=0.2).passed is False
    assert decide([_window(9.0, 7.0, 8.0)], [], p, texture=0.9).passed is True
    assert decide([], [], p, texture=0.9).passed is None


def test_verdict_json_is_the_events_liveness_object() -> None:
    v = decide([_window(9.0, 7.0, 8.0)], [], LivenessParams())
    got = v.to_json()
    assert set(got) == {"passed", "score", "evidence"} and got["passed"] is True
    json.dumps(got)


# -- config -------------------------------------------------------------------------------


def test_liveness_config_section() -> None:
    cfg = parse_config(
        {"liveness": {"mode": "require", "max_wait_s": 4}, "camera": {"mounted": False}}
    )
    assert cfg.liveness.mode == "require" and cfg.liveness.max_wait_s == 4.0
    assert cfg.camera.mounted is False
    assert parse_config({}).camera.mounted is True
    for doc, message in (
        ({"liveness": {"mode": "on"}}, "liveness.mode: must be one of off, report, require"),
        ({"liveness": {"max_wait_s": 0}}, "liveness.max_wait_s: must be in (0, 60]"),
        ({"liveness": {"min_z": -1}}, "liveness.min_z: must be in (0, 100]"),
        ({"liveness": {"bogus": 1}}, "liveness.bogus: unknown key"),
    ):
        with pytest.raises(ConfigError, match=__import__("re").escape(message)):
            parse_config(doc)


# -- the mesh model and its manifest ------------------------------------------------------


def test_roi_matrix_maps_the_roi_onto_the_crop() -> None:
    roi = roi_from_keypoints((100, 50, 80, 100), (120, 90), (160, 110))
    m = roi_matrix(roi, 192)
    centre = m[:, :2] @ [roi.cx, roi.cy] + m[:, 2]
    assert np.allclose(centre, [96, 96])
    # The eye line becomes horizontal in the crop.
    eyes = (m[:, :2] @ np.array([[120, 90], [160, 110]]).T).T + m[:, 2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-9
    assert roi.size == pytest.approx(150.0)


@needs_mesh
def test_mesh_manifest_is_checked(tmp_path: Path) -> None:
    mesh = FaceMesh.load(MESH)
    assert mesh.size == 192 and mesh.manifest.kind == "landmarks"
    assert mesh.manifest.source["package"].startswith("mediapipe==")
    # A model that is not the one its manifest describes is refused.
    shutil.copy(MESH.with_suffix(".json"), tmp_path / "face_landmark.json")
    data = MESH.read_bytes()
    (tmp_path / "face_landmark.tflite").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ManifestMismatch, match="sha256"):
        FaceMesh.load(tmp_path / "face_landmark.tflite")
    # A manifest of another kind, or with another input shape, is refused too.
    shutil.copy(MESH, tmp_path / "face_landmark.tflite")
    m = load_manifest(tmp_path / "face_landmark.json")
    save_manifest(replace(m, kind="detector"))
    with pytest.raises(ModelError, match="not a landmark manifest"):
        FaceMesh.load(tmp_path / "face_landmark.tflite")
    save_manifest(replace(m, input=replace(m.input, shape=(1, 128, 128, 3))))
    with pytest.raises(ManifestMismatch, match="input shape"):
        FaceMesh.load(tmp_path / "face_landmark.tflite")
    (tmp_path / "face_landmark.json").unlink()
    with pytest.raises(ModelError, match="no manifest"):
        FaceMesh.load(tmp_path / "face_landmark.tflite")


@needs_mesh
def test_mesh_on_a_registry_photo() -> None:
    from edge.demo import demo_photos
    from edge.imageio import read_image
    from edge.liveness.geometry import eye_opening
    from edge.vision.detector import FaceDetector

    img = read_image(demo_photos()["grace_hopper"])
    det = FaceDetector.load(DETECTOR).detect(img)[0]
    b = det.box
    res = FaceMesh.load(MESH).run(img, roi_from_keypoints((b.x, b.y, b.w, b.h), *det.keypoints[:2]))
    assert res.presence > 0.9 and res.points.shape == (468, 3)
    inside = (res.points[:, 0] > b.x - 0.3 * b.w) & (res.points[:, 0] < b.x + 1.3 * b.w)
    assert inside.all()
    # The nose tip (landmark 1) is nearer the camera than the cheeks' contour.
    assert res.points[1, 2] < res.points[234, 2] and res.points[1, 2] < res.points[454, 2]
    r, le = eye_opening(res.points)
    assert 0.05 < r < 0.4 and 0.05 < le < 0.4  # open eyes


# -- the CLI ------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "liveness", *args],
        capture_output=True, text=True, cwd=cwd, timeout=600, check=False,
    )  # fmt: skip


def _lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@needs_mesh
def test_cli_bad_input_is_one_line_each(tmp_path: Path) -> None:
    import cv2

    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    empty = tmp_path / "empty"
    empty.mkdir()
    for i in range(3):  # a clip without a face
        cv2.imwrite(str(empty / f"{i:03d}.png"), np.full((120, 160, 3), 90, np.uint8))
    one = tmp_path / "one"
    one.mkdir()
    from edge.demo import demo_photos

    shutil.copy(demo_photos()["grace_hopper"], one / "000.jpg")
    r = _cli(str(bad), str(empty), str(one), str(tmp_path / "missing.mp4"))
    assert "Traceback" not in r.stderr
    assert r.returncode == 1  # two clips could not be read
    skipped = [line for line in r.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2 and all(len(s) < 300 for s in skipped)
    got = {Path(str(d["clip"])).name: d for d in _lines(r.stdout)}
    assert got["empty"]["live"] is None and got["empty"]["reason"] == "no_face"
    assert got["one"]["live"] is None and got["one"]["reason"] == "one_frame"
    assert got["one"]["frames"] == 1


@needs_mesh
@pytest.mark.slow
def test_cli_on_generated_attacks_never_passes(tmp_path: Path) -> None:
    """A moved print and a still screen of a registry photo: never "live"."""
    import cv2

    from edge.demo import demo_photos
    from edge.imageio import read_image
    from edge.vision.detector import FaceDetector
    from tools.liveness.attacks import AttackSpec, frames, make_scene, registry_backgrounds

    photo = read_image(demo_photos()["astronaut"])
    b = FaceDetector.load(DETECTOR).detect(photo)[0].box
    clips = []
    for spec in (AttackSpec("print", "moved", seed=3, fps=12.5, seconds=3.0),
                 AttackSpec("screen", "tremor", seed=4, fps=12.5, seconds=3.0)):  # fmt: skip
        folder = tmp_path / f"{spec.prop}-{spec.motion}"
        folder.mkdir()
        scene = make_scene(spec, photo, (b.x, b.y, b.w, b.h), registry_backgrounds())
        for i, img in enumerate(frames(scene)):
            cv2.imwrite(str(folder / f"{i:03d}.png"), img[..., ::-1])
        clips.append(str(folder))
    r = _cli("--fps", "12.5", *clips)
    assert r.returncode == 0, r.stderr
    got = _lines(r.stdout)
    assert len(got) == 2
    for d in got:
        assert d["live"] is not True, d
        assert d["frames"] == 38 and d["reason"] in ("spoof", "no_liveness")


@needs_mesh
@pytest.mark.slow
@pytest.mark.skipif(not DETECTOR_FULL.exists(), reason="full-range detector not built")
def test_cli_on_the_real_clip(shared_video: Path, tmp_path: Path) -> None:
    """Live people walking towards a fixed camera: the longest track passes."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[detector]\nmodel = "{DETECTOR_FULL}"\n', encoding="utf-8")
    r = _cli("--config", str(cfg), str(shared_video))
    assert r.returncode == 0, r.stderr
    (got,) = _lines(r.stdout)
    assert got["frames"] == 105
    assert got["live"] is True and got["reason"] == "live" and got["evidence"]


@needs_mesh
def test_stage_a_photo_held_still_is_not_enough_evidence_and_old_tracks_go() -> None:
    """Three seconds of a still photo (sensor noise only): null, never a pass."""
    from edge.demo import demo_photos
    from edge.imageio import read_image
    from edge.liveness.stage import LivenessStage
    from edge.vision.detector import FaceDetector

    img = read_image(demo_photos()["grace_hopper"])
    det = FaceDetector.load(DETECTOR).detect(img)[0]
    stage = LivenessStage(FaceMesh.load(MESH), max_age_s=1.0)
    rng = np.random.default_rng(0)
    for i in range(30):
        noisy = np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
        stage.update(noisy, i / 10, [(7, det)])
    v = stage.finish(7)
    assert v.passed is None and v.reason == "no_liveness" and v.score < 0.5
    assert stage.frames(7) == 30
    # A track not fed for max_age_s is forgotten; an unknown one is undecided.
    stage.update(img, 5.0, [])
    assert stage.tracks == [] and stage.verdict(7).passed is None

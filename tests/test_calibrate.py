"""tools.calibrate: parameter choice, the manifest it writes, and that the device obeys it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from edge.vision.manifest import Calibration, load_manifest, save_manifest
from tools import calibrate, stats

REPO = Path(__file__).resolve().parents[1]
FACES = SHARED / "faces"
MODELS = REPO / "models"
INT8 = MODELS / "facenet_int8.tflite"
DETECTOR = MODELS / "face_detection_short_range.tflite"

needs_faces = pytest.mark.shared  # the one gate for ../shared (tests/conftest.py)
needs_models = pytest.mark.skipif(
    not (INT8.is_file() and DETECTOR.is_file()),
    reason="models/facenet_int8.tflite or the detector is missing "
    "(run `python -m tools.models build`)",
)


# -- parameter choice on synthetic distributions ------------------------------------------
IMPOSTOR = np.arange(1, 10_001) / 10_000.0  # 0.0001 .. 1.0000, uniform
GENUINE = np.linspace(0.0, 0.02, 201)


def test_threshold_for_far_alone() -> None:
    res = calibrate.choose_parameters(GENUINE, IMPOSTOR, far=1e-2)
    # k = floor(0.01 * 10000) = 100 -> t = d_(101) = 0.0101, stored rounded down to 0.01009
    assert res.threshold_far == pytest.approx(0.0101)
    assert res.threshold == pytest.approx(0.01009)
    assert res.binding == "far"
    assert res.far_at_threshold == pytest.approx(0.01)  # 0.0001 .. 0.0100 accepted
    assert res.frr_at_threshold == pytest.approx(np.mean(GENUINE >= 0.01009))
    assert res.data_check.ok  # 10000 >= 3 / 0.01


def test_gallery_size_makes_the_threshold_stricter() -> None:
    res = calibrate.choose_parameters(
        GENUINE, IMPOSTOR, far=1e-2, fpir=0.01, gallery_size=5, per_person=2
    )
    f = 1 - 0.99 ** (1 / 10)  # 0.0010045...: M = 5 people x 2 embeddings
    assert res.comparisons == 10
    assert res.target_far == pytest.approx(f)
    assert res.binding == "fpir"
    # k = floor(f * 10000) = 10 -> t = d_(11) = 0.0011 (stored as 0.00109)
    assert res.threshold_fpir == pytest.approx(0.0011)
    assert res.threshold == pytest.approx(0.00109)
    assert res.threshold_far == pytest.approx(0.0101)
    assert res.fpir_predicted == pytest.approx(1 - (1 - 0.001) ** 10)


def test_a_lenient_fpir_does_not_loosen_the_far() -> None:
    res = calibrate.choose_parameters(GENUINE, IMPOSTOR, far=1e-3, fpir=0.5, gallery_size=2)
    assert res.binding == "far"
    assert res.threshold_far == pytest.approx(0.0011)
    assert res.threshold_fpir is not None and res.threshold_fpir > res.threshold_far


def test_too_few_impostors_is_flagged_with_what_the_estimate_is_worth() -> None:
    imp = IMPOSTOR[::10]  # 1000 pairs, but FAR 1e-3 needs 3000
    res = calibrate.choose_parameters(GENUINE, imp, far=1e-3)
    assert not res.data_check.ok
    assert res.data_check.required == 3000
    errors = round(res.far_at_threshold * imp.size)
    assert res.data_check.upper_bound == pytest.approx(stats.binomial_upper_bound(1000, errors))
    assert "too few" in res.data_check.message
    text = calibrate.summary_text(res, _dummy_distances(imp), None, {})
    assert "WARNING" in text


def _dummy_distances(imp: np.ndarray) -> calibrate.Distances:
    from tools._faces import FaceSet

    faces = FaceSet([], [], np.zeros((0, 4), np.float32))
    return calibrate.Distances(GENUINE.astype(np.float32), imp.astype(np.float32), faces, "x")


def test_margin_from_gaps_default_or_given() -> None:
    gaps = np.arange(200) / 4000.0  # 0 .. 0.04975
    res = calibrate.choose_parameters(GENUINE, IMPOSTOR, far=1e-2, gaps_for=lambda t: gaps)
    assert res.margin == pytest.approx(gaps[2])  # k = floor(0.01 * 200) = 2
    assert res.margin_searches == 200
    res = calibrate.choose_parameters(GENUINE, IMPOSTOR, far=1e-2)
    assert res.margin == calibrate.DEFAULT_MARGIN
    res = calibrate.choose_parameters(GENUINE, IMPOSTOR, far=1e-2, margin=0.07)
    assert res.margin == 0.07


def test_confidence_is_half_between_two_symmetric_classes() -> None:
    rng = np.random.default_rng(5)
    gen = rng.normal(0.35, 0.12, 4000)
    imp = rng.normal(0.85, 0.12, 40000)
    res = calibrate.choose_parameters(gen, imp, far=1e-3)
    assert res.confidence.midpoint == pytest.approx(0.60, abs=0.01)
    # Equal-variance Gaussians: scale = s^2 / (mu_i - mu_g) = 0.0144 / 0.5
    assert res.confidence.scale == pytest.approx(0.0288, rel=0.1)
    cal = res.calibration("test")
    assert cal.conf_midpoint == pytest.approx(res.confidence.midpoint, abs=1e-6)


def test_no_genuine_pairs_is_a_user_error() -> None:
    from edge.errors import FacegateError

    with pytest.raises(FacegateError):
        calibrate.choose_parameters(np.array([]), IMPOSTOR)
    with pytest.raises(FacegateError):
        calibrate.choose_parameters(GENUINE, IMPOSTOR, fpir=0.01)  # no gallery size


# -- the manifest ------------------------------------------------------------------------
def _write_test_manifest(folder: Path) -> Path:
    """A manifest copied from the detector's (the fields calibrate touches are generic)."""
    src = load_manifest(DETECTOR)
    shutil.copy(DETECTOR, folder / DETECTOR.name)
    return save_manifest(src, folder / "model.json")


@pytest.mark.skipif(not DETECTOR.is_file(), reason="models/ detector is missing")
def test_write_manifest_round_trip(tmp_path: Path) -> None:
    mpath = _write_test_manifest(tmp_path)
    res = calibrate.choose_parameters(GENUINE, IMPOSTOR, far=1e-2, margin=0.04)
    calibrate.write_manifest(mpath, res, "unit test")
    m = load_manifest(mpath)
    assert m.calibration is not None
    assert m.calibration.threshold == pytest.approx(res.threshold)
    assert m.calibration.margin == pytest.approx(0.04)
    assert m.calibration.conf_scale == pytest.approx(res.confidence.scale, abs=1e-6)
    assert m.calibration.source == "unit test"
    assert m.extra["calibration"]["n_impostor"] == IMPOSTOR.size
    # The tables the device picks its gallery-size threshold from travel in the block.
    assert m.calibration.far_table == res.far_table and m.calibration.far_table.n == IMPOSTOR.size
    assert m.calibration.frr_table == res.frr_table and m.calibration.frr_table.n == GENUINE.size
    assert m.sha256 == load_manifest(DETECTOR).sha256  # the model hash is untouched


# -- with the real models and faces ---------------------------------------------------------
@pytest.fixture(scope="module")
def recognizer_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The int8 model and manifest copied to a temp folder (so the test can recalibrate it)."""
    d = tmp_path_factory.mktemp("model")
    shutil.copy(INT8, d / INT8.name)
    shutil.copy(INT8.with_suffix(".json"), d / INT8.with_suffix(".json").name)
    person = sorted(p for p in FACES.iterdir() if p.is_dir() and len(list(p.iterdir())) >= 2)[0]
    photos = sorted(person.iterdir())
    return d / INT8.name, photos[0], photos[1]


@needs_models
@needs_faces
def test_changing_the_calibration_changes_the_decision(
    recognizer_parts: tuple[Path, Path, Path],
) -> None:
    from edge.decide.recognizer import Recognizer
    from edge.identity.gallery import Gallery
    from edge.imageio import read_image

    model, enrol_photo, probe_photo = recognizer_parts
    person = enrol_photo.parent.name

    def recognise(cal: Calibration) -> tuple[str | None, float, float]:
        m = load_manifest(model)
        save_manifest(m.with_calibration(cal))
        rec = Recognizer.from_models(DETECTOR, model)
        g = Gallery(rec.model_sha256)
        g.add(person, rec.embed_single_face(read_image(enrol_photo))[None, :])
        rec.set_gallery(g)
        faces = rec.identify(read_image(probe_photo))
        assert faces, "the probe photo has a face"
        return faces[0].match.name, faces[0].match.distance, faces[0].match.confidence

    loose = Calibration(threshold=1.5, margin=0.0, conf_midpoint=1.0, conf_scale=0.05)
    name, d, conf = recognise(loose)
    assert name == person and d < 1.5
    assert conf == pytest.approx(1 / (1 + np.exp((d - 1.0) / 0.05)), rel=1e-6)
    # The same probe with a threshold just below its distance: no longer named, and the
    # confidence follows the new curve. No code changed, only the manifest.
    strict = Calibration(threshold=d * 0.9, margin=0.0, conf_midpoint=d, conf_scale=0.1)
    name2, d2, conf2 = recognise(strict)
    assert name2 is None
    assert d2 == pytest.approx(d, abs=1e-6)
    assert conf2 == pytest.approx(0.5, abs=1e-4)


@needs_models
@needs_faces
def test_cli_on_shared_faces_writes_the_report(tmp_path: Path) -> None:
    mdir = tmp_path / "m"
    mdir.mkdir()
    shutil.copy(INT8, mdir / INT8.name)
    shutil.copy(INT8.with_suffix(".json"), mdir / "facenet_int8.json")
    model = mdir / INT8.name
    out = tmp_path / "report"
    rc = calibrate.main(
        [
            str(FACES),
            "--model",
            str(model),
            "--out",
            str(out),
            "--no-cache",
            "--quiet",
            "--far",
            "1e-3",
        ]
    )
    assert rc == 0
    data = json.loads((out / "calibration.json").read_text())
    res = data["result"]
    m = load_manifest(model)
    assert m.calibration is not None
    assert m.calibration.threshold == res["threshold"]
    assert res["threshold"] <= res["threshold_far"]
    assert m.calibration.margin == pytest.approx(res["margin"], abs=1e-6)
    # ../shared/faces has ~1000 impostor pairs: too few for FAR 1e-3, and the report says so.
    assert res["n_impostor"] < 3000 and not res["data_check"]["ok"]
    assert "too few impostor pairs" in (out / "calibration.md").read_text()
    # The report carries the manifest's block (tools.evaluate --calibration reads it) and
    # what the device would do with it for a few gallery sizes.
    assert data["calibration"]["far_table"] == m.calibration.far_table.to_json()
    assert data["calibration"]["far_table"]["rate"][0] == pytest.approx(3 / res["n_impostor"])
    sizes = {p["comparisons"]: p for p in data["gallery_sizes"]}
    assert sizes[1]["threshold"] >= sizes[10]["threshold"] >= sizes[1000]["threshold"]
    assert sizes[1000]["clamped"]  # ~1000 pairs cannot resolve FAR 1e-5
    for png in ("hist.png", "det.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = calibrate.main([str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--no-write"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("calibrate: error:") and "\n" not in err


# -- the shipped calibration records -------------------------------------------------------
def test_shipped_records_carry_the_tables_measured_with_the_shipped_settings() -> None:
    """Every committed record holds the FAR and FRR tables the device reads for its gallery
    size (without them it falls back to one fixed threshold), measured with the settings
    tools.evaluate --cross-calibrate reproduces on each fold."""
    from edge.identity.thresholds import operating_point
    from edge.vision.manifest import calibration_from_dict

    records = sorted((MODELS / "calibration").glob("*.json"))
    assert [r.stem for r in records] == [
        "facenet_float32", "facenet_int8", "sface_float32", "sface_int8"
    ]  # fmt: skip
    for path in records:
        rec = json.loads(path.read_text())
        cal = calibration_from_dict(rec["calibration"])
        extra = rec["extra_calibration"]
        assert cal.far_table is not None and cal.frr_table is not None, path.name
        assert cal.far_table.n == extra["n_impostor"] and cal.frr_table.n == extra["n_genuine"]
        assert extra["fpir"] == calibrate.SHIPPED_FPIR
        shipped_m = calibrate.SHIPPED_GALLERY_SIZE * calibrate.SHIPPED_PER_PERSON
        assert extra["gallery_comparisons"] == shipped_m
        # The tables resolve the rates a door needs: FPIR 1% for 1,000 enrolled photos.
        assert not operating_point(cal.threshold, cal.far_table, cal.frr_table, 1000).clamped
        # The fixed threshold and the table's for the shipped gallery agree to a table row.
        table = operating_point(cal.threshold, cal.far_table, cal.frr_table, shipped_m)
        assert table.source == "table" and abs(table.threshold - cal.threshold) < 0.005

"""Enrolment that prevents mix-ups (edge.identity.enrol): the numbers on synthetic data, the
warnings and refusals on real photos through ``facegate enroll`` / ``gallery list``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import DETECTOR, EMBEDDER

from edge.cli import main
from edge.identity.enrol import (
    DEFAULT_RULES,
    FaceQuality,
    PhotoMeasure,
    consistency,
    lookalike_message,
    lookalikes,
    outlier_distance,
    photo_problem,
)
from edge.numerics import laplacian_variance, yaw_ratio
from edge.vision.manifest import Calibration, RateTable


# -- the pure numbers -------------------------------------------------------------------
def test_laplacian_variance_exact_values() -> None:
    impulse = np.zeros((5, 5))
    impulse[2, 2] = 1.0
    # Interior Laplacian: -4 at the centre, 1 at its four neighbours, 0 at the corners:
    # mean 0, variance (16 + 4 * 1) / 9.
    assert laplacian_variance(impulse) == pytest.approx(20 / 9)
    assert laplacian_variance(np.full((6, 7), 99.0)) == 0.0
    ramp = np.add.outer(np.arange(6.0), 2 * np.arange(6.0))  # a plane: no curvature
    assert laplacian_variance(ramp) == pytest.approx(0.0)
    # A contrast gain g multiplies it by g^2.
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (20, 20))
    assert laplacian_variance(3 * img) == pytest.approx(9 * laplacian_variance(img))
    with pytest.raises(ValueError):
        laplacian_variance(np.zeros((2, 5)))


def test_yaw_ratio_exact_and_rotation_invariant() -> None:
    r, le = np.array([0.0, 0.0]), np.array([10.0, 0.0])
    assert yaw_ratio(r, le, np.array([5.0, 6.0])) == 0.0
    assert yaw_ratio(r, le, np.array([8.0, 6.0])) == pytest.approx(0.3)
    assert yaw_ratio(r, le, np.array([1.0, 6.0])) == pytest.approx(-0.4)
    a = math.radians(37)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = [rot @ p + np.array([50.0, -20.0]) for p in (r, le, np.array([8.0, 6.0]))]
    assert yaw_ratio(*pts) == pytest.approx(0.3)  # in-plane rotation and shift do not matter
    assert yaw_ratio(r, r, le) == math.inf


def _q(**kw: float) -> PhotoMeasure:
    base = {"face_px": 120.0, "sharpness": 300.0, "yaw": 0.0, "faces": 1, "area_ratio": math.inf}
    base.update(kw)
    base["faces"] = int(base["faces"])
    return PhotoMeasure(np.zeros(4, np.float32), FaceQuality(**base))  # type: ignore[arg-type]


def test_photo_problem_reasons_and_limits() -> None:
    assert photo_problem(_q()) is None
    assert photo_problem(_q(faces=2, area_ratio=2.0)) is None  # exactly 2x: the largest is used
    p = photo_problem(_q(faces=3, area_ratio=1.9))
    assert p is not None and not p.forcible and "3 faces" in p.reason
    p = photo_problem(_q(face_px=DEFAULT_RULES.min_face_px - 1))
    assert p is not None and p.forcible and "too small" in p.reason
    p = photo_problem(_q(yaw=-(DEFAULT_RULES.max_yaw + 0.01)))
    assert p is not None and p.forcible and "turned too far" in p.reason
    p = photo_problem(_q(sharpness=DEFAULT_RULES.min_sharpness - 0.1))
    assert p is not None and p.forcible and "blurred" in p.reason
    p = photo_problem(PhotoMeasure(None, None, "no face found"))
    assert p is not None and not p.forcible and p.reason == "no face found"


def _unit_at(*angles_deg: float) -> np.ndarray:
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_consistency_finds_the_photo_of_someone_else() -> None:
    # Cosine distance between unit vectors at angles a, b: 1 - cos(a - b).
    cut = 1 - math.cos(math.radians(40))  # 0.234
    assert consistency(_unit_at(0, 20, 35), np.zeros((0, 2), np.float32), cut) == []
    out = consistency(_unit_at(0, 20, 120), np.zeros((0, 2), np.float32), cut)
    assert [o.index for o in out] == [2] and "probably someone else" in out[0].reason
    assert out[0].nearest == pytest.approx(1 - math.cos(math.radians(100)), abs=1e-6)
    # Two photos far apart: no majority, both reported.
    out = consistency(_unit_at(0, 90), np.zeros((0, 2), np.float32), cut)
    assert [o.index for o in out] == [0, 1] and "do not agree" in out[0].reason
    # Adding to an enrolled person: the enrolled photos are the reference.
    out = consistency(_unit_at(100, 110), _unit_at(0, 10), cut)
    assert [o.index for o in out] == [0, 1] and "already enrolled" in out[0].reason
    assert consistency(_unit_at(30, 60), _unit_at(0), cut) == []  # linked through 30


def test_outlier_distance_from_the_genuine_table_or_the_confidence() -> None:
    frr = RateTable(1000, (0.1, 0.01), (0.45, 0.60), (100, 10))
    cal = Calibration(0.40, 0.05, 0.50, 0.03, frr_table=frr)
    assert outlier_distance(cal) == 0.60
    plain = Calibration(0.40, 0.05, 0.50, 0.03)
    assert outlier_distance(plain) == pytest.approx(0.50 + 0.03 * math.log(19))
    # Never below the threshold (a pair the matcher accepts is not someone else), and the
    # margin (a gap between two people) does not widen it.
    assert outlier_distance(Calibration(0.70, 0.05, 0.5, 0.03)) == pytest.approx(0.70)


def test_lookalikes_every_pair_and_one_person() -> None:
    emb = _unit_at(0, 5, 30, 100)  # ann: 0, 5; bob: 30; cat: 100
    starts = np.array([0, 2, 3], np.intp)
    pairs = lookalikes(["ann", "bob", "cat"], emb, starts, 0.1)
    assert [(p.a, p.b) for p in pairs] == [("ann", "bob")]
    assert pairs[0].distance == pytest.approx(1 - math.cos(math.radians(25)), abs=1e-6)
    assert pairs[0].far is None  # no FAR table given
    only = lookalikes(["ann", "bob", "cat"], emb, starts, 0.1, only="bob")
    assert [(p.a, p.b) for p in only] == [("bob", "ann")]
    assert lookalikes(["ann", "bob", "cat"], emb, starts, 0.1, only="cat") == []
    msg = lookalike_message(pairs[0])
    assert "'ann' and 'bob'" in msg and "0.094 apart" in msg and "threshold (0.100)" in msg


def test_lookalikes_only_under_the_threshold_and_say_how_rare() -> None:
    """The rule is d < t (not t + margin); the message quotes FAR(d) from the table."""
    emb = _unit_at(0, 25)  # 0.0937 apart
    starts = np.array([0, 1], np.intp)
    d = 1 - math.cos(math.radians(25))
    assert lookalikes(["ann", "bob"], emb, starts, d - 1e-4) == []  # just above t: no warning
    far = RateTable(100_000, (0.0001, 0.001, 0.01), (0.1, 0.2, 0.3), (10, 100, 1000))
    (la,) = lookalikes(["ann", "bob"], emb, starts, d + 1e-4, far)
    # FAR(d) <= count / n of the first row whose threshold is >= d: the 0.1 row.
    assert la.far == pytest.approx(10 / 100_000)
    assert "at most 1 in 10,000 pairs of strangers are this close" in lookalike_message(la)


# -- real photos through the CLI --------------------------------------------------------
def _enroll(
    capsys: pytest.CaptureFixture[str],
    gallery: Path,
    name: str,
    *photos: Path | str,
    force: bool = False,
) -> tuple[int, str, str]:
    capsys.readouterr()
    args = ["enroll", "--gallery", str(gallery), "--name", name, *map(str, photos)]
    rc = main([*args, "--force"] if force else args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def _save(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _warning_numbers(line: str) -> tuple[float, float]:
    """(distance, threshold) from a look-alike warning's own words."""
    d = float(line.split(" apart")[0].rsplit(" ", 1)[1])
    t = float(line.split("threshold (")[1].split(")")[0])
    return d, t


def test_lookalikes_are_named_at_enrolment_and_in_gallery_list(
    shared: Path, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kate Siegel's one photo lies close to Angelina Jolie's (docs/calibration.md).

    Model-independent: the warning must report the real nearest distance between the
    two people's photos (measured here through the recognizer, as enroll does), that
    distance must lie under the threshold the warning names, and the threshold must be
    the one the gallery-size rule gives for the gallery after enrolment.
    """
    from edge.decide.recognizer import Recognizer
    from edge.imageio import read_image

    faces = shared / "faces"
    g = tmp_path / "g.fgg"
    rc, out, err = _enroll(capsys, g, "Angelina Jolie", faces / "Angelina_Jolie")
    assert rc == 0 and "9 of 9" in out and "look-alikes" not in err
    rc, out, err = _enroll(capsys, g, "Kate Siegel", faces / "Kate_Siegel")
    assert rc == 0 and "enrolled 'Kate Siegel'" in out
    warn = [line for line in err.splitlines() if "look-alikes" in line]
    assert len(warn) == 1 and "'Kate Siegel' and 'Angelina Jolie'" in warn[0]
    d, t = _warning_numbers(warn[0])
    assert d < t
    rec = Recognizer.from_models(DETECTOR, EMBEDDER)
    emb = {
        who: np.stack(
            [rec.measure_photo(read_image(p)).embedding for p in sorted((faces / who).iterdir())]
        )
        for who in ("Angelina_Jolie", "Kate_Siegel")
    }
    nearest = float(np.min(1.0 - emb["Kate_Siegel"] @ emb["Angelina_Jolie"].T))
    assert d == pytest.approx(nearest, abs=1e-3)
    # The threshold in the warning is the device's for the 10 photos enrolled after it.
    assert t == pytest.approx(rec.operating_point_for(10).threshold, abs=1e-3)
    # An unrelated person raises no warning.
    rc, _, err = _enroll(capsys, g, "Sundar Pichai", faces / "Sundar_Pichai")
    assert rc == 0 and "look-alikes" not in err
    assert main(["gallery", "list", "--gallery", str(g)]) == 0
    out, err = capsys.readouterr()
    names = [json.loads(line)["name"] for line in out.splitlines()]
    assert names == ["Angelina Jolie", "Kate Siegel", "Sundar Pichai"]
    listed = [line for line in err.splitlines() if "look-alikes" in line]
    # The same wording, with the pair in the gallery's order (the threshold may have moved
    # with the gallery size, so compare the words around it).
    assert len(listed) == 1
    swapped = warn[0].replace(
        "'Kate Siegel' and 'Angelina Jolie'", "'Angelina Jolie' and 'Kate Siegel'"
    )
    import re

    def words(line: str) -> str:
        return re.sub(r"[0-9.,]+", "#", line)

    assert words(listed[0]) == words(swapped)
    assert "expected FPIR" in err
    assert main(["gallery", "stats", "--gallery", str(g)]) == 0
    out, err = capsys.readouterr()
    st = json.loads(out)
    assert st["people"] == 3 and st["embeddings"] == 12
    assert [(p["a"], p["b"]) for p in st["lookalikes"]] == [("Angelina Jolie", "Kate Siegel")]
    assert st["lookalikes"][0]["distance"] == pytest.approx(nearest, abs=1e-3)
    assert st["lookalikes"][0]["distance"] < st["threshold"]


def test_a_photo_of_someone_else_is_refused_unless_forced(
    shared: Path, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obama = [shared / "faces" / "Barack_Obama" / f for f in ("obama.jpg", "obama2.jpg")]
    biden = shared / "faces" / "Joe_Biden" / "biden.jpg"
    g = tmp_path / "g.fgg"
    rc, out, err = _enroll(capsys, g, "Barack Obama", *obama, biden)
    assert rc == 0 and "2 of 3" in out
    assert f"skipped {biden}: far from this person's other photos" in err
    assert "probably someone else" in err
    # Adding Biden's photo to the enrolled Obama later is refused the same way.
    before = g.read_bytes()
    rc, out, err = _enroll(capsys, g, "Barack Obama", biden)
    assert rc == 2 and "already enrolled" in err and "not enrolled" in err
    assert err.strip().splitlines()[-1].startswith("facegate: error:")
    assert g.read_bytes() == before  # the gallery is not touched
    # Two photos of two people: no way to tell which is right; nothing is written.
    g2 = tmp_path / "g2.fgg"
    rc, out, err = _enroll(capsys, g2, "Who", obama[0], biden)
    assert rc == 2 and err.count("do not agree on one person") == 2 and not g2.exists()
    # --force keeps it, with a warning.
    rc, out, err = _enroll(capsys, g2, "Who", obama[0], biden, force=True)
    assert rc == 0 and "2 of 2" in out and err.count("kept despite") == 2


def test_largest_face_rule_on_real_photos(
    shared: Path, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    from edge.imageio import read_image

    g = tmp_path / "g.fgg"
    # A real group photo of two similar-sized faces is refused, as before.
    rc, _, err = _enroll(capsys, g, "Kit", shared / "group" / "kit_with_rose.jpg")
    assert rc == 2 and "2 faces found" in err and "need 2x" in err and not g.exists()
    # A small face in the background: the largest face is used, and enrol says so.
    host = read_image(shared / "faces" / "Barack_Obama" / "obama.jpg").copy()
    guest = read_image(shared / "faces" / "Mark_Zuckerberg" / "img14.jpg")
    small = cv2.resize(guest, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    host[-h:, -w:] = small  # bottom-right corner, away from Obama's face
    photo = _save(tmp_path / "obama_with_background_face.png", host)
    rc, _out, err = _enroll(capsys, g, "Barack Obama", photo, shared / "faces" / "Barack_Obama")
    assert rc == 0
    assert f"note: {photo}: used the largest of 2 faces" in err
    line = next(x for x in err.splitlines() if str(photo) in x and "note" in x)
    ratio = float(line.split("(")[1].split("x")[0])
    assert ratio >= 2.0


def test_blurred_small_and_turned_photos_are_refused_with_reasons(
    shared: Path, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    from edge.imageio import read_image

    sharp = read_image(shared / "faces" / "Jennifer_Aniston" / "img53.jpg")
    blurred = _save(tmp_path / "blurred.png", cv2.GaussianBlur(sharp, (0, 0), 6))
    g = tmp_path / "g.fgg"
    rc, _, err = _enroll(capsys, g, "Jennifer", blurred)
    assert rc == 2 and "face too blurred" in err and "--force" in err and not g.exists()
    rc, _, err = _enroll(capsys, g, "Jennifer", blurred, force=True)
    assert rc == 0 and "kept despite: face too blurred" in err
    # Rotated in the image plane: alignment undoes it, the photo passes.
    h, w = sharp.shape[:2]
    rot = cv2.warpAffine(sharp, cv2.getRotationMatrix2D((w / 2, h / 2), 35, 1.0), (w, h))
    rotated = _save(tmp_path / "rotated.png", rot)
    rc, _, err = _enroll(capsys, tmp_path / "r.fgg", "Jennifer", rotated)
    assert rc == 0 and "skipped" not in err
    # Scaled down until the face is ~45 px: found by the detector, too small to enrol.
    small_src = read_image(shared / "faces" / "Barack_Obama" / "obama_small.jpg")
    tiny = cv2.resize(small_src, None, fx=0.36, fy=0.36, interpolation=cv2.INTER_AREA)
    rc, _, err = _enroll(capsys, tmp_path / "s.fgg", "Obama", _save(tmp_path / "t.png", tiny))
    assert rc == 2 and "face too small (45 px, enrolment needs 50 px)" in err
    # A real turned face (LFW holds profile-ish photos).
    turned = shared / "lfw" / "George_Clooney" / "George_Clooney_0002.jpg"
    if not turned.is_file():
        pytest.skip("../shared/lfw is absent: the real turned photo is in it")
    rc, _out, err = _enroll(capsys, tmp_path / "c.fgg", "George", turned)
    assert rc == 2 and "face turned too far (yaw +1.32" in err


def test_gallery_stats_with_calibration_tables(
    shared: Path, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest with tables: the threshold follows the gallery, stats shows it."""
    import shutil

    from edge.vision.manifest import load_manifest, save_manifest

    model = tmp_path / "facenet_int8.tflite"
    shutil.copy(models / "facenet_int8.tflite", model)
    m = load_manifest(models / "facenet_int8.json")
    assert m.calibration is not None
    far = RateTable(10_000, (3e-4, 1e-3, 5e-3, 1e-2), (0.30, 0.33, 0.36, 0.40), (3, 10, 50, 100))
    frr = RateTable(1000, (0.3, 0.1, 0.05), (0.30, 0.36, 0.42), (300, 100, 50))
    cal = Calibration(
        0.38,
        m.calibration.margin,
        m.calibration.conf_midpoint,
        m.calibration.conf_scale,
        "test tables",
        far,
        frr,
    )
    save_manifest(m.with_calibration(cal), tmp_path / "facenet_int8.json")
    g = tmp_path / "g.fgg"
    emb = ["--embedder", str(model)]
    faces = shared / "faces"
    assert (
        main(["enroll", "--gallery", str(g), "--name", "A", str(faces / "Alex_Lacamoire"), *emb])
        == 0
    )
    out = capsys.readouterr().out
    # M = 3 photos: f = 1 - 0.99^(1/3) = 3.35e-3 -> the 1e-3 row (the stricter neighbour).
    assert "threshold 0.33000 (from the FAR table for 3 enrolled" in out
    assert main(["gallery", "stats", "--gallery", str(g), *emb]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["threshold"], st["threshold_source"], st["embeddings"]) == (0.33, "table", 3)
    assert st["expected_fpir"] == pytest.approx(1 - (1 - 1e-3) ** 3)
    assert st["expected_fnir"] == pytest.approx(0.3)
    assert (
        main(["enroll", "--gallery", str(g), "--name", "B", str(faces / "Jennifer_Aniston"), *emb])
        == 0
    )
    capsys.readouterr()
    assert main(["gallery", "stats", "--gallery", str(g), *emb]) == 0
    st = json.loads(capsys.readouterr().out)
    # M = 9: f = 1.116e-3 -> still the 1e-3 row; M grows, the threshold never loosens.
    assert st["embeddings"] == 9 and st["threshold"] == 0.33

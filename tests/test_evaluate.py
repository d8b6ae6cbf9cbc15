"""tools.evaluate: the split, the open-set counts, and the acceptance run on ../shared/faces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.manifest import Calibration
from tools import calibrate, evaluate, stats
from tools._faces import FaceSet, LabelledImage, list_people

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "faces"
INT8 = REPO / "models" / "facenet_int8.tflite"
DETECTOR = REPO / "models" / "face_detection_short_range.tflite"

needs_faces = pytest.mark.skipif(
    not FACES.is_dir(), reason="../shared/faces (real face photos) is not available"
)
needs_models = pytest.mark.skipif(
    not (INT8.is_file() and DETECTOR.is_file()),
    reason="models/facenet_int8.tflite or the detector is missing "
    "(run `python -m tools.models build`)",
)


def test_evenly_spaced_halves_start_with_the_first() -> None:
    assert evaluate.evenly_spaced(15, 0.5) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert evaluate.evenly_spaced(10, 0.3) == [0, 3, 6]
    assert evaluate.evenly_spaced(4, 1.0) == [0, 1, 2, 3]


@needs_faces
def test_split_of_shared_faces() -> None:
    split = evaluate.split_folder(FACES, 0.5, 1)
    people = sorted(p.name for p in FACES.iterdir() if p.is_dir())
    assert split.enrolled_people == people[::2]
    assert split.strangers == people[1::2]
    assert [it.label for it in split.enrol] == split.enrolled_people  # one photo each
    for it in split.enrol:  # the first photo (sorted) of each enrolled person
        assert it.path == sorted(it.path.parent.iterdir())[0]
    assert len(split.enrol) + len(split.probes) == len(list_people(FACES))


def _faces(labels: list[str], vecs: np.ndarray) -> FaceSet:
    paths = [Path(f"{lab}/{i}.jpg") for i, lab in enumerate(labels)]
    return FaceSet(labels, paths, vecs.astype(np.float32), [], "sha")


def _unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_evaluate_faces_counts_like_the_device() -> None:
    enrol = _faces(["ann", "bob"], np.eye(4)[:2])
    probes = _faces(
        ["ann", "bob", "cat", "dan"],
        np.stack(
            [
                _unit(1, 0.1, 0, 0),  # ann, close to ann
                _unit(0.7, 0.75, 0, 0),  # bob (0.269) but ann is close (0.318): margin refusal
                _unit(0, 0, 1, 0),  # stranger, far from everyone
                _unit(0.1, 1, 0, 0.1),  # stranger who looks like bob
            ]
        ),
    )
    undetected = [LabelledImage("ann", Path("ann/x.jpg")), LabelledImage("eve", Path("eve/y.jpg"))]
    cal = Calibration(threshold=0.3, margin=0.2, conf_midpoint=0.3, conf_scale=0.05)
    ev = evaluate.evaluate_faces("m", enrol, probes, cal, undetected, [])
    c = ev.calibrated
    # Mated: ann (named), bob (nearest, but refused by the margin), ann undetected.
    assert (c.mated, c.nonmated) == (3, 3)
    assert c.false_negatives == 2 and c.fnir == pytest.approx(2 / 3)
    # dan: d_bob = 1 - 1/sqrt(1.02) ~ 0.0099 < 0.3 and clearly ahead -> named bob.
    assert c.false_positives == 1 and c.fpir == pytest.approx(1 / 3)
    assert c.rank1 == pytest.approx(2 / 3)
    # The sweep (tools.stats) agrees with the device's Matcher at the calibrated threshold.
    (same,) = stats.identification_rates(
        np.clip(1 - probes.embeddings @ enrol.embeddings.T, 0, 2),
        probes.labels,
        ["ann", "bob"],
        [0.3],
        0.2,
        undetected_mated=1,
        undetected_nonmated=1,
    )
    assert (same.false_negatives, same.false_positives) == (c.false_negatives, c.false_positives)
    assert "*" in evaluate.table([ev])


def test_two_folder_split_marks_strangers(tmp_path: Path) -> None:
    for folder, people in (("enrol", ["ann", "bob"]), ("probe", ["ann", "cat"])):
        for p in people:
            (tmp_path / folder / p).mkdir(parents=True)
            for i in range(2):
                (tmp_path / folder / p / f"{i}.jpg").write_bytes(b"x")
    s = evaluate.split_two(tmp_path / "enrol", tmp_path / "probe", enrol_first=1)
    assert s.enrolled_people == ["ann", "bob"] and s.strangers == ["cat"]
    assert len(s.enrol) == 2 and len(s.probes) == 4


def test_cli_needs_a_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--enrol", "x"]) == 2
    assert capsys.readouterr().err.startswith("evaluate: error:")


# -- real faces: calibrate on ../shared/faces, evaluate half enrolled / half strangers ------
@needs_models
@needs_faces
def test_calibration_on_the_same_faces_admits_no_stranger(tmp_path: Path) -> None:
    """In-sample guarantee, measured end to end through the device's matcher.

    With ``--far`` below ``1 / n_impostor`` (k = 0) the threshold is the smallest impostor
    distance among *all* pairs of the folder. Every stranger-vs-enrolled comparison of any
    split of that folder is one of those pairs, so no stranger can be named: FPIR = 0.
    """
    mdir = tmp_path / "m"
    mdir.mkdir()
    model = mdir / INT8.name
    shutil.copy(INT8, model)
    shutil.copy(INT8.with_suffix(".json"), mdir / "facenet_int8.json")
    cal_out = tmp_path / "cal"
    argv = [str(FACES), "--model", str(model), "--out", str(cal_out), "--no-cache", "--quiet"]
    assert calibrate.main([*argv, "--far", "1e-5"]) == 0
    cal = json.loads((cal_out / "calibration.json").read_text())["result"]
    assert cal["far_at_threshold"] == 0.0
    out = tmp_path / "ev"
    rc = evaluate.main(
        [str(FACES), "--model", str(model), "--enrol-first", "1", "--out", str(out),
         "--no-cache", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    data = json.loads((out / "evaluation.json").read_text())
    ev = data["models"][0]
    assert ev["calibration"]["threshold"] == cal["threshold"]
    point = ev["calibrated"]
    assert point["fpir"] == 0.0 and point["nonmated"] > 0
    assert 0.0 <= point["fnir"] <= 1.0 and point["mated"] > 0
    # The printed sweep (tools.stats) and the device's decisions agree wherever they meet.
    curve = ev["curve"]
    t = np.asarray(curve["threshold"])
    below = t[t <= point["threshold"]]
    j = int(np.argmax(t == below.max()))
    assert curve["fpir"][j] == 0.0
    assert curve["fnir"][j] >= point["fnir"]  # a lower threshold never names more people
    assert (out / "fnir_fpir.png").read_bytes()[:4] == b"\x89PNG"

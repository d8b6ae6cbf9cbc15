"""tools.evaluate: the split, the open-set counts, and the acceptance run on ../shared/faces."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from edge.errors import FacegateError
from edge.identity.thresholds import operating_point
from edge.vision.manifest import Calibration, load_manifest
from tools import calibrate, evaluate, stats
from tools._faces import FaceSet, LabelledImage, list_people

REPO = Path(__file__).resolve().parents[1]
FACES = SHARED / "faces"
INT8 = REPO / "models" / "facenet_int8.tflite"
DETECTOR = REPO / "models" / "face_detection_short_range.tflite"

needs_faces = pytest.mark.shared  # the one gate for ../shared (tests/conftest.py)
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
    argv = [str(FACES), "--model", str(model), "--enrol-first", "1", "--no-cache", "--quiet"]
    # By default the threshold is the device's for the gallery: the table read for its size.
    assert evaluate.main([*argv, "--out", str(tmp_path / "dev")]) == 0
    dev = json.loads((tmp_path / "dev" / "evaluation.json").read_text())["models"][0]
    op = dev["operating_point"]
    manifest = load_manifest(model.with_suffix(".json")).calibration
    assert manifest is not None and manifest.far_table is not None
    expect = operating_point(
        manifest.threshold, manifest.far_table, manifest.frr_table, len(dev["enrolled"])
    )
    assert op["source"] == "table" and op["comparisons"] == len(dev["enrolled"])
    assert dev["calibration"]["threshold"] == op["threshold"] == expect.threshold
    # The in-sample threshold, fixed as [matching] threshold fixes it on the device.
    out = tmp_path / "ev"
    rc = evaluate.main([*argv, "--out", str(out), "--threshold", str(cal["threshold"])])
    assert rc == 0
    data = json.loads((out / "evaluation.json").read_text())
    ev = data["models"][0]
    assert ev["operating_point"]["source"] == "config"
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


# -- the door protocol ------------------------------------------------------------------
def _items(counts: dict[str, int]) -> list[LabelledImage]:
    return [
        LabelledImage(p, Path(f"/x/{p}/{p}_{i:04d}.jpg"))
        for p, n in counts.items()
        for i in range(n)
    ]


def test_door_split_is_deterministic_and_counts_exactly() -> None:
    counts = {"eve": 9, "ann": 3, "bob": 2, "cat": 5, "dan": 4}
    s = evaluate.door_split(_items(counts), 2, 2, 4)
    # Sorted: ann(3), bob(2: too few for E + 1 = 3), cat(5), dan(4), eve(9).
    assert [n for n, _ in s.enrolled] == ["ann", "cat"]
    assert [p.path.name for p in s.enrolled[1][1]] == ["cat_0000.jpg", "cat_0001.jpg"]
    assert len(s.mated) == 1 + 3  # ann: 3 - 2; cat: 5 - 2
    assert s.stranger_people == ["bob", "dan", "eve"]
    assert len(s.strangers) == 2 + 4 + 9  # all photos by default
    capped = evaluate.door_split(list(reversed(_items(counts))), 2, 2, 4, stranger_photos=4)
    assert len(capped.strangers) == 2 + 4 + 4 and capped.enrolled == s.enrolled
    with pytest.raises(FacegateError, match="only 4 people"):
        evaluate.door_split(_items(counts), 5, 2, 4)


def test_door_split_with_camera_frames_and_a_common_probe_start() -> None:
    counts = {"ann": 7, "bob": 4, "cat": 6, "dan": 9}
    s = evaluate.door_split(_items(counts), 2, 1, 4, camera_frames=3)
    # E + F + 1 = 5 photos needed: ann and cat enrol (bob has 4).
    assert [n for n, _ in s.enrolled] == ["ann", "cat"]
    assert [p.path.name for p in s.frames["ann"]] == [f"ann_{i:04d}.jpg" for i in (1, 2, 3)]
    # Probes come after the frames, never from them.
    assert [p.path.name for p in s.mated if p.label == "ann"] == [
        f"ann_{i:04d}.jpg" for i in (4, 5, 6)
    ]
    same = evaluate.door_split(_items(counts), 2, 1, 4, probe_start=4)
    assert same.frames == {} and [p.path for p in same.mated] == [p.path for p in s.mated]
    with pytest.raises(FacegateError, match="probes must come after"):
        evaluate.door_split(_items(counts), 2, 2, 4, camera_frames=3, probe_start=4)


def test_rates_carry_their_clopper_pearson_bound() -> None:
    r = evaluate.Rate.of(14, 1224)
    assert r.rate == pytest.approx(14 / 1224)
    assert r.upper95 == pytest.approx(0.0178234825, abs=1e-9)
    assert "1.14% (14/1224, <= 1.78%)" in r.text()

    def result(fn: int, fp: int) -> evaluate.DoorResult:
        return evaluate.DoorResult(
            2, 1, 2, [], 2, 0.3, "table", 0.05, 0.01, 0.1,
            evaluate.Rate.of(fn, 10), evaluate.Rate.of(0, 10), evaluate.Rate.of(fp, 100),
            [], 0, 0, 0,
        )  # fmt: skip

    pooled = evaluate.pool([result(1, 2), result(3, 0)])  # counts summed, bound recomputed
    assert (pooled["fnir"].errors, pooled["fnir"].n) == (4, 20)
    assert "fnir_enrolled" not in pooled  # not measured in these results
    with_enrolled = [
        replace(result(1, 2), fnir_enrolled=evaluate.Rate.of(1, 8)),
        replace(result(3, 0), fnir_enrolled=evaluate.Rate.of(0, 7)),
    ]
    assert evaluate.pool(with_enrolled)["fnir_enrolled"] == evaluate.Rate.of(1, 15)
    assert pooled["fpir"].upper95 == pytest.approx(stats.binomial_upper_bound(200, 2))


@needs_models
@needs_faces
def test_door_protocol_on_real_faces_uses_the_enrolment_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """../shared/faces: the first 4 people with 2+ photos enrolled from 1 photo each."""
    out = tmp_path / "door"
    rc = evaluate.main(
        [str(FACES), "--gallery-size", "4", "--enroll-photos", "1", "--probes-per-person", "3",
         "--stranger-photos", "0", "--out", str(out), "--no-cache", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "FNIR" in printed and "FPIR" in printed and "<=" in printed
    data = json.loads((out / "door.json").read_text())
    (run,) = data["runs"]
    people: dict[str, list[Path]] = {}
    for it in list_people(FACES):
        people.setdefault(it.label, []).append(it.path)
    eligible = sorted(n for n, ps in people.items() if len(ps) >= 2)[:4]
    assert eligible == ["Alex_Lacamoire", "Angelina_Jolie", "Barack_Obama", "Jeff_Bezos"]
    # Obama's first photo (sorted) holds two faces of similar size: enroll refuses it, and so
    # does the door protocol; with E = 1 he is not enrolled and his probes are misses.
    assert run["failed_to_enrol"] == ["Barack_Obama"]
    assert [r[0] for r in run["refused_photos"]] == ["Barack_Obama/knn_test_obama1.jpg"]
    assert "2 faces found" in run["refused_photos"][0][1]
    mated = sum(min(3, len(people[n]) - 1) for n in eligible)
    strangers = sum(len(ps) for n, ps in people.items() if n not in eligible)
    assert run["fnir"]["n"] == run["wrong_name"]["n"] == mated
    assert run["fpir"]["n"] == strangers
    assert run["fnir"]["errors"] >= 3  # Obama's three probes at least
    # Recognition alone: the probes of the people enrolled, without Obama's.
    obama = min(3, len(people["Barack_Obama"]) - 1)
    assert run["fnir_enrolled"]["n"] == mated - obama
    assert run["fnir_enrolled"]["errors"] == run["fnir"]["errors"] - obama
    assert run["embeddings"] == 3 and run["enrolled_people"] == 3
    for key in ("fnir", "wrong_name", "fpir"):
        r = run[key]
        assert r["upper95"] == pytest.approx(stats.binomial_upper_bound(r["n"], r["errors"]))
    # The same photo through `facegate enroll`: refused with the same words.
    from edge.cli import main as facegate

    capsys.readouterr()
    obama_first = FACES / "Barack_Obama" / "knn_test_obama1.jpg"
    assert (
        facegate(["enroll", "--gallery", str(tmp_path / "g.fgg"), "--name", "o", str(obama_first)])
        == 2
    )
    assert run["refused_photos"][0][1] in capsys.readouterr().err


@needs_models
@needs_faces
def test_door_protocol_cross_calibrated_and_swept(tmp_path: Path) -> None:
    out = tmp_path / "door"
    rc = evaluate.main(
        [str(FACES), "--gallery-sizes", "1,2", "--enroll-photos", "1", "--probes-per-person", "2",
         "--cross-calibrate", "2", "--out", str(out), "--no-cache", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    data = json.loads((out / "door.json").read_text())
    assert [f["fold"] for f in data["folds"]] == [1, 2]
    assert all("outside fold" in f["calibration"]["source"] for f in data["folds"])
    assert all(f["calibration"]["far_table"]["n"] > 0 for f in data["folds"])
    assert [r["label"] for r in data["runs"]] == [
        "fold 1/2 N=1", "fold 1/2 N=2", "fold 2/2 N=1", "fold 2/2 N=2"
    ]  # fmt: skip
    for n in ("1", "2"):
        runs = [r for r in data["runs"] if r["label"].endswith(f"N={n}")]
        for key in ("fnir", "fpir", "wrong_name"):
            pooled = data["pooled"][n][key]
            assert pooled["errors"] == sum(r[key]["errors"] for r in runs)
            assert pooled["n"] == sum(r[key]["n"] for r in runs)
    # Each run's threshold came from its fold's table for its gallery size.
    for r in data["runs"]:
        assert r["threshold_source"] == "table"


@needs_models
@needs_faces
def test_door_protocol_with_camera_frames_from_other_photos(tmp_path: Path) -> None:
    """E = 1 photo plus camera frames stood in for by the next photos: the collector's
    choice joins the enrolment; the probes are the same as with the photo alone."""
    runs = {}
    for label, extra in (("photo", []), ("camera", ["--camera-frames", "2"])):
        out = tmp_path / label
        rc = evaluate.main(
            [str(FACES), "--gallery-size", "3", "--enroll-photos", "1", "--probe-start", "3",
             "--probes-per-person", "2", "--out", str(out), "--no-cache", "--quiet", *extra]
        )  # fmt: skip
        assert rc == 0
        (runs[label],) = json.loads((out / "door.json").read_text())["runs"]
    photo, camera = runs["photo"], runs["camera"]
    assert photo["camera_frames_offered"] == 0
    assert camera["camera_frames_offered"] == 2 * 3
    assert 0 < camera["camera_frames_kept"] <= 6
    assert camera["embeddings"] > photo["embeddings"]
    assert camera["fnir"]["n"] == photo["fnir"]["n"] and camera["fpir"]["n"] == photo["fpir"]["n"]


def test_door_protocol_bad_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert evaluate.main([str(tmp_path), "--gallery-sizes", "10,x"]) == 2
    assert "--gallery-sizes" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path), "--gallery-size", "3", "--target-fpir", "2"]) == 2
    assert "--target-fpir" in capsys.readouterr().err


def test_embedding_cache_keeps_the_enrolment_measures(tmp_path: Path) -> None:
    from edge.identity.enrol import FaceQuality, PhotoMeasure
    from tools._faces import EmbeddingCache

    path = tmp_path / "c.npz"
    c = EmbeddingCache(path)
    q = FaceQuality(face_px=88.5, sharpness=123.25, yaw=-0.125, faces=2, area_ratio=float("inf"))
    c.put("a|1|2", PhotoMeasure(np.array([0.6, 0.8], np.float32), q))
    c.put("b|1|2", "no face found")
    c.save()
    again = EmbeddingCache(path)
    got = again.get("a|1|2")
    assert isinstance(got, PhotoMeasure) and got.quality == q
    assert got.embedding is not None and got.embedding.tolist() == pytest.approx([0.6, 0.8])
    assert again.get("b|1|2") == "no face found" and again.get("zzz") is None
    path.write_bytes(b"not an npz")  # a broken cache is only a cache
    assert EmbeddingCache(path).get("a|1|2") is None


@needs_models
@needs_faces
def test_lookalike_measurement_on_a_few_people(tmp_path: Path) -> None:
    """tools.lookalikes' code path on ../shared/faces (LFW-scale numbers are docs' business):
    the rule warns on fewer pairs than the one it replaced, and on the known pair."""
    from tools import lookalikes

    out = tmp_path / "la"
    rc = lookalikes.main(
        [str(FACES), "--faces", str(FACES), "--lookalike", "Angelina_Jolie,Kate_Siegel",
         "--people", "2,10", "--photos", "1", "--out", str(out), "--no-cache"]
    )  # fmt: skip
    assert rc == 0
    data = json.loads((out / "lookalikes.json").read_text())
    for row in data["rows"]:
        assert row["warned"] <= row["old_warned"]
        assert row["warned_false"] + row["warned_mixups"] == row["warned"]
    n2 = next(k for k in data["known_pair"] if k["people"] == 2)
    assert n2["single_photos"] == len(list((FACES / "Angelina_Jolie").iterdir()))
    # Kate Siegel's photo lies under the threshold of every gallery of both (docs).
    assert all(k["all_photos_warned"] for k in data["known_pair"])
    assert n2["single_warned"] == sum(d < n2["threshold"] for d in n2["distances"])

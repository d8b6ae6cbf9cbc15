"""Open-set identification accuracy, measured the way NIST FRVT 1:N does.

    # half of the people enrolled with their first photo, the other half strangers:
    python -m tools.evaluate ../shared/faces --enrol-fraction 0.5 --enrol-first 1
    # separate enrolment and probe folders (probe people may be absent from the gallery):
    python -m tools.evaluate --enrol enrol/ --probe probes/ --compare-float

Every photo goes through the device's detector, alignment and embedder
(:mod:`tools._faces`); enrolled people go into an :class:`edge.identity.gallery.Gallery`
and probes are matched with the device's :class:`edge.identity.matcher.Matcher` and
open-set rule. For a sweep of thresholds, and at the threshold the device
would use for this gallery (the manifest's tables read for the gallery size
and ``--target-fpir``, as :mod:`edge.identity.thresholds` does; ``--threshold`` fixes
it) with the calibrated margin, we report:

* FNIR: mated probes (the person is enrolled) not named correctly; a probe
  whose face was not detected counts as a miss;
* FPIR: non-mated probes (strangers) named as anyone;
* rank-1: mated probes whose nearest enrolled person is the right one;
* how many faces were not detected (enrolment and probes).

``python -m tools.evaluate --liveness ...`` measures the liveness stage
instead (APCER per attack type, BPCER: :mod:`tools.liveness.evaluate`).

Output: a table on stdout, ``evaluation.json`` and ``fnir_fpir.png`` in
``--out`` (default ``reports/evaluation/``). ``--compare-float`` repeats the
evaluation with the float32 model for a side-by-side view of quantisation.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.decide.recognizer import Recognizer, calibration_for
from edge.errors import FacegateError
from edge.identity.camera import CameraCollector, CameraRules
from edge.identity.enrol import (
    DEFAULT_RULES,
    EnrolmentRules,
    PhotoMeasure,
    outlier_distance,
    plan_enrolment,
)
from edge.identity.gallery import Gallery
from edge.identity.matcher import Matcher
from edge.identity.thresholds import DEFAULT_TARGET_FPIR, operating_point
from edge.numerics import Confidence
from edge.types import Match
from edge.vision.manifest import Calibration, calibration_from_dict, write_json_atomic
from tools import plots, stats
from tools._common import run_tool
from tools._faces import (
    DEFAULT_CACHE,
    DEFAULT_DETECTOR,
    DEFAULT_FLOAT_MODEL,
    DEFAULT_MODEL,
    FaceEmbedder,
    FaceSet,
    LabelledImage,
    list_people,
)

log = logging.getLogger("tools.evaluate")

DEFAULT_OUT = Path("reports/evaluation")
SWEEP = np.round(np.arange(0.20, 1.0001, 0.05), 2)  # the printed table
CURVE = np.round(np.arange(0.0, 2.0001, 0.0025), 4)  # the plotted curve


@dataclass(frozen=True)
class Split:
    """Which photos enrol whom, and which are probes."""

    enrol: list[LabelledImage]
    probes: list[LabelledImage]
    enrolled_people: list[str]
    strangers: list[str]  # probe people never enrolled


def evenly_spaced(n: int, fraction: float) -> list[int]:
    """Indices of ``round(n * fraction)``-ish items spread evenly over ``range(n)``.

    Item ``i`` is chosen when ``ceil((i + 1) f) > ceil(i f)``: for 0.5 that
    is every second item starting with the first (``ceil(n / 2)`` items), so
    a sorted list of people splits into two halves that both span the
    alphabet.
    """
    eps = 1e-9
    return [
        i for i in range(n) if math.ceil((i + 1) * fraction - eps) > math.ceil(i * fraction - eps)
    ]


def split_folder(
    folder: Path,
    enrol_fraction: float = 0.5,
    enrol_first: int = 1,
    swap: bool = False,
    people_to_enrol: Sequence[str] | None = None,
) -> Split:
    """One folder: a fraction of the people enrolled with their first photos, the rest strangers.

    People are sorted by name and chosen with :func:`evenly_spaced` (for 0.5:
    the 1st, 3rd, 5th, ...); ``swap`` enrols the others instead (for 0.5: the
    2nd, 4th, ...), and ``people_to_enrol`` names them explicitly. An
    enrolled person's first ``enrol_first`` photos (sorted by file name)
    enrol them and the rest are mated probes; every photo of a stranger is a
    non-mated probe.
    """
    if not 0.0 < enrol_fraction <= 1.0:
        raise FacegateError(f"--enrol-fraction must be in (0, 1], got {enrol_fraction}")
    if enrol_first < 1:
        raise FacegateError(f"--enrol-first must be >= 1, got {enrol_first}")
    items = list_people(folder)
    people = sorted({it.label for it in items})
    if people_to_enrol:
        unknown = sorted(set(people_to_enrol) - set(people))
        if unknown:
            raise FacegateError(f"--enrol-people: no folder for {', '.join(unknown)} in {folder}")
        chosen = set(people_to_enrol)
    else:
        chosen = {people[i] for i in evenly_spaced(len(people), enrol_fraction)}
    if swap:
        chosen = set(people) - chosen
    if not chosen:
        raise FacegateError("the split enrols no one")
    enrol: list[LabelledImage] = []
    probes: list[LabelledImage] = []
    taken: dict[str, int] = {}
    for it in items:  # sorted by person, then file
        if it.label in chosen and taken.get(it.label, 0) < enrol_first:
            enrol.append(it)
            taken[it.label] = taken.get(it.label, 0) + 1
        else:
            probes.append(it)
    return Split(enrol, probes, sorted(chosen), [p for p in people if p not in chosen])


def split_two(enrol_folder: Path, probe_folder: Path, enrol_first: int | None = None) -> Split:
    """Two folders: enrolment photos (the first ``enrol_first`` per person, or all) and probes."""
    enrol = list_people(enrol_folder)
    if enrol_first is not None:
        if enrol_first < 1:
            raise FacegateError(f"--enrol-first must be >= 1, got {enrol_first}")
        count: dict[str, int] = {}
        kept = []
        for it in enrol:
            count[it.label] = count.get(it.label, 0) + 1
            if count[it.label] <= enrol_first:
                kept.append(it)
        enrol = kept
    probes = list_people(probe_folder)
    people = sorted({it.label for it in enrol})
    strangers = sorted({it.label for it in probes} - set(people))
    return Split(enrol, probes, people, strangers)


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's open-set identification results."""

    model: str
    calibration: Calibration
    sweep: list[stats.IdentificationPoint]
    calibrated: stats.IdentificationPoint
    curve: list[stats.IdentificationPoint]
    enrolled: list[str]
    failed_to_enrol: list[str]
    enrol_not_detected: list[str]
    probe_not_detected: list[str]
    mean_confidence_correct: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "calibration": asdict(self.calibration),
            "calibrated": asdict(self.calibrated),
            "sweep": [asdict(p) for p in self.sweep],
            "enrolled": self.enrolled,
            "failed_to_enrol": self.failed_to_enrol,
            "enrol_not_detected": self.enrol_not_detected,
            "probe_not_detected": self.probe_not_detected,
            "mean_confidence_correct": self.mean_confidence_correct,
            **self.extra,
            "curve": {
                "threshold": [p.threshold for p in self.curve],
                "fnir": [p.fnir for p in self.curve],
                "fpir": [p.fpir for p in self.curve],
            },
        }


def evaluate_faces(
    model: str,
    enrol: FaceSet,
    probes: FaceSet,
    calibration: Calibration,
    undetected_probes: Sequence[LabelledImage] = (),
    enrol_failed: Sequence[LabelledImage] = (),
    thresholds: npt.NDArray[np.float64] | None = None,
) -> ModelEvaluation:
    """Enrol, search every probe with the device's matcher, and count errors.

    The calibrated row uses :class:`edge.identity.matcher.Matcher` (the device's exact
    decision); the sweep applies the same rule through
    :func:`tools.stats.identification_rates` at each threshold with the
    calibrated margin.
    """
    gallery = _enrol_gallery(enrol)
    conf = Confidence(calibration.conf_midpoint, calibration.conf_scale)
    matcher = Matcher(gallery, calibration.threshold, calibration.margin, conf)
    names = matcher.names
    enrolled = set(names)
    und_mated = sum(1 for it in undetected_probes if it.label in enrolled)
    und_non = len(undetected_probes) - und_mated
    pd = (
        matcher.person_distances(probes.embeddings)
        if len(probes.labels)
        else np.zeros((0, len(names)), np.float32)
    )
    th = SWEEP if thresholds is None else thresholds

    def rates(ts: npt.NDArray[np.float64]) -> list[stats.IdentificationPoint]:
        return stats.identification_rates(
            pd, probes.labels, names, ts, calibration.margin, und_mated, und_non
        )

    # The calibrated row from the device's own decisions.
    matches = matcher.match_many(probes.embeddings) if len(probes.labels) else []
    calibrated = _calibrated_point(
        matches, probes.labels, enrolled, calibration.threshold, und_mated, und_non
    )
    correct_conf = [
        m.confidence for m, lab in zip(matches, probes.labels, strict=True) if m.name == lab
    ]
    return ModelEvaluation(
        model=model,
        calibration=calibration,
        sweep=rates(np.asarray(th, np.float64)),
        calibrated=calibrated,
        curve=rates(CURVE),
        enrolled=names,
        failed_to_enrol=sorted({it.label for it in enrol_failed} - enrolled),
        enrol_not_detected=[f"{it.label}/{it.path.name}" for it in enrol_failed],
        probe_not_detected=[f"{it.label}/{it.path.name}" for it in undetected_probes],
        mean_confidence_correct=float(np.mean(correct_conf)) if correct_conf else None,
    )


def _enrol_gallery(enrol: FaceSet) -> Gallery:
    """Every enrolment photo of each person into one gallery (FacegateError when none)."""
    gallery = Gallery(enrol.model_sha256 or "evaluation")
    for name in sorted(set(enrol.labels)):
        rows = [i for i, lab in enumerate(enrol.labels) if lab == name]
        gallery.add(name, enrol.embeddings[rows])
    if len(gallery) == 0:
        raise FacegateError("no one could be enrolled (no usable face in any enrolment photo)")
    return gallery


def _calibrated_point(
    matches: Sequence[Match],
    labels: Sequence[str],
    enrolled: set[str],
    threshold: float,
    und_mated: int,
    und_non: int,
) -> stats.IdentificationPoint:
    """FNIR, FPIR and rank-1 of the device's own decisions (undetected probes count as misses)."""
    mated = [lab in enrolled for lab in labels]
    n_mated = sum(mated) + und_mated
    n_non = len(mated) - sum(mated) + und_non
    rows = list(zip(matches, mated, labels, strict=True))
    fn = und_mated + sum(1 for m, ok, lab in rows if ok and m.name != lab)
    fp = sum(1 for m, ok, _ in rows if not ok and m.name is not None)
    r1 = sum(1 for m, ok, lab in rows if ok and m.nearest == lab)
    return stats.IdentificationPoint(
        threshold=threshold,
        fnir=fn / n_mated if n_mated else float("nan"),
        fpir=fp / n_non if n_non else float("nan"),
        rank1=r1 / n_mated if n_mated else float("nan"),
        mated=n_mated,
        nonmated=n_non,
        false_negatives=fn,
        false_positives=fp,
    )


def evaluate_model(
    model_path: Path,
    split: Split,
    detector: Path = DEFAULT_DETECTOR,
    min_face: int = 40,
    runtime: str = "auto",
    threads: int = 2,
    cache_dir: Path | None = DEFAULT_CACHE,
    progress: bool = False,
    threshold: float | None = None,
    margin: float | None = None,
    target_fpir: float = DEFAULT_TARGET_FPIR,
) -> ModelEvaluation:
    """Embed the split with one model and evaluate it as the device would decide.

    The threshold is the device's for this gallery
    (:func:`edge.identity.thresholds.operating_point`: the manifest's FAR table read
    for ``M`` = the enrolled embeddings and ``target_fpir``; a manifest
    without tables keeps its fixed threshold); ``threshold`` fixes it, as
    ``[matching] threshold`` does on the device.
    """
    fe = FaceEmbedder(model_path, detector, min_face, runtime, threads)
    desc = f"embedding ({Path(model_path).stem})"
    enrol = fe.embed_items(split.enrol, cache_dir, progress, desc)
    probes = fe.embed_items(split.probes, cache_dir, progress, desc)
    cal = calibration_for(fe.embedder, threshold, margin)
    point = operating_point(
        cal.threshold, cal.far_table, cal.frr_table, len(enrol.labels), target_fpir, threshold
    )
    ev = evaluate_faces(
        Path(model_path).stem,
        enrol,
        probes,
        replace(cal, threshold=point.threshold),
        [it for it, _ in probes.failed],
        [it for it, _ in enrol.failed],
    )
    return replace(ev, extra={**ev.extra, "operating_point": asdict(point)})


# -- the door protocol -----------------------------------------------------------------------
@dataclass(frozen=True)
class DoorSplit:
    """The door protocol on a folder of people: who enrols from what, who comes to the door.

    ``enrolled`` in enrolment order: (person, their first ``E`` photos);
    ``mated``: up to ``P`` other photos of each of them; ``strangers``:
    photos of everyone else (up to ``stranger_photos`` each, or all).
    """

    enrolled: list[tuple[str, list[LabelledImage]]]
    mated: list[LabelledImage]
    strangers: list[LabelledImage]
    stranger_people: list[str]
    # Camera enrolment stood in for by other photos (``--camera-frames F``): each
    # enrolled person's next F photos after the E enrolment photos, never a probe.
    frames: dict[str, list[LabelledImage]] = field(default_factory=dict)


def door_split(
    items: Sequence[LabelledImage],
    gallery_size: int,
    enroll_photos: int,
    probes_per_person: int,
    stranger_photos: int | None = None,
    camera_frames: int = 0,
    probe_start: int | None = None,
) -> DoorSplit:
    """The first ``gallery_size`` people (sorted by name) with at least ``S + 1`` photos enrol.

    Each enrols from their first ``E`` photos (sorted by file name), plus, with
    ``camera_frames`` ``F``, their next ``F`` photos as the frames a camera
    would offer; their photos from ``S`` on (``probe_start``, default
    ``E + F``; at least that) are genuine probes, ``P`` at most. A larger
    ``S`` puts runs with different ``E`` on the same people and the same
    probes. Every other person is a stranger, with their first
    ``stranger_photos`` photos (default: ``P``; 0 or None: all).
    Deterministic: the same folder always gives the same split.
    """
    if gallery_size < 1 or enroll_photos < 1 or probes_per_person < 1 or camera_frames < 0:
        raise FacegateError("--gallery-size, --enroll-photos and --probes-per-person must be >= 1")
    start = enroll_photos + camera_frames if probe_start is None else probe_start
    if start < enroll_photos + camera_frames:
        raise FacegateError(
            f"--probe-start {start}: probes must come after the {enroll_photos} enrolment "
            f"photo(s) and {camera_frames} camera frame(s)"
        )
    by: dict[str, list[LabelledImage]] = {}
    for it in items:
        by.setdefault(it.label, []).append(it)
    people = sorted(by)
    for name in people:
        by[name].sort(key=lambda it: it.path.name)
    eligible = [n for n in people if len(by[n]) >= start + 1]
    if len(eligible) < gallery_size:
        raise FacegateError(
            f"only {len(eligible)} people have {start + 1}+ photos; "
            f"--gallery-size {gallery_size} needs that many"
        )
    chosen = eligible[:gallery_size]
    enrolled = [(n, by[n][:enroll_photos]) for n in chosen]
    frames = {n: by[n][enroll_photos : enroll_photos + camera_frames] for n in chosen}
    mated = [it for n in chosen for it in by[n][start : start + probes_per_person]]
    rest = [n for n in people if n not in set(chosen)]
    cap = stranger_photos or None
    strangers = [it for n in rest for it in (by[n][:cap] if cap else by[n])]
    return DoorSplit(enrolled, mated, strangers, rest, frames if camera_frames else {})


@dataclass(frozen=True)
class Rate:
    """``errors`` of ``n`` with the one-sided 95% Clopper-Pearson upper bound."""

    errors: int
    n: int
    rate: float
    upper95: float

    @classmethod
    def of(cls, errors: int, n: int) -> Rate:
        return cls(
            errors,
            n,
            errors / n if n else float("nan"),
            stats.binomial_upper_bound(n, errors) if n else float("nan"),
        )

    def text(self) -> str:
        if not self.n:
            return "n/a"
        return f"{100 * self.rate:5.2f}% ({self.errors}/{self.n}, <= {100 * self.upper95:.2f}%)"


@dataclass(frozen=True)
class DoorResult:
    """What a door with this gallery would do with the probes."""

    gallery_size: int
    enroll_photos: int
    enrolled_people: int  # with at least one accepted photo
    failed_to_enrol: list[str]
    embeddings: int  # M
    threshold: float
    threshold_source: str
    margin: float
    expected_fpir: float | None
    expected_fnir: float | None
    fnir: Rate  # mated probes not named correctly (refused, wrong name or no face)
    wrong_name: Rate  # mated probes named as another enrolled person
    fpir: Rate  # strangers named as anyone
    refused_photos: list[tuple[str, str]]  # enrolment photos refused, with why
    lookalike_warnings: int
    mated_undetected: int
    strangers_undetected: int
    calibration_source: str = ""
    strangers_named_as: dict[str, int] = field(default_factory=dict)  # who strangers became
    # FNIR over the genuine probes of the people who could be enrolled (their photos were
    # accepted): recognition alone, without the failures to enrol that ``fnir`` counts.
    fnir_enrolled: Rate | None = None
    # Camera enrolment stood in for by other photos: frames offered, and kept by the
    # collector (edge.identity.camera) before the enrolment checks.
    camera_frames_offered: int = 0
    camera_frames_kept: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def door_protocol(
    split: DoorSplit,
    measures: dict[Path, PhotoMeasure],
    recognizer: Recognizer,
    rules: EnrolmentRules = DEFAULT_RULES,
    camera: CameraRules | None = None,
) -> DoorResult:
    """Enrol as ``facegate enroll`` does, then decide every probe as the device does.

    Enrolment: :func:`edge.identity.enrol.plan_enrolment` per person, in order, on
    the photos' :class:`~edge.identity.enrol.PhotoMeasure` (the recognizer's own
    detector, alignment and embedder, via :mod:`tools._faces`), with the
    recognizer's threshold-from-gallery-size rule for the look-alike check.
    Then ``recognizer.set_gallery`` picks the threshold for the final gallery
    size (as the device does at every reload) and every probe's largest face
    is matched by ``recognizer.match_embeddings`` (the device's matcher, its
    threshold and margin). A person none of whose photos is accepted is not
    enrolled: their probes still count (as misses). A probe without a face
    is a miss if mated, and names no one if a stranger. Camera frames in the
    split go through camera enrolment's collector first (``camera``: its
    rules; :func:`_camera_frames`), as ``facegate enroll --camera`` does.
    """
    enrolment = _enrol_as_the_device(split, measures, recognizer, rules, camera)
    gallery, failed = enrolment.gallery, enrolment.failed
    recognizer.set_gallery(gallery)
    point = recognizer.operating_point
    mated_names, mated_und = _decide(split.mated, measures, recognizer)
    stranger_names, str_und = _decide(split.strangers, measures, recognizer)
    fn = sum(1 for it, n in zip(split.mated, mated_names, strict=True) if n != it.label)
    wrong = sum(
        1 for it, n in zip(split.mated, mated_names, strict=True) if n is not None and n != it.label
    )
    fp = sum(1 for n in stranger_names if n is not None)
    in_gallery = [i for i, it in enumerate(split.mated) if it.label not in set(failed)]
    fn_in = sum(1 for i in in_gallery if mated_names[i] != split.mated[i].label)
    named_as = _named_as(stranger_names)
    return DoorResult(
        gallery_size=len(split.enrolled),
        enroll_photos=max((len(p) for _, p in split.enrolled), default=0),
        enrolled_people=len(gallery),
        failed_to_enrol=failed,
        embeddings=point.comparisons,
        threshold=point.threshold,
        threshold_source=point.source,
        margin=recognizer.margin,
        expected_fpir=point.expected_fpir,
        expected_fnir=point.expected_fnir,
        fnir=Rate.of(fn, len(split.mated)),
        wrong_name=Rate.of(wrong, len(split.mated)),
        fpir=Rate.of(fp, len(split.strangers)),
        refused_photos=enrolment.refused,
        lookalike_warnings=enrolment.lookalikes,
        mated_undetected=mated_und,
        strangers_undetected=str_und,
        calibration_source=recognizer.calibration.source,
        strangers_named_as=named_as,
        fnir_enrolled=Rate.of(fn_in, len(in_gallery)),
        camera_frames_offered=enrolment.frames_offered,
        camera_frames_kept=enrolment.frames_kept,
    )


def _named_as(names: Sequence[str | None]) -> dict[str, int]:
    """How many strangers got each enrolled name, most first."""
    counts: dict[str, int] = {}
    for n in names:
        if n is not None:
            counts[n] = counts.get(n, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass
class _Enrolment:
    """The gallery ``facegate enroll`` would build, and what it refused on the way."""

    gallery: Gallery
    failed: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    lookalikes: int = 0
    frames_offered: int = 0
    frames_kept: int = 0


def _camera_frames(
    frames: Sequence[LabelledImage], measures: dict[Path, PhotoMeasure], rules: CameraRules
) -> tuple[list[LabelledImage], list[PhotoMeasure]]:
    """The frames camera enrolment keeps of ``frames`` (and their measures)."""
    collector = CameraCollector(rules)
    for it in frames:
        collector.offer(measures[it.path])
    chosen = collector.chosen()
    kept = [it for it in frames if any(measures[it.path] is m for m in chosen)]
    return kept, [measures[it.path] for it in kept]


def _enrol_as_the_device(
    split: DoorSplit,
    measures: dict[Path, PhotoMeasure],
    recognizer: Recognizer,
    rules: EnrolmentRules,
    camera: CameraRules | None = None,
) -> _Enrolment:
    """Each person through :func:`~edge.identity.enrol.plan_enrolment`, in order (their
    photos, then the camera frames kept)."""
    out = _Enrolment(Gallery(recognizer.model_sha256))
    for name, given in split.enrolled:
        photos = list(given)
        offered = split.frames.get(name, [])
        if offered:
            cam = camera or CameraRules()
            if cam.max_distance is None:  # as enroll --camera sets it
                cam = replace(cam, max_distance=outlier_distance(recognizer.calibration))
            kept, _ = _camera_frames(offered, measures, cam)
            out.frames_offered += len(offered)
            out.frames_kept += len(kept)
            photos += kept
        names, emb, starts = out.gallery.matrix()
        plan = plan_enrolment(
            name,
            [measures[it.path] for it in photos],
            names,
            emb,
            starts,
            recognizer.calibration,
            recognizer.operating_point_for,
            rules,
        )
        out.refused += [(f"{name}/{photos[i].path.name}", why) for i, why in plan.refused]
        if not plan.accepted:
            out.failed.append(name)
            continue
        out.gallery.add(name, plan.embeddings)
        out.lookalikes += len(plan.lookalikes)
    return out


def _decide(
    items: Sequence[LabelledImage], measures: dict[Path, PhotoMeasure], recognizer: Recognizer
) -> tuple[list[str | None], int]:
    """The name the device gives each probe (None: unknown or no face), and how many had none."""
    rows = [measures[it.path].embedding for it in items]
    have = [i for i, e in enumerate(rows) if e is not None]
    E = (
        np.stack([np.asarray(rows[i], np.float32) for i in have])
        if have
        else np.zeros((0, 1), np.float32)
    )
    matches = recognizer.match_embeddings(E)
    out: list[str | None] = [None] * len(items)
    for i, m in zip(have, matches, strict=True):
        out[i] = m.name
    return out, len(items) - len(have)


def pool(results: Sequence[DoorResult]) -> dict[str, Rate]:
    """FNIR, wrong-name rate and FPIR (and the FNIR of the enrolled, when every result has
    it) over several folds: counts added, bounds recomputed."""

    def add(get: Callable[[DoorResult], Rate]) -> Rate:
        return Rate.of(sum(get(r).errors for r in results), sum(get(r).n for r in results))

    out = {
        "fnir": add(lambda r: r.fnir),
        "wrong_name": add(lambda r: r.wrong_name),
        "fpir": add(lambda r: r.fpir),
    }
    enrolled = [r.fnir_enrolled for r in results]
    if all(e is not None for e in enrolled):
        out["fnir_enrolled"] = Rate.of(
            sum(e.errors for e in enrolled if e), sum(e.n for e in enrolled if e)
        )
    return out


def people_folds(people: Sequence[str], k: int) -> list[list[str]]:
    """``k`` folds of the sorted people: person ``i`` goes to fold ``i mod k``."""
    srt = sorted(people)
    return [srt[j::k] for j in range(k)]


def door_table(rows: Sequence[tuple[str, DoorResult]]) -> str:
    """The door protocol's results, one line per run, with 95% upper bounds."""
    lines = [
        "  run                 people  M    threshold  exp.FPIR   FNIR                       "
        "wrong name                 FPIR",
    ]
    for label, r in rows:
        exp = "  n/a  " if r.expected_fpir is None else f"{100 * r.expected_fpir:5.2f}% "
        lines.append(
            f"  {label:<18}  {r.enrolled_people:>4}  {r.embeddings:>4}  {r.threshold:.5f}  "
            f"{exp}  {r.fnir.text():<25}  {r.wrong_name.text():<25}  {r.fpir.text()}"
        )
    lines.append(
        "  (rate (errors/probes, one-sided 95% Clopper-Pearson upper bound); threshold from "
        "the device's gallery-size rule)"
    )
    for label, r in rows:
        if r.failed_to_enrol and r.fnir_enrolled is not None:
            lines.append(
                f"  {label}: could not enrol {', '.join(r.failed_to_enrol)}; FNIR over the "
                f"people enrolled: {r.fnir_enrolled.text()}"
            )
    return "\n".join(lines) + "\n"


Run = tuple[str, int, DoorResult]
"""One door-protocol run: its label, its fold, its result."""


def run_door(a: argparse.Namespace) -> int:
    """``--gallery-size``/``--gallery-sizes``: the door protocol, optionally cross-calibrated."""
    if a.folder is None or a.enrol or a.probe:
        raise FacegateError("the door protocol takes one folder of people (no --enrol/--probe)")
    sizes = _sizes(a)
    items = list_people(a.folder)
    cache = None if a.no_cache else DEFAULT_CACHE
    fe = FaceEmbedder(a.model, a.detector, a.min_face, a.runtime, a.threads)
    faces = fe.embed_items(items, cache, not a.quiet, f"measuring ({Path(a.model).stem})")
    folds: list[dict[str, Any]] = []
    if a.cross_calibrate:
        runs = _cross_calibrated_runs(a, sizes, items, faces, fe, folds)
    else:
        cal = calibration_for(fe.embedder, a.threshold, a.margin)
        if a.calibration is not None:
            cal = _read_calibration(a.calibration)
        runs = []
        measures = faces.measures()
        for n in sizes:
            split = _split(a, items, n)
            result = door_protocol(split, measures, _recognizer(a, fe, cal), camera=_camera(a))
            runs.append((f"N={n}", 0, result))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pooled: dict[str, dict[str, Any]] = {}
    if a.cross_calibrate:
        for n in sizes:
            rs = [r for label, _, r in runs if label.endswith(f" N={n}")]
            pooled[str(n)] = {k2: asdict(v) for k2, v in pool(rs).items()}
    data: dict[str, Any] = {
        "protocol": _door_protocol_record(a, sizes),
        "folds": folds,
        "runs": [{"label": label, **r.to_json()} for label, _, r in runs],
        "pooled": pooled,
    }
    write_json_atomic(out / "door.json", data)
    _print_door(a, data, runs, pooled, out)
    return 0


def _split(a: argparse.Namespace, items: Sequence[LabelledImage], n: int) -> DoorSplit:
    """The door split the flags ask for, with ``n`` people enrolled."""
    return door_split(
        items,
        n,
        a.enroll_photos,
        a.probes_per_person,
        a.stranger_photos,
        camera_frames=a.camera_frames,
        probe_start=a.probe_start,
    )


def _camera(a: argparse.Namespace) -> CameraRules:
    """Camera enrolment's rules with ``--camera-photos`` frames kept at most."""
    return CameraRules(photos=a.camera_photos)


def _recognizer(a: argparse.Namespace, fe: FaceEmbedder, cal: Calibration) -> Recognizer:
    """A recognizer with the embedder's photos already measured, an empty gallery and ``cal``."""
    g = Gallery(fe.model_sha256)
    return Recognizer(fe.cropper, fe.embedder, g, cal, a.target_fpir, a.threshold)


def _cross_calibrated_runs(
    a: argparse.Namespace,
    sizes: list[int],
    items: list[LabelledImage],
    faces: FaceSet,
    fe: FaceEmbedder,
    folds: list[dict[str, Any]],
) -> list[Run]:
    """Each fold of people decided with a calibration made on the other folds (``folds``
    gets one record per fold)."""
    from tools.calibrate import (
        SHIPPED_FPIR,
        SHIPPED_GALLERY_SIZE,
        SHIPPED_PER_PERSON,
        calibrate_faces,
    )

    k = a.cross_calibrate
    if k < 2:
        raise FacegateError("--cross-calibrate needs at least 2 folds")
    measures = faces.measures()
    runs: list[Run] = []
    for j, fold in enumerate(people_folds(sorted({it.label for it in items}), k)):
        inside = set(fold)
        train = faces.subset([i for i, lab in enumerate(faces.labels) if lab not in inside])
        # The shipped calibration's settings (tools.calibrate.SHIPPED_*): they choose the
        # fixed threshold, which the margin and the outlier check depend on.
        res = calibrate_faces(
            train,
            fpir=SHIPPED_FPIR,
            gallery_size=SHIPPED_GALLERY_SIZE,
            per_person=SHIPPED_PER_PERSON,
            margin=a.margin,
        )
        src = (
            f"tools.calibrate on the {len(set(train.labels))} people outside fold "
            f"{j + 1}/{k} ({res.n_impostor} impostor pairs)"
        )
        cal = res.calibration(src)
        folds.append({"fold": j + 1, "people": len(fold), "calibration": asdict(cal)})
        fold_items = [it for it in items if it.label in inside]
        for n in sizes:
            split = _split(a, fold_items, n)
            result = door_protocol(split, measures, _recognizer(a, fe, cal), camera=_camera(a))
            runs.append((f"fold {j + 1}/{k} N={n}", j, result))
    return runs


def _door_protocol_record(a: argparse.Namespace, sizes: list[int]) -> dict[str, Any]:
    """The settings of a door-protocol run, as ``door.json`` records them."""
    return {
        "folder": Path(a.folder).resolve().name,
        "model": Path(a.model).stem,
        "gallery_sizes": sizes,
        "enroll_photos": a.enroll_photos,
        "camera_frames": a.camera_frames,
        "camera_photos": a.camera_photos if a.camera_frames else None,
        "probe_start": a.probe_start,
        "probes_per_person": a.probes_per_person,
        "stranger_photos": a.stranger_photos or "all",
        "target_fpir": a.target_fpir,
        "cross_calibrate": a.cross_calibrate or None,
        "rules": asdict(DEFAULT_RULES),
    }


def _print_door(
    a: argparse.Namespace,
    data: dict[str, Any],
    runs: list[Run],
    pooled: dict[str, dict[str, Any]],
    out: Path,
) -> None:
    """The door protocol's results on stdout: a header, the table, the pooled rates."""
    print(
        f"door protocol on {data['protocol']['folder']} with {data['protocol']['model']}: "
        f"enrol {a.enroll_photos} photo(s)"
        + (
            f" + up to {a.camera_photos} of {a.camera_frames} camera frame(s) (other photos)"
            if a.camera_frames
            else ""
        )
        + f", up to {a.probes_per_person} probe(s) per person"
        + ("" if a.probe_start is None else f" from photo {a.probe_start + 1}")
        + f", target FPIR {100 * a.target_fpir:g}%"
        + (
            f", calibrated on the other {a.cross_calibrate - 1} fold(s)"
            if a.cross_calibrate
            else ""
        )
    )
    print(door_table([(label, r) for label, _, r in runs]), end="")
    for size, p in pooled.items():
        enrolled = (
            f"  (people enrolled: FNIR {Rate(**p['fnir_enrolled']).text()})"
            if "fnir_enrolled" in p
            else ""
        )
        print(
            f"  pooled N={size}: FNIR {Rate(**p['fnir']).text()}  wrong name "
            f"{Rate(**p['wrong_name']).text()}  FPIR {Rate(**p['fpir']).text()}{enrolled}"
        )
    offered = sum(r.camera_frames_offered for _, _, r in runs)
    if offered:
        kept = sum(r.camera_frames_kept for _, _, r in runs)
        print(f"camera frames: {kept} of {offered} kept by the collector")
    refused = sum(len(r.refused_photos) for _, _, r in runs)
    print(f"enrolment photos refused: {refused}; report: {out / 'door.json'}")


def _sizes(a: argparse.Namespace) -> list[int]:
    if a.gallery_sizes:
        try:
            sizes = [int(x) for x in a.gallery_sizes.split(",") if x.strip()]
        except ValueError:
            raise FacegateError(
                f"--gallery-sizes: not a list of integers: {a.gallery_sizes!r}"
            ) from None
        if not sizes or min(sizes) < 1:
            raise FacegateError("--gallery-sizes: give positive integers, e.g. 10,20,50")
        return sizes
    return [a.gallery_size]


def _read_calibration(path: Path) -> Calibration:
    """A calibration block from a manifest or a ``tools.calibrate`` report (key ``calibration``)."""
    import json

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return calibration_from_dict(doc["calibration"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FacegateError(f"{path}: cannot read a calibration ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise FacegateError(
            f"{path}: no valid 'calibration' block ({type(e).__name__}: {e})"
        ) from None


# -- output --------------------------------------------------------------------------------
def _r(x: float) -> str:
    return "  n/a " if math.isnan(x) else f"{100 * x:5.1f}%"


def table(evals: Sequence[ModelEvaluation]) -> str:
    """The sweep as text, one block per model; the calibrated row is marked with ``*``."""
    lines = []
    for ev in evals:
        c = ev.calibration
        lines.append(
            f"{ev.model}: {len(ev.enrolled)} people enrolled, "
            f"{ev.calibrated.mated} mated and {ev.calibrated.nonmated} non-mated probes; "
            f"not detected: {len(ev.enrol_not_detected)} enrolment, "
            f"{len(ev.probe_not_detected)} probe photos; margin {c.margin:.3f} ({c.source})"
        )
        op = ev.extra.get("operating_point")
        if op is not None:
            lines.append(
                f"  the device's threshold for {op['comparisons']} enrolled embedding(s): "
                f"{op['threshold']:.5f} ({op['source']}; target FPIR {100 * op['target_fpir']:g}%)"
            )
        lines.append("  threshold    FNIR    FPIR  rank-1   FN   FP")
        rows = [(p, False) for p in ev.sweep] + [(ev.calibrated, True)]
        rows.sort(key=lambda r: (r[0].threshold, r[1]))
        for p, cal in rows:
            mark = "*" if cal else " "
            lines.append(
                f"{mark} {p.threshold:8.5f}  {_r(p.fnir)}  {_r(p.fpir)}  {_r(p.rank1)}"
                f"  {p.false_negatives:3d}  {p.false_positives:3d}"
            )
        lines.append(
            "  (* = the device's threshold for this gallery from the manifest's calibration, "
            "decided by edge.identity.matcher)"
        )
        lines.append("")
    if len(evals) == 2:
        a, b = evals
        lines.append(
            f"at the calibrated thresholds: {a.model} FNIR {_r(a.calibrated.fnir).strip()} "
            f"FPIR {_r(a.calibrated.fpir).strip()} | {b.model} FNIR "
            f"{_r(b.calibrated.fnir).strip()} FPIR {_r(b.calibrated.fpir).strip()}"
        )
    return "\n".join(lines).rstrip() + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.evaluate",
        description="Open-set identification (FNIR, FPIR, rank-1) of the device pipeline, "
        "over a threshold sweep and at the calibrated threshold.",
    )
    p.add_argument("folder", type=Path, nargs="?", help="one folder of people to split")
    p.add_argument("--enrol", type=Path, help="enrolment folder (with --probe)")
    p.add_argument("--probe", type=Path, help="probe folder (with --enrol)")
    p.add_argument(
        "--enrol-fraction",
        type=float,
        default=0.5,
        help="share of people enrolled when splitting one folder",
    )
    p.add_argument(
        "--enrol-first",
        type=int,
        help="enrol with the first N photos (default 1 "
        "when splitting one folder, all with --enrol)",
    )
    p.add_argument(
        "--swap", action="store_true", help="enrol the people the split would make strangers"
    )
    p.add_argument("--enrol-people", help="comma-separated names to enrol (instead of a fraction)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="embedder .tflite")
    p.add_argument("--float-model", type=Path, default=DEFAULT_FLOAT_MODEL)
    p.add_argument("--compare-float", action="store_true", help="also evaluate the float model")
    p.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR)
    p.add_argument("--threshold", type=float, help="override the manifest's threshold")
    p.add_argument("--margin", type=float, help="override the manifest's margin")
    p.add_argument("--min-face", type=int, default=40)
    p.add_argument("--runtime", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--target-fpir",
        type=float,
        default=DEFAULT_TARGET_FPIR,
        help="the device's [matching] target_fpir (the threshold follows the gallery size)",
    )
    _add_door_args(p)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-cache", action="store_true", help="do not cache embeddings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _add_door_args(p: argparse.ArgumentParser) -> None:
    """The door protocol's flags (``--gallery-size`` and what goes with it)."""
    door = p.add_argument_group(
        "door protocol",
        "the first N people with E+1 photos enrolled through facegate enroll's checks, the "
        "rest strangers; decided with the device's threshold-for-the-gallery-size rule",
    )
    door.add_argument("--gallery-size", type=int, help="N: people enrolled")
    door.add_argument("--gallery-sizes", help="a sweep of N, e.g. 10,20,50,100,200")
    door.add_argument("--enroll-photos", type=int, default=2, help="E: photos each enrols from")
    door.add_argument(
        "--probes-per-person", type=int, default=4, help="P: genuine probes per enrolled person"
    )
    door.add_argument(
        "--camera-frames",
        type=int,
        default=0,
        metavar="F",
        help="camera enrolment stood in for by each person's next F photos after the E "
        "enrolment photos (never probes): they go through the camera collector",
    )
    door.add_argument(
        "--camera-photos",
        type=int,
        default=5,
        metavar="K",
        help="frames the camera collector keeps at most (facegate enroll --camera --photos)",
    )
    door.add_argument(
        "--probe-start",
        type=int,
        metavar="S",
        help="probes are each person's photos from the S-th on (0-based; default E + F): the "
        "same S puts runs with different E on the same people and probes",
    )
    door.add_argument(
        "--stranger-photos",
        type=int,
        help="photos per stranger (default: P; 0: all of them)",
    )
    door.add_argument(
        "--cross-calibrate",
        type=int,
        metavar="K",
        help="split the people into K folds; calibrate on the others, run the protocol on each",
    )
    door.add_argument(
        "--calibration",
        type=Path,
        help="use this calibration block (a manifest or a tools.calibrate calibration.json)",
    )


def make_split(a: argparse.Namespace) -> Split:
    if a.folder is not None and (a.enrol or a.probe):
        raise FacegateError("give one folder to split, or --enrol and --probe, not both")
    if a.folder is not None:
        names = [n.strip() for n in a.enrol_people.split(",")] if a.enrol_people else None
        return split_folder(a.folder, a.enrol_fraction, a.enrol_first or 1, a.swap, names)
    if a.enrol is None or a.probe is None:
        raise FacegateError("give a folder to split, or both --enrol and --probe")
    return split_two(a.enrol, a.probe, a.enrol_first)


def run(a: argparse.Namespace) -> int:
    if not 0.0 < a.target_fpir < 0.5:
        raise FacegateError(f"--target-fpir must be in (0, 0.5), got {a.target_fpir}")
    if a.gallery_size is not None or a.gallery_sizes:
        if a.stranger_photos is None:
            a.stranger_photos = a.probes_per_person
        return run_door(a)
    split = make_split(a)
    cache = None if a.no_cache else DEFAULT_CACHE
    models = [a.model] + ([a.float_model] if a.compare_float else [])
    evals = [
        evaluate_model(
            m,
            split,
            a.detector,
            a.min_face,
            a.runtime,
            a.threads,
            cache,
            not a.quiet,
            a.threshold,
            a.margin,
            a.target_fpir,
        )
        for m in models
    ]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "split": {
            "enrolled_people": split.enrolled_people,
            "strangers": split.strangers,
            "enrol_photos": len(split.enrol),
            "probe_photos": len(split.probes),
        },
        "models": [e.to_json() for e in evals],
    }
    write_json_atomic(out / "evaluation.json", data)
    files = [out / "evaluation.json"]
    if plots.available():
        files.append(
            plots.identification_plot(
                [(e.model, e.curve) for e in evals],
                out / "fnir_fpir.png",
                [(e.model, e.calibrated) for e in evals],
            )
        )
    else:
        log.warning("matplotlib is not installed: plot skipped (pip install facegate[tools])")
    print(table(evals), end="")
    print("report: " + ", ".join(str(f) for f in files))
    return 0


def _main(argv: Sequence[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: a user error is one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--liveness" in args:  # liveness (issue 24): APCER/BPCER, tools.liveness.evaluate
        from tools.liveness import evaluate as liveness

        return liveness.main(args)
    return run_tool("evaluate", _main, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Calibrate the open-set threshold, margin and confidence of an embedding model.

    python -m tools.calibrate ../shared/faces
    python -m tools.calibrate ../shared/lfw --pairs ../shared/lfw/pairs.txt --far 1e-3
    python -m tools.calibrate ../shared/lfw --fpir 0.01 --gallery-size 50 --no-write

Faces of ``<folder>/<Person>/*`` go through the device's own detector,
alignment and embedder (:mod:`tools._faces`). From the genuine (same person)
and impostor (different people) cosine distances we choose:

* the threshold for a per-comparison false-accept rate ``--far`` and, with
  ``--fpir``/``--gallery-size``, for a false-positive identification rate of
  a gallery (the stricter of the two wins);
* the margin of the open-set rule, from leave-one-out searches;
* the calibrated confidence ``p(genuine | d)`` (a logistic fit).

They are written into the model's manifest (``calibration``; ``--no-write``
to only report), and a report goes to ``--out``: ``calibration.md``,
``calibration.json``, ``hist.png`` and ``det.png``. ``docs/calibration.md``
explains every formula.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import FacegateError
from edge.identity.thresholds import DEFAULT_TARGET_FPIR, OperatingPoint, operating_point
from edge.vision.manifest import (
    Calibration,
    RateTable,
    load_manifest,
    save_manifest,
    write_json_atomic,
)
from tools import plots, stats
from tools._common import run_tool
from tools._faces import (
    DEFAULT_CACHE,
    DEFAULT_DETECTOR,
    DEFAULT_MODEL,
    FaceEmbedder,
    FaceSet,
    LabelledImage,
    list_people,
    read_lfw_pairs,
)

log = logging.getLogger("tools.calibrate")

DEFAULT_OUT = Path("reports/calibration")
DEFAULT_MARGIN = 0.05  # used when the data have no leave-one-out genuine searches
# The settings of the shipped calibrations (models/calibration/, docs/calibration.md):
# the manifest's fixed threshold for a door of 10 people x 2 photos at FPIR 1%.
# tools.evaluate --cross-calibrate calibrates each fold with them too.
SHIPPED_FPIR = 0.01
SHIPPED_GALLERY_SIZE = 10
SHIPPED_PER_PERSON = 2


@dataclass(frozen=True)
class CalibrationResult:
    """Everything the calibration chose, and the numbers it chose them from."""

    threshold: float
    threshold_far: float
    threshold_fpir: float | None
    far: float
    fpir: float | None
    comparisons: int | None  # gallery embeddings a stranger is compared with
    target_far: float  # the per-comparison rate the threshold was chosen for
    binding: str  # "far" | "fpir"
    far_at_threshold: float  # empirical, on the calibration impostors
    frr_at_threshold: float  # empirical, on the calibration genuine pairs
    fpir_predicted: float | None  # 1 - (1 - far_at_threshold)^M
    margin: float
    margin_source: str
    margin_searches: int
    confidence: stats.LogisticFit
    n_genuine: int
    n_impostor: int
    eer: float
    eer_threshold: float
    data_check: stats.DataCheck
    far_table: RateTable
    frr_table: RateTable

    def calibration(self, source: str) -> Calibration:
        """The manifest record the device reads (with the tables for the gallery-size rule)."""
        return Calibration(
            threshold=self.threshold,  # already stats.stored_threshold()
            margin=round(self.margin, 6),
            conf_midpoint=round(self.confidence.midpoint, 6),
            conf_scale=round(self.confidence.scale, 6),
            source=source,
            far_table=self.far_table,
            frr_table=self.frr_table,
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["confidence"] = asdict(self.confidence)
        d["data_check"] = asdict(self.data_check)
        d["far_table"] = self.far_table.to_json()
        d["frr_table"] = self.frr_table.to_json()
        return d


def _pairs(
    genuine: npt.NDArray[np.floating], impostor: npt.NDArray[np.floating]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Both distance sets as float64, or FacegateError when either is empty."""
    g = np.asarray(genuine, dtype=np.float64)
    i = np.asarray(impostor, dtype=np.float64)
    if g.size == 0:
        raise FacegateError(
            "no genuine pairs: calibration needs people with at least 2 photos each"
        )
    if i.size == 0:
        raise FacegateError("no impostor pairs: calibration needs at least 2 people")
    return g, i


@dataclass(frozen=True)
class _Threshold:
    """The stored threshold, the two it was chosen from, and which one binds."""

    threshold: float
    t_far: float
    t_fpir: float | None
    comparisons: int | None
    target: float
    binding: str


def _threshold(
    i: npt.NDArray[np.float64],
    far: float,
    fpir: float | None,
    gallery_size: int | None,
    per_person: int,
) -> _Threshold:
    """The threshold at ``far``, or at the per-comparison FAR for ``fpir`` when stricter."""
    t_far = stats.threshold_for_far(i, far)
    t_fpir: float | None = None
    comparisons: int | None = None
    target, binding, threshold = far, "far", t_far
    if fpir is not None:
        if not gallery_size or gallery_size < 1:
            raise FacegateError("--fpir needs --gallery-size (the number of enrolled people)")
        comparisons = gallery_size * per_person
        f_gal = stats.per_comparison_far(fpir, comparisons)
        t_fpir = stats.threshold_for_far(i, f_gal)
        if f_gal < far:
            target, binding, threshold = f_gal, "fpir", min(t_far, t_fpir)
    # What the device will use: rounded down (see stats.stored_threshold).
    stored = stats.stored_threshold(threshold)
    return _Threshold(stored, t_far, t_fpir, comparisons, target, binding)


def _margin(
    threshold: float,
    gaps_for: Callable[[float], npt.NDArray[np.float64]] | None,
    margin: float | None,
    margin_loss: float,
) -> tuple[float, str, int]:
    """The margin, where it came from, and how many leave-one-out searches it rests on."""
    if margin is not None:
        return float(margin), "given (--margin)", 0
    gaps = gaps_for(threshold) if gaps_for is not None else np.zeros(0)
    n_search = int(gaps.size)
    if not n_search:
        return DEFAULT_MARGIN, "default (no leave-one-out genuine searches)", 0
    m = stats.choose_margin(gaps, max_loss=margin_loss, default=DEFAULT_MARGIN)
    src = (
        f"{margin_loss:g} quantile of d2 - d1 over {n_search} leave-one-out genuine "
        "searches (capped at 0.10)"
    )
    return m, src, n_search


def choose_parameters(
    genuine: npt.NDArray[np.floating],
    impostor: npt.NDArray[np.floating],
    far: float = 1e-3,
    fpir: float | None = None,
    gallery_size: int | None = None,
    per_person: int = 1,
    prior: float = 0.5,
    gaps_for: Callable[[float], npt.NDArray[np.float64]] | None = None,
    margin: float | None = None,
    margin_loss: float = 0.01,
) -> CalibrationResult:
    """Choose threshold, margin and confidence from genuine and impostor distances.

    The threshold is :func:`tools.stats.threshold_for_far` at ``far``; with
    ``fpir`` it is also computed at the per-comparison rate
    ``1 - (1 - fpir)^(1/M)`` for ``M = gallery_size * per_person`` enrolled
    embeddings, and the smaller (stricter) threshold wins. ``gaps_for(t)``
    returns the leave-one-out ``d2 - d1`` gaps at threshold ``t`` for
    :func:`tools.stats.choose_margin`; an explicit ``margin`` overrides it.
    """
    g, i = _pairs(genuine, impostor)
    th = _threshold(i, far, fpir, gallery_size, per_person)
    threshold, comparisons = th.threshold, th.comparisons
    far_emp = stats.far_at(i, threshold)
    errors = round(far_emp * i.size)
    check = stats.check_enough_impostors(int(i.size), th.target, errors)
    m, m_src, n_search = _margin(threshold, gaps_for, margin, margin_loss)
    try:
        conf = stats.fit_confidence(g, i, prior_genuine=prior)
    except ValueError as e:
        raise FacegateError(str(e)) from None
    eer, eer_t = stats.equal_error_rate(stats.det_curve(g, i))
    return CalibrationResult(
        threshold=float(threshold),
        threshold_far=float(th.t_far),
        threshold_fpir=th.t_fpir,
        far=far,
        fpir=fpir,
        comparisons=comparisons,
        target_far=float(th.target),
        binding=th.binding,
        far_at_threshold=far_emp,
        frr_at_threshold=stats.frr_at(g, threshold),
        fpir_predicted=None if comparisons is None else stats.fpir_from_far(far_emp, comparisons),
        margin=float(m),
        margin_source=m_src,
        margin_searches=n_search,
        confidence=conf,
        n_genuine=int(g.size),
        n_impostor=int(i.size),
        eer=eer,
        eer_threshold=eer_t,
        data_check=check,
        far_table=stats.far_table(i),
        frr_table=stats.frr_table(g),
    )


def calibrate_faces(
    faces: FaceSet,
    far: float = 1e-3,
    fpir: float | None = None,
    gallery_size: int | None = None,
    per_person: int = 1,
    prior: float = 0.5,
    margin: float | None = None,
    margin_loss: float = 0.01,
) -> CalibrationResult:
    """:func:`choose_parameters` on every pair of labelled embeddings (the default mode)."""
    gen, imp = stats.pair_distances(faces.embeddings, faces.labels)

    def gaps_for(t: float) -> npt.NDArray[np.float64]:
        return stats.leave_one_out_gaps(faces.embeddings, faces.labels, t)

    return choose_parameters(
        gen,
        imp,
        far=far,
        fpir=fpir,
        gallery_size=gallery_size,
        per_person=per_person,
        prior=prior,
        gaps_for=gaps_for,
        margin=margin,
        margin_loss=margin_loss,
    )


GALLERY_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 400, 1000)


def gallery_size_rows(
    res: CalibrationResult, target_fpir: float = DEFAULT_TARGET_FPIR
) -> list[OperatingPoint]:
    """What the device will do with these tables for a few gallery sizes (enrolled embeddings)."""
    return [
        operating_point(res.threshold, res.far_table, res.frr_table, m, target_fpir)
        for m in GALLERY_SIZES
    ]


# -- distances from photos ---------------------------------------------------------------
@dataclass(frozen=True)
class Distances:
    """Genuine and impostor distances, and the embeddings they came from."""

    genuine: npt.NDArray[np.float32]
    impostor: npt.NDArray[np.float32]
    faces: FaceSet
    mode: str  # "all pairs" | "pairs file"
    pairs_skipped: int = 0


def distances_from_pairs(faces: FaceSet, pairs: Sequence[tuple[Path, Path, bool]]) -> Distances:
    """Distances of listed pairs; pairs with an undetected photo are skipped (and counted)."""
    row = faces.index_of()
    gen: list[float] = []
    imp: list[float] = []
    skipped = 0
    for a, b, same in pairs:
        ia, ib = row.get(a), row.get(b)
        if ia is None or ib is None:
            skipped += 1
            continue
        d = float(np.clip(1.0 - faces.embeddings[ia] @ faces.embeddings[ib], 0.0, 2.0))
        (gen if same else imp).append(d)
    return Distances(
        np.array(gen, np.float32), np.array(imp, np.float32), faces, "pairs file", skipped
    )


def collect(
    folder: Path,
    embedder: FaceEmbedder,
    pairs_file: Path | None = None,
    cache_dir: Path | None = DEFAULT_CACHE,
    progress: bool = False,
) -> Distances:
    """Embed the photos and build the genuine/impostor distance sets."""
    if pairs_file is None:
        items = list_people(folder)
        faces = embedder.embed_items(items, cache_dir, progress)
        gen, imp = stats.pair_distances(faces.embeddings, faces.labels)
        return Distances(gen, imp, faces, "all pairs")
    pairs = read_lfw_pairs(pairs_file, folder)
    seen: dict[Path, None] = {}
    for a, b, _ in pairs:
        seen.setdefault(a)
        seen.setdefault(b)
    items = [LabelledImage(p.parent.name, p) for p in sorted(seen)]
    faces = embedder.embed_items(items, cache_dir, progress)
    return distances_from_pairs(faces, pairs)


# -- report ------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def worked_example(res: CalibrationResult) -> list[tuple[float, float]]:
    """(distance, confidence) at a few telling distances, for the report and the docs."""
    c = res.confidence
    ds = sorted(
        {
            round(x, 4)
            for x in (
                c.midpoint - 2 * c.scale,
                c.midpoint - c.scale,
                res.threshold,
                c.midpoint,
                c.midpoint + c.scale,
                c.midpoint + 2 * c.scale,
            )
            if 0.0 <= x <= 2.0
        }
    )
    return [(d, float(c(np.array([d]))[0])) for d in ds]


def write_report(
    res: CalibrationResult,
    dist: Distances,
    out: Path,
    model_name: str,
    written_to: Path | None,
    folder_name: str,
    source: str = "",
) -> dict[str, Path]:
    """``calibration.json``, ``calibration.md`` and the plots (when matplotlib is there)."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    curve = stats.det_curve(dist.genuine, dist.impostor)
    if plots.available():
        files["hist"] = plots.distance_histogram(
            dist.genuine,
            dist.impostor,
            res.threshold,
            out / "hist.png",
            res.confidence,
            title=f"{model_name} on {folder_name}: genuine vs impostor distances",
        )
        files["det"] = plots.det_plot(
            [(model_name, curve)],
            out / "det.png",
            [("calibrated threshold", res.far_at_threshold, res.frr_at_threshold)],
            target_far=res.target_far,
        )
    else:
        log.warning("matplotlib is not installed: plots skipped (pip install facegate[tools])")
    # A DET curve with millions of points is thinned for the JSON (every point for small sets).
    step = max(1, len(curve.thresholds) // 2000)
    failed = [
        {"person": it.label, "file": it.path.name, "why": why} for it, why in dist.faces.failed
    ]
    data: dict[str, Any] = {
        "model": model_name,
        "folder": folder_name,
        "mode": dist.mode,
        "images_embedded": len(dist.faces.labels),
        "people": len(set(dist.faces.labels)),
        "not_detected": failed,
        "pairs_skipped": dist.pairs_skipped,
        "result": res.to_json(),
        # The manifest's calibration block as written (tools.evaluate --calibration reads it).
        "calibration": asdict(res.calibration(source)),
        "gallery_sizes": [asdict(p) for p in gallery_size_rows(res)],
        "worked_example": [{"distance": d, "confidence": p} for d, p in worked_example(res)],
        "det": {
            "threshold": curve.thresholds[::step].round(6).tolist(),
            "fmr": curve.fmr[::step].tolist(),
            "fnmr": curve.fnmr[::step].tolist(),
        },
        "manifest_written": str(written_to.name) if written_to else None,
    }
    write_json_atomic(out / "calibration.json", data)
    files["json"] = out / "calibration.json"
    (out / "calibration.md").write_text(render_markdown(res, data, files), encoding="utf-8")
    files["md"] = out / "calibration.md"
    return files


def render_markdown(res: CalibrationResult, data: dict[str, Any], files: dict[str, Path]) -> str:
    """``calibration.md``: the parameters, the gallery-size table, the data check, the curve."""
    lines = _summary(res, data) + _gallery_size_section(res)
    dc = res.data_check
    lines += ["## Is there enough data?", ""]
    lines += [("" if dc.ok else "**Warning:** ") + dc.message, ""]
    lines += _confidence_section(res)
    if "hist" in files:
        lines += ["## Plots", "", "![distance histograms](hist.png)", "", "![DET curve](det.png)"]
        lines.append("")
    if data["not_detected"]:
        lines += ["## Photos without a usable face", ""]
        lines += [f"- {f['person']}/{f['file']}: {f['why']}" for f in data["not_detected"]]
        lines.append("")
    if data["manifest_written"]:
        lines.append(f"Written to the manifest `{data['manifest_written']}`.")
    else:
        lines.append("Not written to any manifest (`--no-write`).")
    return "\n".join(lines) + "\n"


def _summary(res: CalibrationResult, data: dict[str, Any]) -> list[str]:
    """The title, the data line and the parameter table."""
    c = res.confidence
    lines = [
        f"# Calibration of {data['model']}",
        "",
        f"Data: `{data['folder']}` ({data['mode']}), {data['images_embedded']} photos of "
        f"{data['people']} people embedded, {len(data['not_detected'])} without a usable face; "
        f"{res.n_genuine} genuine and {res.n_impostor} impostor pairs.",
        "",
        "| parameter | value |",
        "|---|---|",
        f"| **threshold** (accept when d < t) | **{res.threshold:.5f}** |",
        f"| chosen for | per-comparison FAR {res.target_far:.3g} ({res.binding}) |",
        f"| threshold at FAR {res.far:g} | {res.threshold_far:.4f} |",
    ]
    if res.fpir is not None:
        lines += [
            f"| threshold at FPIR {res.fpir:g}, gallery of {res.comparisons} embeddings | "
            f"{res.threshold_fpir:.4f} (per-comparison FAR {res.target_far:.3g}) |",
            f"| predicted FPIR at the threshold | {res.fpir_predicted:.3g} |",
        ]
    return [
        *lines,
        f"| empirical FAR at the threshold | {res.far_at_threshold:.3g} |",
        f"| empirical FRR (FNMR) at the threshold | {res.frr_at_threshold:.3g} |",
        f"| equal error rate | {_pct(res.eer)} at d = {res.eer_threshold:.4f} |",
        f"| **margin** (d2 - d1 >= margin) | **{res.margin:.4f}** ({res.margin_source}) |",
        f"| **confidence** midpoint / scale | **{c.midpoint:.4f} / {c.scale:.4f}** "
        f"(prior p(genuine) = {c.prior_genuine:g}) |",
        "",
    ]


def _gallery_size_section(res: CalibrationResult) -> list[str]:
    """The threshold the device picks for each gallery size, with its expected error rates."""
    lines = [
        "## The threshold for the gallery size (device default: FPIR 1%)",
        "",
        "The device reads the FAR table for `f = 1 - (1 - FPIR)^(1/M)` with `M` enrolled "
        f"embeddings (rows down to FAR {min(res.far_table.rate):.3g}, the rule-of-three limit "
        f"of {res.far_table.n} impostor pairs):",
        "",
        "| enrolled embeddings M | per-comparison FAR f | threshold | expected FPIR | "
        "expected FNIR (1 photo) |",
        "|---|---|---|---|---|",
    ]
    for p in gallery_size_rows(res):
        clamp = " (clamped)" if p.clamped else ""
        lines.append(
            f"| {p.comparisons} | {p.target_far:.3g} | {p.threshold:.5f}{clamp} | "
            f"{_pct(p.expected_fpir or 0.0)} | {_pct(p.expected_fnir or 0.0)} |"
        )
    lines.append("")
    return lines


def _confidence_section(res: CalibrationResult) -> list[str]:
    """The confidence curve, stated and worked through."""
    c = res.confidence
    lines = [
        "## From distance to percentage",
        "",
        "`confidence = 1 / (1 + exp((d - midpoint) / scale))` = "
        f"`1 / (1 + exp((d - {c.midpoint:.4f}) / {c.scale:.4f}))`",
        "",
        "| distance d | confidence |",
        "|---|---|",
    ]
    lines += [f"| {d:.4f} | {_pct(p)} |" for d, p in worked_example(res)]
    lines.append("")
    return lines


def write_manifest(model: Path, res: CalibrationResult, source: str) -> Path:
    """Store the calibration in the model's manifest (atomically); returns the manifest path."""
    m = load_manifest(model)
    summary = {
        "far": res.far,
        "fpir": res.fpir,
        "gallery_comparisons": res.comparisons,
        "target_far": res.target_far,
        "far_at_threshold": res.far_at_threshold,
        "frr_at_threshold": res.frr_at_threshold,
        "n_genuine": res.n_genuine,
        "n_impostor": res.n_impostor,
        "prior_genuine": res.confidence.prior_genuine,
        "enough_data": res.data_check.ok,
    }
    extra = {**m.extra, "calibration": summary}
    m2 = replace(m.with_calibration(res.calibration(source)), extra=extra)
    assert m2.path is not None  # load_manifest always sets it
    return save_manifest(m2)


# -- CLI -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.calibrate",
        description="Choose the open-set threshold, margin and confidence of an embedding model "
        "from labelled faces (<folder>/<Person>/<image>), and write them into its manifest.",
    )
    p.add_argument("folder", type=Path, help="labelled faces: one sub-folder per person")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="embedder .tflite")
    p.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR, help="detector .tflite")
    p.add_argument("--pairs", type=Path, help="LFW-style pairs.txt: use only these pairs")
    p.add_argument("--far", type=float, default=1e-3, help="per-comparison false-accept rate")
    p.add_argument("--fpir", type=float, help="false-positive identification rate target")
    p.add_argument("--gallery-size", type=int, help="enrolled people (with --fpir)")
    p.add_argument("--per-person", type=int, default=1, help="embeddings per enrolled person")
    p.add_argument("--prior", type=float, default=0.5, help="p(genuine) the confidence assumes")
    p.add_argument("--margin", type=float, help="fix the margin instead of choosing it")
    p.add_argument(
        "--margin-loss",
        type=float,
        default=0.01,
        help="largest share of accepted genuine searches the margin may reject",
    )
    p.add_argument("--min-face", type=int, default=40, help="smallest face side in pixels")
    p.add_argument("--runtime", default="auto", help="TFLite runtime (auto|ai_edge_litert|...)")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder")
    p.add_argument("--no-write", action="store_true", help="do not touch the manifest")
    p.add_argument("--no-cache", action="store_true", help="do not cache embeddings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _validate(a: argparse.Namespace) -> None:
    if not Path(a.folder).is_dir():
        raise FacegateError(f"{a.folder}: not a folder of people (<folder>/<Person>/<image>)")
    for name in ("far", "fpir", "prior", "margin_loss"):
        v = getattr(a, name)
        if v is not None and not 0.0 < v < 1.0:
            raise FacegateError(f"--{name.replace('_', '-')} must be between 0 and 1, got {v}")
    if a.margin is not None and not 0.0 <= a.margin < 2.0:
        raise FacegateError(f"--margin must be in [0, 2), got {a.margin}")
    if a.gallery_size is not None and a.gallery_size < 1:
        raise FacegateError(f"--gallery-size must be >= 1, got {a.gallery_size}")
    if a.per_person < 1:
        raise FacegateError(f"--per-person must be >= 1, got {a.per_person}")
    if (a.fpir is None) != (a.gallery_size is None):
        raise FacegateError("--fpir and --gallery-size go together")


def run(a: argparse.Namespace) -> int:
    _validate(a)
    fe = FaceEmbedder(a.model, a.detector, a.min_face, a.runtime, a.threads)
    dist = collect(a.folder, fe, a.pairs, None if a.no_cache else DEFAULT_CACHE, not a.quiet)
    faces = dist.faces

    def gaps_for(t: float) -> npt.NDArray[np.float64]:
        return stats.leave_one_out_gaps(faces.embeddings, faces.labels, t)

    res = choose_parameters(
        dist.genuine,
        dist.impostor,
        far=a.far,
        fpir=a.fpir,
        gallery_size=a.gallery_size,
        per_person=a.per_person,
        prior=a.prior,
        gaps_for=gaps_for,
        margin=a.margin,
        margin_loss=a.margin_loss,
    )
    model_name = Path(a.model).stem
    folder_name = Path(a.folder).resolve().name
    written: Path | None = None
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    source = (
        f"tools.calibrate {today} on {folder_name} ({dist.mode}; {res.n_genuine} genuine, "
        f"{res.n_impostor} impostor pairs; {res.binding} {res.target_far:.3g})"
    )
    if not a.no_write:
        written = write_manifest(Path(a.model), res, source)
    files = write_report(res, dist, Path(a.out), model_name, written, folder_name, source)
    print(summary_text(res, dist, written, files))
    return 0


def summary_text(
    res: CalibrationResult, dist: Distances, written: Path | None, files: dict[str, Path]
) -> str:
    c = res.confidence
    out = [
        f"photos embedded: {len(dist.faces.labels)}   without a usable face: "
        f"{dist.faces.n_not_detected}   pairs: {res.n_genuine} genuine, {res.n_impostor} impostor",
        f"threshold {res.threshold:.5f}  (per-comparison FAR {res.target_far:.3g}, {res.binding};"
        f" empirical FAR {res.far_at_threshold:.3g}, FRR {res.frr_at_threshold:.3g})",
        f"margin    {res.margin:.4f}  ({res.margin_source})",
        f"confidence p(genuine|d) = 1/(1+exp((d - {c.midpoint:.4f})/{c.scale:.4f}))",
        f"EER {_pct(res.eer)} at d = {res.eer_threshold:.4f}",
    ]
    p60 = operating_point(res.threshold, res.far_table, res.frr_table, 120)
    out.append(
        f"tables: FAR {min(res.far_table.rate):.3g}..{max(res.far_table.rate):.3g} "
        f"({len(res.far_table.rate)} rows), FRR {len(res.frr_table.rate)} rows; "
        f"e.g. 60 people x 2 photos: {p60.describe()}"
    )
    if not res.data_check.ok:
        out.append("WARNING: " + res.data_check.message)
    if math.isfinite(res.threshold) and written is not None:
        out.append(f"calibration written to {written}")
    out.append("report: " + ", ".join(str(p) for p in files.values()))
    return "\n".join(out)


def _main(argv: Sequence[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: a user error is one line on stderr and exit code 2."""
    return run_tool("calibrate", _main, argv)


if __name__ == "__main__":
    sys.exit(main())

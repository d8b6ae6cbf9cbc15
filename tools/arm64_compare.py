"""Compare two machines' embeddings of one photo set: cosines and decision agreement.

Inputs are :mod:`tools.arm64_probe` outputs (one per machine and runtime);
the reference is x86 with ``ai_edge_litert``, where the shipped thresholds
were calibrated. For each embedder:

* **cosine**, end to end: the largest face of each photo through each
  machine's own detector, alignment and int8 embedder (what a Pi computes);
  and on the same crops (the reference's aligned crops embedded on the other
  machine), which isolates the embedder's int8 kernels.
* **identify agreement**: the open-set decision of ``facegate identify``
  (:class:`edge.identity.matcher.Matcher` with the manifest's calibration; the
  threshold follows the gallery size, :func:`edge.identity.thresholds.operating_point`)
  for every probe photo, each machine matching its own embeddings against a
  gallery enrolled from its own embeddings (:func:`identify_split`).
* **pair agreement**: accept/reject of every pair of photos at the
  manifest's calibrated threshold (``d = 1 - cos < threshold``).

Every disagreement is listed with both machines' distances.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.vision.manifest import Manifest

MEAN_COSINE_TARGET = 0.99
AGREEMENT_TARGET = 0.99
NO_FACE = "<no face>"


@dataclass(frozen=True)
class Probe:
    """One machine's embeddings of the photo set for one embedder."""

    photos: tuple[str, ...]
    emb: npt.NDArray[np.float32]
    crop_emb: npt.NDArray[np.float32] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def load_probe(path: Path, stem: str) -> Probe:
    """Read an embedder's part of a probe ``.npz`` (:mod:`tools.arm64_probe`)."""
    with np.load(path) as z:
        crop = z[f"{stem}.crop_emb"] if f"{stem}.crop_emb" in z.files else None
        return Probe(
            tuple(str(p) for p in z["photos"]),
            np.asarray(z[f"{stem}.emb"], np.float32),
            None if crop is None else np.asarray(crop, np.float32),
            json.loads(str(z["meta"])),
        )


def row_cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """``cos(a_i, b_i)`` for each row of two (N, D) sets of unit vectors; NaN where either is."""
    out: npt.NDArray[np.float64] = np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))
    return out


def person_of(photo: str) -> str:
    """The person a photo shows: its folder (``Person/photo.jpg``)."""
    return photo.split("/", 1)[0] if "/" in photo else Path(photo).stem


@dataclass(frozen=True)
class Split:
    """Which photos enrol whom, which are probes, and who is a stranger."""

    enrol: tuple[int, ...]
    probes: tuple[int, ...]
    strangers: frozenset[str]


def identify_split(photos: tuple[str, ...]) -> Split:
    """A fixed open-set split of a ``Person/photo`` set.

    People in sorted order; every third one (the 3rd, 6th, ...) is a
    stranger, never enrolled, when there are at least three people. Each
    other person is enrolled from their first photo (sorted); every
    remaining photo is a probe, the strangers' included.
    """
    people = sorted({person_of(p) for p in photos})
    strangers = (
        frozenset(p for i, p in enumerate(people) if i % 3 == 2)
        if len(people) >= 3
        else frozenset()
    )
    enrol: list[int] = []
    seen: set[str] = set()
    for i in sorted(range(len(photos)), key=lambda i: photos[i]):
        who = person_of(photos[i])
        if who not in strangers and who not in seen:
            seen.add(who)
            enrol.append(i)
    probes = tuple(i for i in range(len(photos)) if i not in set(enrol))
    return Split(tuple(enrol), probes, strangers)


@dataclass(frozen=True)
class Decision:
    """One probe's open-set answer: a name, None (unknown) or :data:`NO_FACE`."""

    name: str | None
    distance: float | None


def identify_decisions(
    emb: npt.NDArray[np.float32], photos: tuple[str, ...], split: Split, manifest: Manifest
) -> tuple[list[Decision], float]:
    """Each probe's open-set decision against a gallery of the enrolment photos.

    The device's code: a :class:`edge.identity.gallery.Gallery`, the threshold for its
    size from the manifest's calibration (:func:`edge.identity.thresholds.operating_point`,
    target FPIR 1%), the calibrated margin, :class:`edge.identity.matcher.Matcher`.
    Returns the decisions (in ``split.probes`` order) and the threshold.
    """
    from edge.decide.recognizer import DEFAULT_CALIBRATION
    from edge.identity.gallery import Gallery
    from edge.identity.matcher import Matcher
    from edge.identity.thresholds import operating_point
    from edge.numerics import Confidence

    cal = manifest.calibration or DEFAULT_CALIBRATION
    gallery = Gallery.for_manifest(manifest)
    for i in split.enrol:
        if np.all(np.isfinite(emb[i])):
            gallery.add(person_of(photos[i]), emb[i][None, :])
    enrolled = sum(len(gallery.person(n).embeddings) for n in gallery.names)
    point = operating_point(cal.threshold, cal.far_table, cal.frr_table, enrolled)
    matcher = Matcher(
        gallery, point.threshold, cal.margin, Confidence(cal.conf_midpoint, cal.conf_scale)
    )
    out = []
    for i in split.probes:
        if not np.all(np.isfinite(emb[i])):
            out.append(Decision(NO_FACE, None))
            continue
        m = matcher.match(emb[i])
        out.append(Decision(m.name, float(m.distance)))
    return out, point.threshold


def pair_distances(emb: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Cosine distances ``1 - cos`` of every pair (i < j), NaN where a photo has no face."""
    e = emb.astype(np.float64)
    d = 1.0 - e @ e.T
    i, j = np.triu_indices(len(e), k=1)
    return np.asarray(d[i, j])


@dataclass(frozen=True)
class Row:
    """One embedder under one runtime (and emulated CPU) against the reference."""

    embedder: str
    runtime: str
    cpu: str
    photos: int
    faces_both: int
    mean_cos: float
    worst_cos: float
    worst_photo: str
    crop_mean_cos: float | None
    crop_worst_cos: float | None
    crop_max_abs_diff: float | None
    identify_agree: int
    identify_total: int
    identify_threshold: float
    pair_agree: int
    pair_total: int
    pair_threshold: float
    disagreements: tuple[str, ...]

    @property
    def identify_rate(self) -> float:
        return self.identify_agree / self.identify_total if self.identify_total else 1.0

    @property
    def pair_rate(self) -> float:
        return self.pair_agree / self.pair_total if self.pair_total else 1.0

    @property
    def passed(self) -> bool:
        """Mean cosine and both agreements at their targets."""
        return (
            self.mean_cos >= MEAN_COSINE_TARGET
            and self.identify_rate >= AGREEMENT_TARGET
            and self.pair_rate >= AGREEMENT_TARGET
        )

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["disagreements"] = list(self.disagreements)
        d.update(identify_rate=self.identify_rate, pair_rate=self.pair_rate, passed=self.passed)
        return d


def _fmt_name(d: Decision) -> str:
    if d.name == NO_FACE:
        return NO_FACE
    return f"{d.name or 'unknown'} ({d.distance:.4f})"


def _same_crops(ref: Probe, other: Probe) -> tuple[float | None, float | None, float | None]:
    """Mean and worst cosine, and the largest element difference, on the reference's crops."""
    if other.crop_emb is None:
        return None, None, None
    cc = row_cosines(ref.emb, other.crop_emb)
    if not np.isfinite(cc).any():
        return None, None, None
    diff = float(np.nanmax(np.abs(ref.emb - other.crop_emb)))
    return float(np.nanmean(cc)), float(np.nanmin(cc)), diff


def _identify_agreement(
    ref: Probe, other: Probe, manifest: Manifest, notes: list[str]
) -> tuple[int, int, float]:
    """(probes answered alike, probes, the gallery's threshold); differences go to ``notes``."""
    photos = ref.photos
    split = identify_split(photos)
    ra, threshold = identify_decisions(ref.emb, photos, split, manifest)
    rb, _ = identify_decisions(other.emb, photos, split, manifest)
    agree = 0
    for i, a, b in zip(split.probes, ra, rb, strict=True):
        if a.name == b.name:
            agree += 1
        else:
            notes.append(f"identify {photos[i]}: x86 {_fmt_name(a)}, arm64 {_fmt_name(b)}")
    return agree, len(split.probes), threshold


def _pair_agreement(
    ref: Probe, other: Probe, manifest: Manifest, notes: list[str]
) -> tuple[int, int, float]:
    """(pairs decided alike, pairs, the calibrated threshold); differences go to ``notes``."""
    from edge.decide.recognizer import DEFAULT_CALIBRATION

    photos = ref.photos
    t = (manifest.calibration or DEFAULT_CALIBRATION).threshold
    da, db = pair_distances(ref.emb), pair_distances(other.emb)
    valid = np.isfinite(da) & np.isfinite(db)
    acc_a, acc_b = da < t, db < t
    differ = valid & (acc_a != acc_b)
    iu, ju = np.triu_indices(len(photos), k=1)
    for k in np.flatnonzero(differ):
        notes.append(
            f"pair {photos[iu[k]]} ~ {photos[ju[k]]}: x86 d={da[k]:.4f} "
            f"{'accept' if acc_a[k] else 'reject'}, arm64 d={db[k]:.4f} "
            f"{'accept' if acc_b[k] else 'reject'} (threshold {t:.4f})"
        )
    return int((valid & ~differ).sum()), int(valid.sum()), t


def compare(
    ref: Probe, other: Probe, manifest: Manifest, embedder: str, runtime: str, cpu: str
) -> Row:
    """Cosines and decision agreement of ``other`` against the reference ``ref``."""
    if ref.photos != other.photos:
        raise ValueError("the two probes saw different photo lists")
    photos = ref.photos
    cos = row_cosines(ref.emb, other.emb)
    both = np.isfinite(cos)
    worst = int(np.nanargmin(cos)) if both.any() else 0
    notes: list[str] = []
    for k in np.flatnonzero(~both):
        a, b = np.isfinite(ref.emb[k]).all(), np.isfinite(other.emb[k]).all()
        if a != b:
            notes.append(f"face found on {'x86 only' if a else 'arm64 only'}: {photos[k]}")
    crop_mean, crop_worst, crop_diff = _same_crops(ref, other)
    id_agree, id_total, t_id = _identify_agreement(ref, other, manifest, notes)
    pair_agree, pair_total, t_pair = _pair_agreement(ref, other, manifest, notes)
    return Row(
        embedder=embedder,
        runtime=runtime,
        cpu=cpu,
        photos=len(photos),
        faces_both=int(both.sum()),
        mean_cos=float(np.nanmean(cos)) if both.any() else float("nan"),
        worst_cos=float(cos[worst]) if both.any() else float("nan"),
        worst_photo=photos[worst],
        crop_mean_cos=crop_mean,
        crop_worst_cos=crop_worst,
        crop_max_abs_diff=crop_diff,
        identify_agree=id_agree,
        identify_total=id_total,
        identify_threshold=t_id,
        pair_agree=pair_agree,
        pair_total=pair_total,
        pair_threshold=t_pair,
        disagreements=tuple(notes),
    )


def table(rows: list[Row]) -> str:
    """The comparison as a fixed-width text table, then the disagreements."""
    head = (
        "embedder      runtime (arm64)        cpu   faces  mean cos  worst cos  "
        "same-crop cos (mean/worst)  identify agree    pairs agree         result"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        crop = (
            f"{r.crop_mean_cos:.6f}/{r.crop_worst_cos:.6f}"
            if r.crop_mean_cos is not None and r.crop_worst_cos is not None
            else "n/a"
        )
        lines.append(
            f"{r.embedder:<13} {r.runtime:<22} {r.cpu:<5} {r.faces_both:>2}/{r.photos:<3} "
            f"{r.mean_cos:>8.4f}  {r.worst_cos:>9.4f}  {crop:>26}  "
            f"{r.identify_agree:>3}/{r.identify_total:<3} {100 * r.identify_rate:>5.1f}%  "
            f"{r.pair_agree:>5}/{r.pair_total:<5} {100 * r.pair_rate:>5.1f}%  "
            f"{'PASS' if r.passed else 'FAIL'}"
        )
    lines.append(
        f"targets: mean cosine >= {MEAN_COSINE_TARGET}, identify and pair agreement >= "
        f"{100 * AGREEMENT_TARGET:.0f}%; reference: x86_64, ai_edge_litert"
    )
    for r in rows:
        t = f"identify threshold {r.identify_threshold:.4f}, pair threshold {r.pair_threshold:.4f}"
        same = (
            ""
            if r.crop_max_abs_diff is None
            else f"; same crops: largest element difference {r.crop_max_abs_diff:.3g}"
        )
        lines.append(f"{r.embedder} / {r.runtime} / {r.cpu}: worst {r.worst_photo}; {t}{same}")
        lines.extend(f"  disagreement: {n}" for n in r.disagreements)
        if not r.disagreements:
            lines.append("  no disagreements")
    return "\n".join(lines)

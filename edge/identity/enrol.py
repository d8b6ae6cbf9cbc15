"""Enrolment that prevents mix-ups: photo quality, outlier photos and look-alikes.

``facegate enroll`` (and ``tools.evaluate``'s door protocol, which must do
exactly what a door does) runs each photo through the recognizer's own
detector, alignment and embedder (:func:`edge.decide.recognizer.measure_photo`), then
decides here, in pure functions:

1. **which face**: the largest, when it is at least ``min_area_ratio`` (2x)
   the area of the next face; otherwise the photo is refused, since the name
   could belong to either;
2. **quality** (:func:`photo_problem`): face too small, too blurred (variance
   of the Laplacian on the aligned crop), or turned too far (yaw from the
   keypoints). Refused with the reason, unless ``--force``;
3. **outlier photos** (:func:`consistency`): a photo whose nearest other
   photo of the same person lies beyond :func:`outlier_distance` (a distance
   that almost no pair of photos of one person reaches) is probably someone
   else, and is refused unless ``--force``;
4. **look-alikes** (:func:`lookalikes`): an enrolled person whose photos lie
   closer to the new one's than the gallery's threshold (a distance the FAR
   table puts among the rare stranger pairs the door accepts) is named in a
   warning: the door would take one for the other. ``facegate gallery list``
   checks every pair the same way, with the same words (:func:`lookalike_message`).

The thresholds of the quality checks were set on all of LFW (4,293 real
photos, including blurry and turned ones) so that genuine frontal photos pass:
docs/calibration.md gives the measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from edge.identity.thresholds import OperatingPoint, far_at_threshold, genuine_quantile
from edge.numerics import laplacian_variance, person_min_distances, yaw_ratio
from edge.types import AlignedFace, Vector
from edge.vision.manifest import Calibration, RateTable

# -- measurements ------------------------------------------------------------------------
SHARPNESS_EYE_PX = 32.0  # sharpness is measured with the eyes this far apart


@dataclass(frozen=True)
class FaceQuality:
    """What the checks look at, for the face an enrolment photo would use."""

    face_px: float  # the shorter side of the detector's box, in photo pixels
    sharpness: float  # variance of the Laplacian (see face_sharpness)
    yaw: float  # edge.numerics.yaw_ratio: 0 frontal, ~0.35 at 30 degrees
    faces: int  # faces the detector found in the photo (any size)
    area_ratio: float  # area of this face / area of the next largest (inf when alone)


@dataclass(frozen=True)
class PhotoMeasure:
    """One photo through the recognizer: the largest usable face's embedding and quality.

    ``error`` is set (and the rest None) when the photo has no usable face.
    """

    embedding: Vector | None
    quality: FaceQuality | None
    error: str = ""
    # The detector's keypoints of that face (camera enrolment reads the head pose
    # from them); None where only the embedding and quality were kept (tools' caches).
    keypoints: npt.NDArray[np.float32] | None = field(default=None, repr=False, compare=False)


def face_sharpness(crop: npt.NDArray[np.uint8], template_pts: npt.NDArray[np.float32]) -> float:
    """Variance of the Laplacian of the aligned face, at a fixed face scale.

    The region spans the face from half an eye distance ``e`` outside the
    eyes, ``e/2`` above them, to ``e/4`` below the mouth (from the template's
    points, so background and hair count little), converted to grey
    (``0.299 R + 0.587 G + 0.114 B``) and resampled so the eyes are
    :data:`SHARPNESS_EYE_PX` apart: the number means the same for every
    template and crop size. Then :func:`edge.numerics.laplacian_variance`.
    """
    import cv2

    p = np.asarray(template_pts, dtype=np.float64)
    e = float(np.hypot(*(p[1] - p[0])))
    h, w = crop.shape[:2]
    x0 = max(0, math.floor(float(min(p[0, 0], p[1, 0])) - 0.5 * e))
    x1 = min(w, math.ceil(float(max(p[0, 0], p[1, 0])) + 0.5 * e))
    y0 = max(0, math.floor(float(min(p[0, 1], p[1, 1])) - 0.5 * e))
    y1 = min(h, math.ceil(float(p[3, 1]) + 0.25 * e))
    grey = np.asarray(crop[y0:y1, x0:x1], dtype=np.float32) @ np.array(
        [0.299, 0.587, 0.114], np.float32
    )
    s = SHARPNESS_EYE_PX / e if e > 0 else 1.0
    size = (max(3, round(grey.shape[1] * s)), max(3, round(grey.shape[0] * s)))
    interp = cv2.INTER_AREA if s < 1.0 else cv2.INTER_LINEAR
    small = np.asarray(cv2.resize(grey, size, interpolation=interp), dtype=np.float32)
    return laplacian_variance(small)


def face_quality(
    face: AlignedFace, areas: Sequence[float], template_pts: npt.NDArray[np.float32]
) -> FaceQuality:
    """The quality record of ``face``; ``areas``: box areas of every face in the photo."""
    det = face.detection
    kp = det.keypoints
    own = det.box.w * det.box.h
    others = sorted(areas, reverse=True)
    # The face itself is among the areas: drop one entry equal to it.
    for i, a in enumerate(others):
        if math.isclose(a, own, rel_tol=1e-6, abs_tol=1e-6):
            del others[i]
            break
    nxt = others[0] if others else 0.0
    return FaceQuality(
        face_px=float(min(det.box.w, det.box.h)),
        sharpness=face_sharpness(face.crop, template_pts),
        yaw=yaw_ratio(kp[0], kp[1], kp[2]),
        faces=len(areas),
        area_ratio=math.inf if nxt <= 0 else own / nxt,
    )


# -- the checks --------------------------------------------------------------------------
@dataclass(frozen=True)
class EnrolmentRules:
    """Limits of the enrolment checks (docs/calibration.md: how they were chosen).

    * ``min_face_px``: an enrolment face smaller than this is blown up to the
      embedder's crop and loses the detail that tells people apart.
    * ``min_sharpness``: variance of the Laplacian at 32 px between the eyes.
    * ``max_yaw``: |yaw ratio|: 0.5 puts the nose tip half an eye distance off the
      eye midline, a three-quarter view.
    * ``min_area_ratio``: the largest face must be this many times the area
      of the next to be taken as the subject.
    * ``outlier_frr``: a photo is an outlier when its nearest other photo of
      the person lies beyond the distance only this share of genuine pairs
      reaches (the calibration's genuine table).
    """

    min_face_px: float = 50.0
    min_sharpness: float = 35.0
    max_yaw: float = 0.50
    min_area_ratio: float = 2.0
    outlier_frr: float = 0.01


DEFAULT_RULES = EnrolmentRules()


@dataclass(frozen=True)
class Problem:
    """Why a photo is refused; ``forcible`` problems can be overridden with ``--force``."""

    reason: str
    forcible: bool


def face_problem(m: PhotoMeasure, rules: EnrolmentRules = DEFAULT_RULES) -> Problem | None:
    """Why the photo has no face to enrol, or None: no usable face, or several of similar size.

    The largest face is used when it is alone or at least ``min_area_ratio``
    times the area of the next. Neither problem can be forced: there is no
    face to use, or no way to know whose name it is.
    """
    if m.error or m.quality is None:
        return Problem(m.error or "no face found", False)
    q = m.quality
    if q.faces > 1 and q.area_ratio < rules.min_area_ratio:
        return Problem(
            f"{q.faces} faces found and the largest is only {q.area_ratio:.2f}x the area of the "
            f"next (need {rules.min_area_ratio:g}x to know whose photo it is)",
            False,
        )
    return None


def photo_problem(m: PhotoMeasure, rules: EnrolmentRules = DEFAULT_RULES) -> Problem | None:
    """The first reason to refuse an enrolment photo (:func:`face_problem`, then quality)."""
    face = face_problem(m, rules)
    if face is not None or m.quality is None:
        return face
    q = m.quality
    if q.face_px < rules.min_face_px:
        return Problem(
            f"face too small ({q.face_px:.0f} px, enrolment needs {rules.min_face_px:.0f} px)", True
        )
    if abs(q.yaw) > rules.max_yaw:
        return Problem(
            f"face turned too far (yaw {q.yaw:+.2f}, limit +-{rules.max_yaw:.2f}): use a photo "
            "looking at the camera",
            True,
        )
    if q.sharpness < rules.min_sharpness:
        return Problem(
            f"face too blurred (sharpness {q.sharpness:.1f}, need {rules.min_sharpness:g})", True
        )
    return None


def photo_note(m: PhotoMeasure) -> str:
    """What the user should know about a photo that is used (empty when nothing)."""
    q = m.quality
    if q is not None and q.faces > 1:
        return (
            f"used the largest of {q.faces} faces ({q.area_ratio:.1f}x the area of the next)"
            if math.isfinite(q.area_ratio)
            else f"used the largest of {q.faces} faces"
        )
    return ""


def outlier_distance(cal: Calibration, rules: EnrolmentRules = DEFAULT_RULES) -> float:
    """The distance beyond which two photos are unlikely to show one person.

    With a genuine (FRR) table: the distance that only ``rules.outlier_frr``
    (1%) of same-person pairs reach, so a real photo of the person is refused
    at most that often (less with more photos: only the nearest counts).
    A manifest without tables: the distance where the calibrated confidence
    ``p(genuine | d)`` falls to 5% (``midpoint + scale ln 19``). Never below
    the calibrated threshold: a pair closer than that is accepted as one
    person by the matcher, so calling it someone else would contradict it.
    (Not the threshold plus the margin: the margin is a gap between two
    enrolled people, it says nothing about whether two photos show one. For
    SFace on LFW that floor was 0.669, a distance that at most 0.2% of
    genuine pairs reach and 1% of impostor pairs stay under: it let photos
    of someone else join a person. docs/calibration.md has the measurements.)
    """
    q = None if cal.frr_table is None else genuine_quantile(cal.frr_table, rules.outlier_frr)
    d = cal.conf_midpoint + cal.conf_scale * math.log(19.0) if q is None else q
    return float(max(d, cal.threshold))


@dataclass(frozen=True)
class Outlier:
    """A photo refused as probably someone else."""

    index: int  # into the new photos
    nearest: float  # distance to the nearest photo it was compared with
    reason: str


def _components(adj: npt.NDArray[np.bool_]) -> list[list[int]]:
    """Connected components of an undirected graph given as a boolean adjacency matrix."""
    n = len(adj)
    seen = [False] * n
    out = []
    for s in range(n):
        if seen[s]:
            continue
        seen[s] = True
        stack, comp = [s], []
        while stack:
            v = stack.pop()
            comp.append(v)
            for u in np.flatnonzero(adj[v]):
                if not seen[u]:
                    seen[u] = True
                    stack.append(int(u))
        out.append(sorted(comp))
    return out


def consistency(
    new: npt.NDArray[np.float32], enrolled: npt.NDArray[np.float32], cutoff: float
) -> list[Outlier]:
    """The new photos that do not belong with the person's other photos.

    Two photos are *linked* when their cosine distance is below ``cutoff``.
    With photos already enrolled under the name, those are the reference: a
    new photo not linked (directly or through other new photos) to them is
    an outlier. Otherwise the photos must form a group: the largest linked
    group is kept when it holds more than half of them, the rest are
    outliers; with no such majority (two photos far apart, or two groups of
    equal size) every photo is reported, since we cannot tell which is right.
    """
    k = len(new)
    if k == 0:
        return []
    allv = np.vstack([enrolled, new]) if len(enrolled) else np.asarray(new)
    D = np.clip(1.0 - allv @ allv.T, 0.0, 2.0)
    np.fill_diagonal(D, np.inf)
    off = len(enrolled)
    comps = _components(np.less(D, cutoff))
    if off:
        keep = {v for c in comps if any(v < off for v in c) for v in c}
        ref = "the photos already enrolled"
    else:
        big = max(comps, key=len)
        majority = 2 * len(big) > k
        keep = set(big) if majority else set()
        ref = "this person's other photos"
    out = []
    for j in range(k):
        v = off + j
        if v in keep:
            continue
        near = float(np.min(D[v])) if len(allv) > 1 else math.inf
        if off == 0 and not keep:
            reason = (
                f"the photos do not agree on one person (nearest other photo at {near:.3f}, "
                f"same-person photos are closer than {cutoff:.3f})"
            )
        else:
            reason = (
                f"far from {ref} (nearest at {near:.3f}; same-person photos are closer than "
                f"{cutoff:.3f}): probably someone else"
            )
        out.append(Outlier(j, near, reason))
    return out


# -- look-alikes -------------------------------------------------------------------------
@dataclass(frozen=True)
class LookAlike:
    """Two enrolled people whose nearest photos are closer than the gallery's threshold."""

    a: str
    b: str
    distance: float  # the smallest distance between their photos
    threshold: float  # the gallery's threshold, which the distance is under
    far: float | None = None  # FAR(distance) from the calibration's FAR table (upper estimate)


def _one_in(far: float) -> str:
    """``far`` as "1 in N" words, N to two significant digits (``far`` in (0, 1])."""
    n = float(f"{1.0 / far:.2g}")
    return f"1 in {n:,.0f}" if n >= 10 else f"{100 * far:.0f}%"


def lookalike_message(la: LookAlike) -> str:
    """The one wording used by ``enroll`` and ``gallery list``."""
    rare = (
        ""
        if la.far is None or la.far <= 0.0
        else f" (at most {_one_in(la.far)} pairs of strangers are this close)"
    )
    return (
        f"look-alikes: {la.a!r} and {la.b!r} have photos {la.distance:.3f} apart{rare}, under "
        f"the door's threshold ({la.threshold:.3f}): a photo of one would be accepted as the "
        f"other (named as the other, or refused as unknown when both are close). If they are "
        f"the same person, keep one name; else enrol clearer, more varied photos of both"
    )


def lookalikes(
    names: Sequence[str],
    embeddings: npt.NDArray[np.float32],
    starts: npt.NDArray[np.intp],
    threshold: float,
    far_table: RateTable | None = None,
    only: str | None = None,
) -> list[LookAlike]:
    """Pairs of people (``gallery.matrix()`` layout) whose nearest photos are closer than ``t``.

    ``d`` is the smallest distance between any photo of one and any photo of
    the other (``min`` over both photo sets, as the matcher takes the nearest
    photo); a pair is a look-alike when ``d < t``, the gallery's threshold.
    With a FAR table that is the same as ``FAR(d) <= FAR(t)``: the pair is as
    close as the rarest stranger pairs the door is set to accept (the
    per-comparison rate of its gallery size), so a photo of one like the
    enrolled photo of the other would be named. Measured on LFW (66,795 pairs
    of different people, one photo each, docs/calibration.md): pairs between
    ``t`` and ``t`` plus the margin, which the rule before warned about, were
    never confused by the door, and warnings on different people fell from
    2.6% to 0.13% for a 4-photo gallery. ``far`` in each result is
    ``FAR(d)`` read from the table. With ``only``, just the pairs involving
    that person. Sorted by distance.
    """
    if len(names) < 2:
        return []
    E = np.asarray(embeddings, dtype=np.float32)
    D = np.clip(1.0 - E @ E.T, 0.0, 2.0)
    per = person_min_distances(D, starts)  # (embeddings, people)
    P = person_min_distances(per.T, starts).T  # (people, people)
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if only is not None and only not in (names[i], names[j]):
                continue
            d = float(P[i, j])
            if d < threshold:
                a, b = (names[i], names[j]) if names[j] != only else (names[j], names[i])
                far = None if far_table is None else far_at_threshold(far_table, d)
                out.append(LookAlike(a, b, d, threshold, far))
    return sorted(out, key=lambda la: la.distance)


# -- the whole decision ------------------------------------------------------------------
@dataclass(frozen=True)
class EnrolmentPlan:
    """What ``enroll`` will do: the embeddings to add, and every refusal, note and warning."""

    name: str
    accepted: list[int] = field(default_factory=list)  # indices into the photos
    embeddings: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((0, 0), np.float32)
    )
    refused: list[tuple[int, str]] = field(default_factory=list)
    notes: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)  # photos kept by --force
    lookalikes: list[LookAlike] = field(default_factory=list)
    point: OperatingPoint | None = None  # the gallery's operating point after enrolment


def plan_enrolment(
    name: str,
    photos: Sequence[PhotoMeasure],
    gallery_names: Sequence[str],
    gallery_embeddings: npt.NDArray[np.float32],
    gallery_starts: npt.NDArray[np.intp],
    calibration: Calibration,
    point_for: Callable[[int], OperatingPoint],
    rules: EnrolmentRules = DEFAULT_RULES,
    force: bool = False,
) -> EnrolmentPlan:
    """Decide which photos enrol ``name``; nothing is written here.

    ``gallery_*`` is the current gallery (``Gallery.matrix()``); ``point_for(M)``
    is the device's operating point for ``M`` enrolled embeddings (the
    recognizer's threshold-from-gallery-size rule), used for the look-alike
    check at the gallery size after this enrolment. With ``force``, quality
    and outlier refusals become warnings (no face, or several faces of
    similar size, are still refused).
    """
    screen = _screen_photos(photos, rules, force)
    ok = screen.ok
    dim = gallery_embeddings.shape[1] if gallery_embeddings.ndim == 2 else 0
    new = (
        np.stack([np.asarray(photos[i].embedding, np.float32) for i in ok])
        if ok
        else np.zeros((0, dim))
    )
    names = list(gallery_names)
    if name in names:
        mine = _person_block(names.index(name), gallery_embeddings, gallery_starts)
    else:
        mine = np.zeros((0, new.shape[1] if new.ndim == 2 else 0), np.float32)
    cutoff = outlier_distance(calibration, rules)
    drop: set[int] = set()
    for o in consistency(new.astype(np.float32), np.asarray(mine, np.float32), cutoff):
        if force:
            screen.warnings.append((ok[o.index], f"kept despite: {o.reason} (--force)"))
        else:
            screen.refused.append((ok[o.index], o.reason))
            drop.add(o.index)
    kept = [j for j in range(len(ok)) if j not in drop]
    accepted = [ok[j] for j in kept]
    emb = new[kept].astype(np.float32) if kept else np.zeros((0, new.shape[1]), np.float32)
    screen.refused.sort()
    plan = EnrolmentPlan(name, [], emb, screen.refused, screen.notes, screen.warnings)
    if not accepted:
        return plan
    looks, point = _lookalikes_after(
        name, names, gallery_embeddings, gallery_starts, mine, emb, calibration, point_for
    )
    return replace(plan, accepted=accepted, lookalikes=looks, point=point)


@dataclass
class _Screen:
    """Photos through the per-photo rules: kept (indices), refused, noted, warned."""

    ok: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    notes: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)


def _screen_photos(photos: Sequence[PhotoMeasure], rules: EnrolmentRules, force: bool) -> _Screen:
    """Each photo by itself (:func:`photo_problem`, :func:`photo_note`); ``force`` keeps
    the forcible refusals as warnings."""
    s = _Screen()
    for i, m in enumerate(photos):
        prob = photo_problem(m, rules)
        if prob is not None and not (force and prob.forcible):
            s.refused.append((i, prob.reason))
            continue
        if prob is not None:
            s.warnings.append((i, f"kept despite: {prob.reason} (--force)"))
        note = photo_note(m)
        if note:
            s.notes.append((i, note))
        s.ok.append(i)
    return s


def _person_block(
    i: int, embeddings: npt.NDArray[np.float32], starts: npt.NDArray[np.intp]
) -> npt.NDArray[np.float32]:
    """Person ``i``'s rows of a ``Gallery.matrix()`` layout."""
    end = starts[i + 1] if i + 1 < len(starts) else len(embeddings)
    return embeddings[starts[i] : end]


def _lookalikes_after(
    name: str,
    names: list[str],
    gallery_embeddings: npt.NDArray[np.float32],
    gallery_starts: npt.NDArray[np.intp],
    mine: npt.NDArray[np.float32],
    emb: npt.NDArray[np.float32],
    calibration: Calibration,
    point_for: Callable[[int], OperatingPoint],
) -> tuple[list[LookAlike], OperatingPoint]:
    """The gallery as it will be (this person's old and new photos against everyone else):
    the look-alikes of ``name`` at its operating point, and that point."""
    others = [n for n in names if n != name]
    blocks, starts, total = [], [], 0
    for n in others:
        b = _person_block(names.index(n), gallery_embeddings, gallery_starts)
        blocks.append(b)
        starts.append(total)
        total += len(b)
    mine_all = np.vstack([mine, emb]) if len(mine) else emb
    blocks.append(mine_all)
    starts.append(total)
    total += len(mine_all)
    point = point_for(total)
    looks = lookalikes(
        [*others, name],
        np.vstack(blocks),
        np.array(starts, np.intp),
        point.threshold,
        calibration.far_table,
        only=name,
    )
    return looks, point

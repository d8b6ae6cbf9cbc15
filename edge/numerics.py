"""Pure numerical functions of the pipeline, each with its formula.

No state, no I/O: everything here is tested directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.types import Match

FloatArray = npt.NDArray[np.floating]


def quantize(
    x: FloatArray, scale: float, zero_point: int, dtype: type = np.int8
) -> npt.NDArray[np.integer]:
    """Affine quantisation: ``q = clip(round(x / scale) + zero_point, qmin, qmax)``.

    ``qmin``/``qmax`` are the limits of ``dtype`` (-128..127 for int8,
    0..255 for uint8). This is TFLite's scheme for per-tensor parameters, and
    like TFLite (``std::round``) it rounds halves away from zero, not to even.
    """
    if scale <= 0:
        raise ValueError(f"quantisation scale must be positive, got {scale}")
    info = np.iinfo(dtype)
    y = np.asarray(x, dtype=np.float32) / np.float32(scale)
    q = np.sign(y) * np.floor(np.abs(y) + np.float32(0.5)) + zero_point
    out: npt.NDArray[np.integer] = np.clip(q, info.min, info.max).astype(dtype)
    return out


def dequantize(
    q: npt.NDArray[np.integer], scale: float, zero_point: int
) -> npt.NDArray[np.float32]:
    """Inverse of :func:`quantize`: ``x = scale * (q - zero_point)``."""
    x = np.float32(scale) * (np.asarray(q, dtype=np.float32) - np.float32(zero_point))
    return np.asarray(x, dtype=np.float32)


def l2_normalize(x: FloatArray, axis: int = -1, eps: float = 1e-10) -> npt.NDArray[np.float32]:
    """``x / max(||x||_2, eps)`` along ``axis`` (a zero vector stays zero)."""
    v = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.sum(v * v, axis=axis, keepdims=True))
    return np.asarray(v / np.maximum(norm, eps), dtype=np.float32)


def cosine_distance(a: FloatArray, b: FloatArray) -> npt.NDArray[np.float32]:
    """Cosine distance ``d = 1 - <a, b> / (||a|| ||b||)``, in [0, 2].

    ``a`` has shape (D,) or (N, D); ``b`` has shape (M, D). Returns shape (M,)
    or (N, M). For unit vectors ``||a - b||^2 = 2 d``.
    """
    an = l2_normalize(np.atleast_2d(a))
    bn = l2_normalize(np.atleast_2d(b))
    d = (1.0 - an @ bn.T).astype(np.float32)
    d = np.clip(d, 0.0, 2.0).astype(np.float32)
    return np.asarray(d[0] if np.ndim(a) == 1 else d, dtype=np.float32)


def person_min_distances(
    distances: FloatArray, person_starts: npt.NDArray[np.intp]
) -> npt.NDArray[np.float32]:
    """Per-person minimum over person-sorted distances (the last axis).

    ``distances[..., j]`` belongs to enrolled embedding j, grouped by person;
    ``person_starts[i]`` is the index of person i's first embedding. Returns
    ``min_{j in person i} distances[..., j]`` for each person (vectorised with
    ``np.minimum.reduceat``); a (faces, embeddings) matrix gives (faces, people).
    """
    d = np.asarray(distances, dtype=np.float32)
    return np.asarray(np.minimum.reduceat(d, person_starts, axis=-1), dtype=np.float32)


@dataclass(frozen=True)
class Confidence:
    """Calibrated confidence ``p(genuine | d) = 1 / (1 + exp((d - midpoint) / scale))``.

    A logistic curve in the distance: 0.5 at ``midpoint``, falling as ``d``
    grows; ``scale`` sets how quickly. ``tools.calibrate`` fits both on
    genuine/impostor distance distributions (logistic regression); before
    calibration the defaults put 0.5 at the threshold.
    """

    midpoint: float
    scale: float

    def __call__(self, distance: float) -> float:
        z = (distance - self.midpoint) / self.scale
        # Guard the exponent: float overflow far from the midpoint.
        z = max(-60.0, min(60.0, z))
        return 1.0 / (1.0 + math.exp(z))


def open_set_decision(
    names: list[str],
    person_distances: FloatArray,
    threshold: float,
    margin: float,
    confidence: Confidence,
) -> Match:
    """The open-set rule: name the nearest person only when it is close **and** clearly ahead.

    With ``d1`` the smallest per-person distance (person ``n1``) and ``d2`` the
    second smallest (None with one person enrolled)::

        name = n1   if d1 < threshold and (d2 is None or d2 - d1 >= margin)
        name = None otherwise ("unknown")

    ``confidence`` is the calibrated ``p(genuine | d1)``; for an unknown face it
    is still reported (how likely the nearest person it is *not* is 1 - it).
    """
    if len(names) == 0:
        return Match(
            name=None, distance=2.0, second_best_distance=None, confidence=0.0, nearest=None
        )
    pd = np.asarray(person_distances, dtype=np.float32)
    if len(pd) == 1:
        i1 = 0
        d2: float | None = None
    else:
        two = np.argpartition(pd, 1)[:2]
        i1, i2 = (two[0], two[1]) if pd[two[0]] <= pd[two[1]] else (two[1], two[0])
        d2 = float(pd[i2])
    d1 = float(pd[i1])
    accepted = d1 < threshold and (d2 is None or d2 - d1 >= margin)
    return Match(
        name=names[i1] if accepted else None,
        distance=d1,
        second_best_distance=d2,
        confidence=confidence(d1),
        nearest=names[i1],
    )


# -- enrolment quality -----------------------------------------------------------------
def laplacian_variance(gray: FloatArray) -> float:
    """Sharpness: the variance of the 4-neighbour Laplacian over the interior pixels.

    ``L(y, x) = g(y-1, x) + g(y+1, x) + g(y, x-1) + g(y, x+1) - 4 g(y, x)``
    (OpenCV's ``Laplacian`` with ``ksize=1``) for every pixel with all four
    neighbours, and ``var(L) = mean((L - mean L)^2)``. A sharp face has strong
    second derivatives at the eyes, nostrils and mouth; blur removes them, so
    the variance falls roughly with the fourth power of the blur width
    (Pech-Pacheco et al., 2000). Needs an image of at least 3 x 3 pixels.
    """
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] < 3 or g.shape[1] < 3:
        raise ValueError(f"laplacian_variance needs a 2-D image of 3x3 or more, got {g.shape}")
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def yaw_ratio(right_eye: FloatArray, left_eye: FloatArray, nose: FloatArray) -> float:
    """How far the head is turned: the nose's offset along the eye axis, per eye distance.

    With ``u = left_eye - right_eye`` (the eye axis, in pixels) and
    ``c = (right_eye + left_eye) / 2``::

        yaw = <nose - c, u> / |u|^2

    0 for a frontal face (the nose tip below the eye midpoint, whatever the
    in-plane rotation); its sign says which way the head is turned. For a
    head turned by an angle ``a`` it grows like ``k tan(a)`` (the eyes come
    together as ``cos a``, the nose tip moves sideways as ``sin a``), ``k``
    being the depth of the nose tip in front of the eyes per eye distance
    (roughly 0.5-0.7 for adults, so 0.5 is a three-quarter view of some 35-45
    degrees). Coincident eyes give ``inf``.
    """
    r = np.asarray(right_eye, dtype=np.float64)
    u = np.asarray(left_eye, dtype=np.float64) - r
    uu = float(u @ u)
    if uu <= 0.0:
        return math.inf
    c = r + 0.5 * u
    return float((np.asarray(nose, dtype=np.float64) - c) @ u / uu)


def pitch_ratio(
    right_eye: FloatArray, left_eye: FloatArray, nose: FloatArray, mouth: FloatArray
) -> float:
    """How far the head is tilted up or down: the nose tip's drop below the eyes per the mouth's.

    With ``c`` the eye midpoint, ``u = left_eye - right_eye`` and ``v`` the
    eye axis turned by +90 degrees (``(-u_y, u_x)``: towards the mouth in an
    upright image)::

        pitch = <nose - c, v> / <mouth - c, v>

    The eyes and the mouth lie roughly in one plane and the nose tip stands
    out of it by a depth ``D``; tilting the head by ``p`` (chin up) moves the
    nose tip's projection up by ``D sin p`` while the plane's heights shrink
    by ``cos p``, so ``pitch ~ pitch_0 - (D / m) tan p``: smaller looking up,
    larger looking down, independent of in-plane rotation and of scale.
    ``pitch_0`` (straight at the camera) differs from face to face, so camera
    enrolment compares a frame with the same person's straight frames, not
    with a constant. A mouth on the eye line gives ``nan``.
    """
    r = np.asarray(right_eye, dtype=np.float64)
    u = np.asarray(left_eye, dtype=np.float64) - r
    v = np.array([-u[1], u[0]])
    c = r + 0.5 * u
    m = float((np.asarray(mouth, dtype=np.float64) - c) @ v)
    if m == 0.0:
        return math.nan
    return float((np.asarray(nose, dtype=np.float64) - c) @ v / m)

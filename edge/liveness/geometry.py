"""Pure numerics of the liveness cues: homographies, planar parallax, eye opening.

A flat prop (paper, screen) moved in front of a pinhole camera moves in the
image by one homography ``x' ~ H x``; a live head, which is not flat, does
not: a point off the face's best plane moves by the homography plus a
*parallax* proportional to how far off the plane it is. These functions fit
the homography, measure what it leaves and test whether that residual
follows the face's depth (parallax) or is noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike


def _hartley(p: F64) -> F64:
    """The similarity that moves points to mean 0 and mean distance sqrt(2) (Hartley's)."""
    mu = p.mean(0)
    d = float(np.sqrt(((p - mu) ** 2).sum(1)).mean())
    s = math.sqrt(2) / d if d > 1e-12 else 1.0
    return np.array([[s, 0, -s * mu[0]], [0, s, -s * mu[1]], [0, 0, 1.0]])


def fit_homography(src: ArrayLike, dst: ArrayLike, weights: ArrayLike | None = None) -> F64:
    """The 3x3 homography ``H`` (``H[2, 2] = 1``) minimising the algebraic error of ``dst ~ H src``.

    The normalised direct linear transform: both point sets are moved by
    Hartley's normalisation ``T`` (mean 0, mean distance sqrt(2)); each pair
    gives two rows of ``A h = 0``::

        [ x  y  1  0  0  0  -x'x  -x'y  -x' ]
        [ 0  0  0  x  y  1  -y'x  -y'y  -y' ]

    (times ``sqrt(w)`` when weighted); ``h`` is the right singular vector of
    the smallest singular value, and ``H = T'^-1 Hn T``. Needs 4 points in
    general position; raises ``ValueError`` with fewer.
    """
    s = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(s) < 4 or len(s) != len(d):
        raise ValueError(f"a homography needs >= 4 point pairs, got {len(s)} and {len(d)}")
    ts, td = _hartley(s), _hartley(d)
    sn = s @ ts[:2, :2].T + ts[:2, 2]
    dn = d @ td[:2, :2].T + td[:2, 2]
    n = len(s)
    a = np.zeros((2 * n, 9))
    x, y, u, v = sn[:, 0], sn[:, 1], dn[:, 0], dn[:, 1]
    a[0::2, 0], a[0::2, 1], a[0::2, 2] = x, y, 1
    a[0::2, 6], a[0::2, 7], a[0::2, 8] = -u * x, -u * y, -u
    a[1::2, 3], a[1::2, 4], a[1::2, 5] = x, y, 1
    a[1::2, 6], a[1::2, 7], a[1::2, 8] = -v * x, -v * y, -v
    if weights is not None:
        w = np.sqrt(np.repeat(np.asarray(weights, dtype=np.float64).reshape(-1), 2))
        a *= w[:, None]
    _, _, vt = np.linalg.svd(a, full_matrices=False)
    hn = vt[-1].reshape(3, 3)
    h = np.linalg.inv(td) @ hn @ ts
    if abs(h[2, 2]) < 1e-15:
        raise ValueError("degenerate homography (points collinear?)")
    return np.asarray(h / h[2, 2], dtype=np.float64)


def apply_homography(h: ArrayLike, pts: ArrayLike) -> F64:
    """``H x`` for points (N, 2), divided through by the third coordinate."""
    m = np.asarray(h, dtype=np.float64)
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    q = p @ m[:, :2].T + m[:, 2]
    return np.asarray(q[:, :2] / q[:, 2:3], dtype=np.float64)


def homography_residuals(src: ArrayLike, dst: ArrayLike, h: ArrayLike) -> F64:
    """The transfer error ``|dst_i - H src_i|`` of each point (pixels)."""
    d = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    return np.asarray(np.linalg.norm(d - apply_homography(h, src), axis=1), dtype=np.float64)


def planar_residual(src: ArrayLike, dst: ArrayLike, scale: float) -> float:
    """The RMS transfer error of the best homography, as a fraction of ``scale`` (face width).

    ``sqrt(mean_i |dst_i - H src_i|^2) / scale`` with ``H`` from
    :func:`fit_homography`: 0 for points of a plane seen from anywhere, more
    for a 3-D point set that turned.
    """
    h = fit_homography(src, dst)
    r = homography_residuals(src, dst, h)
    return float(np.sqrt(np.mean(r**2)) / scale)


@dataclass(frozen=True)
class Parallax:
    """What a homography leaves of a face's motion, tested against the face's depth.

    ``angle``: the parallax as an out-of-plane turn, in radians: the
    residual per pixel of depth off the face's best plane (a head turned by
    a small angle ``a`` moves a point ``d`` pixels off that plane by ``a d``
    against it). ``t2``: its squared significance against the residual noise
    (chi-square with 2 degrees of freedom for a flat face). ``z_front`` and
    ``z_back``: the significance of the parallax along the fitted direction
    (``direction``: the unit vector of ``v``; points behind the plane move along
    it, nearer ones against it)
    measured from the points in front of the plane alone and from those
    behind it alone: a turning head moves both (nose and cheeks, in opposite
    senses), while something local (a glare, a smudge of moire) shows on one
    side only. ``noise``: the residual's robust standard deviation (pixels);
    ``n``: points used.
    """

    angle: float
    t2: float
    z_front: float
    z_back: float
    noise: float
    n: int
    direction: tuple[float, float] = (0.0, 0.0)  # unit vector of v, in image axes

    @property
    def z_both(self) -> float:
        """The weaker side's significance: parallax that both sides of the face show."""
        return min(self.z_front, self.z_back)


NO_PARALLAX = Parallax(0.0, 0.0, 0.0, 0.0, 0.0, 0)


def relative_depth(xy: ArrayLike, z: ArrayLike) -> F64:
    """Depth off the best plane through the points: ``z - (a + b x + c y)`` (least squares).

    A homography absorbs whatever parallax is linear in the image position
    (a tilted plane); only this part of the depth can show against it.
    """
    p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    zz = np.asarray(z, dtype=np.float64).reshape(-1)
    a = np.column_stack([np.ones(len(p)), p])
    coef, *_ = np.linalg.lstsq(a, zz, rcond=None)
    return np.asarray(zz - a @ coef, dtype=np.float64)


def robust_sigma(x: ArrayLike) -> float:
    """``1.4826 * median(|x - median(x)|)``: the standard deviation, for Gaussian ``x``."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(a - np.median(a))))


def plane_parallax(
    src: ArrayLike, dst: ArrayLike, depth: ArrayLike, iterations: int = 3
) -> Parallax:
    """Fit ``dst_i = H(src_i) + g_i v`` and test ``v``: does the motion follow the face's depth?

    ``g_i`` is each point's depth off the best plane through the points
    (:func:`relative_depth`, in the pixels of ``depth``). For small motions
    the "plane plus parallax" decomposition holds: a homography for the
    reference plane plus a residual along one direction, proportional to the
    depth off that plane, ``g_i v`` with ``|v|`` the out-of-plane turn in
    radians. Alternating ``H`` (fitted to ``dst - g v``) and
    ``v = sum g_i r_i / sum g_i^2`` (``r``: the homography's residual), with
    points beyond 3 robust standard deviations dropped each round; then the
    noise ``sigma`` per axis is taken robustly from what remains
    (:func:`robust_sigma`) and ``t2 = |v|^2 sum g_i^2 / sigma^2``, chi-square
    with 2 degrees of freedom on a flat prop. ``z_front``/``z_back``: the
    same parallax, along ``u = v / |v|``, measured from the front and back
    thirds of the points alone against the middle third (:func:`_split_test`).
    """
    s = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(s) < 8:
        return NO_PARALLAX
    g = relative_depth(s, depth)
    if float(np.sqrt(np.mean(g**2))) <= 1e-9:
        return NO_PARALLAX
    keep = np.ones(len(s), dtype=bool)
    v = np.zeros(2)
    sigma = 0.0
    r = np.zeros_like(d)
    for _ in range(max(1, iterations)):
        h = fit_homography(s[keep], d[keep] - g[keep, None] * v)
        r = d - apply_homography(h, s)
        gk = g[keep]
        v = (gk[:, None] * r[keep]).sum(0) / max(float((gk**2).sum()), 1e-12)
        e = r - g[:, None] * v
        sigma = max(robust_sigma(e[keep, 0]), robust_sigma(e[keep, 1]), 1e-3)
        new = np.linalg.norm(e, axis=1) <= 3.0 * math.sqrt(2) * sigma
        if new.sum() < 8:
            break
        keep = new
    gk = g[keep]
    t2 = float((v**2).sum() * (gk**2).sum() / sigma**2)
    norm = float(np.linalg.norm(v))
    u = v / norm if norm > 0 else np.array([1.0, 0.0])
    zs = _split_test(s[keep], d[keep], g[keep], u, sigma)
    return Parallax(norm, t2, zs[0], zs[1], sigma, int(keep.sum()), (float(u[0]), float(u[1])))


def _split_test(s: F64, d: F64, g: F64, u: F64, sigma: float) -> tuple[float, float]:
    """The parallax along ``u`` seen by the front and by the back third of the points alone.

    A homography is fitted to the middle third (the points nearest the
    face's plane) only, so a disturbance of the front points (a glare on the
    nose) cannot leak into the back points' residuals through a shared fit.
    Each outer third's residual ``r`` against it is projected on ``u`` and
    summed with the depth off the middle third's plane, ``g'``:
    ``z = sum g' (u . r) / (sigma sqrt(sum g'^2))``.
    """
    lo, hi = np.quantile(g, [1 / 3, 2 / 3])
    mid, front, back = (g >= lo) & (g <= hi), g < lo, g > hi
    if mid.sum() < 6 or front.sum() < 3 or back.sum() < 3:
        return 0.0, 0.0
    try:
        h = fit_homography(s[mid], d[mid])
    except (ValueError, np.linalg.LinAlgError):
        return 0.0, 0.0
    a = np.column_stack([np.ones(int(mid.sum())), s[mid]])
    coef, *_ = np.linalg.lstsq(a, g[mid], rcond=None)
    gp = g - np.column_stack([np.ones(len(s)), s]) @ coef
    r = (d - apply_homography(h, s)) @ u
    out = []
    for side in (front, back):
        ss = float(np.sqrt((gp[side] ** 2).sum()))
        out.append(float((gp[side] * r[side]).sum() / (sigma * ss)) if ss > 0 else 0.0)
    return out[0], out[1]


# -- eyes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Eye:
    """An eye's MediaPipe face mesh indices: its corners and three upper/lower lid pairs."""

    outer: int
    inner: int
    upper: tuple[int, int, int]
    lower: tuple[int, int, int]


# The subject's right eye is on the image's left.
RIGHT_EYE = Eye(33, 133, (160, 159, 158), (144, 145, 153))
LEFT_EYE = Eye(263, 362, (385, 386, 387), (380, 374, 373))
# A vertical reference that no blink moves: the eyes' corners to the mouth's corners.
MOUTH_CORNERS = (61, 291)


def eye_aspect_ratio(points: ArrayLike, eye: Eye = RIGHT_EYE) -> float:
    """Soukupova and Cech's eye aspect ratio from mesh landmarks.

    ``EAR = (|p2 - p6| + |p3 - p5| + |p4 - p7|) / (3 |p1 - p4|)`` generalised
    to three lid pairs: the mean distance between the upper and lower lid
    landmarks over the distance between the eye's corners. Open eyes give
    ~0.25-0.35, closed ones under ~0.1. It is not invariant to a tilt of a
    print: turning a photo about its horizontal axis shrinks the lid
    distances by ``cos(tilt)`` and leaves the eye's width.
    """
    p = np.asarray(points, dtype=np.float64)[:, :2]
    up, lo = p[list(eye.upper)], p[list(eye.lower)]
    width = float(np.linalg.norm(p[eye.outer] - p[eye.inner]))
    if width <= 0:
        return 0.0
    return float(np.linalg.norm(up - lo, axis=1).mean() / width)


def eye_opening(points: ArrayLike) -> tuple[float, float]:
    """Each eye's lid gap over the eye-to-mouth height, both measured across the eye line.

    For each eye: ``o = mean |(up_k - lo_k) . n| / |(m - c) . n|`` where ``n``
    is the unit normal of the line through the two eyes' outer corners,
    ``up_k``/``lo_k`` the lid landmark pairs, ``c`` the eye's centre (mean of
    its corners) and ``m`` the mouth's centre (mean of its corners). Both
    lengths run along the same direction, so their ratio is unchanged by any
    affine map of the face, and so nearly unchanged when a print or a screen
    tilts (unlike :func:`eye_aspect_ratio`). Returns ``(right, left)``.
    """
    p = np.asarray(points, dtype=np.float64)[:, :2]
    axis = p[LEFT_EYE.outer] - p[RIGHT_EYE.outer]
    norm = float(np.linalg.norm(axis))
    if norm <= 0:
        return 0.0, 0.0
    n = np.array([-axis[1], axis[0]]) / norm
    mouth = p[list(MOUTH_CORNERS)].mean(0)
    out = []
    for e in (RIGHT_EYE, LEFT_EYE):
        gap = float(np.abs((p[list(e.upper)] - p[list(e.lower)]) @ n).mean())
        centre = (p[e.outer] + p[e.inner]) / 2
        height = abs(float((mouth - centre) @ n))
        out.append(float(gap / height) if height > 0 else 0.0)
    return out[0], out[1]


__all__ = [
    "LEFT_EYE",
    "RIGHT_EYE",
    "Eye",
    "Parallax",
    "apply_homography",
    "eye_aspect_ratio",
    "eye_opening",
    "fit_homography",
    "homography_residuals",
    "planar_residual",
    "plane_parallax",
    "relative_depth",
    "robust_sigma",
]

"""Liveness numerics on exact synthetic data: homographies, planar parallax, eyes, blinks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.liveness.blink import find_blinks
from edge.liveness.geometry import (
    LEFT_EYE,
    RIGHT_EYE,
    apply_homography,
    eye_aspect_ratio,
    eye_opening,
    fit_homography,
    homography_residuals,
    planar_residual,
    plane_parallax,
    relative_depth,
    robust_sigma,
)

FOCAL = 500.0
DISTANCE = 600.0  # mm: a face 140 mm wide is ~117 px


def rot(pitch: float, yaw: float, roll: float) -> np.ndarray:
    cx, sx = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    cz, sz = math.cos(roll), math.sin(roll)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def project(p: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    x = p @ r.T + t
    return FOCAL * x[:, :2] / x[:, 2:3]


def face_points(n: int = 150, seed: int = 0, flat: bool = False) -> np.ndarray:
    """A face-like 3-D point set in mm: 140 x 180 mm, the nose 30 mm out, cheeks curving back."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-70, 70, n), rng.uniform(-90, 90, n)
    z = -30 * np.exp(-(x**2 + y**2) / (2 * 25**2)) + 0.004 * x**2
    return np.stack([x, y, np.zeros(n) if flat else z], axis=1)


T = np.array([0.0, 0.0, DISTANCE])


def test_homography_of_a_plane_is_exact_and_recovered() -> None:
    pts = face_points(flat=True)
    a = project(pts, np.eye(3), T)
    b = project(pts, rot(0.1, 0.2, 0.05), T + np.array([10.0, -5.0, 30.0]))
    h = fit_homography(a, b)
    assert np.abs(apply_homography(h, a) - b).max() < 1e-6
    assert homography_residuals(a, b, h).max() < 1e-6


def test_planar_residual_plane_is_zero_turned_head_is_not() -> None:
    """The issue's test: a plane gives ~0, a 3-D point set turned by 5 degrees does not."""
    width = 140 * FOCAL / DISTANCE
    flat, head = face_points(flat=True), face_points()
    for pts, expect_flat in ((flat, True), (head, False)):
        a = project(pts, np.eye(3), T)
        b = project(pts, rot(0.0, math.radians(5), 0.0), T)
        r = planar_residual(a, b, width)
        if expect_flat:
            assert r < 1e-9
        else:
            assert r > 0.003  # ~0.7% of the face width


def test_plane_parallax_measures_the_turn_of_a_head_and_nothing_on_a_print() -> None:
    rng = np.random.default_rng(1)
    head = face_points()
    depth_px = head[:, 2] * FOCAL / DISTANCE  # the mesh's depth, in pixels
    for deg in (1.0, 3.0, 5.0):
        a = project(head, np.eye(3), T) + rng.normal(0, 0.2, (len(head), 2))
        b = project(head, rot(0.0, math.radians(deg), 0.0), T) + rng.normal(0, 0.2, (len(head), 2))
        p = plane_parallax(a, b, depth_px)
        assert math.degrees(p.angle) == pytest.approx(deg, rel=0.35)
        if deg >= 3:  # 1 degree is near what 0.2 px of noise resolves on the cheeks' side
            assert p.z_front > 4 and p.z_back > 4
    # A print turned 5 degrees, with the mesh's (face-shaped) depth: no parallax.
    flat = face_points(flat=True)
    angles, z = [], []
    for _ in range(200):
        a = project(flat, np.eye(3), T) + rng.normal(0, 0.2, (len(flat), 2))
        b = project(flat, rot(0.05, math.radians(5), 0.02), T + np.array([5.0, 3.0, 0.0]))
        p = plane_parallax(a, b + rng.normal(0, 0.2, b.shape), depth_px)
        angles.append(math.degrees(p.angle))
        z.append(p.z_both)
    assert np.percentile(angles, 99) < 0.6
    assert max(z) < 4.0


def test_parallax_on_one_side_only_is_not_both_sided() -> None:
    """A local disturbance (a glare over the nose) moves the front points only."""
    rng = np.random.default_rng(2)
    flat = face_points(flat=True)
    depth_px = face_points()[:, 2] * FOCAL / DISTANCE
    a = project(flat, np.eye(3), T) + rng.normal(0, 0.2, (len(flat), 2))
    b = project(flat, rot(0.0, 0.05, 0.0), T) + rng.normal(0, 0.2, (len(flat), 2))
    g = relative_depth(a, depth_px)
    b[g < np.percentile(g, 15)] += [1.5, 0.0]  # the nose's points dragged sideways
    p = plane_parallax(a, b, depth_px)
    assert p.z_front > 4 > p.z_back


def test_relative_depth_removes_any_plane() -> None:
    xy = np.random.default_rng(3).uniform(-50, 50, (40, 2))
    z = 3.0 + 0.2 * xy[:, 0] - 0.7 * xy[:, 1]
    assert np.abs(relative_depth(xy, z)).max() < 1e-9


def test_robust_sigma_of_gaussian_noise() -> None:
    x = np.random.default_rng(4).normal(0, 2.0, 20000)
    x[:500] = 1e6  # outliers do not move it
    assert robust_sigma(x) == pytest.approx(2.0, rel=0.05)


def test_homography_needs_four_points() -> None:
    with pytest.raises(ValueError, match="4 point pairs"):
        fit_homography(np.zeros((3, 2)), np.zeros((3, 2)))


def _eye_mesh(gap: float, tilt: float = 0.0) -> np.ndarray:
    """468 mesh points with eyes 30 px wide, lids ``gap`` px apart, mouth 60 px below.

    ``tilt``: the vertical foreshortening of a print turned about its horizontal
    axis (y scaled by cos(tilt)).
    """
    pts = np.zeros((468, 3))
    for e, cx in ((RIGHT_EYE, -40.0), (LEFT_EYE, 40.0)):
        outer = cx - 15 if cx < 0 else cx + 15
        inner = cx + 15 if cx < 0 else cx - 15
        pts[e.outer, :2] = (outer, 0)
        pts[e.inner, :2] = (inner, 0)
        for k, (u, lo) in enumerate(zip(e.upper, e.lower, strict=True)):
            x = cx - 7.5 + 7.5 * k
            pts[u, :2] = (x, -gap / 2)
            pts[lo, :2] = (x, gap / 2)
    pts[61, :2] = (-25, 60)
    pts[291, :2] = (25, 60)
    pts[:, 1] *= math.cos(tilt)
    return pts


def test_eye_aspect_ratio_on_known_points() -> None:
    pts = _eye_mesh(gap=9.0)
    assert eye_aspect_ratio(pts, RIGHT_EYE) == pytest.approx(9.0 / 30.0)
    assert eye_aspect_ratio(pts, LEFT_EYE) == pytest.approx(9.0 / 30.0)
    assert eye_aspect_ratio(_eye_mesh(gap=1.5)) == pytest.approx(1.5 / 30.0)


def test_eye_opening_is_blind_to_a_tilted_print_unlike_ear() -> None:
    level, tilted = _eye_mesh(9.0), _eye_mesh(9.0, tilt=math.radians(40))
    assert eye_aspect_ratio(tilted) == pytest.approx(
        eye_aspect_ratio(level) * math.cos(0.698), rel=1e-3
    )
    assert eye_opening(tilted) == pytest.approx(eye_opening(level))
    assert eye_opening(level)[0] == pytest.approx(9.0 / 60.0)


def test_blinks_need_both_eyes_down_and_back_up() -> None:
    t = np.arange(40) / 10.0
    open_ = np.full(40, 0.15)
    right, left = open_.copy(), open_.copy()
    right[20:22] = left[20:22] = 0.03  # both close for 0.2 s
    got = find_blinks(t, right, left)
    assert len(got) == 1 and got[0].t_closed == pytest.approx(2.0)
    one_eye = open_.copy()
    one_eye[20:22] = 0.03
    assert find_blinks(t, one_eye, open_) == []  # a wink or a smear of one eye
    closed = open_.copy()
    closed[20:] = 0.03
    assert find_blinks(t, closed, closed) == []  # eyes that stay shut

"""Texture motion around one face: KLT points from a keyframe, and what their motion says.

A *window* starts at a keyframe: corners are picked (Shi-Tomasi) inside the
face (the mesh's hull) and in a context region around it, each face point
gets the mesh's depth there, each context point its position in face
widths, in the face's own axes. Every later frame moves the points with
pyramidal Lucas-Kanade (frame to frame, so each step is small), keeping a
point only while its forward-backward error stays under
:data:`FB_MAX_PX`. When the window is long enough (or has lost too many face
points) it is *measured* (:func:`measure`) and a new one starts:

* the face's homography ``H`` (its motion if it were flat) and how far it
  moved the face (``motion``, in face widths);
* planar parallax (:func:`edge.liveness.geometry.plane_parallax`): what
  ``H`` leaves, tested against the face's depth;
* context: each context point where the face's motion and a still
  background predict positions far enough apart (``|H p - p|`` at least
  :data:`CONTEXT_MIN_SEP_PX`) is called *with the face* (within a third of
  that distance of ``H p``), *still* (within a third of it of ``p``) or
  *other*. Counted separately beyond the head (where nothing of a live
  person but a hat moves exactly with the face) and near it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.liveness.geometry import (
    NO_PARALLAX,
    Parallax,
    apply_homography,
    fit_homography,
    plane_parallax,
)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Gray = npt.NDArray[np.uint8]

FB_MAX_PX = 0.7
"""A point whose forward-backward LK error exceeds this is dropped (KLT on
good corners: ~0.05-0.2 px; occlusions and motion blur: pixels)."""
CONTEXT_MIN_SEP_PX = 1.0
"""A context point says something only where "moves with the face" and
"stands still" put it at least this far apart (several times the KLT noise)."""
LK_WIN = 15
LK_LEVELS = 3
# The context region around the face, in face widths from the face's centre
# (face axes: x along the eye line, y towards the chin).
CONTEXT_X = 1.8
CONTEXT_UP = 2.0
CONTEXT_DOWN = 1.2
# The head, hair included, as an ellipse in face widths: half-width, up, down.
# A head is ~1.1 face widths broad and the crown ~1 face width above the
# face's centre; hair adds a little. Beyond it, only a prop moves with the face.
HEAD_X = 0.95
HEAD_UP = 1.45
HEAD_DOWN = 0.9
# Below the chin, neck and shoulders move with the body, not the head: not counted.
CHIN_Y = 0.55


@dataclass(frozen=True)
class ContextCount:
    """Context points in one zone: how many moved with the face, stood still or neither."""

    with_face: int = 0
    still: int = 0
    other: int = 0

    @property
    def informative(self) -> int:
        return self.with_face + self.still + self.other

    @property
    def with_face_share(self) -> float:
        n = self.informative
        return self.with_face / n if n else 0.0


@dataclass(frozen=True)
class Window:
    """What one keyframe window measured (see the module docstring)."""

    t0: float
    t1: float
    face_width: float  # pixels
    face_points: int
    motion: float  # face widths the face's homography moved the face, on average
    parallax: Parallax
    beyond: ContextCount  # beyond the head
    near: ContextCount  # around the head, above the chin
    mesh: Parallax = NO_PARALLAX  # the same test on the mesh's own landmarks, first to last frame

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


def face_axes(points: F32) -> tuple[F64, float, F64]:
    """The face's centre, width (cheek to cheek, landmarks 234-454) and unit x axis (eye line)."""
    p = points[:, :2].astype(np.float64)
    centre = p.mean(0)
    width = float(np.linalg.norm(p[454] - p[234]))
    axis = p[263] - p[33]
    n = float(np.linalg.norm(axis))
    ux = axis / n if n > 0 else np.array([1.0, 0.0])
    return centre, width, ux


def to_face_frame(pts: F64, centre: F64, width: float, ux: F64) -> F64:
    """Points in face widths from the centre, x along the eye line, y towards the chin."""
    uy = np.array([-ux[1], ux[0]])
    d = (pts - centre) / max(width, 1e-6)
    return np.column_stack([d @ ux, d @ uy])


def zones(rel: F64) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Context points beyond the head and near it (both above the chin line)."""
    x, y = rel[:, 0], rel[:, 1]
    b = np.where(y < 0, HEAD_UP, HEAD_DOWN)
    inside = (x / HEAD_X) ** 2 + (y / b) ** 2 <= 1.0
    above_chin = y < CHIN_Y
    return (~inside) & above_chin, inside & above_chin


def _depth_at(pts: F64, mesh: F32) -> F64:
    """The mesh's depth at each point: inverse-distance mean of the 3 nearest landmarks."""
    d = np.linalg.norm(pts[:, None, :] - mesh[None, :, :2].astype(np.float64), axis=2)
    idx = np.argsort(d, axis=1)[:, :3]
    w = 1.0 / (np.take_along_axis(d, idx, axis=1) + 1.0)
    return np.asarray((mesh[idx, 2] * w).sum(1) / w.sum(1), dtype=np.float64)


class PointWindow:
    """KLT points of one face from a keyframe on: :meth:`step` per frame, then :meth:`measure`."""

    def __init__(self, gray: Gray, mesh: F32, t: float, max_face: int = 120,
                 max_context: int = 200) -> None:  # fmt: skip
        import cv2

        self.t0 = self.t1 = t
        centre, width, ux = face_axes(mesh)
        self.width = width
        h, w = gray.shape[:2]
        # The region: the context box around the face (axis-aligned hull of it).
        reach = max(CONTEXT_X, CONTEXT_UP) * width
        x0, x1 = int(max(0, centre[0] - reach)), int(min(w, centre[0] + reach + 1))
        y0, y1 = int(max(0, centre[1] - reach)), int(min(h, centre[1] + reach + 1))
        self.box = (x0, y0, x1, y1)
        crop = gray[y0:y1, x0:x1]
        face_mask = np.zeros(crop.shape, np.uint8)
        hull = cv2.convexHull(np.asarray(mesh[:, :2] - np.array([x0, y0], np.float32), np.float32))
        cv2.fillConvexPoly(face_mask, hull.astype(np.int32), 255)
        spacing = max(3, round(width / 25))
        block = 5 if width < 150 else 7
        pf = cv2.goodFeaturesToTrack(crop, max_face, 0.005, spacing, mask=face_mask,
                                     blockSize=block)  # fmt: skip
        ctx_mask = np.full(crop.shape, 255, np.uint8)
        grown = cv2.dilate(face_mask, np.ones((2 * spacing + 1, 2 * spacing + 1), np.uint8))
        ctx_mask[grown > 0] = 0
        pc = cv2.goodFeaturesToTrack(crop, max_context, 0.01, spacing, mask=ctx_mask,
                                     blockSize=block)  # fmt: skip
        pf = np.zeros((0, 2), np.float32) if pf is None else pf.reshape(-1, 2)
        pc = np.zeros((0, 2), np.float32) if pc is None else pc.reshape(-1, 2)
        off = np.array([x0, y0], dtype=np.float32)
        self.p0 = np.concatenate([pf, pc]).astype(np.float32) + off
        self.is_face = np.r_[np.ones(len(pf), bool), np.zeros(len(pc), bool)]
        self.p = self.p0.copy()
        self.alive = np.ones(len(self.p0), bool)
        p64 = self.p0.astype(np.float64)
        self.depth = _depth_at(p64, mesh) if len(p64) else np.zeros(0)
        rel = to_face_frame(p64, centre, width, ux)
        rel_ok = (np.abs(rel[:, 0]) <= CONTEXT_X) & (rel[:, 1] >= -CONTEXT_UP)
        rel_ok &= rel[:, 1] <= CONTEXT_DOWN
        self.alive &= rel_ok | self.is_face
        self.beyond, self.near = zones(rel)
        self.gray = gray
        self.steps = 0
        self.mesh0 = mesh
        self.mesh1 = mesh

    @property
    def face_alive(self) -> int:
        return int((self.alive & self.is_face).sum())

    @property
    def face_total(self) -> int:
        return int(self.is_face.sum())

    def step(self, gray: Gray, t: float, mesh: F32 | None = None) -> None:
        """Move the live points from the previous frame to ``gray`` (forward-backward checked).

        ``mesh``: this frame's landmarks (the window's mesh test compares the
        first and the last).
        """
        import cv2

        if mesh is not None:
            self.mesh1 = mesh
        idx = np.flatnonzero(self.alive)
        self.t1 = t
        self.steps += 1
        if len(idx) == 0:
            self.gray = gray
            return
        prev, pts = self.gray, self.p[idx].reshape(-1, 1, 2)
        crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)
        win = (LK_WIN, LK_WIN)
        # Both frames cropped to the points' neighbourhood: pyramids of a small
        # image, not of the whole frame, for every face.
        h, w = gray.shape[:2]
        lo = np.floor(pts.reshape(-1, 2).min(0)) - 4 * LK_WIN * 2
        hi = np.ceil(pts.reshape(-1, 2).max(0)) + 4 * LK_WIN * 2
        x0, y0 = int(max(0, lo[0])), int(max(0, lo[1]))
        x1, y1 = int(min(w, hi[0])), int(min(h, hi[1]))
        off = np.array([x0, y0], dtype=np.float32)
        a, b = prev[y0:y1, x0:x1], gray[y0:y1, x0:x1]
        start = np.asarray(pts - off, dtype=np.float32)
        fwd, st1, _ = cv2.calcOpticalFlowPyrLK(
            a, b, start, None, winSize=win, maxLevel=LK_LEVELS, criteria=crit
        )
        back, st2, _ = cv2.calcOpticalFlowPyrLK(
            b, a, fwd, None, winSize=win, maxLevel=LK_LEVELS, criteria=crit
        )
        fwd, back = np.asarray(fwd, dtype=np.float32), np.asarray(back, dtype=np.float32)
        st1, st2 = np.asarray(st1), np.asarray(st2)
        fb = np.linalg.norm((back - start).reshape(-1, 2), axis=1)
        ok = (st1.reshape(-1) == 1) & (st2.reshape(-1) == 1) & (fb <= FB_MAX_PX)
        self.p[idx] = (fwd.reshape(-1, 2) + off).astype(np.float32)
        self.alive[idx[~ok]] = False
        self.gray = gray

    def measure(self) -> Window | None:
        """The window's evidence; None when fewer than 8 face points survived."""
        f = self.alive & self.is_face
        if f.sum() < 8:
            return None
        p0, p1 = self.p0.astype(np.float64), self.p.astype(np.float64)
        try:
            h = fit_homography(p0[f], p1[f])
        except (ValueError, np.linalg.LinAlgError):
            return None
        moved = float(np.linalg.norm(apply_homography(h, p0[f]) - p0[f], axis=1).mean())
        par = plane_parallax(p0[f], p1[f], self.depth[f])
        c = self.alive & ~self.is_face
        m0, m1 = self.mesh0.astype(np.float64), self.mesh1.astype(np.float64)
        mesh_par = plane_parallax(m0[:, :2], m1[:, :2], m0[:, 2]) if self.steps else NO_PARALLAX
        return Window(
            self.t0, self.t1, self.width, int(f.sum()), moved / max(self.width, 1e-6), par,
            _count(h, p0, p1, c & self.beyond), _count(h, p0, p1, c & self.near), mesh_par,
        )  # fmt: skip


def _count(h: F64, p0: F64, p1: F64, sel: npt.NDArray[np.bool_]) -> ContextCount:
    """Classify context points as moving with the face (``H``), still, or neither."""
    if not sel.any():
        return ContextCount()
    a, b = p0[sel], p1[sel]
    pred = apply_homography(h, a)
    sep = np.linalg.norm(pred - a, axis=1)
    e_face = np.linalg.norm(b - pred, axis=1)
    e_still = np.linalg.norm(b - a, axis=1)
    inf = sep >= CONTEXT_MIN_SEP_PX
    tol = sep / 3.0
    with_face = inf & (e_face <= tol)
    still = inf & (e_still <= tol)
    return ContextCount(
        int(with_face.sum()), int(still.sum()), int((inf & ~with_face & ~still).sum())
    )


def window_due(w: PointWindow, t: float, seconds: float, min_alive: float = 0.5) -> bool:
    """Whether a window has run long enough, or lost too many face points, to be measured."""
    if w.face_total == 0:
        return True
    return (t - w.t0) >= seconds or w.face_alive < max(8, math.ceil(min_alive * w.face_total))


__all__ = [
    "CONTEXT_MIN_SEP_PX",
    "FB_MAX_PX",
    "ContextCount",
    "PointWindow",
    "Window",
    "face_axes",
    "to_face_frame",
    "window_due",
    "zones",
]

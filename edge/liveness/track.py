"""One face's liveness evidence over its track: mesh, eye opening, KLT windows.

:class:`LivenessTrack` is fed every frame of one tracked face
(:meth:`LivenessTrack.update`) and keeps what the decision needs: the
measured KLT windows (:mod:`edge.liveness.motion`) and the eye-opening
series for blinks (:mod:`edge.liveness.blink`). It holds the previous
frame's grey image (for KLT) and nothing else of the frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge.liveness.geometry import eye_opening
from edge.liveness.mesh import PRESENCE_THRESHOLD, FaceMesh, MeshResult, roi_from_keypoints
from edge.liveness.motion import Gray, PointWindow, Window, window_due
from edge.types import Detection, Image

MAX_SERIES = 300  # eye-opening samples kept per track (30 s at 10 fps)
MAX_MISSES = 2
"""Consecutive frames the mesh may lose the face (presence under its threshold:
a blink of the model on a turned or blurred face) before the KLT window is
dropped; a shorter gap is skipped and the points are tracked across it."""
WINDOW_S = 0.5
"""A KLT window's length: long enough for a turning head's parallax to build
up over the KLT noise (a 5 degree/s turn gives ~0.5% of the face's width in
0.5 s), short enough that faces keep their corners."""


@dataclass
class LivenessTrack:
    """The evidence gathered for one track (mutable; one per track, fed in frame order)."""

    mesh: FaceMesh
    window_s: float = WINDOW_S
    windows: list[Window] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    right: list[float] = field(default_factory=list)
    left: list[float] = field(default_factory=list)
    first_t: float | None = None
    last_t: float | None = None
    frames: int = 0
    _window: PointWindow | None = None
    _misses: int = 0
    last_mesh: MeshResult | None = None

    def update(self, rgb: Image, gray: Gray, det: Detection, t: float) -> None:
        """One frame of this face: the mesh on its ROI, eye opening, the KLT window."""
        b = det.box
        roi = roi_from_keypoints((b.x, b.y, b.w, b.h), det.keypoints[0], det.keypoints[1])
        res = self.mesh.run(rgb, roi)
        self.frames += 1
        if self.first_t is None:
            self.first_t = t
        self.last_t = t
        if res.presence < PRESENCE_THRESHOLD:
            self._misses += 1
            if self._misses > MAX_MISSES:
                self._window = None  # the face is lost for the mesh: points would drift
            return  # a short gap: the KLT tracks across it from the last good frame
        self._misses = 0
        self.last_mesh = res
        r, le = eye_opening(res.points)
        self.times.append(t)
        self.right.append(r)
        self.left.append(le)
        if len(self.times) > MAX_SERIES:  # a long track: the recent eye opening is enough
            del self.times[0], self.right[0], self.left[0]
        self._step(gray, res.points, t)

    def flush(self) -> None:
        """Measure the window in progress (the track ends: nothing more will come)."""
        w = self._window
        self._window = None
        if w is not None and w.steps > 0:
            got = w.measure()
            if got is not None:
                self.windows.append(got)

    def _step(self, gray: Gray, points: npt.NDArray[np.float32], t: float) -> None:
        w = self._window
        if w is not None:
            w.step(gray, t, points)
            if not window_due(w, t, self.window_s):
                return
            got = w.measure()
            if got is not None:
                self.windows.append(got)
        self._window = PointWindow(gray, points, t)


__all__ = ["MAX_MISSES", "MAX_SERIES", "WINDOW_S", "LivenessTrack"]

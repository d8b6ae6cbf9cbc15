"""The liveness stage's cost per face (a row of the bench's stage table).

For every real face of the bench frames, a fresh
:class:`edge.liveness.track.LivenessTrack` is fed that frame ``repeats + 2``
times, 0.1 s apart (the first two untimed), so the timed calls include what
a door pays per face and frame: the face mesh, the eye opening, a KLT step
and, every 0.5 s of track time, a window's measurement (homography and
parallax fits). The grey conversion, done once per frame for all faces, is
counted too. Target (docs/performance.md): at most 10 ms per face.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tools.bench.common import median
from tools.bench.stages import StageContext

MESH = "face_landmark.tflite"
STEP_S = 0.1


class LivenessCost:
    """``liveness_ms``: median ms per face of the liveness stage (NaN without the mesh)."""

    key = "liveness_ms"
    title = "liveness per face (mesh + KLT + fits)"

    def __init__(self, mesh: Path | None = None) -> None:
        self.mesh = mesh

    def measure(self, ctx: StageContext) -> float:
        import cv2

        from edge.config import MODELS_DIR
        from edge.liveness.mesh import FaceMesh
        from edge.liveness.track import LivenessTrack

        path = self.mesh or MODELS_DIR / MESH
        if not path.is_file() or not ctx.faces:
            return float("nan")
        mesh = FaceMesh.load(path, runtime=ctx.runtime, num_threads=ctx.threads)
        samples: list[float] = []
        for face in ctx.faces:
            rgb = face.frame.rgb
            track = LivenessTrack(mesh)
            for i in range(max(ctx.repeats, 5) + 2):
                t0 = time.perf_counter()
                gray = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
                track.update(rgb, gray, face.detection, i * STEP_S)
                if i >= 2:
                    samples.append((time.perf_counter() - t0) * 1e3)
        return median(samples)


__all__ = ["LivenessCost"]

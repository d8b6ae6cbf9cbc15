"""What the liveness stage costs per face: ``python -m tools.liveness.cost``.

A 640x480 clip of a face (a registry photo on a moving print, rendered by
:mod:`tools.liveness.attacks`) goes through the stage frame by frame, with
the verdict never final so every frame does the full work; each frame's
liveness time is measured around :meth:`edge.liveness.track.LivenessTrack.update`
(the mesh, the eye opening, the KLT step and, every 0.5 s, a window's
measurement), as is the mesh alone. Prints the median and the 95th
percentile in milliseconds (wall clock, so run it on a quiet machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from edge.config import MODELS_DIR
from tools._common import run_tool


def measure(frames_n: int = 150, threads: int = 2, seed: int = 1) -> dict[str, float]:
    """Median and 95th percentile (ms) of the stage per face and of the mesh alone."""
    import cv2

    from edge.demo import demo_photos
    from edge.imageio import read_image
    from edge.liveness.mesh import FaceMesh, roi_from_keypoints
    from edge.liveness.track import LivenessTrack
    from edge.vision.detector import FaceDetector
    from tools.liveness.attacks import AttackSpec, frames, make_scene, registry_backgrounds

    det = FaceDetector.load(MODELS_DIR / "face_detection_short_range.tflite", num_threads=threads)
    mesh = FaceMesh.load(MODELS_DIR / "face_landmark.tflite", num_threads=threads)
    photo = read_image(demo_photos()["grace_hopper"])
    b = det.detect(photo)[0].box
    spec = AttackSpec("print", "moved", seed=seed, fps=12.5, seconds=frames_n / 12.5)
    clip = [f for f in frames(make_scene(spec, photo, (b.x, b.y, b.w, b.h),
                                         registry_backgrounds()))]  # fmt: skip
    seq = [(f, found[0], i / spec.fps) for i, f in enumerate(clip) if (found := det.detect(f))]
    track = LivenessTrack(mesh)
    stage_ms, mesh_ms = [], []
    for rgb, d, t in seq:
        t0 = time.perf_counter()
        # once per frame, shared by all faces
        gray = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
        track.update(rgb, gray, d, t)
        stage_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        mesh.run(rgb, roi_from_keypoints((d.box.x, d.box.y, d.box.w, d.box.h), *d.keypoints[:2]))
        mesh_ms.append((time.perf_counter() - t0) * 1000)
    s, m = np.asarray(stage_ms[5:]), np.asarray(mesh_ms[5:])  # the first frames warm up
    return {
        "frames": float(len(s)),
        "stage_median_ms": float(np.median(s)),
        "stage_p95_ms": float(np.percentile(s, 95)),
        "mesh_median_ms": float(np.median(m)),
        "mesh_p95_ms": float(np.percentile(m, 95)),
    }


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.liveness.cost", description=__doc__)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    r = measure(a.frames, a.threads)
    print(
        f"liveness per face over {r['frames']:.0f} frames (640x480, {a.threads} threads): "
        f"stage median {r['stage_median_ms']:.1f} ms, p95 {r['stage_p95_ms']:.1f} ms; "
        f"of which the mesh alone median {r['mesh_median_ms']:.1f} ms, "
        f"p95 {r['mesh_p95_ms']:.1f} ms"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("liveness.cost", _main, argv)


if __name__ == "__main__":
    sys.exit(main())

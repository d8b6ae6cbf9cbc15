"""MediaPipe's face mesh (``face_landmark.tflite``): 468 landmarks with depth, per face.

The model sees a 192x192 RGB crop, values in [0, 1], of a square region of
interest (ROI) around the face, rotated so that the eyes are level, and
returns 468 points ``(x, y, z)`` in crop pixels (``z``: depth on the scale of
``x``, smaller is nearer the camera, 0 near the head's centre) plus a
face-presence logit. The ROI is MediaPipe's: the face's box (the detector's,
or the previous frame's landmarks' bounding box) made square on its longer
side and grown 1.5 times, turned by the angle of the line between the eyes.

:func:`roi_from_keypoints` and :func:`roi_from_landmarks` compute the ROI,
:func:`roi_matrix` the affine map frame -> crop; :class:`FaceMesh` runs the
model (verified against its manifest like every model) and maps the points
back to frame pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import ManifestMismatch, ModelError
from edge.types import Image
from edge.vision.manifest import Manifest, load_manifest, verify_file
from edge.vision.runtime import Interpreter

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

NUM_LANDMARKS = 468
ROI_SCALE = 1.5
# Landmarks that set the ROI's angle when it follows the previous frame's mesh:
# the outer corners of the right and left eye (MediaPipe's face_landmarks_to_roi).
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
PRESENCE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Roi:
    """A rotated square in frame pixels: centre, side length and angle (radians)."""

    cx: float
    cy: float
    size: float
    angle: float


@dataclass(frozen=True)
class MeshResult:
    """One face's mesh: ``points`` (468, 3) in frame pixels, the ROI it came from.

    ``presence`` is the model's face probability; a crop without a face
    scores low and its points mean nothing.
    """

    points: F32
    presence: float
    roi: Roi


def _square_roi(cx: float, cy: float, w: float, h: float, angle: float, scale: float) -> Roi:
    return Roi(float(cx), float(cy), float(max(w, h) * scale), float(angle))


def roi_from_keypoints(
    box: tuple[float, float, float, float],
    right_eye: npt.ArrayLike,
    left_eye: npt.ArrayLike,
    scale: float = ROI_SCALE,
) -> Roi:
    """The ROI of a detected face: its box ``(x, y, w, h)``, squared and grown by ``scale``.

    The angle is that of the vector from the right eye (the subject's, on the
    image's left) to the left eye: ``atan2(yl - yr, xl - xr)``.
    """
    r = np.asarray(right_eye, dtype=np.float64)
    le = np.asarray(left_eye, dtype=np.float64)
    x, y, w, h = box
    angle = math.atan2(float(le[1] - r[1]), float(le[0] - r[0]))
    return _square_roi(x + w / 2, y + h / 2, w, h, angle, scale)


def roi_from_landmarks(points: npt.ArrayLike, scale: float = ROI_SCALE) -> Roi:
    """The ROI that follows a mesh to the next frame (MediaPipe's tracking ROI).

    The landmarks' axis-aligned bounding box, squared and grown by ``scale``,
    turned by the angle of the line between the outer eye corners.
    """
    p = np.asarray(points, dtype=np.float64)[:, :2]
    lo, hi = p.min(0), p.max(0)
    r, le = p[RIGHT_EYE_OUTER], p[LEFT_EYE_OUTER]
    angle = math.atan2(float(le[1] - r[1]), float(le[0] - r[0]))
    return _square_roi((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[0] - lo[0], hi[1] - lo[1],
                       angle, scale)  # fmt: skip


def roi_matrix(roi: Roi, size: int) -> F64:
    """The 2x3 affine map from frame pixels to crop pixels of a ``size`` x ``size`` crop.

    A frame point ``p`` lands at ``c + s R(-angle) (p - centre)`` with
    ``s = size / roi.size`` and ``c = (size / 2, size / 2)``: the ROI's centre
    goes to the crop's centre and its eye line becomes horizontal.
    """
    s = size / roi.size
    cos, sin = math.cos(roi.angle) * s, math.sin(roi.angle) * s
    # R(-angle) = [[cos, sin], [-sin, cos]]
    a = np.array([[cos, sin], [-sin, cos]], dtype=np.float64)
    t = np.array([size / 2, size / 2]) - a @ np.array([roi.cx, roi.cy])
    return np.hstack([a, t[:, None]])


def crop_to_frame(points: F32, roi: Roi, size: int) -> F32:
    """Crop-pixel points ``(x, y, z)`` back into frame pixels (``z`` scaled like x and y)."""
    m = roi_matrix(roi, size)
    a_inv = np.linalg.inv(m[:, :2])
    xy = (points[:, :2].astype(np.float64) - m[:, 2]) @ a_inv.T
    z = points[:, 2:3].astype(np.float64) * (roi.size / size)
    return np.hstack([xy, z]).astype(np.float32)


class FaceMesh:
    """The face mesh model on a TFLite interpreter: ``run(rgb, roi) -> MeshResult``."""

    def __init__(self, manifest: Manifest, interpreter: Any) -> None:
        self.manifest = manifest
        self.interpreter = interpreter
        shape = tuple(int(x) for x in interpreter.input_details[0]["shape"])
        if shape != manifest.input.shape:
            raise ManifestMismatch(
                f"{manifest.model_path}: input shape {shape} differs from manifest "
                f"{manifest.input.shape}"
            )
        dtype = np.dtype(interpreter.input_details[0]["dtype"]).name
        if dtype != manifest.input.dtype or dtype != "float32":
            raise ManifestMismatch(
                f"{manifest.model_path}: input dtype {dtype}, manifest {manifest.input.dtype}"
            )
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
            raise ModelError(f"{manifest.model_path}: not a square RGB input {shape}")
        self.size = shape[1]
        sizes = [int(np.prod(d["shape"])) for d in interpreter.output_details]
        if 3 * NUM_LANDMARKS not in sizes or 1 not in sizes:
            raise ModelError(f"{manifest.model_path}: outputs {sizes} are not a 468-point mesh")
        self._points_out = sizes.index(3 * NUM_LANDMARKS)
        self._presence_out = sizes.index(1)
        pre = manifest.preprocessing
        self._lut = ((np.arange(256, dtype=np.float32) - pre.mean) / pre.std).astype(np.float32)
        self._input = np.zeros((1, self.size, self.size, 3), dtype=np.float32)

    @classmethod
    def load(cls, model_path: Path | str, runtime: str = "auto", num_threads: int = 2) -> FaceMesh:
        """Load the mesh from its model (or manifest) path, verifying the manifest."""
        manifest = load_manifest(model_path)
        if manifest.kind != "landmarks":
            raise ModelError(f"{manifest.path}: not a landmark manifest (kind={manifest.kind})")
        path = verify_file(manifest)
        return cls(manifest, Interpreter(path, runtime=runtime, num_threads=num_threads))

    def crop(self, rgb: Image, roi: Roi) -> Image:
        """The model's input crop (RGB uint8, ``size`` x ``size``) of an ROI."""
        import cv2

        m = roi_matrix(roi, self.size)
        out = cv2.warpAffine(
            rgb, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
        )  # fmt: skip
        return np.asarray(out, dtype=np.uint8)

    def run(self, rgb: Image, roi: Roi) -> MeshResult:
        """The 468 landmarks of the face in ``roi``, in frame pixels."""
        from edge.imageio import apply_lut

        apply_lut(self.crop(rgb, roi), self._lut, self._input[0])
        outs = self.interpreter.run(self._input)
        pts = np.asarray(outs[self._points_out], dtype=np.float32).reshape(NUM_LANDMARKS, 3)
        logit = float(np.asarray(outs[self._presence_out]).reshape(-1)[0])
        presence = 1.0 / (1.0 + math.exp(-min(max(logit, -60.0), 60.0)))
        return MeshResult(crop_to_frame(pts, roi, self.size), presence, roi)


__all__ = [
    "NUM_LANDMARKS",
    "PRESENCE_THRESHOLD",
    "ROI_SCALE",
    "FaceMesh",
    "MeshResult",
    "Roi",
    "crop_to_frame",
    "roi_from_keypoints",
    "roi_from_landmarks",
    "roi_matrix",
]

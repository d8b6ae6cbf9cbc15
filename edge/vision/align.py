"""Face alignment: a similarity transform from detector keypoints to a canonical template.

The embedder was trained on faces in a fixed position; we estimate the
rotation + uniform scale + translation (4 degrees of freedom) that maps the
detected eyes, nose tip and mouth centre onto the template's points in the
least-squares sense (Umeyama, 1991), and warp the frame with it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge.errors import ModelError
from edge.types import Detection, Image

F32 = npt.NDArray[np.float32]

# BlazeFace keypoint order: 0 right eye, 1 left eye, 2 nose tip, 3 mouth centre,
# 4 right ear tragion, 5 left ear tragion (right/left of the subject, so the
# "right eye" appears on the left of the image). Ears are often hidden: unused.
ALIGN_KEYPOINTS = (0, 1, 2, 3)

# Template points (x, y) as fractions of the crop side, in ALIGN_KEYPOINTS order.
# "facenet160": where FaceNet's training crops (MTCNN box + margin, 160 px)
# put the eyes, nose and mouth: eyes 30% of the width apart at 36% height,
# mouth centre at 70% height (checked on real faces: see tests/test_pipeline.py).
# "arcface112": ArcFace's 5-point 112 x 112 template (insightface; the one
# SFace and other ArcFace-trained models were trained on) with the two mouth
# corners merged into their midpoint, since BlazeFace gives the mouth centre:
# in pixels (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366) and
# ((41.5493 + 70.7299) / 2, (92.3655 + 92.2041) / 2) = (56.1396, 92.2848).
_ARCFACE112_PX = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (56.1396, 92.2848))
TEMPLATES: dict[str, F32] = {
    "facenet160": np.array(
        [[0.35, 0.36], [0.65, 0.36], [0.50, 0.53], [0.50, 0.70]], dtype=np.float32
    ),
    "arcface112": (np.array(_ARCFACE112_PX, dtype=np.float64) / 112.0).astype(np.float32),
}


def umeyama_similarity(src: F32, dst: F32) -> F32:
    """Least-squares similarity transform ``dst ~ s R src + t`` as a 2x3 matrix.

    Umeyama's solution (rotation without reflection, uniform scale), which in
    2-D has a closed form: a similarity is multiplication by ``a + ib``, so
    with centred points ``p = src - mean(src)``, ``q = dst - mean(dst)``::

        a = sum(px qx + py qy) / sum(|p|^2)
        b = sum(px qy - py qx) / sum(|p|^2)
        s R = [[a, -b], [b, a]],   t = mean(dst) - s R mean(src)

    (``s = hypot(a, b)``; the same minimiser as Umeyama's SVD form, without
    an SVD per face.) Coincident source points give the identity and a shift.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    p, q = src - mu_s, dst - mu_d
    var = float((p * p).sum())
    if var > 0:
        a = float((p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1]).sum()) / var
        b = float((p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]).sum()) / var
    else:
        a, b = 1.0, 0.0
    tx = mu_d[0] - (a * mu_s[0] - b * mu_s[1])
    ty = mu_d[1] - (b * mu_s[0] + a * mu_s[1])
    return np.array([[a, -b, tx], [b, a, ty]], dtype=np.float32)


def template_points(template: str, size: int) -> F32:
    """The template's points in pixels for a ``size`` x ``size`` crop."""
    try:
        return (TEMPLATES[template] * np.float32(size)).astype(np.float32)
    except KeyError:
        raise ModelError(
            f"unknown alignment template {template!r} (known: {', '.join(TEMPLATES)})"
        ) from None


def align_face(
    rgb: Image, detection: Detection, template: str = "facenet160", size: int = 160
) -> Image:
    """Warp the face to the template: an RGB uint8 crop of ``size`` x ``size``."""
    import cv2

    src = detection.keypoints[list(ALIGN_KEYPOINTS)]
    M = umeyama_similarity(src, template_points(template, size))
    crop = cv2.warpAffine(
        rgb, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(crop, dtype=np.uint8)

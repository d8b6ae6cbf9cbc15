"""The recognition pipeline for one frame: detect -> align -> embed -> match.

This is the one code path for the device, enrolment, calibration and
evaluation: the offline tools call :class:`FaceCropper` and
:class:`Recognizer` rather than re-implementing any step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edge.align import align_face
from edge.detector import FaceDetector
from edge.embedder import Embedder
from edge.errors import NoFaceError
from edge.gallery import Gallery
from edge.manifest import Calibration
from edge.matcher import Matcher
from edge.numerics import Confidence
from edge.types import AlignedFace, FaceResult, Frame, FrameResult, Image

if TYPE_CHECKING:
    from edge.config import Config

log = logging.getLogger(__name__)

# Used only when a manifest carries no calibration and the config sets nothing:
# measured on FaceNet 20180408 cosine distances of real faces, genuine pairs
# lie under ~0.45 and strangers mostly above 0.6 (tools.calibrate does better).
DEFAULT_CALIBRATION = Calibration(
    threshold=0.40, margin=0.05, conf_midpoint=0.40, conf_scale=0.04, source="builtin-default"
)


@dataclass(frozen=True)
class Crops:
    """Aligned faces of one image, and how many faces were too small to use."""

    faces: list[AlignedFace]
    skipped_small: int


class FaceCropper:
    """Detect faces and warp each to the embedder's template (largest face first)."""

    def __init__(
        self,
        detector: FaceDetector,
        template: str = "facenet160",
        size: int = 160,
        min_face: int = 40,
    ) -> None:
        self.detector = detector
        self.template = template
        self.size = size
        self.min_face = min_face

    def crops_with_counts(self, rgb: Image) -> Crops:
        dets = self.detector.detect(rgb)
        dets.sort(key=lambda d: d.box.w * d.box.h, reverse=True)
        usable = [d for d in dets if min(d.box.w, d.box.h) >= self.min_face]
        faces = [AlignedFace(d, align_face(rgb, d, self.template, self.size)) for d in usable]
        return Crops(faces, len(dets) - len(usable))

    def crops(self, rgb: Image) -> list[AlignedFace]:
        return self.crops_with_counts(rgb).faces


class Recognizer:
    """Frames in, open-set identities out."""

    def __init__(
        self,
        cropper: FaceCropper,
        embedder: Embedder,
        gallery: Gallery,
        calibration: Calibration,
    ) -> None:
        self.cropper = cropper
        self.embedder = embedder
        self.calibration = calibration
        self._confidence = Confidence(calibration.conf_midpoint, calibration.conf_scale)
        self._matcher = Matcher(
            gallery, calibration.threshold, calibration.margin, self._confidence
        )
        self._gallery = gallery

    @classmethod
    def from_config(cls, cfg: Config, gallery: Gallery | None = None) -> Recognizer:
        """Build the pipeline the config describes (models verified against manifests)."""
        det = FaceDetector.load(
            cfg.model_path(cfg.detector.model),
            runtime=cfg.embedder.runtime,
            num_threads=cfg.embedder.num_threads,
            score_threshold=cfg.detector.score_threshold,
            nms_iou=cfg.detector.nms_iou,
            max_faces=cfg.detector.max_faces,
        )
        emb = Embedder.load(
            cfg.model_path(cfg.embedder.model),
            runtime=cfg.embedder.runtime,
            num_threads=cfg.embedder.num_threads,
            edgetpu=cfg.embedder.edgetpu,
        )
        if gallery is None:
            from edge.gallery import open_for_config

            gallery = open_for_config(cfg, emb.sha256, emb.manifest)
        cal = calibration_for(emb, cfg.matching.threshold, cfg.matching.margin)
        cropper = FaceCropper(
            det,
            template=emb.manifest.alignment or "facenet160",
            size=emb.size[0],
            min_face=cfg.detector.min_face_size,
        )
        return cls(cropper, emb, gallery, cal)

    @classmethod
    def from_models(
        cls,
        detector_path: Path | str,
        embedder_path: Path | str,
        gallery: Gallery | None = None,
        runtime: str = "auto",
        num_threads: int = 2,
        min_face: int = 40,
    ) -> Recognizer:
        """Build a pipeline from two model paths (for tools and tests)."""
        det = FaceDetector.load(detector_path, runtime=runtime, num_threads=num_threads)
        emb = Embedder.load(embedder_path, runtime=runtime, num_threads=num_threads)
        cropper = FaceCropper(det, emb.manifest.alignment or "facenet160", emb.size[0], min_face)
        gallery = gallery or Gallery.for_manifest(emb.manifest)
        return cls(cropper, emb, gallery, calibration_for(emb))

    # -- gallery --------------------------------------------------------------
    @property
    def gallery(self) -> Gallery:
        return self._gallery

    def set_gallery(self, gallery: Gallery) -> None:
        """Swap the gallery (one reference assignment: safe while frames are processed)."""
        matcher = Matcher(gallery, self.threshold, self.margin, self._confidence)
        self._gallery, self._matcher = gallery, matcher

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    @property
    def margin(self) -> float:
        return self.calibration.margin

    @property
    def model_sha256(self) -> str:
        return self.embedder.sha256

    # -- recognition ----------------------------------------------------------
    def identify_crops(self, crops: Crops) -> list[FaceResult]:
        if not crops.faces:
            return []
        emb = self.embedder.embed([f.crop for f in crops.faces])
        matches = self._matcher.match_many(emb)
        return [
            FaceResult(f.detection, m, e) for f, m, e in zip(crops.faces, matches, emb, strict=True)
        ]

    def identify(self, rgb: Image) -> list[FaceResult]:
        """Every usable face in an image, with its open-set match."""
        return self.identify_crops(self.cropper.crops_with_counts(rgb))

    def process(self, frame: Frame) -> FrameResult:
        crops = self.cropper.crops_with_counts(frame.image)
        return FrameResult(
            frame.index, frame.timestamp, tuple(self.identify_crops(crops)), crops.skipped_small
        )

    def embed_single_face(self, rgb: Image) -> npt.NDArray[np.float32]:
        """The embedding of the one usable face in an enrolment image.

        NoFaceError when there is none, or more than one (we cannot tell
        which face the name belongs to), or it is too small.
        """
        crops = self.cropper.crops_with_counts(rgb)
        if not crops.faces:
            why = (
                f"face too small (under {self.cropper.min_face} px)"
                if crops.skipped_small
                else "no face found"
            )
            raise NoFaceError(why)
        if len(crops.faces) > 1:
            raise NoFaceError(f"{len(crops.faces)} faces found, need exactly one")
        vec: npt.NDArray[np.float32] = self.embedder.embed([crops.faces[0].crop])[0]
        return vec


def calibration_for(
    embedder: Embedder, threshold: float | None = None, margin: float | None = None
) -> Calibration:
    """The open-set parameters: config overrides, else the manifest's, else the defaults."""
    cal = embedder.manifest.calibration or DEFAULT_CALIBRATION
    if cal is DEFAULT_CALIBRATION:
        log.warning("model manifest has no calibration; using built-in defaults")
    return Calibration(
        threshold=cal.threshold if threshold is None else threshold,
        margin=cal.margin if margin is None else margin,
        conf_midpoint=cal.conf_midpoint,
        conf_scale=cal.conf_scale,
        source=cal.source if threshold is None and margin is None else f"{cal.source}+config",
    )


__all__ = ["DEFAULT_CALIBRATION", "Crops", "FaceCropper", "Recognizer", "calibration_for"]

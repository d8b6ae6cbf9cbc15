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

from edge.errors import NoFaceError
from edge.identity.enrol import PhotoMeasure, face_problem, face_quality
from edge.identity.gallery import Gallery
from edge.identity.matcher import Matcher
from edge.identity.thresholds import DEFAULT_TARGET_FPIR, OperatingPoint, operating_point
from edge.numerics import Confidence
from edge.types import AlignedFace, FaceResult, Frame, FrameResult, Image, Match
from edge.vision.align import align_face, template_points
from edge.vision.detector import FaceDetector
from edge.vision.embedder import Embedder
from edge.vision.manifest import Calibration

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
    """Aligned faces of one image, and how many faces were too small to use.

    ``areas``: the box area of every detected face, usable or not, largest first.
    """

    faces: list[AlignedFace]
    skipped_small: int
    areas: tuple[float, ...] = ()


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
        return Crops(faces, len(dets) - len(usable), tuple(d.box.w * d.box.h for d in dets))

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
        target_fpir: float = DEFAULT_TARGET_FPIR,
        threshold_override: float | None = None,
    ) -> None:
        """``threshold_override`` (``[matching] threshold``) fixes the threshold; otherwise it
        follows the gallery size (:meth:`operating_point_for`)."""
        self.cropper = cropper
        self.embedder = embedder
        self.calibration = calibration
        self.target_fpir = target_fpir
        self.threshold_override = threshold_override
        self._confidence = Confidence(calibration.conf_midpoint, calibration.conf_scale)
        self._gallery = gallery
        self._point = self._choose_point(gallery)
        self._matcher = Matcher(gallery, self._point.threshold, self.margin, self._confidence)

    @classmethod
    def from_config(cls, cfg: Config, gallery: Gallery | None = None) -> Recognizer:
        """Build the pipeline the config describes (models verified against manifests)."""
        det = FaceDetector.from_config(cfg)
        emb = Embedder.load(
            cfg.model_path(cfg.embedder.model),
            runtime=cfg.embedder.runtime,
            num_threads=cfg.embedder.num_threads,
            edgetpu=cfg.embedder.edgetpu,
        )
        if gallery is None:
            from edge.identity.gallery import open_for_config

            gallery = open_for_config(cfg, emb.sha256, emb.manifest)
        cal = calibration_for(emb, cfg.matching.threshold, cfg.matching.margin)
        cropper = FaceCropper(
            det,
            template=emb.manifest.alignment or "facenet160",
            size=emb.size[0],
            min_face=cfg.detector.min_face_size,
        )
        return cls(cropper, emb, gallery, cal, cfg.matching.target_fpir, cfg.matching.threshold)

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
        """Swap the gallery, with the threshold for its size.

        The new matcher (and operating point) is built first, then the three
        attributes are assigned. That is not one atomic step: call it from
        the thread that calls :meth:`process` (the daemon does, between two
        frames), never while a frame is being recognized on another thread.
        """
        point = self._choose_point(gallery)
        matcher = Matcher(gallery, point.threshold, self.margin, self._confidence)
        self._gallery, self._point, self._matcher = gallery, point, matcher

    def operating_point_for(self, comparisons: int) -> OperatingPoint:
        """The threshold (and expected FPIR/FNIR) for ``comparisons`` enrolled embeddings.

        :func:`edge.identity.thresholds.operating_point` with this recognizer's
        calibration tables, target FPIR and config threshold.
        """
        cal = self.calibration
        return operating_point(
            cal.threshold,
            cal.far_table,
            cal.frr_table,
            comparisons,
            self.target_fpir,
            self.threshold_override,
        )

    def match_embeddings(self, embeddings: npt.NDArray[np.float32]) -> list[Match]:
        """The open-set match of unit embeddings (F, D) against the current gallery.

        Exactly what :meth:`identify` does after embedding, for tools that
        already hold embeddings (``tools.evaluate``'s door protocol).
        """
        if len(embeddings) == 0:
            return []
        return self._matcher.match_many(embeddings)

    def _choose_point(self, gallery: Gallery) -> OperatingPoint:
        names = gallery.names
        m = sum(len(gallery.person(n).embeddings) for n in names)
        point = self.operating_point_for(m)
        log.info("%d people, %d embeddings: %s", len(names), m, point.describe())
        if point.clamped:
            log.warning(
                "the calibration cannot resolve the per-comparison FAR %.3g this gallery needs "
                "(its impostor pairs resolve %.3g): using its strictest threshold; expected "
                "FPIR %.2f%% is above the %.2f%% target (calibrate on more people)",
                point.target_far,
                point.far,
                100 * (point.expected_fpir or 0.0),
                100 * point.target_fpir,
            )
        elif point.source == "config" and point.looser_than_target:
            log.warning(
                "[matching] threshold %.5f is looser than the calibration allows for this "
                "gallery: expected FPIR %.2f%% against the %.2f%% target (strangers will be "
                "named); remove it to let the threshold follow the gallery size",
                point.threshold,
                100 * (point.expected_fpir or 0.0),
                100 * point.target_fpir,
            )
        return point

    @property
    def operating_point(self) -> OperatingPoint:
        """The current gallery's threshold and expected error rates."""
        return self._point

    @property
    def threshold(self) -> float:
        return self._point.threshold

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

    def measure_photo(self, rgb: Image) -> PhotoMeasure:
        """The largest usable face of an enrolment photo: embedding and quality."""
        return measure_photo(self.cropper, self.embedder, rgb)

    def embed_single_face(self, rgb: Image) -> npt.NDArray[np.float32]:
        """The embedding of the face an enrolment image shows.

        The largest face, when it is alone or at least twice the area of the
        next (:func:`edge.identity.enrol.photo_problem`'s face rule, without the
        quality checks). NoFaceError when there is none, it is too small, or
        several faces are of similar size (we cannot tell whose name it is).
        """
        m = self.measure_photo(rgb)
        problem = face_problem(m)
        if problem is not None or m.embedding is None:
            raise NoFaceError(problem.reason if problem else "no face found")
        return m.embedding


def measure_photo(cropper: FaceCropper, embedder: Embedder, rgb: Image) -> PhotoMeasure:
    """The largest usable face of a photo: its embedding and its quality.

    The quality is an :class:`edge.identity.enrol.FaceQuality`.

    The one path by which enrolment (``facegate enroll``) and the offline
    tools see a photo: the recognizer's detector, alignment and embedder.
    ``error`` says why there is no usable face (none, or all too small).
    """
    crops = cropper.crops_with_counts(rgb)
    if not crops.faces:
        why = (
            f"face too small (under {cropper.min_face} px)"
            if crops.skipped_small
            else "no face found"
        )
        return PhotoMeasure(None, None, why)
    face = crops.faces[0]
    q = face_quality(face, crops.areas, template_points(cropper.template, cropper.size))
    vec: npt.NDArray[np.float32] = embedder.embed([face.crop])[0]
    return PhotoMeasure(vec, q, keypoints=face.detection.keypoints)


def calibration_for(
    embedder: Embedder, threshold: float | None = None, margin: float | None = None
) -> Calibration:
    """The open-set parameters: config overrides, else the manifest's, else the defaults."""
    cal = embedder.manifest.calibration or DEFAULT_CALIBRATION
    if cal is DEFAULT_CALIBRATION:
        log.warning("model manifest has no calibration; using built-in defaults")
    if threshold is not None and cal.far_table is None and threshold > cal.threshold:
        # With tables the operating point estimates (and warns about) the FPIR a
        # config threshold gives; without them all that is known is the
        # calibrated threshold, and a looser one names more strangers.
        log.warning(
            "[matching] threshold %.5f is looser than the model's calibrated %.5f (%s), and "
            "its manifest has no tables to say how many strangers that names; remove it",
            threshold,
            cal.threshold,
            cal.source,
        )
    return Calibration(
        threshold=cal.threshold if threshold is None else threshold,
        margin=cal.margin if margin is None else margin,
        conf_midpoint=cal.conf_midpoint,
        conf_scale=cal.conf_scale,
        source=cal.source if threshold is None and margin is None else f"{cal.source}+config",
        far_table=cal.far_table,
        frr_table=cal.frr_table,
    )


__all__ = [
    "DEFAULT_CALIBRATION",
    "Crops",
    "FaceCropper",
    "Recognizer",
    "calibration_for",
    "measure_photo",
]

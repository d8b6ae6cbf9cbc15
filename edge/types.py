"""Immutable records that carry data between the pipeline's stages.

frame -> :class:`Detection` -> :class:`AlignedFace` -> embedding ->
:class:`Match` -> decision -> event. Each stage takes the previous stage's
records and returns new ones; none imports a later stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""An RGB image, shape (H, W, 3), dtype uint8."""

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Frame:
    """One captured frame (RGB) with its capture time and sequence index."""

    image: Image
    index: int
    timestamp: float
    source: str = ""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: top-left corner, width and height."""

    x: float
    y: float
    w: float
    h: float

    def as_list(self) -> list[int]:
        """``[x, y, w, h]`` rounded to whole pixels (the CLI's JSON contract)."""
        return [round(self.x), round(self.y), round(self.w), round(self.h)]

    def iou(self, other: Box) -> float:
        """Intersection over union of two boxes, in [0, 1]."""
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Detection:
    """A detected face: box, detector score and keypoints in pixels.

    ``keypoints`` has shape (6, 2) for BlazeFace, in the model's order:
    right eye, left eye, nose tip, mouth centre, right ear tragion, left ear
    tragion ("right"/"left" as seen by the subject).
    """

    box: Box
    score: float
    keypoints: npt.NDArray[np.float32]


@dataclass(frozen=True)
class AlignedFace:
    """A face crop warped to the embedder's canonical template."""

    detection: Detection
    crop: Image


@dataclass(frozen=True)
class Match:
    """The open-set matching result for one face.

    ``name`` is None when the face is unknown: the nearest person was too far
    away, or not far enough ahead of the second-best person.
    """

    name: str | None
    distance: float
    second_best_distance: float | None
    confidence: float
    nearest: str | None = None


@dataclass(frozen=True)
class FaceResult:
    """One face in one frame: where it is and who it is (if anyone)."""

    detection: Detection
    match: Match
    embedding: Vector | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        """The ``facegate identify`` per-face record (a stable contract)."""
        return {
            "box": self.detection.box.as_list(),
            "name": self.match.name,
            "distance": round(self.match.distance, 6),
            "second_best_distance": (
                None
                if self.match.second_best_distance is None
                else round(self.match.second_best_distance, 6)
            ),
            "confidence": round(self.match.confidence, 6),
        }


@dataclass(frozen=True)
class FrameResult:
    """Everything the recognizer found in one frame."""

    frame_index: int
    timestamp: float
    faces: tuple[FaceResult, ...]
    skipped_small: int = 0


@dataclass(frozen=True)
class Liveness:
    """A track's liveness (:mod:`edge.liveness`): ``passed`` True/False/None, score, evidence.

    ``passed``: True for a live 3-D head, False for a prop (paper, screen),
    None while there is not enough evidence (never a pass). ``evidence``:
    short strings such as ``"turn 9deg (texture 8deg, z=6) at 1.4s"``,
    ``"blink at 2.1s"``. ``decided_at``: the track time (seconds from its
    first frame) at which the verdict became final (None while undecided).
    """

    passed: bool | None
    score: float
    evidence: tuple[str, ...] = ()
    decided_at: float | None = None

    @property
    def reason(self) -> str:
        """``live``, ``spoof`` or ``no_liveness`` (the door's denial reasons)."""
        if self.passed is True:
            return "live"
        if self.passed is False:
            return "spoof"
        return "no_liveness"

    def to_json(self) -> dict[str, object]:
        """``{"passed": ..., "score": ..., "evidence": [...]}`` (the events' ``liveness``)."""
        return {
            "passed": self.passed,
            "score": round(self.score, 4),
            "evidence": list(self.evidence),
        }


@dataclass(frozen=True)
class Decision:
    """A decision over several frames of one tracked face.

    ``liveness``: the track's liveness verdict when ``[liveness] mode`` is
    not ``off`` (None: not measured).
    """

    kind: str  # "recognized" | "unknown"
    name: str | None
    distance: float
    confidence: float
    track_id: int
    track_length: int
    timestamp: float
    box: Box
    snapshot: Image | None = field(default=None, repr=False, compare=False)
    # The track's mean embedding (unit length) when the recognizer gave embeddings: what
    # the unknown-visitor review clusters and keeps (edge.review).
    embedding: Vector | None = field(default=None, repr=False, compare=False)
    liveness: Liveness | None = None

"""What one quantisation run needs: :class:`QuantizeConfig` (the CLI fills it from flags)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.types import Image
from edge.vision.manifest import Preprocessing
from tools.quantize.common import DEFAULT_DETECTOR, FACENET_PREPROCESSING
from tools.quantize.source import SourceModel


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything one quantisation run needs (the CLI fills it from flags)."""

    model: Path
    out_dir: Path
    name: str = "facenet"
    calibration: Path | None = None
    images: Sequence[tuple[str, str, Image]] | None = None  # in-memory photos instead of a folder
    validation: Path | None = None
    preprocessing: Preprocessing = FACENET_PREPROCESSING
    input_node: str = "input"
    output_node: str = "embeddings"
    alignment: str = "facenet160"
    detector: Path = DEFAULT_DETECTOR
    holdout: float = 0.25
    augment: int = 0
    max_calibration: int = 400
    min_face: int = 40
    edgetpu: bool = False
    show_progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    source: SourceModel | None = None  # an already loaded model (keras_source) instead of `model`
    snap_steps: int = 0  # > 0: activation ranges snapped to 2^(j/snap_steps) (snap_ranges)
    standardize: str = "none"  # "per-image": FaceNet's per-image standardisation in the graph


__all__ = ["QuantizeConfig"]

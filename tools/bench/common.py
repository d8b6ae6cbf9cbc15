"""What every stage of the bench shares: paths, the models under test, statistics, timing.

Nothing here imports a runtime or a model; the stages do that inside their
functions, so importing the bench stays cheap.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.config import EmbedderConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared"
DEFAULT_OUT = REPO_ROOT / "reports" / "bench" / "bench.json"
MODELS = REPO_ROOT / "models"
DETECTOR = MODELS / "face_detection_short_range.tflite"
# The device's default embedder (edge.config: SFace) and, beside it, FaceNet.
EMB_INT8 = MODELS / EmbedderConfig().model
EMB_FLOAT = EMB_INT8.with_name(EMB_INT8.name.replace("_int8", "_float32"))
CMP_INT8 = MODELS / "facenet_int8.tflite"
CMP_FLOAT = MODELS / "facenet_float32.tflite"

GALLERY_SIZES = (10, 100, 1000)
EMBEDDINGS_PER_PERSON = 3
PEER_TOLERANCE = 0.6  # face_recognition's customary distance tolerance
STRANGER = "<stranger>"  # the label of a probe whose person is not enrolled
GROWTH_LIMIT_PCT = 10.0


@dataclass(frozen=True)
class Models:
    """The models under test (``--detector``, ``--int8``, ``--float32``, ``--edgetpu``)."""

    detector: Path = DETECTOR
    int8: Path = EMB_INT8
    float32: Path = EMB_FLOAT
    edgetpu: bool = False

    @property
    def label(self) -> str:
        """The embedder's name for tables: ``sface`` for ``sface_int8.tflite``."""
        return self.int8.stem.removesuffix("_int8")


DEFAULT_MODELS = Models()


def median(xs: Sequence[float]) -> float:
    """The median of the samples (NaN for none)."""
    return float(statistics.median(xs)) if len(xs) else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between order statistics.

    With the samples sorted as ``x_0 <= ... <= x_{n-1}``, ``r = q/100 (n-1)``
    and the result is ``x_floor(r) + (r - floor(r)) (x_ceil(r) - x_floor(r))``.
    """
    if not len(xs):
        return float("nan")
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def growth_pct(first: float, last: float) -> float:
    """Relative growth in percent: ``100 (last - first) / first`` (0 when first is 0)."""
    return 0.0 if first <= 0 else 100.0 * (last - first) / first


def finite(v: float) -> float | None:
    """``v`` as a float, or None when it is NaN or infinite (JSON has neither)."""
    return float(v) if np.isfinite(v) else None


def overhead_ratio(whole_ms: Sequence[float], models_ms: Sequence[float]) -> float:
    """Whole-frame time over the bare model time on the same frames.

    ``sum_f whole_f / sum_f models_f`` where ``models_f`` is the detector
    invoke plus one embedder invoke per face of frame ``f``: 1.0 means all
    time is spent inside the two models.
    """
    models = float(sum(models_ms))
    return float(sum(whole_ms)) / models if models > 0 else float("nan")


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times in ms of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def say(line: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(line, file=sys.stderr, flush=True)

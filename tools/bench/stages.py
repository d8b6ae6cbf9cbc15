"""Per-stage timing of the device pipeline for one (embedder, runtime, num_threads).

JPEG decode, detection (and the detector's bare invoke), alignment, embedding
(float32 and int8, whole call and bare invoke) and the whole frame
(:meth:`edge.decide.recognizer.Recognizer.process`), as medians over repeated runs
after a warm-up.

**Adding a per-face stage** (liveness, say): write a class with a ``key``, a
``title`` and ``measure(ctx: StageContext) -> float`` (the median ms per face,
NaN when it cannot be measured), in a module of its own, and add an instance
to :data:`tools.bench.face_stages.FACE_STAGES`.
Its median lands in :attr:`StageResult.extra` under ``key``, in the stage
table under ``title`` (one column per embedder, runtime and thread count) and
in ``bench.json``. The context holds the pipeline as built for that column and
every real face of the frames (the frame, its detection, its aligned crop). A
stage that runs inside :meth:`~edge.decide.recognizer.Recognizer.process` is in the
whole-frame time already; see :mod:`tools.bench.targets` for the overhead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edge.types import Detection, Frame, Image
from tools.bench.common import DEFAULT_MODELS, Models, median, overhead_ratio, time_ms
from tools.bench.frames import BenchFrame, enrolment_names

if TYPE_CHECKING:
    from edge.decide.recognizer import Recognizer
    from edge.identity.gallery import Gallery


@dataclass
class StageResult:
    """One (embedder, runtime, num_threads) configuration's stage medians in ms."""

    runtime: str
    threads: int
    detect_ms: float = float("nan")
    detect_invoke_ms: float = float("nan")
    align_ms: float = float("nan")
    embed_float_invoke_ms: float = float("nan")
    embed_int8_invoke_ms: float = float("nan")
    embed_float_ms: float = float("nan")
    embed_int8_ms: float = float("nan")
    frame_ms: float = float("nan")
    frame_total_ms: float = float("nan")
    frames: int = 0
    faces: int = 0
    fps: float = float("nan")
    overhead: float = float("nan")
    per_frame_ms: list[float] = field(default_factory=list)
    embedder: str = ""  # which embedder (Models.label)
    extra: dict[str, float] = field(default_factory=dict)  # FACE_STAGES' medians by key

    @property
    def int8_speedup(self) -> float:
        """Bare float32 invoke over bare int8 invoke (> 1: int8 is faster)."""
        return self.embed_float_invoke_ms / self.embed_int8_invoke_ms


@dataclass(frozen=True)
class FaceSample:
    """One real face of the bench frames: the frame, its detection and its aligned crop."""

    frame: BenchFrame
    detection: Detection
    crop: Image


@dataclass(frozen=True)
class StageContext:
    """What a per-face stage may use: the pipeline of one column and every real face."""

    recognizer: Recognizer
    models: Models
    runtime: str
    threads: int
    faces: Sequence[FaceSample]
    repeats: int
    invokes: int


class FaceStage(Protocol):
    """A per-face stage measured beside the built-in ones (see the module docstring)."""

    key: str
    title: str

    def measure(self, ctx: StageContext) -> float: ...


def bench_decode(frames: Sequence[BenchFrame], repeats: int) -> float:
    """Median ms to decode one camera JPEG (quality 90) into RGB, over all frames."""
    import cv2

    from edge.imageio import decode_image

    samples: list[float] = []
    for f in frames:
        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(f.rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
        if not ok:
            continue
        data = buf.tobytes()
        samples += time_ms(partial(decode_image, data), repeats)
    return median(samples)


def build_recognizer(models: Models, runtime: str, threads: int) -> Recognizer:
    """The device pipeline on the int8 embedder (the Edge TPU delegate when asked)."""
    from edge.decide.recognizer import FaceCropper, Recognizer, calibration_for
    from edge.identity.gallery import Gallery
    from edge.vision.detector import FaceDetector
    from edge.vision.embedder import Embedder

    det = FaceDetector.load(models.detector, runtime=runtime, num_threads=threads)
    emb = Embedder.load(models.int8, runtime=runtime, num_threads=threads, edgetpu=models.edgetpu)
    cropper = FaceCropper(det, emb.manifest.alignment or "facenet160", emb.size[0])
    return Recognizer(cropper, emb, Gallery.for_manifest(emb.manifest), calibration_for(emb))


def enrol_gallery(rec: Recognizer, frames: Sequence[BenchFrame]) -> tuple[Gallery, set[str]]:
    """A gallery of the largest face of each person's first photo; also those frames' names.

    The largest face, as for the peer (the device's ``enrol`` command would
    refuse a photo with two faces; here both systems follow one rule).
    """
    from edge.identity.gallery import Gallery

    g = Gallery.for_manifest(rec.embedder.manifest)
    used = enrolment_names(frames)
    for f in frames:
        if f.name in used and f.label is not None:
            crops = rec.cropper.crops(f.rgb)
            if crops:  # else not enrolled, the same rule as for the peer
                g.add(f.label, rec.embedder.embed([crops[0].crop]))
    return g, used


def _time_detect_and_align(
    rec: Recognizer, frames: Sequence[BenchFrame], repeats: int
) -> tuple[float, float, list[FaceSample]]:
    """Median detection and per-face alignment ms, and every face with its aligned crop."""
    from edge.vision.align import align_face

    det, cropper = rec.cropper.detector, rec.cropper
    det_samples: list[float] = []
    align_samples: list[float] = []
    faces: list[FaceSample] = []
    for f in frames:
        det_samples += time_ms(partial(det.detect, f.rgb), repeats)
        for d in det.detect(f.rgb):
            warp = partial(align_face, f.rgb, d, cropper.template, cropper.size)
            align_samples += time_ms(warp, repeats)
            faces.append(FaceSample(f, d, warp()))
    return median(det_samples), median(align_samples), faces


def _time_embedders(r: StageResult, rec: Recognizer, float_path: Path, crop: Image, n: int) -> None:
    """Median embedding ms (whole call and bare invoke) of the int8 and float32 models."""
    from edge.vision.embedder import Embedder

    femb = Embedder.load(float_path, runtime=r.runtime, num_threads=r.threads)
    for name, emb in (("int8", rec.embedder), ("float", femb)):
        emb.embed_one(crop)  # fills the input tensor with a real face
        inv = median(time_ms(partial(emb.interpreter.run, emb._input), n, 3))
        full = median(time_ms(partial(emb.embed_one, crop), n, 1))
        setattr(r, f"embed_{name}_invoke_ms", inv)
        setattr(r, f"embed_{name}_ms", full)


def _time_one_frame(rec: Recognizer, frame: Frame, n: int, repeats: int) -> tuple[float, float]:
    """Median whole-frame ms and, timed right after each, the bare invokes of its tensors."""
    det, iemb = rec.cropper.detector, rec.embedder
    whole, bare = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        rec.process(frame)
        t1 = time.perf_counter()
        det.interpreter.run(det._input)
        for _ in range(n):
            iemb.interpreter.run(iemb._input)
        t3 = time.perf_counter()
        whole.append((t1 - t) * 1e3)
        bare.append((t3 - t1) * 1e3)
    return median(whole), median(bare)


def _time_whole_frames(
    r: StageResult, rec: Recognizer, frames: Sequence[BenchFrame], repeats: int
) -> None:
    """The whole frame, and right after it the bare invokes of the same frame's tensors.

    Both are timed back to back (still in the input buffers), so that both see
    the same machine load; their ratio is the overhead.
    """
    faces: list[int] = []
    models_ms: list[float] = []
    for i, f in enumerate(frames):
        frame = Frame(f.rgb, i, time.time(), f.name)
        n = len(rec.process(frame).faces)
        faces.append(n)
        whole, bare = _time_one_frame(rec, frame, n, repeats)
        r.per_frame_ms.append(whole)
        models_ms.append(bare)
    r.frames, r.faces = len(frames), sum(faces)
    r.frame_ms = median(r.per_frame_ms)
    r.frame_total_ms = float(sum(r.per_frame_ms))
    r.fps = 1e3 * len(frames) / r.frame_total_ms if r.frame_total_ms > 0 else float("nan")
    r.overhead = overhead_ratio(r.per_frame_ms, models_ms)


def bench_stages(
    frames: Sequence[BenchFrame],
    runtime: str,
    threads: int,
    repeats: int,
    invokes: int,
    models: Models = DEFAULT_MODELS,
    face_stages: Sequence[FaceStage] = (),
) -> StageResult:
    """Stage medians for one runtime and thread count (int8 embedder in the whole frame).

    ``face_stages`` are measured after the built-in ones, into ``extra``.
    """
    r = StageResult(runtime, threads, embedder=models.label)
    rec = build_recognizer(models, runtime, threads)
    gallery, _ = enrol_gallery(rec, frames)
    rec.set_gallery(gallery)
    det = rec.cropper.detector
    r.detect_invoke_ms = median(time_ms(lambda: det.interpreter.run(det._input), invokes, 3))
    r.detect_ms, r.align_ms, faces = _time_detect_and_align(rec, frames, repeats)
    size = rec.cropper.size
    # No face in any frame: a grey crop still times the embedder.
    crop = faces[0].crop if faces else np.full((size, size, 3), 128, np.uint8)
    _time_embedders(r, rec, models.float32, crop, invokes)
    _time_whole_frames(r, rec, frames, repeats)
    ctx = StageContext(rec, models, runtime, threads, faces, repeats, invokes)
    r.extra = {s.key: s.measure(ctx) for s in face_stages}
    return r

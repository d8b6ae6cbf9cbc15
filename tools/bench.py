"""How fast and how lean the device path is, side by side with the usual alternative.

``python -m tools.bench`` measures, on the same frames in the same run:

* per stage, for the device's embedder (SFace, which the targets judge)
  and FaceNet beside it (medians over repeated runs after a warm-up,
  ``num_threads`` 1 and 2, each installed TFLite runtime): JPEG decode,
  detection (and the detector's bare invoke), alignment, embedding (float32
  and int8, bare invoke), matching against galleries of 10, 100 and 1,000
  people, and the whole frame (:meth:`edge.decide.recognizer.Recognizer.process`);
* the peer, ``face_recognition`` (dlib's HOG detector and ResNet embedder,
  its defaults): frames per second on the same frames, and correct
  identifications of the same labelled faces with the same people enrolled
  (ours with each embedder, at the device's threshold for that gallery);
* the overhead: whole-frame time / (detector + embedder invoke time);
* the real daemon as a subprocess (``python -m edge run``) replaying the
  frames to a local mosquitto: peak RSS, RSS and thread count over time,
  startup time to the first event, and frame-to-MQTT-event latency
  (p50, p95) measured at a subscriber on loopback.

It prints a table with every target and whether it passes, and writes the
numbers to ``reports/bench/bench.json``. Timing lives here, never in the
unit tests: ``tests/test_bench.py`` checks the pure helpers on given numbers.

Frames are the photos in ``../shared/faces`` and ``../shared/group`` and
frames of ``../shared/video/video.mp4`` when that folder exists, else the
sample photos matplotlib and scikit-image ship (so a fresh checkout can run
it). Every frame is scaled to fit the camera's 640x480 (``--camera``), as
the door camera would deliver it; both systems get exactly these arrays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edge.config import EmbedderConfig
from edge.errors import FacegateError
from edge.types import Image
from tools._common import run_tool

if TYPE_CHECKING:
    from edge.decide.recognizer import Recognizer
    from edge.identity.gallery import Gallery

log = logging.getLogger("tools.bench")

REPO_ROOT = Path(__file__).resolve().parents[1]
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

# The targets of issue 6: key -> (what, comparison, limit, unit).
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "int8_speedup": ("int8 embedder speed-up over float32, 2 threads", ">=", 1.4, "x"),
    "int8_size_ratio": ("int8 embedder file / float32 file", "<=", 0.3, "x"),
    "fps_vs_peer": ("pipeline fps / peer fps, same frames", ">=", 10.0, "x"),
    "id_vs_peer": ("correct identifications, ours - peer", ">=", 0.0, "faces"),
    "overhead": ("whole frame / (detector + embedder invoke)", "<=", 1.3, "x"),
    "match_1000_ms": ("matching 1,000 people, one face", "<", 1.0, "ms"),
    "daemon_rss_mb": ("daemon peak RSS", "<", 300.0, "MB"),
    "rss_growth_pct": ("daemon RSS growth, first sample to end", "<=", GROWTH_LIMIT_PCT, "%"),
    "thread_growth": ("daemon thread count growth", "<=", 0.0, "threads"),
    "event_p95_ms": ("frame to MQTT event p95, local broker", "<", 250.0, "ms"),
}


# ----------------------------------------------------------------------------- pure helpers


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


@dataclass(frozen=True)
class Target:
    """One target and its measured value.

    ``value`` None (or NaN) means not measured, ``note`` says why; infinity
    stands for "never happened" (no event arrived, the daemon died) and fails.
    """

    key: str
    what: str
    op: str
    limit: float
    unit: str
    value: float | None
    note: str = ""

    @property
    def status(self) -> str:
        """``pass``, ``fail`` or ``n/a``."""
        if self.value is None or math.isnan(self.value):
            return "n/a"
        v, lim = self.value, self.limit
        ok = {"<": v < lim, "<=": v <= lim, ">": v > lim, ">=": v >= lim}[self.op]
        return "pass" if ok else "fail"


def evaluate_targets(
    values: Mapping[str, float | None], notes: Mapping[str, str] | None = None
) -> list[Target]:
    """Every target of :data:`TARGETS` against the measured ``values`` (missing: n/a).

    A special rule: an int8 embedder slower than float32 (speed-up < 1) is a
    failure whatever the limit says, which ``>= 1.4`` already implies.
    """
    notes = notes or {}
    out = []
    for key, (what, op, limit, unit) in TARGETS.items():
        v = values.get(key)
        out.append(Target(key, what, op, limit, unit, v, notes.get(key, "")))
    return out


def all_pass(targets: Sequence[Target]) -> bool:
    """True when no target fails (n/a ones do not count against)."""
    return all(t.status != "fail" for t in targets)


def _fmt_num(v: float | None, unit: str = "") -> str:
    if v is None or math.isnan(v):
        return "-"
    if math.isinf(v):
        return "never" if v > 0 else "-inf"
    a = abs(v)
    s = (
        f"{v:.0f}"
        if a >= 100
        else f"{v:.1f}"
        if a >= 10
        else f"{v:.2f}"
        if a >= 0.1
        else f"{v:.3f}"
    )
    return f"{s} {unit}".rstrip()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, a rule under the header.

    The first column is left-aligned, the others right-aligned (numbers).
    """
    cells = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def format_targets(targets: Sequence[Target]) -> str:
    """The targets as a table: what, measured, target, PASS/FAIL/n/a (and why)."""
    rows = []
    for t in targets:
        limit = f"{t.op} {_fmt_num(t.limit, t.unit)}"
        status = t.status.upper() if t.status != "n/a" else "n/a"
        if t.note:
            status += f" ({t.note})"
        rows.append([t.what, _fmt_num(t.value, t.unit), limit, status])
    return format_table(["target", "measured", "limit", "result"], rows)


def overhead_ratio(whole_ms: Sequence[float], models_ms: Sequence[float]) -> float:
    """Whole-frame time over the bare model time on the same frames.

    ``sum_f whole_f / sum_f models_f`` where ``models_f`` is the detector
    invoke plus one embedder invoke per face of frame ``f``: 1.0 means all
    time is spent inside the two models.
    """
    models = float(sum(models_ms))
    return float(sum(whole_ms)) / models if models > 0 else float("nan")


# ----------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class BenchFrame:
    """One frame: an RGB image (already at camera size), who is in it if known, where from."""

    name: str
    rgb: Image
    label: str | None = None


def fit(rgb: Image, max_w: int, max_h: int) -> Image:
    """Scale down (never up) to fit ``max_w`` x ``max_h`` either way round, keeping aspect."""
    import cv2

    h, w = rgb.shape[:2]
    long_side, short_side = max(max_w, max_h), min(max_w, max_h)
    s = min(1.0, long_side / max(h, w), short_side / min(h, w))
    if s >= 1.0:
        return rgb
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))


def _sample_photos() -> list[tuple[str, Path]]:
    """The registry photos the demo uses (matplotlib's and scikit-image's samples)."""
    out: list[tuple[str, Path]] = []
    try:
        import matplotlib

        p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if p.is_file():
            out.append(("grace_hopper.jpg", p))
    except ImportError:
        pass
    try:
        import skimage

        d = Path(skimage.__file__).parent / "data"
        out += [(n, d / n) for n in ("astronaut.png", "camera.png") if (d / n).is_file()]
    except ImportError:
        pass
    return out


def _video_frames(path: Path, count: int) -> list[tuple[str, Image]]:
    """``count`` frames spread evenly over a video file (RGB)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0 or count <= 0:
            return []
        out = []
        for i in np.linspace(0, total - 1, min(count, total)).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
            ok, bgr = cap.read()
            if ok:
                out.append((f"video.mp4#{i}", np.ascontiguousarray(bgr[:, :, ::-1], np.uint8)))
        return out
    finally:
        cap.release()


def load_frames(
    shared: Path, max_w: int, max_h: int, video_frames: int, limit: int = 0
) -> tuple[list[BenchFrame], str]:
    """The bench frames and a line saying where they came from."""
    from edge.imageio import read_image

    frames: list[BenchFrame] = []
    faces = shared / "faces"
    if faces.is_dir():
        from tools._faces import list_people

        for it in list_people(faces):
            frames.append(
                BenchFrame(f"faces/{it.label}/{it.path.name}", read_image(it.path), it.label)
            )
        group = shared / "group"
        if group.is_dir():
            from edge.imageio import list_images

            frames += [BenchFrame(f"group/{p.name}", read_image(p)) for p in list_images(group)]
        video = shared / "video" / "video.mp4"
        if video.is_file():
            frames += [BenchFrame(n, im) for n, im in _video_frames(video, video_frames)]
        where = f"../shared (faces, group, video): {len(frames)} frames"
    else:
        photos = _sample_photos()
        if not photos:
            raise FacegateError(
                "no frames: ../shared is absent and neither matplotlib nor scikit-image "
                "(their sample photos) is installed (pip install -e '.[tools]')"
            )
        frames = [BenchFrame(n, read_image(p)) for n, p in photos]
        where = f"registry sample photos ({', '.join(n for n, _ in photos)}); ../shared absent"
    if limit:
        frames = frames[:limit]
    frames = [BenchFrame(f.name, fit(f.rgb, max_w, max_h), f.label) for f in frames]
    return frames, where


def maybe_same_person(a: str, b: str) -> bool:
    """Whether two folder names (``First_Last``) may name one person: the same surname.

    A stranger must certainly be someone else, and a first name is not
    reliable (LFW's ``Joseph_Biden`` is ``../shared/faces``' ``Joe_Biden``), so
    a shared last name is enough to leave a stranger out.
    """

    def surname(n: str) -> str:
        return n.replace(" ", "_").strip("_").rsplit("_", 1)[-1].lower()

    return surname(a) == surname(b)


def load_strangers(
    shared: Path, known: set[str], count: int, max_w: int, max_h: int
) -> list[BenchFrame]:
    """One photo each of ``count`` LFW people not among ``known`` (0: all of them).

    They are the open-set half of the identification comparison: a stranger
    must come out unknown. Taking every one (the default) leaves no room to
    pick a flattering subset; a smaller ``count`` spreads over the list.
    People who may be a known person under another name
    (:func:`maybe_same_person`) are left out.
    """
    from edge.imageio import list_images, read_image

    lfw = shared / "lfw"
    if count < 0 or not lfw.is_dir():
        return []
    people = sorted(
        p
        for p in lfw.iterdir()
        if p.is_dir() and not any(maybe_same_person(p.name, k) for k in known)
    )
    if not people:
        return []
    n = len(people) if count == 0 else min(count, len(people))
    out = []
    for i in np.unique(np.linspace(0, len(people) - 1, n).astype(int)):
        imgs = list_images(people[i], recursive=False)
        if imgs:
            rgb = fit(read_image(imgs[0]), max_w, max_h)
            out.append(BenchFrame(f"lfw/{people[i].name}/{imgs[0].name}", rgb, STRANGER))
    return out


# ----------------------------------------------------------------------------- timing


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


def enrolment_names(frames: Sequence[BenchFrame]) -> set[str]:
    """The frames whose face is enrolled: the first photo (in order) of each labelled person."""
    seen: set[str] = set()
    used: set[str] = set()
    for f in frames:
        if f.label is None or f.label == STRANGER or f.label in seen:
            continue
        seen.add(f.label)
        used.add(f.name)
    return used


def _enrol_gallery(rec: Recognizer, frames: Sequence[BenchFrame]) -> tuple[Gallery, set[str]]:
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
) -> tuple[float, float, Image]:
    """Median detection and per-face alignment ms, and one real aligned crop."""
    from edge.vision.align import align_face

    det, cropper = rec.cropper.detector, rec.cropper
    det_samples: list[float] = []
    align_samples: list[float] = []
    crop: Image | None = None
    for f in frames:
        det_samples += time_ms(partial(det.detect, f.rgb), repeats)
        for d in det.detect(f.rgb):
            warp = partial(align_face, f.rgb, d, cropper.template, cropper.size)
            align_samples += time_ms(warp, repeats)
            if crop is None:
                crop = warp()
    if crop is None:  # no face in any frame: a grey crop still times the embedder
        crop = np.full((cropper.size, cropper.size, 3), 128, np.uint8)
    return median(det_samples), median(align_samples), crop


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


def _time_whole_frames(
    r: StageResult, rec: Recognizer, frames: Sequence[BenchFrame], repeats: int
) -> None:
    """The whole frame, and right after it the bare invokes of the same frame's tensors.

    Both are timed back to back (still in the input buffers), so that both see
    the same machine load; their ratio is the overhead.
    """
    from edge.types import Frame

    det, iemb = rec.cropper.detector, rec.embedder
    faces: list[int] = []
    models_ms: list[float] = []
    for i, f in enumerate(frames):
        frame = Frame(f.rgb, i, time.time(), f.name)
        n = len(rec.process(frame).faces)
        faces.append(n)
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
        r.per_frame_ms.append(median(whole))
        models_ms.append(median(bare))
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
    models: Models = Models(),
) -> StageResult:
    """Stage medians for one runtime and thread count (int8 embedder in the whole frame)."""
    r = StageResult(runtime, threads, embedder=models.label)
    rec = build_recognizer(models, runtime, threads)
    gallery, _ = _enrol_gallery(rec, frames)
    rec.set_gallery(gallery)
    det = rec.cropper.detector
    r.detect_invoke_ms = median(time_ms(lambda: det.interpreter.run(det._input), invokes, 3))
    r.detect_ms, r.align_ms, crop = _time_detect_and_align(rec, frames, repeats)
    _time_embedders(r, rec, models.float32, crop, invokes)
    _time_whole_frames(r, rec, frames, repeats)
    return r


def bench_matching(dim: int, repeats: int, seed: int = 0) -> dict[int, float]:
    """Median ms to match one face against galleries of 10, 100 and 1,000 people."""
    from edge.identity.gallery import Gallery
    from edge.identity.matcher import Matcher
    from edge.numerics import Confidence, l2_normalize

    rng = np.random.default_rng(seed)
    out = {}
    for n in GALLERY_SIZES:
        g = Gallery("bench", dim)
        for p in range(n):
            g.add(
                f"person{p:04d}",
                rng.standard_normal((EMBEDDINGS_PER_PERSON, dim)).astype(np.float32),
            )
        m = Matcher(g, 0.4, 0.05, Confidence(0.4, 0.04))
        q = l2_normalize(rng.standard_normal((1, dim)).astype(np.float32))
        out[n] = median(time_ms(partial(m.match_many, q), repeats, 5))
    return out


# ----------------------------------------------------------------------------- identification


@dataclass
class IdResult:
    """Identification of the probes: labelled photos not enrolled, and strangers.

    ``correct`` counts known people named right; ``strangers_rejected`` the
    strangers called unknown; their sum is ``total_correct``.
    """

    enrolled: int = 0
    probes: int = 0
    correct: int = 0
    wrong_person: int = 0
    unknown_or_missed: int = 0
    strangers: int = 0
    strangers_rejected: int = 0
    false_accepts: int = 0
    rule: str = ""  # the open-set rule it answered with (threshold for its gallery, margin)

    @property
    def total_correct(self) -> int:
        return self.correct + self.strangers_rejected


def score(truth: str, said: str | None, r: IdResult) -> None:
    """Count one probe: ``truth`` is a name or :data:`STRANGER`, ``said`` None for unknown."""
    if truth == STRANGER:
        r.strangers += 1
        if said is None:
            r.strangers_rejected += 1
        else:
            r.false_accepts += 1
        return
    r.probes += 1
    if said == truth:
        r.correct += 1
    elif said is None:
        r.unknown_or_missed += 1
    else:
        r.wrong_person += 1


def identify_ours(
    frames: Sequence[BenchFrame], runtime: str, threads: int, models: Models = Models()
) -> IdResult:
    """Enrol each person's first photo, identify the largest face of every other labelled one."""

    rec = build_recognizer(models, runtime, threads)
    gallery, used = _enrol_gallery(rec, frames)
    rec.set_gallery(gallery)  # the threshold for this gallery's size, as on the device
    rule = f"{rec.operating_point.describe()}; margin {rec.margin:.3f}"
    r = IdResult(enrolled=len(gallery), rule=rule)
    for f in frames:
        if f.label is None or f.name in used:
            continue
        res = rec.identify(f.rgb)
        score(f.label, res[0].match.name if res else None, r)
    return r


@dataclass
class PeerResult:
    """The peer's speed on all frames and its identification of the labelled probes."""

    available: bool
    note: str = ""
    version: str = ""
    frames: int = 0
    total_ms: float = float("nan")
    fps: float = float("nan")
    ident: IdResult = field(default_factory=IdResult)


def peer_version() -> str | None:
    """The installed face_recognition version, or None when it cannot be imported."""
    try:
        import face_recognition  # noqa: F401
    except Exception:  # dlib missing or broken: the peer is simply absent
        return None
    try:
        return metadata.version("face_recognition")
    except metadata.PackageNotFoundError:
        return "unknown"


def bench_peer(frames: Sequence[BenchFrame], strangers: Sequence[BenchFrame] = ()) -> PeerResult:
    """``face_recognition`` with its defaults: HOG detector (upsample 1), ResNet encodings.

    Per frame: ``face_locations`` then ``face_encodings`` of every face (what
    a user of the library runs per frame), timed over ``frames``. The same
    first photo per person is enrolled (its largest face); a probe (its
    largest face) is named after the nearest enrolled encoding when its
    distance is within the customary tolerance 0.6, else unknown. The
    ``strangers`` are identified too but not timed.
    """
    version = peer_version()
    if version is None:
        return PeerResult(False, "peer not installed")
    import face_recognition as fr

    enrol_names: list[str] = []
    enrol_vecs: list[npt.NDArray[np.float64]] = []
    per_frame: list[tuple[BenchFrame, list[Any], list[Any]]] = []
    fr.face_encodings(frames[0].rgb, fr.face_locations(frames[0].rgb))  # warm-up
    total = 0.0
    for f in frames:
        t = time.perf_counter()
        locs = fr.face_locations(f.rgb)
        encs = fr.face_encodings(f.rgb, locs)
        total += time.perf_counter() - t
        per_frame.append((f, locs, encs))
    res = PeerResult(True, version=version, frames=len(frames), total_ms=total * 1e3)
    res.fps = len(frames) / total if total > 0 else float("nan")
    for f in strangers:  # identification only, not timed
        locs = fr.face_locations(f.rgb)
        per_frame.append((f, locs, fr.face_encodings(f.rgb, locs)))

    def largest(locs: list[Any], encs: list[Any]) -> Any:
        if not encs:
            return None
        areas = [(b - t) * (r - lft) for t, r, b, lft in locs]
        return encs[int(np.argmax(areas))]

    used = enrolment_names(frames)
    for f, locs, encs in per_frame:
        e = largest(locs, encs)
        if f.name in used and f.label is not None and e is not None:
            enrol_names.append(f.label)
            enrol_vecs.append(e)
    res.ident.enrolled = len(enrol_names)
    for f, locs, encs in per_frame:
        if f.label is None or f.name in used:
            continue
        e = largest(locs, encs)
        said = None
        if e is not None and enrol_vecs:
            d = fr.face_distance(np.stack(enrol_vecs), e)
            i = int(np.argmin(d))
            said = enrol_names[i] if d[i] <= PEER_TOLERANCE else None
        score(f.label, said, res.ident)
    return res


# ----------------------------------------------------------------------------- the daemon


@dataclass
class DaemonResult:
    """The daemon subprocess under a looping replay with MQTT on a local broker."""

    ran: bool
    note: str = ""
    seconds: float = 0.0
    startup_to_first_event_s: float = float("nan")
    events: int = 0
    latency_p50_ms: float = float("nan")
    latency_p95_ms: float = float("nan")
    peak_rss_mb: float = float("nan")
    samples: list[dict[str, float]] = field(default_factory=list)
    rss_growth_pct: float = float("nan")
    thread_growth: float = float("nan")
    exit_code: int | None = None
    failed: bool = False


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is JSON-compatible for our values
    return repr(v)


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """A TOML config file from sections of plain values."""
    path.write_text(
        "".join(
            f"[{s}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items()) + "\n"
            for s, keys in sections.items()
        )
    )
    return path


def _vm_hwm_mb(pid: int) -> float | None:
    """The kernel's peak resident set (``VmHWM``) of a process in MB, where Linux tells."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _prepare_daemon_files(frames: Sequence[BenchFrame], workdir: Path, models: Models) -> None:
    """The replay folder (the frames as JPEGs) and the enrolled gallery, in ``workdir``."""
    import cv2

    from edge.identity.gallery import Gallery

    replay = workdir / "replay"
    replay.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(replay / f"{i:04d}.jpg"), np.ascontiguousarray(f.rgb[:, :, ::-1]))
    rec = build_recognizer(models, "auto", 2)
    gallery, _ = _enrol_gallery(rec, frames)
    if len(gallery) == 0:
        gallery = Gallery.for_manifest(rec.embedder.manifest)
    gallery.save(workdir / "gallery.fgg", None)


def daemon_config(
    workdir: Path, host: str, port: int, fps: float, models: Models, device: str
) -> Path:
    """The daemon's config: a looping replay, one event per face frame, MQTT to the broker."""
    return write_config(
        workdir / "bench.toml",
        {
            "device": {"id": device},
            "camera": {"source": "folder", "path": "replay", "fps": fps, "loop": True},
            "detector": {"model": str(models.detector.resolve())},
            "embedder": {
                "model": str(models.int8.resolve()),
                "num_threads": 2,
                "edgetpu": models.edgetpu,
            },
            "gallery": {"path": "gallery.fgg"},
            "decision": {"single_frame": True, "cooldown_s": 0.0},
            "mqtt": {
                "enabled": True,
                "host": host,
                "port": port,
                "outbox_path": "outbox.sqlite",
            },
            "service": {"log_level": "WARNING", "state_dir": str(workdir)},
        },
    )


class EventListener:
    """A subscriber that records (receive time, event ``ts_unix``) of every event."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.host, self.port, self.topic = host, port, topic
        self._got: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._client: Any = None

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        try:
            ts = float(json.loads(msg.payload)["ts_unix"])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self._got.append((now, ts))

    def __enter__(self) -> EventListener:
        from paho.mqtt import client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        c.on_message = self._on_message
        c.connect(self.host, self.port, keepalive=30)
        c.subscribe(self.topic, qos=1)
        c.loop_start()
        self._client = c
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def count(self) -> int:
        with self._lock:
            return len(self._got)

    def received(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._got)


def _start_daemon(config: Path, errlog: Path) -> subprocess.Popen[bytes]:
    """``python -m edge run`` on the config; stderr to a file (a pipe nobody reads during a
    long soak would fill up and block the daemon)."""
    with errlog.open("w") as errf:
        return subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(config)],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=errf,
            stdin=subprocess.DEVNULL,
        )


def _sample_daemon(
    proc: subprocess.Popen[bytes],
    res: DaemonResult,
    t_start: float,
    sample_every: float,
    events: EventListener,
) -> bool:
    """Sample RSS and threads every ``sample_every`` s for ``res.seconds``; True if it died.

    Between samples it waits on the process itself (``wait`` with a timeout),
    so a daemon that exits is noticed at once.
    """
    import psutil

    p = psutil.Process(proc.pid)
    end = time.monotonic() + res.seconds
    next_sample = time.monotonic() + sample_every
    while time.monotonic() < end:
        try:
            proc.wait(timeout=max(0.0, min(next_sample, end) - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() < next_sample:
            continue
        next_sample += sample_every
        try:
            mem, threads = p.memory_info().rss / 2**20, p.num_threads()
        except psutil.Error:
            continue  # it just ended: the next wait says so
        res.samples.append(
            {"t_s": round(time.time() - t_start, 1), "rss_mb": round(mem, 1), "threads": threads}
        )
        say(
            f"  daemon t={res.samples[-1]['t_s']:6.1f}s rss={mem:6.1f} MB "
            f"threads={threads} events={events.count()}"
        )
    return False


def _stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after 15 s; the exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=5)


def summarise_daemon(res: DaemonResult, got: Sequence[tuple[float, float]], t_start: float) -> None:
    """Fill in the event counts, startup, latency and growth from what was recorded.

    Latency is receive time minus the event's ``ts_unix``; growth runs from the
    first sample after warm-up (a third of the run, at most a minute in: models,
    gallery and buffers are all in by then) to the last.
    """
    res.events = len(got)
    if got:
        res.startup_to_first_event_s = min(r for r, _ in got) - t_start
        lat = [(r - ts) * 1e3 for r, ts in got]
        res.latency_p50_ms, res.latency_p95_ms = percentile(lat, 50), percentile(lat, 95)
    if len(res.samples) >= 2:
        warm_t = min(60.0, res.seconds / 3)
        base = next((s for s in res.samples if s["t_s"] >= warm_t), res.samples[0])
        last = res.samples[-1]
        res.rss_growth_pct = growth_pct(base["rss_mb"], last["rss_mb"])
        res.thread_growth = last["threads"] - base["threads"]


def bench_daemon(
    frames: Sequence[BenchFrame],
    seconds: float,
    sample_every: float,
    fps: float,
    workdir: Path,
    models: Models = Models(),
) -> DaemonResult:
    """Run ``python -m edge run`` on a looping replay of the frames; sample RSS and threads."""
    try:
        import paho.mqtt.client  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as e:
        return DaemonResult(False, f"{e.name} not installed")
    from edge.delivery.topics import Topics
    from tools._broker import LocalBroker, mosquitto_path

    if mosquitto_path() is None:
        return DaemonResult(False, "mosquitto not installed")
    _prepare_daemon_files(frames, workdir, models)
    device = "bench-door"
    errlog = workdir / "daemon.stderr"
    res = DaemonResult(True, seconds=seconds)
    with LocalBroker(workdir / "broker") as broker:
        config = daemon_config(workdir, broker.host, broker.port, fps, models, device)
        topic = Topics.for_device("facegate", device).event
        with EventListener(broker.host, broker.port, topic) as events:
            t_start = time.time()
            proc = _start_daemon(config, errlog)
            try:
                died = _sample_daemon(proc, res, t_start, sample_every, events)
                res.peak_rss_mb = _vm_hwm_mb(proc.pid) or max(
                    (s["rss_mb"] for s in res.samples), default=float("nan")
                )
            finally:
                res.exit_code = _stop_daemon(proc)
                time.sleep(0.2)  # a grace period for events already on their way
    if died or res.exit_code != 0:
        tail = errlog.read_text(errors="replace").strip()[-300:]
        when = "during the run" if died else "on SIGTERM"
        res.failed = True
        res.note = f"daemon exited {res.exit_code} {when}: {tail}"
    summarise_daemon(res, events.received(), t_start)
    return res


# ----------------------------------------------------------------------------- the report


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    for pkg in (
        "ai-edge-litert",
        "tflite-runtime",
        "numpy",
        "opencv-python-headless",
        "dlib-bin",
        "dlib",
        "face-recognition",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[pkg] = metadata.version(pkg)
    return info


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _clean(o: Any) -> Any:
    """JSON-safe: NaN -> null, dataclasses -> dicts."""
    if isinstance(o, float):
        return _finite(o)
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


def _embedder_values(
    stages: Sequence[StageResult], vals: dict[str, float | None], notes: dict[str, str]
) -> None:
    """``int8_speedup``: every installed runtime must meet it at 2 threads, so the worst is
    judged; an int8 model slower than float32 at any thread count fails."""
    two = [s for s in stages if s.threads == 2]
    if two:
        vals["int8_speedup"] = min(s.embed_float_invoke_ms / s.embed_int8_invoke_ms for s in two)
    slow = [s for s in stages if s.embed_int8_invoke_ms > s.embed_float_invoke_ms]
    if slow:
        worst = min(slow, key=lambda s: s.embed_float_invoke_ms / s.embed_int8_invoke_ms)
        vals["int8_speedup"] = worst.embed_float_invoke_ms / worst.embed_int8_invoke_ms
        notes["int8_speedup"] = f"int8 slower than float32 with {worst.runtime}, t={worst.threads}"


DAEMON_KEYS = ("daemon_rss_mb", "rss_growth_pct", "thread_growth", "event_p95_ms")


def _daemon_values(
    daemon: DaemonResult, vals: dict[str, float | None], notes: dict[str, str]
) -> None:
    """The daemon's targets; no event at all is an infinite latency, a daemon that died
    fails what it could not show."""
    if not daemon.ran:
        notes.update(dict.fromkeys(DAEMON_KEYS, daemon.note))
        return
    vals["daemon_rss_mb"] = _finite(daemon.peak_rss_mb)
    vals["rss_growth_pct"] = _finite(daemon.rss_growth_pct)
    vals["thread_growth"] = _finite(daemon.thread_growth)
    vals["event_p95_ms"] = _finite(daemon.latency_p95_ms)
    if daemon.events == 0:
        vals["event_p95_ms"] = math.inf
        notes["event_p95_ms"] = "no event received"
    if daemon.failed:
        for k in DAEMON_KEYS:
            if vals.get(k) is None:
                vals[k] = math.inf
            notes[k] = daemon.note


def target_values(
    stages: Sequence[StageResult],
    size_ratio: float,
    match_ms: Mapping[int, float],
    ours: IdResult | None,
    peer: PeerResult,
    daemon: DaemonResult,
    preferred_runtime: str,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """The numbers the targets are judged on, and notes for the ones not measured.

    ``stages``, ``size_ratio``, ``match_ms`` and ``ours`` are the device's
    default embedder's; the other embedder is shown beside it, not judged.
    """
    vals: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    two = [s for s in stages if s.threads == 2]
    main = next((s for s in two if s.runtime == preferred_runtime), two[0] if two else None)
    _embedder_values(stages, vals, notes)
    vals["int8_size_ratio"] = size_ratio
    if main is not None:
        vals["overhead"] = main.overhead
    vals["match_1000_ms"] = match_ms.get(1000)
    if not peer.available:
        notes["fps_vs_peer"] = notes["id_vs_peer"] = peer.note
    elif main is not None:
        vals["fps_vs_peer"] = main.fps / peer.fps
        if ours is None or ours.probes == 0:
            notes["id_vs_peer"] = "no labelled faces (../shared/faces absent)"
        else:
            vals["id_vs_peer"] = float(ours.total_correct - peer.ident.total_correct)
    _daemon_values(daemon, vals, notes)
    return vals, notes


ID_HEADERS = [
    "system",
    "enrolled",
    "known probes",
    "named right",
    "wrong name",
    "unknown",
    "strangers",
    "rejected",
    "accepted",
    "all correct",
    "fps",
]


def id_row(title: str, r: IdResult, fps: float) -> list[str]:
    """One line of the identification table (columns :data:`ID_HEADERS`)."""
    nums = [
        r.enrolled,
        r.probes,
        r.correct,
        r.wrong_person,
        r.unknown_or_missed,
        r.strangers,
        r.strangers_rejected,
        r.false_accepts,
        r.total_correct,
    ]
    return [title, *map(str, nums), _fmt_num(fps)]


def stage_table(
    stages: Sequence[StageResult], decode_ms: float, match_ms: Mapping[str, Mapping[int, float]]
) -> str:
    """Per-stage medians, one column per (embedder, runtime, threads).

    ``match_ms``: per embedder label, the matching medians per gallery size
    (they depend only on the embedding size).
    """
    headers = ["stage (median ms)"] + [
        f"{s.embedder} {s.runtime} t={s.threads}".strip() for s in stages
    ]

    def row(title: str, attr: str) -> list[str]:
        return [title] + [_fmt_num(getattr(s, attr)) for s in stages]

    sizes = sorted({n for m in match_ms.values() for n in m})
    nan = float("nan")
    rows = [
        ["decode (640x480 JPEG -> RGB)"] + [_fmt_num(decode_ms)] * len(stages),
        row("detection (letterbox+invoke+NMS)", "detect_ms"),
        row("  detector invoke", "detect_invoke_ms"),
        row("alignment (per face)", "align_ms"),
        row("embedding float32 (per face)", "embed_float_ms"),
        row("  float32 invoke", "embed_float_invoke_ms"),
        row("embedding int8 (per face)", "embed_int8_ms"),
        row("  int8 invoke", "embed_int8_invoke_ms"),
        ["  int8 speed-up over float32"]
        + [_fmt_num(s.embed_float_invoke_ms / s.embed_int8_invoke_ms, "x") for s in stages],
    ]
    rows += [
        [f"matching {n:,} people (1 face)"]
        + [_fmt_num(match_ms.get(s.embedder, {}).get(n, nan)) for s in stages]
        for n in sizes
    ]
    rows += [
        row("whole frame, int8 (median)", "frame_ms"),
        ["whole frame, frames per second"] + [_fmt_num(s.fps) for s in stages],
        ["overhead: frame / model invokes"] + [_fmt_num(s.overhead, "x") for s in stages],
    ]
    return format_table(headers, rows)


def say(line: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the run


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="JSON report (default: %(default)s)"
    )
    ap.add_argument(
        "--shared", type=Path, default=SHARED, help="the shared data folder (default: ../shared)"
    )
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed runs per frame (after one warm-up)"
    )
    ap.add_argument("--invokes", type=int, default=50, help="timed bare model invokes")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="num_threads to measure")
    ap.add_argument(
        "--camera", default="640x480", help="frames are scaled to fit WxH (default %(default)s)"
    )
    ap.add_argument("--video-frames", type=int, default=20, help="frames taken from the video clip")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N frames (0: all)")
    ap.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="run the daemon this long, sampling every minute (0: a ~20 s check)",
    )
    ap.add_argument(
        "--daemon-fps", type=float, default=10.0, help="replay rate for the daemon (camera.fps)"
    )
    ap.add_argument("--detector", type=Path, default=DETECTOR, help="detector model")
    ap.add_argument(
        "--int8", type=Path, default=EMB_INT8, help="int8 embedder (the device's; judged)"
    )
    ap.add_argument("--float32", type=Path, default=EMB_FLOAT, help="its float32 model")
    ap.add_argument(
        "--compare-int8",
        type=Path,
        default=CMP_INT8,
        help="int8 embedder measured beside it, not judged (default: FaceNet)",
    )
    ap.add_argument("--compare-float32", type=Path, default=CMP_FLOAT, help="its float32 model")
    ap.add_argument("--no-compare", action="store_true", help="measure only the device's embedder")
    ap.add_argument(
        "--edgetpu",
        action="store_true",
        help="run the int8 embedder on a Coral Edge TPU (give --int8 the compiled model)",
    )
    ap.add_argument(
        "--strangers",
        type=int,
        default=0,
        help="LFW strangers to identify, one photo each (0: every LFW person not enrolled)",
    )
    ap.add_argument("--no-peer", action="store_true", help="skip face_recognition")
    ap.add_argument("--no-daemon", action="store_true", help="skip the daemon subprocess")
    return ap


def camera_size(text: str) -> tuple[int, int]:
    """``WxH`` (e.g. ``640x480``) as integers; FacegateError when it is not that."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise FacegateError(f"--camera: expected WxH like 640x480, got {text!r}") from None
    return w, h


def models_under_test(args: argparse.Namespace) -> list[Models]:
    """The device's embedder (judged) first, then the one shown beside it; all files present."""
    out = [Models(args.detector, args.int8, args.float32, args.edgetpu)]
    if not args.no_compare:
        out.append(Models(args.detector, args.compare_int8, args.compare_float32))
    for m in out:
        for p in (m.detector, m.int8, m.float32):
            if not p.is_file():
                raise FacegateError(
                    f"{p}: missing; build the models first (python -m tools.models build), "
                    "or --no-compare"
                )
    return out


@dataclass
class Variant:
    """One embedder's results: stages per runtime and thread count, matching, identification."""

    models: Models
    stages: list[StageResult]
    match_ms: dict[int, float]
    size_ratio: float
    ident: IdResult | None

    @property
    def label(self) -> str:
        return self.models.label


def bench_variant(
    models: Models,
    frames: Sequence[BenchFrame],
    strangers: Sequence[BenchFrame],
    runtimes: Sequence[str],
    args: argparse.Namespace,
) -> Variant:
    """Every per-embedder measurement of one embedder."""
    from edge.vision.manifest import load_manifest

    stages = []
    for rt in runtimes:
        for th in args.threads:
            say(f"bench: {models.label}: stages, {rt}, {th} thread(s)")
            stages.append(bench_stages(frames, rt, th, args.repeats, args.invokes, models))
    say(f"bench: {models.label}: matching, identification")
    dim = load_manifest(models.int8).embedding_size or 512
    match_ms = bench_matching(dim, max(200, args.invokes))
    size_ratio = models.int8.stat().st_size / models.float32.stat().st_size
    known = any(f.label is not None for f in frames)
    ident = identify_ours([*frames, *strangers], runtimes[0], 2, models) if known else None
    return Variant(models, stages, match_ms, size_ratio, ident)


def run_peer(
    args: argparse.Namespace, frames: Sequence[BenchFrame], strangers: Sequence[BenchFrame]
) -> PeerResult:
    if args.no_peer:
        return PeerResult(False, "peer skipped (--no-peer)")
    say("bench: the peer (face_recognition)")
    return bench_peer(frames, strangers)


def run_daemon(
    args: argparse.Namespace, frames: Sequence[BenchFrame], models: Models
) -> DaemonResult:
    if args.no_daemon:
        return DaemonResult(False, "daemon skipped (--no-daemon)")
    seconds = args.soak * 60 if args.soak > 0 else 20.0
    every = 60.0 if args.soak > 0 else 2.0
    say(f"bench: daemon for {seconds:.0f} s ({models.label})")
    with tempfile.TemporaryDirectory(prefix="facegate-bench-") as tmp:
        return bench_daemon(frames, seconds, every, args.daemon_fps, Path(tmp), models)


@dataclass
class BenchRun:
    """Everything one run measured, for the text and the JSON report."""

    machine: dict[str, Any]
    where: str
    camera: tuple[int, int]
    frames: int
    runtimes: list[str]
    missing: list[str]
    decode_ms: float
    variants: list[Variant]
    peer: PeerResult
    daemon: DaemonResult
    targets: list[Target]
    soak: bool
    wall_s: float = 0.0


def identification_lines(run: BenchRun) -> list[str]:
    """The identification table: each embedder of ours, then the peer, and the rules used."""
    peer = run.peer
    peer_name = f"face_recognition {peer.version} (HOG+ResNet)"
    fps = {
        v.label: next((s.fps for s in v.stages if s.threads == 2), v.stages[-1].fps)
        for v in run.variants
    }
    ours = [v for v in run.variants if v.ident is not None]
    if not ours:
        peer_line = f"{peer_name} {_fmt_num(peer.fps)} fps" if peer.available else peer.note
        return [
            f"identification: n/a (no labelled faces); facegate "
            f"{_fmt_num(fps[run.variants[0].label])} fps, peer: {peer_line}",
            "",
        ]
    rows = [
        id_row(f"facegate {v.label} int8, 2 threads", v.ident, fps[v.label])
        for v in ours
        if v.ident
    ]
    if peer.available:
        rows.append(id_row(peer_name, peer.ident, peer.fps))
    else:
        rows.append([f"face_recognition: {peer.note}"] + ["-"] * (len(ID_HEADERS) - 1))
    lines = [format_table(ID_HEADERS, rows)]
    lines += [f"{v.label}: {v.ident.rule}" for v in ours if v.ident]
    lines += [f"peer: nearest encoding within tolerance {PEER_TOLERANCE}", ""]
    return lines


def daemon_lines(d: DaemonResult, soak: bool) -> list[str]:
    if not d.ran:
        return [f"daemon: {d.note}"]
    lines = [
        f"daemon: {d.seconds:.0f} s, {d.events} events, startup to first event "
        f"{_fmt_num(d.startup_to_first_event_s, 's')}, frame->event p50 "
        f"{_fmt_num(d.latency_p50_ms, 'ms')} p95 {_fmt_num(d.latency_p95_ms, 'ms')}, "
        f"peak RSS {_fmt_num(d.peak_rss_mb, 'MB')}"
    ]
    if soak and d.samples:
        lines.append(
            "daemon over time (s: RSS MB / threads): "
            + ", ".join(f"{s['t_s']:.0f}: {s['rss_mb']:.0f}/{s['threads']:.0f}" for s in d.samples)
        )
    return lines


def render_text(run: BenchRun) -> str:
    """The printed report: machine, stage table, identification, daemon, targets, verdict."""
    m, v0 = run.machine, run.variants[0]
    stages = [s for v in run.variants for s in v.stages]
    lines = [
        f"facegate bench: {m['cpu']}, {m['cores']} cores, Python {m['python']}",
        f"frames: {run.where}; scaled to fit {run.camera[0]}x{run.camera[1]}; "
        f"{v0.stages[0].faces if v0.stages else 0} faces",
        "runtimes: "
        + ", ".join(run.runtimes)
        + (f" (not installed: {', '.join(run.missing)})" if run.missing else ""),
        f"embedders: {', '.join(v.label for v in run.variants)} (the targets judge "
        f"{v0.label}, the device's)",
        "",
        stage_table(stages, run.decode_ms, {v.label: v.match_ms for v in run.variants}),
        "",
        *identification_lines(run),
        *daemon_lines(run.daemon, run.soak),
        "",
        format_targets(run.targets),
        "",
    ]
    ok = all_pass(run.targets)
    lines.append(f"{'ALL TARGETS PASS' if ok else 'SOME TARGETS FAIL'} ({run.wall_s:.0f} s)")
    return "\n".join(lines)


def json_report(run: BenchRun) -> dict[str, Any]:
    """``bench.json``: every number, the default embedder's first."""

    def variant(v: Variant) -> dict[str, Any]:
        ident = v.ident
        return {
            "embedder": v.label,
            "int8": v.models.int8.name,
            "float32": v.models.float32.name,
            "stages": [
                {k: x for k, x in asdict(s).items() if k != "per_frame_ms"} for s in v.stages
            ],
            "matching_ms": {str(k): x for k, x in v.match_ms.items()},
            "int8_size_ratio": v.size_ratio,
            "identification": {**asdict(ident), "total_correct": ident.total_correct}
            if ident
            else None,
        }

    return {
        "machine": run.machine,
        "frames": {"source": run.where, "count": run.frames, "camera": list(run.camera)},
        "runtimes": run.runtimes,
        "runtimes_missing": run.missing,
        "decode_ms": run.decode_ms,
        "embedders": [variant(v) for v in run.variants],
        "peer": {
            **asdict(run.peer),
            "total_correct": run.peer.ident.total_correct,
            "tolerance": PEER_TOLERANCE,
        },
        "daemon": asdict(run.daemon),
        "targets": [{**asdict(t), "status": t.status} for t in run.targets],
        "all_pass": all_pass(run.targets),
        "wall_s": run.wall_s,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from edge.vision.manifest import write_json_atomic
    from edge.vision.runtime import RUNTIMES, available_runtimes

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    max_w, max_h = camera_size(args.camera)
    if args.repeats < 1 or args.invokes < 1 or min(args.threads) < 1:
        raise FacegateError("--repeats, --invokes and --threads must be at least 1")
    variants = models_under_test(args)
    t0 = time.monotonic()
    frames, where = load_frames(args.shared, max_w, max_h, args.video_frames, args.limit)
    say(f"bench: {where}")
    runtimes = available_runtimes()
    if not runtimes:
        raise FacegateError("no TFLite runtime installed: pip install ai-edge-litert")
    say("bench: decode")
    decode = bench_decode(frames, args.repeats)
    known = {f.label for f in frames if f.label is not None}
    strangers = load_strangers(args.shared, known, args.strangers, max_w, max_h) if known else []
    measured = [bench_variant(m, frames, strangers, runtimes, args) for m in variants]
    peer = run_peer(args, frames, strangers)
    daemon = run_daemon(args, frames, variants[0])
    v0 = measured[0]
    vals, notes = target_values(
        v0.stages, v0.size_ratio, v0.match_ms, v0.ident, peer, daemon, runtimes[0]
    )
    run = BenchRun(
        machine(),
        where,
        (max_w, max_h),
        len(frames),
        runtimes,
        [r for r in RUNTIMES if r not in runtimes],
        decode,
        measured,
        peer,
        daemon,
        evaluate_targets(vals, notes),
        args.soak > 0,
    )
    run.wall_s = time.monotonic() - t0
    print(render_text(run))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, _clean(json_report(run)))
    say(f"bench: wrote {args.out}")
    return 0 if all_pass(run.targets) else 1


if __name__ == "__main__":
    raise SystemExit(run_tool("tools.bench", main))

"""Labelled face folders -> embeddings, through the device's own pipeline.

Calibration, evaluation and benchmarks must measure exactly what the door
runs, so faces go through :class:`edge.decide.recognizer.FaceCropper` (BlazeFace,
then alignment to the embedder's template) and :class:`edge.vision.embedder.Embedder`
(the int8 or float TFLite model, normalised and quantised as its manifest
says). One image gives at most one embedding: its largest usable face.

A folder of people is ``<root>/<Person>/<image>``; people and images are
taken in sorted order so every run sees the same sequence.

Each photo goes through :func:`edge.decide.recognizer.measure_photo`, the path
``facegate enroll`` uses too, so besides the embedding every photo carries the
enrolment checks' measurements (:class:`edge.identity.enrol.FaceQuality`): the door
protocol of ``tools.evaluate`` enrols exactly as a door would.

Embedding a few thousand photos takes minutes on a small CPU, so results can
be cached in an ``.npz`` inside the checkout (``reports/cache/`` by default,
git-ignored), one file per model, detector and face size limit, one entry per
photo keyed by its path, size and modification time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.config import MODELS_DIR, EmbedderConfig
from edge.errors import FacegateError, ImageError
from edge.identity.enrol import FaceQuality, PhotoMeasure
from edge.imageio import IMAGE_SUFFIXES, read_image
from tools._common import progress as bar

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / "reports" / "cache"
DEFAULT_DETECTOR = MODELS_DIR / "face_detection_short_range.tflite"
# The device's default embedder (edge.config) and its float32 reference.
DEFAULT_MODEL = MODELS_DIR / EmbedderConfig().model
DEFAULT_FLOAT_MODEL = DEFAULT_MODEL.with_name(DEFAULT_MODEL.name.replace("_int8", "_float32"))


@dataclass(frozen=True)
class LabelledImage:
    """One photo of a known person."""

    label: str
    path: Path


@dataclass(frozen=True)
class FaceSet:
    """Embeddings of labelled photos, and the photos that gave none.

    ``labels[i]``/``paths[i]``/``quality[i]`` belong to ``embeddings[i]``
    (unit vectors). ``failed`` holds the photos with no usable face (or
    unreadable), with why.
    """

    labels: list[str]
    paths: list[Path]
    embeddings: npt.NDArray[np.float32]
    failed: list[tuple[LabelledImage, str]] = field(default_factory=list)
    model_sha256: str = ""
    quality: list[FaceQuality] = field(default_factory=list)

    def measures(self) -> dict[Path, PhotoMeasure]:
        """Photo path -> what ``facegate enroll`` would see in it (embedding and quality)."""
        out = {
            p: PhotoMeasure(self.embeddings[i], self.quality[i] if self.quality else None)
            for i, p in enumerate(self.paths)
        }
        out.update({it.path: PhotoMeasure(None, None, why) for it, why in self.failed})
        return out

    @property
    def n_not_detected(self) -> int:
        return len(self.failed)

    def index_of(self) -> dict[Path, int]:
        """Photo path -> row of ``embeddings``."""
        return {p: i for i, p in enumerate(self.paths)}

    def subset(self, rows: Sequence[int]) -> FaceSet:
        r = list(rows)
        return FaceSet(
            [self.labels[i] for i in r],
            [self.paths[i] for i in r],
            self.embeddings[r] if r else self.embeddings[:0],
            [],
            self.model_sha256,
            [self.quality[i] for i in r] if self.quality else [],
        )


def list_people(folder: Path | str, min_images: int = 1) -> list[LabelledImage]:
    """Photos of ``<folder>/<Person>/*`` (sorted), keeping people with ``min_images`` or more."""
    root = Path(folder)
    if not root.is_dir():
        raise FacegateError(f"{root}: not a folder of people (expected <folder>/<Person>/<image>)")
    out: list[LabelledImage] = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = sorted(
            p for p in person.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if len(imgs) >= min_images:
            out.extend(LabelledImage(person.name, p) for p in imgs)
    if not out:
        raise FacegateError(f"{root}: no person folders with images")
    return out


def read_lfw_pairs(pairs_file: Path | str, root: Path | str) -> list[tuple[Path, Path, bool]]:
    """LFW's ``pairs.txt``: ``name i j`` (same person) or ``name1 i name2 j`` (different).

    Images are ``<root>/<name>/<name>_<NNNN>.jpg``. The header line (folds,
    pairs per fold) is skipped; pairs whose photos are absent are left out.
    """
    p = Path(pairs_file)
    base = Path(root)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FacegateError(f"{p}: cannot read pairs file ({e})") from None

    def img(name: str, idx: str) -> Path:
        return base / name / f"{name}_{int(idx):04d}.jpg"

    out: list[tuple[Path, Path, bool]] = []
    for n, line in enumerate(lines):
        f = line.split()
        try:
            if len(f) == 3:
                pair = (img(f[0], f[1]), img(f[0], f[2]), True)
            elif len(f) == 4:
                pair = (img(f[0], f[1]), img(f[2], f[3]), False)
            elif n == 0 or not f:
                continue
            else:
                raise ValueError(line)
        except ValueError:
            raise FacegateError(f"{p}:{n + 1}: not an LFW pair line: {line!r}") from None
        if pair[0].is_file() and pair[1].is_file():
            out.append(pair)
    if not out:
        raise FacegateError(f"{p}: no pairs whose photos exist under {base}")
    return out


def _photo_key(path: Path) -> str:
    """A photo's cache key: its absolute path, size and modification time."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


_QUALITY_FIELDS = ("face_px", "sharpness", "yaw", "faces", "area_ratio")


class EmbeddingCache:
    """Per-photo results of one (model, detector, face size) in one ``.npz``.

    Each entry is a photo key (:func:`_photo_key`) with either a
    :class:`~edge.identity.enrol.PhotoMeasure` (embedding and quality) or the reason
    it has none. Tools that embed overlapping sets (calibrate, evaluate,
    bench) share it; a changed or moved photo simply misses.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.measures: dict[str, PhotoMeasure] = {}
        self.failed: dict[str, str] = {}
        self.dirty = False
        if path.is_file():
            try:
                with np.load(path) as z:
                    keys = json.loads(str(z["keys"]))
                    E = np.asarray(z["embeddings"], dtype=np.float32)
                    Q = np.asarray(z["quality"], dtype=np.float64)
                    failed = json.loads(str(z["failed"]))
                for i, k in enumerate(keys):
                    q = dict(zip(_QUALITY_FIELDS, Q[i].tolist(), strict=True))
                    q["faces"] = int(q["faces"])
                    self.measures[k] = PhotoMeasure(E[i], FaceQuality(**q))
                self.failed = {str(k): str(v) for k, v in failed.items()}
            except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
                # A broken cache is only a cache: start afresh.
                log.warning("ignoring unreadable embedding cache %s (%s)", path, e)

    def get(self, key: str) -> PhotoMeasure | str | None:
        if key in self.measures:
            return self.measures[key]
        return self.failed.get(key)

    def put(self, key: str, value: PhotoMeasure | str) -> None:
        if isinstance(value, str):
            self.failed[key] = value
        else:
            self.measures[key] = value
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.measures)
        ms = [self.measures[k] for k in keys]
        E = (
            np.stack([np.asarray(m.embedding) for m in ms]).astype(np.float32)
            if keys
            else np.zeros((0, 1), np.float32)
        )
        Q = np.array(
            [[float(getattr(m.quality, f)) for f in _QUALITY_FIELDS] for m in ms],
            dtype=np.float64,
        ).reshape(len(keys), len(_QUALITY_FIELDS))
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(
            tmp,
            keys=np.array(json.dumps(keys)),
            embeddings=E,
            quality=Q,
            failed=np.array(json.dumps(self.failed)),
        )
        tmp.replace(self.path)
        self.dirty = False


class FaceEmbedder:
    """The device's detector + aligner + embedder, for offline tools."""

    def __init__(
        self,
        model_path: Path | str = DEFAULT_MODEL,
        detector_path: Path | str = DEFAULT_DETECTOR,
        min_face: int = 40,
        runtime: str = "auto",
        num_threads: int = 2,
    ) -> None:
        from edge.decide.recognizer import FaceCropper
        from edge.vision.detector import FaceDetector
        from edge.vision.embedder import Embedder

        self.embedder = Embedder.load(model_path, runtime=runtime, num_threads=num_threads)
        self.detector = FaceDetector.load(detector_path, runtime=runtime, num_threads=num_threads)
        self.cropper = FaceCropper(
            self.detector,
            template=self.embedder.manifest.alignment or "facenet160",
            size=self.embedder.size[0],
            min_face=min_face,
        )
        self.min_face = min_face

    @property
    def model_sha256(self) -> str:
        return self.embedder.sha256

    @property
    def detector_sha256(self) -> str:
        return self.detector.manifest.sha256

    def measure_image(self, path: Path) -> PhotoMeasure | str:
        """The largest usable face's embedding and quality (as ``facegate enroll`` sees it),
        or why there is none."""
        from edge.decide.recognizer import measure_photo

        try:
            rgb = read_image(path)
        except ImageError as e:
            return f"unreadable: {e}"
        m = measure_photo(self.cropper, self.embedder, rgb)
        return m.error if m.error else m

    def embed_image(self, path: Path) -> npt.NDArray[np.float32] | str:
        """The unit embedding of the largest usable face, or why there is none."""
        m = self.measure_image(path)
        if isinstance(m, str):
            return m
        assert m.embedding is not None  # measure_photo sets it whenever there is no error
        return m.embedding

    def embed_items(
        self,
        items: Sequence[LabelledImage],
        cache_dir: Path | None = DEFAULT_CACHE,
        progress: bool = False,
        desc: str = "embedding",
    ) -> FaceSet:
        """Embed labelled photos (largest face each); photos already in the cache are reused."""
        cache = None
        if cache_dir is not None:
            # "measures2": entries carry the enrolment quality besides the embedding.
            name = (
                f"measures2-{self.model_sha256[:16]}-{self.detector_sha256[:16]}-"
                f"{self.min_face}.npz"
            )
            cache = EmbeddingCache(cache_dir / name)
        labels: list[str] = []
        paths: list[Path] = []
        vecs: list[npt.NDArray[np.float32]] = []
        quality: list[FaceQuality] = []
        failed: list[tuple[LabelledImage, str]] = []
        for n, it in enumerate(bar(items, desc, total=len(items), enabled=progress, unit="img")):
            key = _photo_key(it.path) if cache is not None else ""
            r = cache.get(key) if cache is not None else None
            if r is None:
                r = self.measure_image(it.path)
                if cache is not None:
                    cache.put(key, r)
                    if n % 500 == 499:  # long runs keep their progress if interrupted
                        cache.save()
            if isinstance(r, str):
                failed.append((it, r))
                continue
            assert r.embedding is not None and r.quality is not None
            labels.append(it.label)
            paths.append(it.path)
            vecs.append(r.embedding)
            quality.append(r.quality)
        if cache is not None:
            cache.save()
        dim = self.embedder.dim
        E = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, dim), np.float32)
        return FaceSet(labels, paths, E, failed, self.model_sha256, quality)


def embed_folder(
    model_path: Path | str,
    folder: Path | str,
    detector_path: Path | str = DEFAULT_DETECTOR,
    min_images: int = 1,
    min_face: int = 40,
    runtime: str = "auto",
    num_threads: int = 2,
    cache_dir: Path | None = DEFAULT_CACHE,
    progress: bool = False,
) -> FaceSet:
    """Embed every photo of ``<folder>/<Person>/*`` (largest face each).

    Returns a :class:`FaceSet`: labels, paths and (N, D) unit embeddings of
    the photos with a usable face, plus the photos without one
    (``n_not_detected``).
    """
    items = list_people(folder, min_images)
    fe = FaceEmbedder(model_path, detector_path, min_face, runtime, num_threads)
    return fe.embed_items(items, cache_dir, progress)

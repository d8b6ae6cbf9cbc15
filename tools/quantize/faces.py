"""Calibration faces for :mod:`tools.quantize`: photos -> aligned crops, as the device sees them.

Every photo goes through :class:`edge.decide.recognizer.FaceCropper` (the device's
detector and alignment); a share of each person's photos is held aside
(:func:`holdout_split`) and optional seeded augmentations add variety.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.errors import ImageError, ModelError
from edge.imageio import list_images, read_image
from edge.types import Image
from tools._common import progress
from tools.quantize.common import DEFAULT_DETECTOR

log = logging.getLogger("tools.quantize")


@dataclass(frozen=True)
class FaceCrops:
    """Aligned face crops (N, H, W, 3) uint8 RGB with their labels ("" when unlabelled)."""

    crops: npt.NDArray[np.uint8]
    labels: list[str]
    names: list[str]
    failed: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Sequence[int]) -> FaceCrops:
        ix = list(idx)
        return FaceCrops(
            self.crops[ix] if ix else self.crops[:0],
            [self.labels[i] for i in ix],
            [self.names[i] for i in ix],
        )


def labelled_images(folder: Path | str) -> list[tuple[str, Path]]:
    """(label, path) of the photos in ``<folder>/<Person>/...`` or flat ``<folder>/*``, sorted.

    The label is the first folder under ``folder`` ("" for a photo directly
    in it); the listing is :func:`edge.imageio.list_images`'s.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ImageError(f"{root}: calibration folder does not exist")
    out = []
    for p in list_images(root):
        parts = p.relative_to(root).parts
        out.append((parts[0] if len(parts) > 1 else "", p))
    return sorted(out)


def collect_faces(
    images: Iterable[tuple[str, str, Image]],
    detector_path: Path | str = DEFAULT_DETECTOR,
    size: tuple[int, int] = (160, 160),
    template: str = "facenet160",
    min_face: int = 40,
    show_progress: bool = True,
    total: int | None = None,
) -> FaceCrops:
    """Detect and align the largest face of each (label, name, rgb) image, as the device does."""
    from edge.decide.recognizer import FaceCropper
    from edge.vision.detector import FaceDetector

    if size[0] != size[1]:
        raise ModelError(f"alignment needs a square input, not {size[0]}x{size[1]}")
    cropper = FaceCropper(FaceDetector.load(detector_path), template, size[0], min_face)
    crops, labels, names = [], [], []
    failed = 0
    for label, name, rgb in progress(images, "detecting faces", total, show_progress, "img"):
        faces = cropper.crops(rgb)
        if not faces:
            failed += 1
            continue
        crops.append(faces[0].crop)
        labels.append(label)
        names.append(name)
    arr = np.stack(crops) if crops else np.zeros((0, size[1], size[0], 3), np.uint8)
    return FaceCrops(arr, labels, names, failed)


def read_folder(folder: Path | str) -> Iterator[tuple[str, str, Image]]:
    """(label, file name, rgb) for each readable photo of a face folder (bad files skipped)."""
    for label, p in labelled_images(folder):
        try:
            yield label, f"{label}/{p.name}" if label else p.name, read_image(p)
        except ImageError as e:
            log.warning("skipping %s", e)


def _base(name: str) -> str:
    """The photo an (augmented) crop came from: ``a.jpg#aug3`` -> ``a.jpg``."""
    return name.split("#aug", 1)[0]


def holdout_split(
    labels: Sequence[str], fraction: float, names: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """Indices (calibration, held aside): every k-th photo of each person is held aside.

    With ``k = round(1 / fraction)``, a person's photos ``k-1, 2k-1, ...`` go
    aside, so one with fewer than ``k`` photos stays whole in calibration;
    unlabelled photos are one group. Augmented copies follow their photo
    (``names``), so a held-aside face never leaks into calibration.
    Deterministic: no random state.
    """
    if fraction <= 0:
        return list(range(len(labels))), []
    k = max(2, round(1.0 / fraction))
    names = list(names) if names is not None else [str(i) for i in range(len(labels))]
    ordinal: dict[tuple[str, str], int] = {}
    per_label: dict[str, int] = {}
    cal: list[int] = []
    held: list[int] = []
    for i, (lab, name) in enumerate(zip(labels, names, strict=True)):
        key = (lab, _base(name))
        if key not in ordinal:
            ordinal[key] = per_label.get(lab, 0)
            per_label[lab] = ordinal[key] + 1
        (held if ordinal[key] % k == k - 1 else cal).append(i)
    return cal, held


def augment(rgb: Image, rng: np.random.Generator) -> Image:
    """A randomly flipped, rotated (+-12 deg), scaled (0.8-1.15), lit and contrasted copy.

    ``out = clip((x - 128) * contrast + 128 + brightness)`` with contrast in
    [0.75, 1.25] and brightness in [-30, 30]; geometry by one affine warp.
    """
    import cv2

    img = rgb[:, ::-1] if rng.random() < 0.5 else rgb
    h, w = img.shape[:2]
    angle = float(rng.uniform(-12, 12))
    scale = float(rng.uniform(0.8, 1.15))
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    warped = cv2.warpAffine(np.ascontiguousarray(img), M, (w, h), borderMode=cv2.BORDER_REFLECT)
    contrast = float(rng.uniform(0.75, 1.25))
    bright = float(rng.uniform(-30, 30))
    out = (warped.astype(np.float32) - 128.0) * contrast + 128.0 + bright
    return np.asarray(np.clip(out, 0, 255), dtype=np.uint8)


def augmented(
    images: Iterable[tuple[str, str, Image]], copies: int, seed: int = 0
) -> Iterator[tuple[str, str, Image]]:
    """Each image as is, then ``copies`` augmented variants of it (seeded, reproducible)."""
    rng = np.random.default_rng(seed)
    for label, name, rgb in images:
        yield label, name, rgb
        for i in range(copies):
            yield label, f"{name}#aug{i}", augment(rgb, rng)

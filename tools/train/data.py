"""Training data: a folder of people -> checked, split, aligned crops and P x K batches.

* :func:`list_photos` reads ``<folder>/<Person>/<photo>`` and refuses, in one
  line, a folder with fewer than 2 people or with people under 2 photos.
* :func:`split_people` splits the *people* (never the photos of one person)
  into training, validation (early stopping) and test (the before/after
  numbers) with a recorded seed: a held-aside person is never trained on.
* :func:`align_photos` sends every photo through the device's own detector
  and alignment (:func:`tools.quantize.collect_faces`, i.e.
  :class:`edge.decide.recognizer.FaceCropper`), so training sees what the door sees.
* :func:`pk_batch` draws P people x K photos and :func:`augment_crop` flips,
  shifts and re-lights each crop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.errors import FacegateError, ImageError
from edge.imageio import read_image
from edge.types import Image
from tools._faces import list_people

log = logging.getLogger("tools.train")

U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Split:
    """People by role; each list sorted. ``seed`` is the one the split was drawn with."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    seed: int

    def role(self, person: str) -> str:
        for name in ("train", "val", "test"):
            if person in getattr(self, name):
                return name
        return ""


@dataclass(frozen=True)
class Crops:
    """Aligned face crops (N, S, S, 3) uint8 RGB with their person and source photo."""

    crops: U8
    labels: tuple[str, ...]
    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def of(self, people: Sequence[str], max_per_person: int = 0) -> Crops:
        """The crops of ``people`` (in order of the data), at most ``max_per_person`` each
        (0: all), the first ones of each person in file order."""
        keep = set(people)
        count: dict[str, int] = {}
        rows = []
        for i, lab in enumerate(self.labels):
            if lab in keep and (max_per_person <= 0 or count.get(lab, 0) < max_per_person):
                count[lab] = count.get(lab, 0) + 1
                rows.append(i)
        return Crops(
            self.crops[rows] if rows else self.crops[:0],
            tuple(self.labels[i] for i in rows),
            tuple(self.paths[i] for i in rows),
        )

    def per_person(self) -> dict[str, list[int]]:
        """Person -> rows of their crops."""
        out: dict[str, list[int]] = {}
        for i, lab in enumerate(self.labels):
            out.setdefault(lab, []).append(i)
        return out


def list_photos(
    folder: Path | str, min_photos: int = 2, skip_few: bool = False
) -> dict[str, list[Path]]:
    """Person -> sorted photo paths of ``<folder>/<Person>/*``, checked for training.

    A person with fewer than ``min_photos`` photos cannot give an
    anchor-positive pair: that is an error naming them (or, with
    ``skip_few``, they are left out). Fewer than 2 people is an error too.
    """
    by_person: dict[str, list[Path]] = {}
    for item in list_people(folder, min_images=1):
        by_person.setdefault(item.label, []).append(item.path)
    few = sorted(p for p, photos in by_person.items() if len(photos) < min_photos)
    if few and not skip_few:
        raise FacegateError(
            f"{folder}: {len(few)} of {len(by_person)} people have fewer than {min_photos} "
            f"photos ({', '.join(few[:3])}{', ...' if len(few) > 3 else ''}); every person needs "
            f"{min_photos} (add photos, remove them, or pass --skip-few to leave them out)"
        )
    for p in few:
        del by_person[p]
    if len(by_person) < 2:
        raise FacegateError(
            f"{folder}: {len(by_person)} person(s) with {min_photos}+ photos; the triplet loss "
            "needs at least 2 people (a negative is another person)"
        )
    return by_person


def split_people(people: Sequence[str], holdout: float, seed: int, val_share: float = 0.5) -> Split:
    """Split people (not photos) into train / validation / test, reproducibly from ``seed``.

    The sorted names are shuffled with ``numpy.random.default_rng(seed)``;
    ``round(holdout * n)`` of them are held aside and ``round(val_share *
    held)`` of those are the validation people (early stopping), the rest
    test people (the reported numbers). Each role needs 2 people (an
    impostor pair needs two).
    """
    names = sorted(set(people))
    if not 0.0 < holdout < 1.0:
        raise FacegateError(f"--holdout must be between 0 and 1, got {holdout}")
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    n_held = round(holdout * len(names))
    held, train = order[:n_held], order[n_held:]
    n_val = round(val_share * len(held))
    val, test = held[:n_val], held[n_val:]
    for role, group in (("training", train), ("validation", val), ("test", test)):
        if len(group) < 2:
            raise FacegateError(
                f"{len(names)} people with --holdout {holdout:g} leave {len(group)} {role} "
                f"people ({len(train)} train, {len(val)} validation, {len(test)} test); each "
                "needs at least 2: add people or change --holdout"
            )
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)), seed)


def _read(photos: dict[str, list[Path]]) -> Iterator[tuple[str, str, Image]]:
    for person in sorted(photos):
        for p in photos[person]:
            try:
                yield person, str(p), read_image(p)
            except ImageError as e:
                log.warning("skipping %s", e)


def photos_key(photos: dict[str, list[Path]], extra: str) -> str:
    """A digest of the photo list (paths, sizes, modification times) and ``extra``."""
    h = hashlib.sha256(extra.encode())
    for person in sorted(photos):
        for p in photos[person]:
            st = p.stat()
            h.update(f"{person}|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def align_photos(
    photos: dict[str, list[Path]],
    detector: Path,
    size: int,
    template: str,
    min_face: int = 40,
    cache: Path | None = None,
    show_progress: bool = True,
) -> Crops:
    """The largest face of every photo, detected and aligned as the device does.

    ``cache``: an ``.npz`` reused when it was made from the same photos,
    detector and alignment (a resumed run skips the detection).
    """
    from edge.vision.manifest import sha256_file
    from tools.quantize import collect_faces

    key = photos_key(photos, f"{sha256_file(detector)}|{size}|{template}|{min_face}")
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                meta = json.loads(str(z["meta"]))
                return Crops(
                    np.asarray(z["crops"]), tuple(meta["labels"]), tuple(map(Path, meta["paths"]))
                )
    n = sum(len(v) for v in photos.values())
    faces = collect_faces(
        _read(photos), detector, (size, size), template, min_face, show_progress, n
    )
    out = Crops(faces.crops, tuple(faces.labels), tuple(Path(x) for x in faces.names))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        meta = {"labels": list(out.labels), "paths": [str(p) for p in out.paths]}
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, key=np.array(key), meta=np.array(json.dumps(meta)), crops=out.crops)
        tmp.replace(cache)
    return out


def drop_few_faces(
    crops: Crops, min_faces: int = 2, skip_few: bool = False
) -> tuple[Crops, list[str]]:
    """Check that every person kept ``min_faces`` usable faces after detection.

    Returns the crops (without those people when ``skip_few``) and the
    people left out; otherwise a person below it is an error.
    """
    counts = {p: len(rows) for p, rows in crops.per_person().items()}
    few = sorted(p for p, c in counts.items() if c < min_faces)
    if few and not skip_few:
        raise FacegateError(
            f"{len(few)} people have fewer than {min_faces} photos with a usable face "
            f"({', '.join(few[:3])}{', ...' if len(few) > 3 else ''}): the device's detector "
            "found no face, or one too small, in the others (add photos, or pass --skip-few)"
        )
    keep = [p for p in counts if p not in few]
    return crops.of(keep), few


def pk_batch(
    rows_by_person: dict[str, list[int]],
    people: Sequence[str],
    p: int,
    k: int,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int32]]:
    """(rows, labels) of one batch: ``p`` people drawn uniformly, ``k`` photos each.

    A person with ``k`` or more photos gives ``k`` different ones; one with
    fewer gives all of theirs, the rest drawn again (their augmentation then
    differs). Labels are 0..p-1 in the order drawn.
    """
    chosen = rng.choice(len(people), size=min(p, len(people)), replace=False)
    rows: list[int] = []
    labels: list[int] = []
    for j, idx in enumerate(chosen):
        mine = rows_by_person[people[int(idx)]]
        if len(mine) >= k:
            pick = rng.choice(mine, size=k, replace=False)
        else:
            pick = np.concatenate([mine, rng.choice(mine, size=k - len(mine), replace=True)])
        rows += [int(r) for r in pick]
        labels += [j] * k
    return np.asarray(rows, dtype=np.intp), np.asarray(labels, dtype=np.int32)


def augment_crop(
    crop: U8, rng: np.random.Generator, max_shift: float = 0.05, max_brightness: float = 25.0
) -> U8:
    """A flipped (p = 0.5), shifted and re-lit copy of an aligned face crop.

    Shift: ``dx, dy`` uniform in ``+-max_shift * size`` pixels (edges
    reflected); brightness: ``+ b``, ``b`` uniform in ``+-max_brightness``,
    clipped to 0..255. Small on purpose: the crop is aligned, and the device
    aligns too; these cover the alignment's jitter and the lighting.
    """
    import cv2

    img = crop[:, ::-1] if rng.random() < 0.5 else crop
    size = img.shape[0]
    dx, dy = rng.uniform(-max_shift, max_shift, 2) * size
    M = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float64)
    shifted = cv2.warpAffine(
        np.ascontiguousarray(img), M, (img.shape[1], size), borderMode=cv2.BORDER_REFLECT
    )
    b = float(rng.uniform(-max_brightness, max_brightness))
    return np.asarray(np.clip(shifted.astype(np.float32) + b, 0, 255), dtype=np.uint8)

"""The bench's frames: the shared photos and video, or the registry's sample photos.

Every frame is scaled to fit the camera (``--camera``), as the door camera
would deliver it; both systems (ours and the peer) get exactly these arrays.
The strangers (LFW people not enrolled) make the identification open-set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import FacegateError
from edge.types import Image
from tools.bench.common import STRANGER


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

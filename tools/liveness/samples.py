"""Evaluation samples: attack clips rendered from photos, and windows of real tracks.

Each sample runs through the device's liveness stage exactly as a door would
(:class:`edge.liveness.track.LivenessTrack`, fed the detector's face of every
frame) and keeps its *evidence*: the measured KLT windows and the eye-opening
series. The verdict is a pure function of the evidence and the thresholds
(:func:`edge.liveness.decide.decide`), so threshold sweeps need no re-run.
Evidence is cached per sample (``--cache``), keyed by everything that made it.

**Attacks.** Photos from ``--faces`` (``<dir>/<Person>/<photo>``), split by
person: the *tuning* people (every third, sorted by name, from the first)
and the *held-out* people (the others); the report is measured on held-out
people only. Without a faces folder, the registry photos (Grace Hopper,
Eileen Collins) are used. Each attack type gets ``n`` clips, seeds
``0..n-1``, photos taken in turn.

**Real clips.** A video of live people at a fixed camera: its faces are found
on overlapping tiles (the crowd's faces are 60-130 px in 1080p, too small for
BlazeFace on the whole frame; a 480 px tile is a door camera's view of them),
followed by box overlap, and each track cut into windows of the door's
``max_wait_s`` starting every ``stride`` seconds (the last, shorter one kept
when it is at least half as long): one sample per (window, track), evaluated
as if the person had just appeared there. Overlapping windows share frames,
so they are not independent trials: the report says how many tracks they
come from.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.liveness.blink import Blink, find_blinks
from edge.liveness.mesh import FaceMesh
from edge.liveness.motion import Window
from edge.liveness.track import LivenessTrack
from edge.types import Box, Detection, Image
from edge.vision.detector import FaceDetector
from tools.liveness.attacks import AttackSpec, frames, make_scene

CACHE_VERSION = "liveness-evidence/5"
ATTACK_TYPES: dict[str, tuple[AttackSpec, ...]] = {
    # An attack type's clips alternate between its variants.
    "print moved": (AttackSpec("print", "moved"),),
    "print still": (AttackSpec("print", "tremor"), AttackSpec("print", "still")),
    "screen moved": (AttackSpec("screen", "moved"),),
    "screen still": (AttackSpec("screen", "tremor"), AttackSpec("screen", "still")),
    "bent print moved": (AttackSpec("print", "moved", bent=True),),
}
TARGET_TYPES = ("print moved", "print still", "screen moved", "screen still")


@dataclass(frozen=True)
class Photo:
    """An attack's source photo and its largest face's box."""

    person: str
    name: str
    image: Image = field(repr=False, compare=False)
    face: tuple[float, float, float, float]


@dataclass
class Evidence:
    """One sample's evidence and what it was (see the module docstring)."""

    kind: str  # an ATTACK_TYPES key, or "bona fide"
    label: str
    seconds: float
    frames: int
    face_frames: int
    windows: list[Window]
    times: list[float]
    right: list[float]
    left: list[float]
    t0: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def attack(self) -> bool:
        return self.kind != "bona fide"

    def blinks(self) -> list[Blink]:
        return find_blinks(self.times, self.right, self.left)


def split_people(people: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(tuning, held_out)``: every third person by sorted name, from the first, tunes."""
    ordered = sorted(people)
    tune = [p for i, p in enumerate(ordered) if i % 3 == 0]
    return tune, [p for p in ordered if p not in tune]


def load_photos(folder: Path | None, people: Sequence[str] | None,
                detector: FaceDetector) -> list[Photo]:  # fmt: skip
    """Photos with one detectable face (the largest taken), in a fixed order."""
    from edge.errors import ImageError
    from edge.imageio import list_images, read_image

    out: list[Photo] = []
    if folder is None:
        for person, path in registry_photos():
            out += _photo(detector, person, path.name, read_image(path))
        return out
    for person in sorted(people or []):
        for path in list_images(folder / person):
            try:
                out += _photo(detector, person, path.name, read_image(path))
            except ImageError:
                continue
    return out


def _photo(detector: FaceDetector, person: str, name: str, img: Image) -> list[Photo]:
    dets = detector.detect(img)
    if not dets:
        return []
    b = max(dets, key=lambda d: d.box.w * d.box.h).box
    return [Photo(person, name, img, (b.x, b.y, b.w, b.h))]


def registry_photos() -> list[tuple[str, Path]]:
    """Grace Hopper (matplotlib) and Eileen Collins (scikit-image), as the demo uses them."""
    from edge.demo import demo_photos

    p = demo_photos()
    return [("Grace_Hopper", p["grace_hopper"]), ("Eileen_Collins", p["astronaut"])]


def _key(*parts: object) -> str:
    return hashlib.sha256(repr((CACHE_VERSION, *parts)).encode()).hexdigest()[:24]


class Cache:
    """Evidence pickled per sample in a folder (None: no cache)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> Evidence | None:
        if self.folder is None:
            return None
        p = self.folder / f"{key}.pkl"
        if not p.is_file():
            return None
        try:
            with open(p, "rb") as f:
                got = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            return None
        return got if isinstance(got, Evidence) else None

    def put(self, key: str, ev: Evidence) -> None:
        if self.folder is None:
            return
        tmp = self.folder / f".{key}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(ev, f)
        tmp.replace(self.folder / f"{key}.pkl")


def run_track(mesh: FaceMesh, seq: Sequence[tuple[Image, Detection, float]]) -> LivenessTrack:
    """Feed one face's frames to a fresh liveness track; its last window measured too."""
    import cv2

    tr = LivenessTrack(mesh)
    for rgb, det, t in seq:
        tr.update(rgb, np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), np.uint8), det, t)
    tr.flush()
    return tr


def attack_evidence(kind: str, seed: int, photo: Photo, mesh: FaceMesh, detector: FaceDetector,
                    backgrounds: Sequence[Image], fps: float, seconds: float,
                    cache: Cache) -> Evidence:  # fmt: skip
    """Render one attack clip and gather its evidence (cached)."""
    variants = ATTACK_TYPES[kind]
    base = variants[seed % len(variants)]
    spec = AttackSpec(base.prop, base.motion, base.bent, seed, fps, seconds)
    key = _key("attack", spec, photo.person, photo.name, photo.face, len(backgrounds))
    got = cache.get(key)
    if got is not None:
        return got
    scene = make_scene(spec, photo.image, photo.face, backgrounds)
    seq = []
    n = 0
    for i, img in enumerate(frames(scene)):
        n += 1
        dets = detector.detect(img)
        if dets:
            seq.append((img, max(dets, key=lambda d: d.box.w * d.box.h), i / fps))
    tr = run_track(mesh, seq)
    ev = Evidence(
        kind, f"{kind} seed {seed} ({spec.prop} {spec.motion}) {photo.person}/{photo.name}",
        seconds, n, len(seq), tr.windows, tr.times, tr.right, tr.left,
        seq[0][2] if seq else 0.0, {"seed": seed, "motion": spec.motion, **scene.prop.extra},
    )  # fmt: skip
    cache.put(key, ev)
    return ev


# -- real clips -------------------------------------------------------------------------


def read_video(path: Path, step: int = 1) -> tuple[list[Image], float]:
    """Every ``step``-th frame (RGB) of a video and the frame rate that leaves."""
    from edge.sources import OpenCVSource
    from edge.sources import frames as read

    src = OpenCVSource(path, realtime=False, max_retries=0)
    out = [f.image for i, f in enumerate(read(src)) if i % step == 0]
    return out, (src.file_fps or 25.0) / step


def tiled_faces(detector: FaceDetector, rgb: Image, tile: int = 480) -> list[Detection]:
    """Faces on overlapping ``tile`` px tiles (half-tile steps), merged: the best of overlaps.

    A face cut by a tile's inner border is left to the neighbouring tile
    that sees it whole.
    """
    h, w = rgb.shape[:2]
    step = tile // 2
    found: list[Detection] = []
    for y in range(0, max(1, h - tile + step), step):
        for x in range(0, max(1, w - tile + step), step):
            y0, x0 = min(y, max(0, h - tile)), min(x, max(0, w - tile))
            for d in detector.detect(rgb[y0 : y0 + tile, x0 : x0 + tile]):
                b = d.box
                cut = (b.x < 2 and x0 > 0) or (b.y < 2 and y0 > 0)
                cut |= (b.x + b.w > tile - 2 and x0 + tile < w) or (
                    b.y + b.h > tile - 2 and y0 + tile < h
                )
                if cut:
                    continue
                found.append(Detection(Box(b.x + x0, b.y + y0, b.w, b.h), d.score,
                                       d.keypoints + np.array([x0, y0], np.float32)))  # fmt: skip
    found.sort(key=lambda d: -d.score)
    keep: list[Detection] = []
    for d in found:
        if all(d.box.iou(k.box) < 0.3 for k in keep):
            keep.append(d)
    return keep


def real_tracks(detector: FaceDetector, video: list[Image], min_frames: int,
                min_face: int = 40) -> list[list[tuple[int, Detection]]]:  # fmt: skip
    """Tracks of faces at least ``min_face`` px wide through a video, by box overlap."""
    from edge.liveness.clip import Follower

    follower = Follower()
    tracks: dict[int, list[tuple[int, Detection]]] = {}
    for i, rgb in enumerate(video):
        dets = [d for d in tiled_faces(detector, rgb) if min(d.box.w, d.box.h) >= min_face]
        for tid, det in follower.assign(dets, i):
            tracks.setdefault(tid, []).append((i, det))
    return [t for _, t in sorted(tracks.items()) if len(t) >= min_frames]


def windows_of(track: list[tuple[int, Detection]], fps: float, seconds: float,
               stride: float | None = None) -> Iterator[list[tuple[int, Detection]]]:  # fmt: skip
    """A track cut into windows of ``seconds`` starting every ``stride`` seconds (default:
    one after the other); a last one of at least half the length is kept."""
    per = max(2, round(seconds * fps))
    step = per if stride is None else max(1, round(stride * fps))
    for k in range(0, len(track), step):
        part = track[k : k + per]
        if len(part) >= max(2, per // 2):
            yield part
        if k + per >= len(track):
            break


def real_evidence(video_path: Path, mesh: FaceMesh, detector: FaceDetector, step: int,
                  seconds: float, cache: Cache, stride: float | None = None,
                  ) -> list[Evidence]:  # fmt: skip
    """Every (window, track) sample of a real clip (cached as a whole); windows start every
    ``stride`` seconds of a track (default: back to back)."""
    key = _key("real", str(video_path.resolve()), video_path.stat().st_size, step, seconds,
               stride)  # fmt: skip
    if cache.folder is not None and (cache.folder / f"{key}.real.pkl").is_file():
        with open(cache.folder / f"{key}.real.pkl", "rb") as f:
            got = pickle.load(f)
        if isinstance(got, list):
            return got
    video, fps = read_video(video_path, step)
    out = []
    for ti, track in enumerate(real_tracks(detector, video, min_frames=max(4, round(fps / 2)))):
        for wi, part in enumerate(windows_of(track, fps, seconds, stride)):
            seq = [(video[i], det, i / fps) for i, det in part]
            tr = run_track(mesh, seq)
            out.append(Evidence(
                "bona fide",
                f"track {ti} window {wi} ({part[0][0] / fps:.1f}-{part[-1][0] / fps:.1f}s)",
                len(part) / fps, len(part), len(part), tr.windows, tr.times, tr.right, tr.left,
                seq[0][2], {"track": ti, "window": wi},
            ))  # fmt: skip
    if cache.folder is not None:
        with open(cache.folder / f"{key}.real.pkl", "wb") as f:
            pickle.dump(out, f)
    return out

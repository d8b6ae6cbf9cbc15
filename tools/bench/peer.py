"""The peer: ``face_recognition`` (dlib's HOG detector and ResNet embedder, its defaults).

Its frames per second on the bench frames, and its identification of the same
labelled faces and strangers with the same people enrolled (nearest enrolled
encoding within its customary tolerance, else unknown).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from tools.bench.common import PEER_TOLERANCE
from tools.bench.frames import BenchFrame, enrolment_names
from tools.bench.identify import IdResult, score

# One frame as the peer saw it: the frame, its face locations, their encodings.
PeerFaces = tuple[BenchFrame, list[Any], list[Any]]


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


def _largest(locs: list[Any], encs: list[Any]) -> Any:
    """The encoding of the largest face (locations are ``(top, right, bottom, left)``)."""
    if not encs:
        return None
    areas = [(b - t) * (r - lft) for t, r, b, lft in locs]
    return encs[int(np.argmax(areas))]


def _peer_faces(frames: Sequence[BenchFrame], warmup: bool = True) -> tuple[list[PeerFaces], float]:
    """Locations and encodings of every face of every frame, and the total seconds taken."""
    import face_recognition as fr

    if warmup and frames:
        fr.face_encodings(frames[0].rgb, fr.face_locations(frames[0].rgb))
    out: list[PeerFaces] = []
    total = 0.0
    for f in frames:
        t = time.perf_counter()
        locs = fr.face_locations(f.rgb)
        encs = fr.face_encodings(f.rgb, locs)
        total += time.perf_counter() - t
        out.append((f, locs, encs))
    return out, total


def _peer_identify(per_frame: Sequence[PeerFaces], used: set[str], r: IdResult) -> None:
    """Enrol the ``used`` frames' largest faces, then name every other labelled probe."""
    import face_recognition as fr

    names: list[str] = []
    vecs: list[Any] = []
    for f, locs, encs in per_frame:
        e = _largest(locs, encs)
        if f.name in used and f.label is not None and e is not None:
            names.append(f.label)
            vecs.append(e)
    r.enrolled = len(names)
    for f, locs, encs in per_frame:
        if f.label is None or f.name in used:
            continue
        e = _largest(locs, encs)
        said = None
        if e is not None and vecs:
            d = fr.face_distance(np.stack(vecs), e)
            i = int(np.argmin(d))
            said = names[i] if d[i] <= PEER_TOLERANCE else None
        score(f.label, said, r)


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
    per_frame, total = _peer_faces(frames)
    res = PeerResult(True, version=version, frames=len(frames), total_ms=total * 1e3)
    res.fps = len(frames) / total if total > 0 else float("nan")
    if strangers:  # identification only, not timed
        per_frame += _peer_faces(strangers, warmup=False)[0]
    _peer_identify(per_frame, enrolment_names(frames), res.ident)
    return res

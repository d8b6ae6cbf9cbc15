"""Liveness of a recorded clip: ``facegate liveness [--config C] CLIP...``.

A clip is a video file or a folder of frames (sorted by name, at ``--fps``
or ``camera.fps``). Every frame goes through the configured detector; faces
are followed by box overlap (:func:`follow`), and every track through the
liveness stage. The clip's answer is the verdict of its longest track (the
person presenting), one JSON line per clip::

    {"clip": "door.mp4", "live": true, "score": 0.93, "frames": 75,
     "reason": "live", "evidence": ["parallax 4.1deg z=7.3 at 0.6s"]}

``live`` is ``null`` when the clip held too little evidence (``reason``
``no_liveness``), no face (``no_face``) or a single frame (``one_frame``):
liveness needs motion over time. Video timestamps come from the file's frame
rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import SourceError
from edge.liveness.stage import LivenessStage
from edge.types import Box, Detection, Image

if TYPE_CHECKING:
    from edge.config import Config

IOU_MIN = 0.3
MAX_GAP = 3  # frames a track may miss before it ends


@dataclass(frozen=True)
class ClipResult:
    """One clip's answer (see the module docstring)."""

    clip: str
    live: bool | None
    score: float
    frames: int
    reason: str
    evidence: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"clip": self.clip, "live": self.live, "score": round(self.score, 4),
                "frames": self.frames, "reason": self.reason,
                "evidence": list(self.evidence)}  # fmt: skip


class Follower:
    """Greedy box-overlap tracking for clips: each face to the free track it overlaps most."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[Box, int]] = {}
        self._next = 1

    def assign(self, dets: list[Detection], index: int) -> list[tuple[int, Detection]]:
        pairs = sorted(
            ((det.box.iou(box), i, tid) for i, det in enumerate(dets)
             for tid, (box, _) in self._last.items()),
            reverse=True,
        )  # fmt: skip
        got: dict[int, int] = {}
        used: set[int] = set()
        for iou, i, tid in pairs:
            if iou < IOU_MIN:
                break
            if i not in got and tid not in used:
                got[i] = tid
                used.add(tid)
        out = []
        for i, det in enumerate(dets):
            if i in got:
                tid = got[i]
            else:
                tid, self._next = self._next, self._next + 1
            self._last[tid] = (det.box, index)
            out.append((tid, det))
        self._last = {k: v for k, v in self._last.items() if index - v[1] <= MAX_GAP}
        return out


def clip_frames(path: Path, fps: float) -> Iterator[tuple[Image, float]]:
    """``(rgb, seconds)`` of each frame of a video file or a folder of frames."""
    from edge.sources import FolderSource, OpenCVSource, frames

    if path.is_dir():
        for f in frames(FolderSource(path)):
            yield f.image, f.index / fps
        return
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    src = OpenCVSource(path, realtime=False, max_retries=0)
    rate = fps
    for f in frames(src):
        rate = src.file_fps or fps
        yield f.image, f.index / rate


def run_clip(path: Path, stage: LivenessStage, detect: object, fps: float,
             min_face: int = 0) -> ClipResult:  # fmt: skip
    """The liveness of one clip (``detect``: an object with ``detect(rgb) -> [Detection]``)."""
    follower = Follower()
    seen: dict[int, int] = {}
    n = 0
    for rgb, t in clip_frames(path, fps):
        dets = [d for d in detect.detect(rgb)  # type: ignore[attr-defined]
                if min(d.box.w, d.box.h) >= min_face]  # fmt: skip
        faces = follower.assign(dets, n)
        for tid, _ in faces:
            seen[tid] = seen.get(tid, 0) + 1
        stage.update(rgb, t, faces)
        n += 1
    name = str(path)
    if n == 0:
        raise SourceError(f"{path}: no frame could be read")
    if n == 1:
        return ClipResult(name, None, 0.0, 1, "one_frame")
    if not seen:
        return ClipResult(name, None, 0.0, n, "no_face")
    main = max(seen, key=lambda k: (seen[k], -k))
    v = stage.finish(main)
    return ClipResult(name, v.passed, v.score, n, v.reason, v.evidence)


def main_clips(cfg: Config, clips: list[str], fps: float | None = None) -> int:
    """``facegate liveness CLIP...``: one JSON line per clip; 1 when a clip could not be read."""
    import json
    import sys

    from edge.errors import FacegateError
    from edge.vision.detector import FaceDetector

    det = FaceDetector.from_config(cfg)
    models = LivenessStage.from_config(cfg)  # loaded once; each clip gets fresh tracks
    failed = 0
    for c in clips:
        try:
            res = run_clip(Path(c), models.fresh(), det, fps or cfg.camera.fps,
                           cfg.detector.min_face_size)  # fmt: skip
        except FacegateError as e:
            failed += 1
            print(f"skipped {c}: {str(e).removeprefix(f'{c}: ')}", file=sys.stderr, flush=True)
            continue
        print(json.dumps(res.to_json()), flush=True)
    return 1 if failed else 0


__all__ = ["ClipResult", "Follower", "clip_frames", "main_clips", "run_clip"]

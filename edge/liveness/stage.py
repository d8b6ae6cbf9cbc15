"""The liveness stage: per-track evidence in, per-track verdicts out.

:class:`LivenessStage` is fed each frame with the faces of the tracks in it
(``(track_id, detection)`` pairs, the ids from whatever tracks the faces:
the daemon's tracker, or :func:`edge.liveness.clip.follow` for a clip). It
keeps one :class:`~edge.liveness.track.LivenessTrack` per id, computes the
frame's grey image once for all of them, and stops spending work on a track
once its verdict is final (``True`` or ``False``): the mesh and the KLT
points then run only for faces that still need evidence. A track that is
no longer fed for ``max_age_s`` is forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge.liveness.blink import find_blinks
from edge.liveness.decide import LivenessParams, Verdict, decide
from edge.liveness.mesh import FaceMesh
from edge.liveness.track import WINDOW_S, LivenessTrack
from edge.types import Detection, Image

if TYPE_CHECKING:
    from edge.config import Config
    from edge.liveness.texture import TextureModel

UNDECIDED = Verdict(None, 0.0)


@dataclass
class _Entry:
    track: LivenessTrack
    verdict: Verdict
    last_seen: float
    texture: list[float] = field(default_factory=list)  # the texture model's live probabilities


class LivenessStage:
    """Per-track liveness (not thread-safe: one loop feeds it, in frame order)."""

    def __init__(self, mesh: FaceMesh, params: LivenessParams | None = None,
                 max_age_s: float = 2.0, window_s: float = WINDOW_S,
                 texture: TextureModel | None = None) -> None:  # fmt: skip
        self.mesh = mesh
        self.texture = texture
        self.params = params or LivenessParams()
        self.max_age_s = max_age_s
        self.window_s = window_s
        self._tracks: dict[int, _Entry] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> LivenessStage:
        """The stage ``[liveness]`` describes (models verified against their manifests)."""
        lv = cfg.liveness
        rt, threads = cfg.embedder.runtime, cfg.embedder.num_threads
        mesh = FaceMesh.load(cfg.model_path(lv.model), runtime=rt, num_threads=threads)
        params = LivenessParams(lv.min_turn_deg, lv.min_z, lv.min_prop_points, lv.blinks,
                                cfg.camera.mounted, lv.texture_min)  # fmt: skip
        texture = None
        if lv.texture_model:
            from edge.liveness.texture import TextureModel

            path = cfg.model_path(lv.texture_model)
            texture = TextureModel.load(path, runtime=rt, num_threads=threads)
        return cls(mesh, params, texture=texture)

    def fresh(self) -> LivenessStage:
        """A stage with no tracks that shares this one's models and settings (a new clip)."""
        return LivenessStage(self.mesh, self.params, self.max_age_s, self.window_s, self.texture)

    def update(self, rgb: Image, t: float, faces: Iterable[tuple[int, Detection]]) -> None:
        """One frame: its faces, each with its track id."""
        import cv2

        faces = list(faces)
        gray = None
        for tid, det in faces:
            e = self._tracks.get(tid)
            if e is None:
                e = _Entry(LivenessTrack(self.mesh, self.window_s), UNDECIDED, t)
                self._tracks[tid] = e
            e.last_seen = t
            if e.verdict.passed is not None:
                continue  # final: no more work on this face
            if gray is None:
                gray = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
            e.track.update(rgb, gray, det, t)
            if self.texture is not None:
                e.texture.append(self.texture.live(rgb, det.box))
            e.verdict = self._decide(e)
        self._tracks = {k: e for k, e in self._tracks.items() if t - e.last_seen <= self.max_age_s}

    def _decide(self, e: _Entry) -> Verdict:
        tr = e.track
        blinks = find_blinks(tr.times, tr.right, tr.left) if self.params.blinks else []
        # The texture model speaks once it has seen a few frames (one can be a blur).
        tex = sum(e.texture) / len(e.texture) if len(e.texture) >= 3 else None
        return decide(tr.windows, blinks, self.params, tr.first_t or 0.0, tex)

    def finish(self, tid: int) -> Verdict:
        """The verdict with the track's last, unfinished window measured too (end of a clip)."""
        e = self._tracks.get(tid)
        if e is None:
            return UNDECIDED
        if e.verdict.passed is None:
            e.track.flush()
            e.verdict = self._decide(e)
        return e.verdict

    def verdict(self, tid: int) -> Verdict:
        """The track's verdict so far (undecided for an unknown id)."""
        e = self._tracks.get(tid)
        return e.verdict if e is not None else UNDECIDED

    def frames(self, tid: int) -> int:
        e = self._tracks.get(tid)
        return e.track.frames if e is not None else 0

    @property
    def tracks(self) -> list[int]:
        return list(self._tracks)


__all__ = ["UNDECIDED", "LivenessStage"]

"""Decisions over frames: track faces by box overlap, decide per track.

A single frame is never trusted on its own (unless ``decision.single_frame``):
a face is *recognized* as X only when at least ``k`` of its track's last ``n``
observations name X, and *unknown* only once it has been seen in ``n`` frames
without any match. A per-person cooldown suppresses repeated "recognized X"
decisions, whichever track they come from; each track says "unknown" at most
once, and never after it has been recognized (a known face turning away is
not a stranger).

Tracking is greedy IoU association: each face of a frame goes to the unmatched
track whose last box overlaps it most (IoU >= ``decision.iou``), else it
starts a new track. Tracks unseen for ``decision.max_track_age_s`` (frame
timestamps, not the wall clock, so replays behave like live cameras) are
dropped.

A track keeps one identity: with an ``identity_threshold`` (the daemon passes
the recognizer's calibrated open-set threshold), a face whose embedding is
farther than that from the track's running embedding (:func:`identity_jump`)
does not continue the track, however much the boxes overlap. The track it
would have continued ends, and the face starts a new one, so a newcomer
stepping into the spot someone just left gets a decision of their own
(without this, a stranger could inherit a recognized person's track and never
be reported as unknown).

A gallery reload keeps the tracks and the cooldowns (a face at the door
while the gallery changes is not decided twice); only ``identity_threshold``
follows the new gallery's threshold, which the daemon sets.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from edge.config import DecisionConfig
from edge.numerics import cosine_distance, l2_normalize
from edge.types import Box, Decision, Detection, FaceResult, FrameResult, Image, Vector

RECOGNIZED = "recognized"
UNKNOWN = "unknown"


@dataclass
class _Observation:
    name: str | None
    distance: float
    confidence: float
    box: Box


@dataclass
class _Track:
    """One face followed across frames (mutable, private to the tracker)."""

    id: int
    box: Box
    first_seen: float
    last_seen: float
    history: deque[_Observation]
    length: int = 0
    recognized: bool = False
    said_unknown: bool = False
    emitted: dict[str, float] = field(default_factory=dict)
    # Sum of the unit embeddings seen on this track (its direction is the
    # running embedding), None until a face with an embedding arrives.
    embedding_sum: Vector | None = None
    # The crop of the track's best frame so far (its largest face box), kept only
    # when frames are handed in (snapshots or the review ring want them).
    best_crop: Image | None = None
    best_area: float = -1.0

    def keep_best(self, image: Image | None, box: Box) -> None:
        """Remember this frame's crop when its face box is the track's largest so far."""
        area = box.w * box.h
        if image is not None and area > self.best_area:
            self.best_area = area
            self.best_crop = crop_snapshot(image, box)

    def add_embedding(self, embedding: Vector | None) -> None:
        if embedding is None:
            return
        unit = l2_normalize(embedding)
        self.embedding_sum = unit if self.embedding_sum is None else self.embedding_sum + unit


def identity_jump(running_sum: Vector | None, embedding: Vector | None, threshold: float) -> bool:
    """Whether a face is someone else than the track: ``d(e, mean) > threshold``.

    ``d`` is the cosine distance between the face's embedding ``e`` and the
    track's running embedding, the direction of the sum of its unit
    embeddings (their mean direction: every frame weighs the same, so one
    blurred frame cannot drag it). False when either is missing.
    """
    if running_sum is None or embedding is None:
        return False
    return float(cosine_distance(embedding, running_sum[None, :])[0]) > threshold


def crop_snapshot(image: Image, box: Box, pad: float = 0.2) -> Image:
    """The face box grown by ``pad`` of its size on each side, clipped to the image."""
    h, w = image.shape[:2]
    x0 = int(max(0, np.floor(box.x - pad * box.w)))
    y0 = int(max(0, np.floor(box.y - pad * box.h)))
    x1 = int(min(w, np.ceil(box.x + box.w * (1 + pad))))
    y1 = int(min(h, np.ceil(box.y + box.h * (1 + pad))))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0, 3), np.uint8)
    return np.ascontiguousarray(image[y0:y1, x0:x1])


class Tracker:
    """Turns a stream of :class:`FrameResult` into :class:`Decision` records.

    Not thread-safe: one loop feeds it, in frame order.
    """

    def __init__(
        self, cfg: DecisionConfig | None = None, identity_threshold: float | None = None
    ) -> None:
        """``identity_threshold``: the cosine distance beyond which a face ends a track
        (see :func:`identity_jump`); None tracks by box overlap alone."""
        self.cfg = cfg or DecisionConfig()
        self.identity_threshold = identity_threshold
        if self.cfg.single_frame:
            self.k, self.n = 1, 1
        else:
            self.k, self.n = self.cfg.k, self.cfg.n
        self._tracks: list[_Track] = []
        self._ids = itertools.count(1)
        self.assigned: list[tuple[int, Detection]] = []
        """The last frame's faces with their track ids (what the liveness stage follows)."""
        # Per-person time of the last "recognized" decision (frame time).
        self._last_recognized: dict[str, float] = {}

    @property
    def active_tracks(self) -> int:
        return len(self._tracks)

    def _associate(self, faces: tuple[FaceResult, ...]) -> list[tuple[FaceResult, _Track | None]]:
        """Greedy IoU matching, best overlaps first; unmatched faces get None.

        A face that overlaps a track but jumped identity is not a candidate
        for it; such a track, left without a face in this frame, ends.
        """
        pairs = []
        jumped: set[int] = set()
        for fi, face in enumerate(faces):
            for ti, t in enumerate(self._tracks):
                iou = face.detection.box.iou(t.box)
                if iou < self.cfg.iou:
                    continue
                if self.identity_threshold is not None and identity_jump(
                    t.embedding_sum, face.embedding, self.identity_threshold
                ):
                    jumped.add(ti)
                    continue
                pairs.append((iou, fi, ti))
        pairs.sort(key=lambda p: p[0], reverse=True)
        face_to_track: dict[int, int] = {}
        used: set[int] = set()
        for iou, fi, ti in pairs:
            if iou < self.cfg.iou:
                break
            if fi in face_to_track or ti in used:
                continue
            face_to_track[fi] = ti
            used.add(ti)
        out = [
            (face, self._tracks[face_to_track[fi]] if fi in face_to_track else None)
            for fi, face in enumerate(faces)
        ]
        ended = jumped - used
        if ended:
            self._tracks = [t for ti, t in enumerate(self._tracks) if ti not in ended]
        return out

    def update(self, result: FrameResult, image: Image | None = None) -> list[Decision]:
        """Feed one frame's faces; return the decisions this frame completes.

        ``image`` (the frame) is only needed for decision snapshots: each
        decision's ``snapshot`` is the crop of its track's best frame so far
        (the largest face box: the person nearest the camera), and its
        ``embedding`` the track's mean embedding.
        """
        now = result.timestamp
        # Drop tracks that have not been seen for too long (a face that left).
        # A clock that goes backwards (a replay restarting) also ends every track.
        self._tracks = [
            t for t in self._tracks if 0.0 <= now - t.last_seen <= self.cfg.max_track_age_s
        ]
        decisions: list[Decision] = []
        self.assigned = []
        for face, track in self._associate(result.faces):
            box = face.detection.box
            if track is None:
                track = _Track(
                    id=next(self._ids),
                    box=box,
                    first_seen=now,
                    last_seen=now,
                    history=deque(maxlen=self.n),
                )
                self._tracks.append(track)
            m = face.match
            track.add_embedding(face.embedding)
            track.keep_best(image, box)
            track.history.append(_Observation(m.name, m.distance, m.confidence, box))
            track.box, track.last_seen = box, now
            track.length += 1
            self.assigned.append((track.id, face.detection))
            d = self._decide(track, now, image)
            if d is not None:
                decisions.append(d)
        return decisions

    def _decide(self, t: _Track, now: float, image: Image | None) -> Decision | None:
        names = Counter(o.name for o in t.history if o.name is not None)
        if names:
            name, votes = names.most_common(1)[0]
            if votes >= self.k:
                return self._recognized(t, name, now, image)
            return None
        if len(t.history) >= self.n and not t.recognized and not t.said_unknown:
            t.said_unknown = True
            # The nearest distance seen, and the confidence that goes with it.
            best = min(t.history, key=lambda o: o.distance)
            return self._decision(t, UNKNOWN, None, best.distance, best.confidence, now, image)
        return None

    def _recognized(self, t: _Track, name: str, now: float, image: Image | None) -> Decision | None:
        t.recognized = True
        last = self._last_recognized.get(name)
        if last is not None and 0.0 <= now - last < self.cfg.cooldown_s:
            return None
        self._last_recognized[name] = now
        votes = [o for o in t.history if o.name == name]
        distance = float(np.mean([o.distance for o in votes]))
        confidence = float(np.mean([o.confidence for o in votes]))
        return self._decision(t, RECOGNIZED, name, distance, confidence, now, image)

    def _decision(
        self,
        t: _Track,
        kind: str,
        name: str | None,
        distance: float,
        confidence: float,
        now: float,
        image: Image | None,
    ) -> Decision:
        return Decision(
            kind=kind,
            name=name,
            distance=distance,
            confidence=confidence,
            track_id=t.id,
            track_length=t.length,
            timestamp=now,
            box=t.box,
            snapshot=None if image is None else t.best_crop,
            embedding=None if t.embedding_sum is None else l2_normalize(t.embedding_sum),
        )


__all__ = ["RECOGNIZED", "UNKNOWN", "Tracker", "crop_snapshot", "identity_jump"]

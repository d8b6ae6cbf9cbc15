"""Enrolment from a camera: keep a few diverse, good frames of one person.

A door camera sees a person under the door's own light and angle, many
times a second. Frames a few milliseconds apart are nearly the same picture,
so what a second or third embedding adds comes from a *different head pose*
(and, with photos taken on other days, a different look). The
:class:`CameraCollector` is offered one measured frame at a time
(:class:`~edge.identity.enrol.PhotoMeasure`, as ``facegate enroll`` measures a
photo) and:

1. refuses a frame for the same reasons ``enroll`` refuses a photo
   (:func:`~edge.identity.enrol.photo_problem`: no face, two faces of similar
   size, too small, turned too far, blurred), and turns the reason into
   words a person in front of the camera can act on (:func:`frame_advice`);
2. sorts a good frame by head pose (:func:`head_pose`: the yaw and pitch
   proxies from the detector's six keypoints) into one of
   :data:`POSES`: straight, slightly left, slightly right, slightly up,
   slightly down; per pose it keeps the sharpest frame;
3. chooses up to ``photos`` frames (:meth:`CameraCollector.chosen`): one per
   pose in that order, then, if slots are left, the frames farthest in
   embedding space from those already chosen (farthest-point selection), never
   one closer than :attr:`CameraRules.same_frame` to a chosen one (it would
   add nothing), and, with :attr:`CameraRules.max_distance`, never one farther
   than that from the sharpest straight frame: a detector whose keypoints
   slipped makes a "turned" frame whose crop is misaligned, and the most
   different frame is then exactly the wrong one to keep;
4. says what it still needs (:attr:`CameraCollector.advice`: "turn your head
   slightly left").

The chosen frames then go through the whole enrolment decision like photos
(:func:`~edge.identity.enrol.plan_enrolment`: outliers, look-alikes), so a
frame of someone else who stepped in is refused there.

Directions are the subject's: "left" is a positive yaw ratio, the nose tip
moved towards the image's right, as it does when a person facing a
(non-mirrored) camera turns to their left. A mirrored camera swaps the two
words; both poses are wanted, so the result is the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge.identity.enrol import DEFAULT_RULES, EnrolmentRules, PhotoMeasure, photo_problem
from edge.numerics import pitch_ratio
from edge.types import Image

STRAIGHT = "straight"
LEFT = "left"
RIGHT = "right"
UP = "up"
DOWN = "down"
POSES = (STRAIGHT, LEFT, RIGHT, UP, DOWN)
"""The head poses camera enrolment asks for, in the order it asks."""

POSE_ADVICE = {
    STRAIGHT: "look straight at the camera",
    LEFT: "turn your head slightly left",
    RIGHT: "turn your head slightly right",
    UP: "tilt your head slightly up",
    DOWN: "tilt your head slightly down",
}
DONE_ADVICE = "done: hold on while the photos are checked"
MORE_ADVICE = "move your head a little, slowly"


@dataclass(frozen=True)
class HeadPose:
    """Yaw and pitch proxies of one face (:func:`head_pose`)."""

    yaw: float  # edge.numerics.yaw_ratio: 0 straight, > 0 turned to the subject's left
    pitch: float  # edge.numerics.pitch_ratio: larger looking down (nan: unknown)


def head_pose(keypoints: npt.NDArray[np.float32] | None, yaw: float) -> HeadPose:
    """The pose of a face from BlazeFace's keypoints (right eye, left eye, nose, mouth, ...).

    ``yaw`` is the enrolment quality's (:func:`edge.numerics.yaw_ratio`);
    the pitch is :func:`edge.numerics.pitch_ratio`, ``nan`` without keypoints.
    """
    if keypoints is None or len(keypoints) < 4:
        return HeadPose(yaw, math.nan)
    k = np.asarray(keypoints, dtype=np.float64)
    return HeadPose(yaw, pitch_ratio(k[0], k[1], k[2], k[3]))


@dataclass(frozen=True)
class CameraRules:
    """What counts as a pose, and how many frames to keep.

    * ``photos``: frames to keep (``--photos``, ``review.enrol_photos``).
    * ``straight_yaw``: ``|yaw|`` up to this is looking straight (about 7
      degrees); ``turn_yaw``: a turn from here (about 15 degrees) up to the
      enrolment limit (:attr:`EnrolmentRules.max_yaw`, a three-quarter view).
    * ``tilt``: a change of the pitch ratio by this much from the median of
      the person's straight frames is a tilt up or down (about 8-10 degrees
      for a nose standing out by a third of the eye-to-mouth height; on the
      49 photos of the test faces the straight ratio itself ranges over
      0.43-0.61 from face to face, which is why it is compared per person).
    * ``same_frame``: a frame whose embedding is closer than this to a
      chosen frame's adds nothing (consecutive frames of a still head lie
      within a few hundredths; a genuine pair of photos is ~0.27 apart).
    * ``max_distance``: a frame farther than this from the sharpest straight
      frame is not chosen (None: no limit). ``enroll --camera`` and the
      service pass :func:`edge.identity.enrol.outlier_distance`, the
      distance beyond which the enrolment checks would refuse it anyway.
    """

    photos: int = 5
    straight_yaw: float = 0.10
    turn_yaw: float = 0.20
    tilt: float = 0.06
    same_frame: float = 0.03
    pool: int = 200
    max_distance: float | None = None


@dataclass(eq=False)  # frames are compared by identity
class _Frame:
    measure: PhotoMeasure
    pose: HeadPose
    sharpness: float


def frame_advice(m: PhotoMeasure, rules: EnrolmentRules = DEFAULT_RULES) -> str | None:
    """Why a frame cannot be used, in words for the person in front of the camera (None: usable)."""
    prob = photo_problem(m, rules)
    if prob is None:
        return None
    q = m.quality
    if q is None:
        return "step in front of the camera"
    if q.faces > 1 and q.area_ratio < rules.min_area_ratio:
        return "only the person enrolling in front of the camera, please"
    if q.face_px < rules.min_face_px:
        return "come closer to the camera"
    if abs(q.yaw) > rules.max_yaw:
        return "turn back a little towards the camera"
    return "hold still (the picture is blurred)"


@dataclass
class CameraCollector:
    """Frames in, a few diverse good ones out (see the module docstring)."""

    rules: CameraRules = field(default_factory=CameraRules)
    enrol_rules: EnrolmentRules = DEFAULT_RULES
    offered: int = 0
    used: int = 0
    last_problem: str | None = None
    _best: dict[str, _Frame] = field(default_factory=dict)
    _pool: list[_Frame] = field(default_factory=list)
    _straight_pitch: list[float] = field(default_factory=list)

    @property
    def wanted(self) -> tuple[str, ...]:
        """The poses asked for: the first ``photos`` of :data:`POSES` (all five at most)."""
        return POSES[: max(1, min(self.rules.photos, len(POSES)))]

    def offer(self, m: PhotoMeasure) -> str | None:
        """Take one measured frame; why it was not used (advice words), or None."""
        self.offered += 1
        why = frame_advice(m, self.enrol_rules)
        self.last_problem = why
        if why is not None or m.quality is None or m.embedding is None:
            return why
        self.used += 1
        frame = _Frame(m, head_pose(m.keypoints, m.quality.yaw), m.quality.sharpness)
        pose = self.classify(frame.pose)
        if pose == STRAIGHT and math.isfinite(frame.pose.pitch):
            self._straight_pitch.append(frame.pose.pitch)
        best = self._best.get(pose)
        if best is None or self._rank(frame, pose) > self._rank(best, pose):
            self._best[pose] = frame
        self._pool.append(frame)
        if len(self._pool) > self.rules.pool:
            # Keep the pool bounded: forget the oldest frame that is no pose's best.
            keep = {id(f) for f in self._best.values()}
            for i, f in enumerate(self._pool):
                if id(f) not in keep:
                    del self._pool[i]
                    break
        return None

    def _rank(self, f: _Frame, pose: str) -> tuple[bool, float]:
        """How good a frame is for its pose: like the straight frames first, then sharp."""
        anchor, limit = self._best.get(STRAIGHT), self.rules.max_distance
        if pose == STRAIGHT or limit is None or anchor is None:
            return (True, f.sharpness)
        return (self._nearest(f, [anchor]) <= limit, f.sharpness)

    def classify(self, pose: HeadPose) -> str:
        """The pose a frame shows: a turn, else a tilt (from the straight frames), else straight."""
        r = self.rules
        if pose.yaw >= r.turn_yaw:
            return LEFT
        if pose.yaw <= -r.turn_yaw:
            return RIGHT
        if abs(pose.yaw) <= r.straight_yaw and self._straight_pitch and math.isfinite(pose.pitch):
            ref = float(np.median(self._straight_pitch))
            if pose.pitch <= ref - r.tilt:
                return UP
            if pose.pitch >= ref + r.tilt:
                return DOWN
        return STRAIGHT

    def missing(self) -> list[str]:
        """The wanted poses no good frame showed yet (or only one unlike the straight frames)."""
        anchor, limit = self._best.get(STRAIGHT), self.rules.max_distance
        return [
            p
            for p in self.wanted
            if p not in self._best
            or (
                limit is not None
                and anchor is not None
                and self._nearest(self._best[p], [anchor]) > limit
            )
        ]

    @property
    def done(self) -> bool:
        """Every wanted pose seen and ``photos`` frames chosen."""
        return not self.missing() and len(self.chosen()) >= self.rules.photos

    @property
    def advice(self) -> str:
        """What the person in front of the camera should do next, in plain words."""
        if self.done:
            return DONE_ADVICE
        if self.last_problem is not None:
            return self.last_problem
        missing = self.missing()
        return POSE_ADVICE[missing[0]] if missing else MORE_ADVICE

    def chosen(self) -> list[PhotoMeasure]:
        """Up to ``photos`` frames: the best per pose (in :data:`POSES` order), then the most
        different others (farthest-point selection over the embeddings), all within
        ``max_distance`` of the sharpest straight frame."""
        anchor = self._best.get(STRAIGHT)
        limit = self.rules.max_distance
        near = [
            f
            for f in self._pool
            if limit is None or anchor is None or self._nearest(f, [anchor]) <= limit
        ]
        picks = [self._best[p] for p in POSES if p in self._best and self._best[p] in near]
        picks = picks[: self.rules.photos]
        rest = [f for f in near if all(f is not p for p in picks)]
        while len(picks) < self.rules.photos and rest:
            far = [self._nearest(f, picks) for f in rest]
            j = int(np.argmax(far))
            if far[j] < self.rules.same_frame:
                break
            picks.append(rest.pop(j))
        return [f.measure for f in picks]

    @staticmethod
    def _nearest(f: _Frame, picks: list[_Frame]) -> float:
        """Cosine distance from ``f`` to the nearest chosen frame (inf when none is chosen)."""
        if not picks:
            return math.inf
        e = np.asarray(f.measure.embedding, np.float32)
        P = np.stack([np.asarray(p.measure.embedding, np.float32) for p in picks])
        return float(np.min(1.0 - P @ e))

    def summary(self) -> str:
        """One line: frames offered, usable, poses seen."""
        seen = ", ".join(p for p in POSES if p in self._best) or "none"
        return f"{self.offered} frame(s) seen, {self.used} usable; poses: {seen}"


def collect(
    frames: Iterable[Image],
    measure: Callable[[Image], PhotoMeasure],
    collector: CameraCollector,
    seconds: float,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> CameraCollector:
    """Offer frames to ``collector`` until it is done or ``seconds`` have passed.

    ``measure`` is the recognizer's (:func:`edge.decide.recognizer.measure_photo`:
    the face, its quality, keypoints and embedding, as ``enroll`` sees a
    photo); ``say`` hears the advice each time it changes.
    """
    end = clock() + seconds
    said = ""
    for image in frames:
        collector.offer(measure(image))
        if collector.advice != said:
            said = collector.advice
            say(said)
        if collector.done or clock() >= end:
            break
    return collector


__all__ = [
    "DONE_ADVICE",
    "DOWN",
    "LEFT",
    "POSES",
    "POSE_ADVICE",
    "RIGHT",
    "STRAIGHT",
    "UP",
    "CameraCollector",
    "CameraRules",
    "HeadPose",
    "collect",
    "frame_advice",
    "head_pose",
]

"""From a track's evidence to its liveness verdict: passed true, false or null.

Evidence, each piece measured over one track (see :mod:`edge.liveness.motion`
and :mod:`edge.liveness.blink`):

* **parallax** (live): a KLT window whose face motion shows an out-of-plane
  turn of at least ``min_turn_deg`` with significance at least ``min_z`` on
  *both* sides of the face's best plane (nose and cheeks), from at least
  :data:`MIN_FACE_POINTS` face points. A flat prop has no parallax whatever
  it does;
* **blink** (live): both eyes dip and reopen together;
* **prop** (spoof, mounted camera only): a KLT window in which at least
  ``min_prop_points`` points beyond the head move exactly with the face (within
  3 noise standard deviations of the face's homography, where that and
  standing still differ by at least 6): the edge or the background of a
  photo, a phone's bezel. Nothing of a live person but a hat does that.

The verdict: a prop seen means ``False`` (a spoof) whatever else was seen;
otherwise parallax or a blink means ``True``; otherwise ``None``: not
enough evidence, never a pass. The score (0-1) grows with the strongest live
evidence: ``1 - 2^-s`` where ``s`` is the best window's ``min(z/min_z,
turn/min_turn)`` (a blink counts as ``s = 2``), 0 when a prop was seen, so
0.5 is the pass mark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edge.liveness.blink import Blink
from edge.liveness.motion import Window

MIN_FACE_POINTS = 20
"""Fewer face points than this make a window's parallax test too noisy to count."""
BLINK_STRENGTH = 2.0


@dataclass(frozen=True)
class LivenessParams:
    """The decision's thresholds (``[liveness]`` in the config)."""

    min_turn_deg: float = 1.5
    min_z: float = 4.0
    min_prop_points: int = 12
    blinks: bool = True
    mounted: bool = True  # [camera] mounted: the background stands still


@dataclass(frozen=True)
class Verdict:
    """A track's liveness: ``passed`` True/False/None, a score and the evidence behind it.

    ``evidence``: short strings such as ``"parallax 3.2deg z=6.1 at 1.4s"``,
    ``"blink at 2.1s"``, ``"prop: 31 points beyond the head move with the face"``.
    ``decided_at``: the track time (seconds from its first frame) at which
    the verdict became what it is (None while undecided).
    """

    passed: bool | None
    score: float
    evidence: tuple[str, ...] = ()
    decided_at: float | None = None

    @property
    def reason(self) -> str:
        if self.passed is True:
            return "live"
        if self.passed is False:
            return "spoof"
        return "no_liveness"

    def to_json(self) -> dict[str, object]:
        """``{"passed": ..., "score": ..., "evidence": [...]}`` (the events' ``liveness``)."""
        return {"passed": self.passed, "score": round(self.score, 4),
                "evidence": list(self.evidence)}  # fmt: skip


def parallax_strength(w: Window, p: LivenessParams) -> float:
    """How far a window's parallax is past both thresholds: ``min(z/min_z, turn/min_turn)``."""
    if w.parallax.n < MIN_FACE_POINTS:
        return 0.0
    turn = math.degrees(w.parallax.angle)
    return max(0.0, min(w.parallax.z_both / p.min_z, turn / p.min_turn_deg))


def is_prop(w: Window, p: LivenessParams) -> bool:
    """Whether a window saw enough points beyond the head move exactly with the face."""
    return p.mounted and w.beyond.with_face >= p.min_prop_points


def decide(
    windows: Sequence[Window], blinks: Sequence[Blink], p: LivenessParams, t0: float = 0.0
) -> Verdict:
    """The verdict of a track from its windows and blinks (see the module docstring).

    ``t0``: the track's first frame time (evidence times are reported from it).
    """
    props = [w for w in windows if is_prop(w, p)]
    if props:
        w = props[0]
        return Verdict(
            False, 0.0,
            (f"prop: {w.beyond.with_face} points beyond the head move with the face "
             f"at {w.t1 - t0:.1f}s",),
            w.t1 - t0,
        )  # fmt: skip
    evidence: list[str] = []
    best, when = 0.0, None
    for w in windows:
        s = parallax_strength(w, p)
        if s >= 1.0:
            evidence.append(
                f"parallax {math.degrees(w.parallax.angle):.1f}deg "
                f"z={w.parallax.z_both:.1f} at {w.t1 - t0:.1f}s"
            )
            when = w.t1 - t0 if when is None else when
        best = max(best, s)
    if p.blinks:
        for b in blinks:
            evidence.append(f"blink at {b.t_closed - t0:.1f}s")
            best = max(best, BLINK_STRENGTH)
            when = b.t_open - t0 if when is None else min(when, b.t_open - t0)
    score = 1.0 - 2.0 ** (-best)
    if best >= 1.0:
        return Verdict(True, score, tuple(evidence), when)
    return Verdict(None, score, tuple(evidence))


__all__ = ["MIN_FACE_POINTS", "LivenessParams", "Verdict", "decide", "is_prop",
           "parallax_strength"]  # fmt: skip

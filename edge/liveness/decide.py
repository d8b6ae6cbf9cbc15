"""From a track's evidence to its liveness verdict: passed true, false or null.

Evidence, each piece measured over one track (see :mod:`edge.liveness.motion`
and :mod:`edge.liveness.blink`):

* **turn** (live): a KLT window (0.5 s) in which the face turned out of its
  plane, seen twice, independently:

  - by the face mesh: its landmarks, fitted with a homography plus planar
    parallax against their own depth, imply a turn of at least
    ``min_turn_deg``. The mesh's learned 3-D prior is robust on small and
    blurred faces, but it reads part of a tilting photo's perspective as a
    turn (up to ~10 degrees for a print swung by 20);
  - by the face's texture (KLT corners): the same fit implies a turn of at
    least half ``min_turn_deg`` with significance ``sqrt(t2) >= min_z``.
    A flat prop has no parallax whatever the mesh believes; this
    measurement is exact physics but noisy on small faces and disturbed by
    glare and blur;
  - and both parallax directions agree within 60 degrees
    (:data:`MAX_DIRECTION_DEG`): one rigid turn moves both the same way,
    while the two measurements' failures (perspective read as a turn, a
    glare dragging corners) point anywhere;

* **blink** (live): both eyes dip and reopen together;
* **prop** (spoof, mounted camera only): a KLT window in which at least
  ``min_prop_points`` points beyond the head move exactly with the face (within
  a third of the distance by which "with the face" and "standing still"
  differ, itself at least 1 px) while at least :data:`PROP_MIN_STILL` points
  there stand still: the border or background of a photo, a phone's bezel,
  in front of a still room. Nothing of a live person but a hat does that;
  a crowd walking along moves everything around the face, and nothing
  stands still;
* **texture model** (spoof, optional): a user-supplied anti-spoofing CNN whose
  mean live probability over the track stays under ``texture_min``.

The verdict: a prop (or the texture model's refusal) means ``False`` (a
spoof); otherwise a turn or a blink means ``True``; otherwise ``None``: not
enough evidence, never a pass. The verdict is final once it is ``True`` or
``False``: the stage decides after every window and stops there
(:func:`decide_progressive` replays that on recorded evidence). The score (0-1) grows
with the strongest live evidence: ``1 - 2^-s`` where ``s`` is the best
window's ``min(mesh turn / min_turn_deg, texture turn / (min_turn_deg / 2),
sqrt(t2) / min_z)`` (0 when the directions disagree; a blink counts as
``s = 2``), and 0 when a prop was seen: 0.5 is the pass mark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edge.liveness.blink import Blink
from edge.liveness.motion import Window
from edge.types import Liveness

MIN_FACE_POINTS = 20
"""Fewer face points than this make a window's texture parallax too noisy to count."""
PROP_MIN_STILL = 3
"""A prop needs the room behind it seen standing still in the same window (at
least this many points beyond the head): that is what tells a prop moving in
front of a mounted camera from a crowd, or a companion, moving along with
the face, where everything around the face moves."""
MAX_DIRECTION_DEG = 60.0
"""The mesh's and the texture's parallax directions must agree this well."""
BLINK_STRENGTH = 2.0


@dataclass(frozen=True)
class LivenessParams:
    """The decision's thresholds (``[liveness]`` in the config)."""

    min_turn_deg: float = 6.0
    min_z: float = 4.5
    min_prop_points: int = 12
    blinks: bool = True
    mounted: bool = True  # [camera] mounted: the background stands still
    texture_min: float = 0.5


Verdict = Liveness
"""A track's verdict (:class:`edge.types.Liveness`: decisions and events carry it)."""


def turn_strength(w: Window, p: LivenessParams) -> float:
    """How far a window's turn is past its thresholds (>= 1: live evidence; see the docstring)."""
    k, m = w.parallax, w.mesh
    if k.n < MIN_FACE_POINTS:
        return 0.0
    cos = k.direction[0] * m.direction[0] + k.direction[1] * m.direction[1]
    if cos < math.cos(math.radians(MAX_DIRECTION_DEG)):
        return 0.0
    turn = p.min_turn_deg
    return max(0.0, min(math.degrees(m.angle) / turn, math.degrees(k.angle) / (turn / 2),
                        math.sqrt(max(k.t2, 0.0)) / p.min_z))  # fmt: skip


def is_prop(w: Window, p: LivenessParams) -> bool:
    """Whether a window saw enough points beyond the head move exactly with the face
    while the room behind stood still (:data:`PROP_MIN_STILL`)."""
    b = w.beyond
    return p.mounted and b.with_face >= p.min_prop_points and b.still >= PROP_MIN_STILL


def decide(
    windows: Sequence[Window],
    blinks: Sequence[Blink],
    p: LivenessParams,
    t0: float = 0.0,
    texture: float | None = None,
) -> Verdict:
    """The verdict of a track from its windows and blinks (see the module docstring).

    ``t0``: the track's first frame time (evidence times are reported from it).
    ``texture``: the texture model's mean live probability, None without one.
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
    if texture is not None and texture < p.texture_min:
        return Verdict(False, 0.0, (f"texture model: live probability {texture:.2f}",))
    evidence: list[str] = []
    best, when = 0.0, None
    for w in windows:
        s = turn_strength(w, p)
        if s >= 1.0:
            evidence.append(
                f"turn {math.degrees(w.mesh.angle):.0f}deg (texture "
                f"{math.degrees(w.parallax.angle):.0f}deg, z={math.sqrt(w.parallax.t2):.0f}) "
                f"at {w.t1 - t0:.1f}s"
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


def decide_progressive(
    windows: Sequence[Window],
    blinks: Sequence[Blink],
    p: LivenessParams,
    t0: float = 0.0,
) -> Verdict:
    """The verdict the stage reaches on this evidence as it arrives (the first final one).

    The stage decides after each window and blink and stops at the first
    ``True`` or ``False``; later evidence cannot change a final verdict. This
    replays that: evidence in time order (a window at its end, a blink when
    the eyes reopen), :func:`decide` on each prefix.
    """
    events = sorted([(w.t1, 0, i) for i, w in enumerate(windows)] +
                    [(b.t_open, 1, i) for i, b in enumerate(blinks)])  # fmt: skip
    ws: list[Window] = []
    bs: list[Blink] = []
    last = decide([], [], p, t0)
    for _, kind, i in events:
        if kind == 0:
            ws.append(windows[i])
        else:
            bs.append(blinks[i])
        last = decide(ws, bs, p, t0)
        if last.passed is not None:
            return last
    return last


__all__ = [
    "MAX_DIRECTION_DEG",
    "MIN_FACE_POINTS",
    "PROP_MIN_STILL",
    "LivenessParams",
    "Verdict",
    "decide",
    "decide_progressive",
    "is_prop",
    "turn_strength",
]

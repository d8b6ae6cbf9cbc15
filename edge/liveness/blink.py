"""Blinks from the eye opening over a track.

A blink closes both eyes together for 100-400 ms. Over a track we have each
frame's eye opening (:func:`edge.liveness.geometry.eye_opening`, which a
tilting print does not change); a blink is a *dip*: both eyes fall below
``dip`` times their open level (the median of the track so far) and both
come back above ``recover`` times it, all within ``max_closed_s``. A still
photo has no dips but the mesh's jitter; a print moved fast can smear an
eye for a frame, which is why both eyes must dip, both must recover, and
the dip must be deep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DIP = 0.5
RECOVER = 0.8
MAX_CLOSED_S = 0.5
MIN_FRAMES_BEFORE = 3
BASELINE_FRAMES = 40  # the open level: the median of at most this many earlier frames


@dataclass(frozen=True)
class Blink:
    """A blink: when both eyes closed and reopened, and how deep (times the open level)."""

    t_closed: float
    t_open: float
    depth: float


def find_blinks(
    times: Sequence[float],
    right: Sequence[float],
    left: Sequence[float],
    dip: float = DIP,
    recover: float = RECOVER,
    max_closed_s: float = MAX_CLOSED_S,
) -> list[Blink]:
    """Blinks in an eye-opening series (see the module docstring).

    The open level of each eye at frame ``i`` is the median of its openings
    in the (at most :data:`BASELINE_FRAMES`) frames before ``i``, at least
    :data:`MIN_FRAMES_BEFORE` of them. A blink starts at
    the first frame where ``right < dip * open_r`` and ``left < dip * open_l``
    and ends at the first later frame, within ``max_closed_s``, where both are
    back above ``recover`` times their open levels; ``depth`` is the lower of
    the two eyes' minimum openings over their open levels.
    """
    t = np.asarray(times, dtype=np.float64)
    r = np.asarray(right, dtype=np.float64)
    le = np.asarray(left, dtype=np.float64)
    out: list[Blink] = []
    n = len(t)
    # The open levels before each frame (running medians over a bounded window).
    base = [
        (float(np.median(r[max(0, i - BASELINE_FRAMES) : i])),
         float(np.median(le[max(0, i - BASELINE_FRAMES) : i]))) if i else (0.0, 0.0)
        for i in range(n)
    ]  # fmt: skip
    i = MIN_FRAMES_BEFORE
    while i < n:
        base_r, base_l = base[i]
        if base_r <= 0 or base_l <= 0 or not (r[i] < dip * base_r and le[i] < dip * base_l):
            i += 1
            continue
        j = i + 1
        end = None
        while j < n and t[j] - t[i] <= max_closed_s:
            if r[j] > recover * base_r and le[j] > recover * base_l:
                end = j
                break
            j += 1
        if end is None:
            i += 1
            continue
        depth = min(float(r[i:end].min()) / base_r, float(le[i:end].min()) / base_l)
        out.append(Blink(float(t[i]), float(t[end]), depth))
        i = end + 1
    return out


__all__ = ["DIP", "MAX_CLOSED_S", "RECOVER", "Blink", "find_blinks"]

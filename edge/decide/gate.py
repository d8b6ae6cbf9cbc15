"""Decisions wait for liveness: each leaves with its track's verdict, or after ``max_wait_s``.

With ``[liveness] mode`` ``report`` or ``require``, the daemon feeds every
frame's faces (with the tracker's track ids) to the liveness stage
(:class:`edge.liveness.stage.LivenessStage`) and passes the tracker's
decisions through a :class:`LivenessGate`:

* a decision is *held* until its track's verdict is final (``passed`` True
  or False) or the track was first seen ``max_wait_s`` ago, whichever comes
  first; it then leaves with ``liveness`` set (``passed`` None after the
  wait: not enough evidence, which a door in ``require`` mode denies as
  ``no_liveness``);
* a held decision is stamped with the frame that releases it: the decision
  is made then, so the door's age check (``door.max_decision_age_ms``)
  measures from that moment, not from when the face was first named;
* a newer decision of the same track replaces a held one (an ``unknown``
  that turns into ``recognized``);
* :meth:`LivenessGate.flush` releases what is held when the frames end
  (the end of a replay), with the verdicts as they stand, stamped with the
  last frame's time;
* :meth:`LivenessGate.drop` forgets what is held when the gallery changes
  (a reload, a fleet bundle, a revocation): those decisions were made
  against the old gallery and must never reach the door after it.

Waiting costs a live person at most ``max_wait_s`` and usually much less: a
verdict is final at the first window (0.5 s) that shows a turn or at a blink.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Protocol

from edge.types import Decision, Detection, Image, Liveness

FORGET_S = 30.0
"""A track neither seen nor held for this long is forgotten."""


class LivenessStageLike(Protocol):
    """What the gate needs from :class:`edge.liveness.stage.LivenessStage`."""

    def update(self, rgb: Image, t: float, faces: Iterable[tuple[int, Detection]]) -> None: ...

    def verdict(self, tid: int) -> Liveness: ...


class LivenessGate:
    """Holds decisions until their track's liveness is known (see the module docstring).

    Not thread-safe: the daemon's loop feeds it, in frame order.
    """

    def __init__(self, stage: LivenessStageLike, max_wait_s: float) -> None:
        self.stage = stage
        self.max_wait_s = max_wait_s
        self._held: dict[int, Decision] = {}
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._now: float | None = None  # the last frame's time

    @property
    def held(self) -> int:
        """Decisions waiting for their track's liveness."""
        return len(self._held)

    def update(
        self,
        image: Image,
        t: float,
        faces: Sequence[tuple[int, Detection]],
        decisions: Sequence[Decision],
    ) -> list[Decision]:
        """One frame: its faces (track id, detection) and the tracker's decisions.

        Returns the decisions that leave now, each with its ``liveness``.
        """
        self._now = t
        for tid, _ in faces:
            self._first.setdefault(tid, t)
            self._last[tid] = t
        self.stage.update(image, t, faces)
        for d in decisions:
            self._first.setdefault(d.track_id, t)
            self._held[d.track_id] = d
        out = []
        for tid, d in list(self._held.items()):
            v = self.stage.verdict(tid)
            if v.passed is None and t - self._first[tid] < self.max_wait_s:
                continue
            del self._held[tid]
            out.append(replace(d, liveness=v, timestamp=max(t, d.timestamp)))
        self._forget(t)
        return out

    def flush(self) -> list[Decision]:
        """Everything held, released with the verdicts as they stand (the frames ended)."""
        t = self._now if self._now is not None else 0.0
        out = [
            replace(d, liveness=self.stage.verdict(tid), timestamp=max(t, d.timestamp))
            for tid, d in self._held.items()
        ]
        self._held.clear()
        return out

    def drop(self) -> int:
        """Forget every held decision (the gallery changed); returns how many there were."""
        n = len(self._held)
        self._held.clear()
        return n

    def _forget(self, t: float) -> None:
        old = [k for k, last in self._last.items() if t - last > FORGET_S and k not in self._held]
        for k in old:
            self._last.pop(k, None)
            self._first.pop(k, None)


__all__ = ["FORGET_S", "LivenessGate", "LivenessStageLike"]

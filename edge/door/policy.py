"""The door's granting rules: pure functions of a decision and the facts around it.

:func:`judge` applies them in order (the package docstring lists them); the
first that fails is the denial's reason (:data:`DENIAL_REASONS`).
:class:`Lockout` counts unknown-face denials. Weekly windows are parsed by the
config (:func:`edge.config.values.parse_window`); :func:`in_schedule`
evaluates them at an instant in the device's time zone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING

from edge.config.values import GROUP_PREFIX, Window

if TYPE_CHECKING:
    from edge.types import Decision

# -- denial reasons (the ``reason`` of access_denied entries and events) ------------
UNKNOWN = "unknown"
NOT_ALLOWED = "not_allowed"
OUTSIDE_SCHEDULE = "outside_schedule"
CLOCK_NOT_SYNCED = "clock_not_synced"
LOCKOUT = "lockout"
STALE = "stale"
DENIAL_REASONS = (UNKNOWN, NOT_ALLOWED, OUTSIDE_SCHEDULE, CLOCK_NOT_SYNCED, LOCKOUT, STALE)

FUTURE_SLACK_S = 0.25
"""A decision stamped further than this in the future (the clock stepped back) is stale."""


def in_schedule(windows: Iterable[Window], wall: float, tz: tzinfo | None) -> bool:
    """Whether Unix time ``wall``, in zone ``tz`` (None: the system's), lies in any window."""
    t = datetime.fromtimestamp(wall, tz=tz)
    minute = t.hour * 60 + t.minute
    return any(w.contains(t.weekday(), minute) for w in windows)


# -- the granting rules -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the door decided about one decision: granted, or denied with a reason."""

    granted: bool
    reason: str | None = None
    detail: str = ""


def is_allowed(name: str, groups: Iterable[str], allow: Iterable[str]) -> bool:
    """Whether ``name`` (or one of its ``groups``, as ``group:NAME``) is in ``allow``.

    A name is matched only against the entries that are names: a person
    somehow called ``group:staff`` is not in group staff.
    """
    allowed = set(allow)
    direct = not name.lower().startswith(GROUP_PREFIX)
    return (direct and name in allowed) or any(f"{GROUP_PREFIX}{g}" in allowed for g in groups)


def windows_for(
    name: str, groups: Iterable[str], schedule: Mapping[str, Sequence[Window]]
) -> list[Window] | None:
    """Every window that applies to a person (theirs and their groups'); None when none does."""
    keys = [name, *(f"{GROUP_PREFIX}{g}" for g in groups)]
    found = [w for k in keys if k in schedule for w in schedule[k]]
    return found if any(k in schedule for k in keys) else None


def judge(
    decision: Decision,
    *,
    allow: Iterable[str],
    groups: Iterable[str],
    windows: Sequence[Window] | None,
    tz: tzinfo | None,
    wall_now: float,
    max_age_s: float,
    synced: bool,
    locked: bool,
    replayed: bool,
) -> Verdict:
    """The granting rules (module docstring), in order; the first that fails is the reason.

    Pure: the caller supplies the person's groups, the windows that apply to
    them (None: no schedule), the wall clock, whether it is synced, whether
    a lockout is in force and whether this decision was seen before. The age
    is ``wall_now - decision.timestamp``; it must lie in
    ``[-FUTURE_SLACK_S, max_age_s]``.
    """
    if locked:
        return Verdict(False, LOCKOUT, "the door is locked out after repeated unknown faces")
    if decision.kind != "recognized" or not decision.name:
        return Verdict(False, UNKNOWN, "face not recognized")
    if replayed:
        return Verdict(False, STALE, "replayed decision (seen before)")
    age = wall_now - decision.timestamp
    if age > max_age_s:
        why = f"decision is {age * 1000:.0f} ms old (max {max_age_s * 1000:.0f})"
        return Verdict(False, STALE, why)
    if age < -FUTURE_SLACK_S:
        why = f"decision is {-age * 1000:.0f} ms in the future (the clock stepped)"
        return Verdict(False, STALE, why)
    groups = list(groups)
    if not is_allowed(decision.name, groups, allow):
        return Verdict(False, NOT_ALLOWED, f"{decision.name} is not allowed at this door")
    if windows is not None:
        if not synced:
            return Verdict(
                False, CLOCK_NOT_SYNCED, "a schedule applies and the clock is not synchronised"
            )
        if not in_schedule(windows, wall_now, tz):
            return Verdict(False, OUTSIDE_SCHEDULE, f"{decision.name} is outside their schedule")
    return Verdict(True)


class Lockout:
    """Counts unknown-face denials; ``max_denials`` within ``window_s`` lock for ``lockout_s``.

    Times are from a monotonic clock. Not thread-safe (the controller holds its lock).
    """

    def __init__(self, max_denials: int, window_s: float, lockout_s: float) -> None:
        self.max_denials = max_denials
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.until = float("-inf")
        self._times: deque[float] = deque()

    def active(self, now: float) -> bool:
        return now < self.until

    def denied_unknown(self, now: float) -> bool:
        """Count one unknown-face denial at ``now``; True when it engages the lockout."""
        if self.active(now):
            return False
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        if len(self._times) >= self.max_denials:
            self._times.clear()
            self.until = now + self.lockout_s
            return True
        return False


__all__ = [
    "CLOCK_NOT_SYNCED",
    "DENIAL_REASONS",
    "FUTURE_SLACK_S",
    "LOCKOUT",
    "NOT_ALLOWED",
    "OUTSIDE_SCHEDULE",
    "STALE",
    "UNKNOWN",
    "Lockout",
    "Verdict",
    "Window",
    "in_schedule",
    "is_allowed",
    "judge",
    "windows_for",
]

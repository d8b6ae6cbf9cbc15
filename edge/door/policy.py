"""The door's granting rules: pure functions of a decision and the facts around it.

:func:`judge` applies them in order (the package docstring lists them); the
first that fails is the denial's reason (:data:`DENIAL_REASONS`).
:class:`Lockout` counts unknown-face denials. Weekly windows are parsed by the
config (:func:`edge.config.values.parse_window`); :func:`in_schedule`
evaluates them at an instant in the device's time zone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Literal

from edge.config.values import GROUP_PREFIX, Window
from edge.errors import ConfigError

if TYPE_CHECKING:
    from edge.types import Decision

# -- denial reasons (the ``reason`` of access_denied entries and events) ------------
UNKNOWN = "unknown"
NOT_ALLOWED = "not_allowed"
OUTSIDE_SCHEDULE = "outside_schedule"
CLOCK_NOT_SYNCED = "clock_not_synced"
LOCKOUT = "lockout"
STALE = "stale"
TAMPERED = "tampered"
SPOOF = "spoof"
NO_LIVENESS = "no_liveness"

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


@dataclass(frozen=True)
class Facts:
    """Everything the rules look at for one decision (the caller gathers it; the rules are pure).

    ``groups``: the person's, from the gallery; ``windows``: the schedule
    windows that apply to them (None: no schedule); ``wall_now``: the wall
    clock; ``synced``: whether it is NTP-synchronised; ``locked``: a lockout
    is in force; ``replayed``: this decision was seen before; ``tampered``:
    the tamper alarm is in force and ``door.deny_while_tampered`` is set.
    """

    decision: Decision
    allow: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    windows: Sequence[Window] | None = None
    tz: tzinfo | None = None
    wall_now: float = 0.0
    max_age_s: float = 1.0
    synced: bool = True
    locked: bool = False
    replayed: bool = False
    tampered: bool = False
    liveness_required: bool = False


def _lockout(f: Facts) -> str | None:
    return "the door is locked out after repeated unknown faces" if f.locked else None


def _tampered(f: Facts) -> str | None:
    return "the tamper alarm is in force (door.deny_while_tampered)" if f.tampered else None


def _unknown(f: Facts) -> str | None:
    d = f.decision
    return None if d.kind == "recognized" and d.name else "face not recognized"


def _spoof(f: Facts) -> str | None:
    lv = f.decision.liveness
    if not f.liveness_required or lv is None or lv.passed is not False:
        return None
    return "liveness: a flat prop (photo or screen): " + "; ".join(lv.evidence[:2])


def _no_liveness(f: Facts) -> str | None:
    lv = f.decision.liveness
    if not f.liveness_required or (lv is not None and lv.passed is True):
        return None
    if lv is None:
        return "liveness is required and was not measured"
    return f"not enough liveness evidence (score {lv.score:.2f})"


def _stale(f: Facts) -> str | None:
    if f.replayed:
        return "replayed decision (seen before)"
    age = f.wall_now - f.decision.timestamp
    if age > f.max_age_s:
        return f"decision is {age * 1000:.0f} ms old (max {f.max_age_s * 1000:.0f})"
    if age < -FUTURE_SLACK_S:
        return f"decision is {-age * 1000:.0f} ms in the future (the clock stepped)"
    return None


def _not_allowed(f: Facts) -> str | None:
    name = str(f.decision.name)
    return None if is_allowed(name, f.groups, f.allow) else f"{name} is not allowed at this door"


def _clock(f: Facts) -> str | None:
    if f.windows is not None and not f.synced:
        return "a schedule applies and the clock is not synchronised"
    return None


def _schedule(f: Facts) -> str | None:
    if f.windows is None or in_schedule(f.windows, f.wall_now, f.tz):
        return None
    return f"{f.decision.name} is outside their schedule"


Rule = Callable[[Facts], "str | None"]
RULES: tuple[tuple[str, Rule], ...] = (
    (LOCKOUT, _lockout),
    (TAMPERED, _tampered),
    (UNKNOWN, _unknown),
    (SPOOF, _spoof),
    (NO_LIVENESS, _no_liveness),
    (STALE, _stale),
    (NOT_ALLOWED, _not_allowed),
    (CLOCK_NOT_SYNCED, _clock),
    (OUTSIDE_SCHEDULE, _schedule),
)
"""The granting rules, in order: (reason, rule). A rule returns why it denies, or None.

A new rule (a liveness check, say) is one function and one row here, at
the place in the order where its reason should win over the later ones.
"""
DENIAL_REASONS = tuple(reason for reason, _ in RULES)


def judge_facts(facts: Facts, rules: Sequence[tuple[str, Rule]] = RULES) -> Verdict:
    """The first rule that denies is the verdict's reason; none: granted."""
    for reason, rule in rules:
        detail = rule(facts)
        if detail is not None:
            return Verdict(False, reason, detail)
    return Verdict(True)


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
    tampered: bool = False,
    liveness_required: bool = False,
) -> Verdict:
    """The granting rules (:data:`RULES`), in order; the first that fails is the reason.

    Pure: the caller supplies the person's groups, the windows that apply to
    them (None: no schedule), the wall clock, whether it is synced, whether
    a lockout (or, with ``door.deny_while_tampered``, a tamper alarm) is in
    force and whether this decision was seen before. The age is
    ``wall_now - decision.timestamp``; it must lie in ``[-FUTURE_SLACK_S, max_age_s]``.
    """
    facts = Facts(
        decision, tuple(allow), tuple(groups), windows, tz, wall_now, max_age_s, synced,
        locked, replayed, tampered, liveness_required,
    )  # fmt: skip
    return judge_facts(facts)


# -- entries that match nobody (check-config and start) --------------------------------


@dataclass(frozen=True)
class Finding:
    """An ``allow`` or ``schedule`` entry that matches nobody in the gallery.

    ``error``: a near miss of a name or group that is enrolled (a typo: the
    entry would silently apply to nobody, and the person it was meant for
    would get in without the schedule, or not at all); ``warning``: nothing
    like it is enrolled yet (it may be later).
    """

    level: Literal["error", "warning"]
    key: str
    message: str


def edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


def near_miss(entry: str, known: str) -> bool:
    """Whether ``entry`` is a slip of ``known`` (and not ``known`` itself).

    Equal once case and surrounding whitespace are ignored, or at most 1
    edit apart (2 when the known name has 5 or more characters), ignoring
    case: "Alice " and "alice" and "Alcie" for "Alice", "Staff" for "staff".
    """
    if entry == known:
        return False
    a, b = entry.strip().casefold(), known.strip().casefold()
    return a == b or edit_distance(a, b) <= (2 if len(b) >= 5 else 1)


def _closest(entry: str, candidates: Iterable[str]) -> str | None:
    slips = [c for c in candidates if near_miss(entry, c)]
    if not slips:
        return None
    return min(slips, key=lambda c: (edit_distance(entry.casefold(), c.casefold()), c))


def check_entry(key: str, entry: str, names: set[str], groups: set[str]) -> Finding | None:
    """One ``allow`` or ``schedule`` entry against the enrolled names and groups."""
    if entry.startswith(GROUP_PREFIX):
        group = entry.removeprefix(GROUP_PREFIX)
        if group in groups:
            return None
        near = _closest(group, groups)
        if near is not None:
            return Finding(
                "error",
                key,
                f"no group {group!r} in the gallery; did you mean {GROUP_PREFIX}{near}? "
                "(group names are exact: case and spelling)",
            )
        return Finding("warning", key, f"nobody in the gallery is in group {group!r} (yet)")
    if entry in names:
        return None
    if entry.strip() in groups or entry.strip().casefold() in {g.casefold() for g in groups}:
        return Finding(
            "error",
            key,
            f"{entry!r} is a group, written as a person: {GROUP_PREFIX}{entry.strip()}?",
        )
    near = _closest(entry, names)
    if near is not None:
        return Finding(
            "error",
            key,
            f"nobody named {entry!r} is enrolled; did you mean {near!r}? "
            "(names are exact: case, spaces and spelling)",
        )
    return Finding("warning", key, f"nobody named {entry!r} is enrolled (yet)")


def check_names(
    allow: Sequence[str],
    schedule: Mapping[str, Sequence[str]],
    names: Iterable[str],
    groups_of: Mapping[str, Iterable[str]],
) -> list[Finding]:
    """Every ``door.allow`` entry and ``door.schedule`` key that matches nobody enrolled.

    The rule (README, "The door"): an entry that is a near miss of an
    enrolled name or group (:func:`near_miss`) is an error, since it applies
    to nobody while looking right; one that resembles nothing enrolled is a
    warning (the person may be enrolled later). Exact matches are fine.
    """
    known = set(names)
    groups = {g for gs in groups_of.values() for g in gs}
    found = [check_entry(f"door.allow[{i}]", e, known, groups) for i, e in enumerate(allow)]
    found += [check_entry(f"door.schedule.{k}", k, known, groups) for k in schedule]
    return [f for f in found if f is not None]


def raise_errors(findings: Sequence[Finding]) -> None:
    """ConfigError naming the first error among ``findings`` (and how many more); else nothing."""
    errors = [f for f in findings if f.level == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{errors[0].key}: {errors[0].message}{more}")


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
    "NO_LIVENESS",
    "OUTSIDE_SCHEDULE",
    "RULES",
    "SPOOF",
    "STALE",
    "TAMPERED",
    "UNKNOWN",
    "Facts",
    "Finding",
    "Lockout",
    "Verdict",
    "Window",
    "check_entry",
    "check_names",
    "edit_distance",
    "in_schedule",
    "is_allowed",
    "judge",
    "judge_facts",
    "near_miss",
    "raise_errors",
    "windows_for",
]

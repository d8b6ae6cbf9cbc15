"""Value grammars that config keys share with the stages that use them.

The config validates these values when it is read, and the stages use the
same parsers, so a value ``check-config`` accepts means the same thing at
run time:

* weekly time windows (``door.schedule``): :func:`parse_window` ->
  :class:`Window`, evaluated by the door (:func:`edge.door.policy.in_schedule`);
* time zones (``door.timezone``): :func:`zone`;
* group names (``door.allow = ["group:NAME"]``, the gallery's person
  metadata): :func:`check_group`, :data:`GROUP_PREFIX`.

Only the standard library and :mod:`edge.errors`: the config imports no
feature module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import tzinfo

from edge.errors import ConfigError, GalleryError

GROUP_PREFIX = "group:"
"""How the door's allow list names a group; a person's name never starts with it."""
_GROUP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW_RE = re.compile(
    r"^\s*(?P<days>[A-Za-z*,\-]+)\s+(?P<h0>\d{1,2}):(?P<m0>\d{2})\s*-\s*(?P<h1>\d{1,2}):(?P<m1>\d{2})\s*$"
)


def check_group(group: str) -> str:
    """A valid group name (1-64 of ``A-Z a-z 0-9 _ . -``), or GalleryError."""
    if not _GROUP_RE.match(group):
        raise GalleryError(
            f"invalid group name {group!r:.80} (1-64 letters, digits, '_', '.', '-')"
        )
    return group


@dataclass(frozen=True)
class Window:
    """A weekly time window: on ``days`` (0 = Monday), from ``start`` to ``end`` minutes.

    ``end <= start`` is an overnight window: it runs from ``start`` on each
    of its days until ``end`` on the next day.
    """

    days: frozenset[int]
    start: int
    end: int

    def contains(self, weekday: int, minute: int) -> bool:
        """Whether minute-of-day ``minute`` on ``weekday`` lies in the window."""
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        return (weekday in self.days and minute >= self.start) or (
            (weekday - 1) % 7 in self.days and minute < self.end
        )


def parse_window(text: str) -> Window:
    """``"mon-fri 07:00-19:00"``, ``"sat,sun 10:00-14:00"``, ``"* 22:00-06:00"`` -> :class:`Window`.

    Days: ``mon`` .. ``sun``, ranges (``fri-mon`` wraps), comma lists, ``*``
    or ``daily``. Times ``HH:MM``, the end may be ``24:00``; an end at or
    before the start makes an overnight window. ValueError when malformed.
    """
    m = _WINDOW_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not 'DAYS HH:MM-HH:MM' (e.g. 'mon-fri 07:00-19:00')")
    days: set[int] = set()
    for part in m["days"].lower().split(","):
        if part in ("*", "daily"):
            days.update(range(7))
            continue
        a, _, b = part.partition("-")
        if a not in _DAYS or (b and b not in _DAYS):
            raise ValueError(f"{text!r}: unknown day {part!r} (mon, tue, ..., sun, *)")
        i, j = _DAYS.index(a), _DAYS.index(b or a)
        days.update((i + k) % 7 for k in range((j - i) % 7 + 1))
    h0, m0, h1, m1 = (int(m[k]) for k in ("h0", "m0", "h1", "m1"))
    if h0 > 23 or m0 > 59 or m1 > 59 or h1 > 24 or (h1 == 24 and m1):
        raise ValueError(f"{text!r}: times run from 00:00 to 24:00")
    start, end = h0 * 60 + m0, h1 * 60 + m1
    if start == end % 1440 and not (start == 0 and end == 1440):
        raise ValueError(f"{text!r}: an empty window (start equals end)")
    return Window(frozenset(days), start, end)


def zone(name: str) -> tzinfo | None:
    """The IANA time zone ``name`` (``door.timezone``); None (the system's) when empty."""
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"door.timezone: unknown time zone {name!r} (an IANA name such as "
            "'Europe/Berlin', or empty for the system's)"
        ) from None


__all__ = ["GROUP_PREFIX", "Window", "check_group", "parse_window", "zone"]

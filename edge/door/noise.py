"""Input noise: entries the world can make as loud as it likes, rate-limited and summed up.

A tamper switch or a door contact toggled a thousand times a second (a
loose wire, or someone at work on it) must not write a thousand rows: it
would fill the disk and, before retention kept decisions apart, pushed
grants out of the log. :class:`NoiseLimiter` lets each input kind write
:data:`BURST` entries at once and :data:`PER_MINUTE` a minute after that;
the rest are counted, and once a burst is over (:data:`QUIET_S` without one)
or every :data:`SUMMARY_EVERY_S` while it goes on, one *summary* entry says
how many there were ("tamper switch changed 9,990× in 10 s"). The door's
state (the status topic) still follows every change; only the audit rows
are limited.

Pure: every method takes the monotonic time.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.delivery.ratelimit import TokenBucket

BURST = 10
"""Entries of one input kind written one by one at once."""
PER_MINUTE = 10.0
"""... and per minute after that."""
QUIET_S = 10.0
"""A burst is over after this long without an entry of its kind."""
SUMMARY_EVERY_S = 60.0
"""While a burst goes on, a summary at least this often."""


@dataclass
class Held:
    """Entries of one kind counted and not written one by one, since ``first``."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0


@dataclass(frozen=True)
class Summary:
    """What a summary entry says: ``count`` entries of ``kind`` between ``first`` and ``last``."""

    kind: str
    count: int
    first: float
    last: float

    @property
    def span_s(self) -> float:
        return max(0.0, self.last - self.first)


class NoiseLimiter:
    """Per-kind budgets for input entries; what is over budget becomes a :class:`Summary`."""

    def __init__(
        self,
        burst: int = BURST,
        per_minute: float = PER_MINUTE,
        quiet_s: float = QUIET_S,
        every_s: float = SUMMARY_EVERY_S,
    ) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self.quiet_s = quiet_s
        self.every_s = every_s
        self._buckets: dict[str, TokenBucket] = {}
        self._held: dict[str, Held] = {}

    def admit(self, kind: str, now: float) -> bool:
        """Whether an entry of ``kind`` at ``now`` is written; otherwise it is counted."""
        bucket = self._buckets.get(kind)
        if bucket is None:
            bucket = self._buckets[kind] = TokenBucket(self.rate, self.burst, now)
        if bucket.take(now):
            held = self._held.get(kind)
            if held is not None:
                held.last = now  # the burst goes on
            return True
        held = self._held.setdefault(kind, Held(0, now, now))
        held.count += 1
        held.last = now
        return False

    def due(self, now: float, force: bool = False) -> list[Summary]:
        """Summaries to write now: bursts that ended, long ones every period (all, ``force``)."""
        out = []
        for kind, held in list(self._held.items()):
            if held.count and (
                force or now - held.last >= self.quiet_s or now - held.first >= self.every_s
            ):
                out.append(Summary(kind, held.count, held.first, max(held.last, held.first)))
                del self._held[kind]
        return out

    @property
    def holding(self) -> int:
        """Entries counted and not yet summed up."""
        return sum(h.count for h in self._held.values())


__all__ = ["BURST", "PER_MINUTE", "QUIET_S", "SUMMARY_EVERY_S", "Held", "NoiseLimiter", "Summary"]

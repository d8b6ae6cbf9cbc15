"""Rates and bursts: a token bucket, and a log that speaks once per burst.

:class:`TokenBucket` paces the outbox drain (``mqtt.drain_rate``) and
bounds how many commands are acted on; :class:`BurstLog` keeps a flood (of
commands, say) from flooding the journal: the first few of a burst are
logged one by one, the rest are counted and summed up in one line per
period and at the end of the burst.

Both take the monotonic time as an argument, so tests drive them with any
clock.
"""

from __future__ import annotations

import logging
from collections import Counter


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked.

    ``tokens(t) = min(burst, tokens(t0) + rate * (t - t0))``; spending one
    token is one action. It starts full.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not (rate > 0 and burst >= 1):
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 ({rate}, {burst})")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._at = now

    def refill(self, now: float) -> float:
        """Add what accrued since the last call (capped at ``burst``); the tokens banked."""
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
        return self._tokens

    def available(self, now: float) -> int:
        """Whole tokens banked at ``now``."""
        return int(self.refill(now))

    def spend(self, n: int = 1) -> None:
        """Use ``n`` tokens (callers check :meth:`available` first)."""
        self._tokens -= n

    def take(self, now: float) -> bool:
        """Spend one token if one is banked; whether it was."""
        if self.refill(now) >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until one whole token is banked (0 when one is): ``(1 - tokens) / rate``."""
        return max(0.0, (1.0 - self._tokens) / self.rate)


class BurstLog:
    """Log the first ``first`` records of a burst one by one, then only count them.

    A burst ends after ``quiet_s`` without a record. What was counted and not
    logged is summed up in one line (per outcome, with the last detail) at
    the end of the burst and, while a long burst goes on, every ``every_s``
    seconds. :meth:`flush` emits a due summary; call it now and then (the
    drain thread does) and when stopping (``force=True``).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        first: int = 5,
        quiet_s: float = 5.0,
        every_s: float = 60.0,
    ) -> None:
        self.log = logger
        self.what = what
        self.first = first
        self.quiet_s = quiet_s
        self.every_s = every_s
        self._in_burst = 0  # records in the current burst
        self._last = float("-inf")  # when the last record came
        self._summarised = 0.0  # when the current summary period began
        self._held: Counter[str] = Counter()
        self._held_detail: dict[str, str] = {}

    def note(self, now: float, outcome: str, detail: str, level: int = logging.INFO) -> bool:
        """Record one ``outcome`` (with its ``detail``); whether it was logged on its own."""
        self.flush(now)
        if now - self._last > self.quiet_s:
            self._in_burst = 0
            self._summarised = now
        self._last = now
        self._in_burst += 1
        if self._in_burst <= self.first:
            self.log.log(level, "%s %s", self.what, detail)
            return True
        self._held[outcome] += 1
        self._held_detail[outcome] = detail
        return False

    def flush(self, now: float, force: bool = False) -> str | None:
        """Log the summary when the burst is over or a period passed (or ``force``); the line."""
        if not self._held:
            return None
        over = now - self._last > self.quiet_s
        if not (force or over or now - self._summarised >= self.every_s):
            return None
        n = sum(self._held.values())
        parts = ", ".join(
            f"{k} {self._held[k]} (last: {self._held_detail[k]})" for k in sorted(self._held)
        )
        line = f"{self.what}: {n} more not logged one by one: {parts}"
        self.log.warning("%s", line)
        self._held.clear()
        self._held_detail.clear()
        self._summarised = now
        return line


__all__ = ["BurstLog", "TokenBucket"]

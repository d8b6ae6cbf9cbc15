"""Door supervision on the relay's owner thread: the contact, the exit button, the tamper switch.

:class:`Supervisor` turns input changes into the door's state and its
incidents: the door opening while no grant or exit request is in force
(``door_forced``), standing open longer than ``door.held_open_s``
(``door_held_open``), the tamper switch (``tamper``) and the exit button
(``exit_request``, which also pulses the relay). Its entries are input
noise: a :class:`~edge.door.noise.NoiseLimiter` writes a few one by one and
sums up the rest, so a flapping switch never floods the log; the state
itself (the status topic, ``tampered`` for the rules) follows every change.

It runs only on the owner thread (:class:`edge.door.controller.DoorController`)
and never touches the relay or storage itself: it asks through the
callbacks it is given (``record`` queues an entry, ``pulse`` asks for a
pulse, ``changed`` says the status changed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import edge.door.entry as kinds
from edge.door.noise import NoiseLimiter, Summary

if TYPE_CHECKING:
    from edge.config import DoorConfig

FORCED_GRACE_S = 2.0
"""An opening this long after the relay released still counts as authorised."""
LABELS = {
    kinds.TAMPER: "tamper switch changed",
    kinds.FORCED: "door opened without a grant",
    kinds.HELD_OPEN: "door held open",
    kinds.EXIT: "exit button pressed",
}
"""How a summary entry names what happened, per kind."""

Record = Callable[..., None]


class Supervisor:
    """The inputs' state and incidents (owner thread only; see the module)."""

    def __init__(
        self,
        d: DoorConfig,
        record: Record,
        pulse: Callable[[float, str], None],
        changed: Callable[[], None],
        limiter: NoiseLimiter | None = None,
    ) -> None:
        self.door = d
        self._record = record
        self._pulse = pulse
        self._changed = changed
        self.limiter = limiter or NoiseLimiter()
        self.authorised_until = float("-inf")
        """An opening of the door before this (monotonic) is not forced."""
        self.door_open: bool | None = None
        self.opened_at = 0.0
        self.held_sent = False
        self.tamper: bool | None = None

    def status(self) -> dict[str, Any]:
        """The inputs' part of the retained door status (``door``, ``tamper``)."""
        door = None if self.door_open is None else ("open" if self.door_open else "closed")
        return {"door": door, "tamper": self.tamper}

    @property
    def tampered(self) -> bool:
        """The tamper alarm is in force now."""
        return self.tamper is True

    def next_wake(self, now: float) -> float:
        """Seconds until the door is held open too long (inf: not open, or already said)."""
        if self.door_open and not self.held_sent:
            return self.opened_at + self.door.held_open_s - now
        return float("inf")

    # -- changes -----------------------------------------------------------------------

    def input(self, which: str, closed: bool, t: float, initial: bool = False) -> None:
        """One input changed (``closed``: its switch is closed) at monotonic time ``t``."""
        if which == "contact":
            self._contact(closed, t, initial)
        elif which == "exit":
            if closed and not initial:
                self._pulse(self.door.unlock_s, "exit request")  # open first, then log
                self._note(kinds.EXIT, t, "request-to-exit button", {"source": "exit"})
        elif which == "tamper":
            self._tamper(closed, t, initial)

    def _contact(self, closed: bool, t: float, initial: bool) -> None:
        is_open = (not closed) if self.door.contact_closed_when_shut else closed
        if is_open == self.door_open:
            return
        self.door_open = is_open
        if is_open:
            self.opened_at, self.held_sent = t, False
            if not initial and t > self.authorised_until:
                self._note(kinds.FORCED, t, "door opened without a grant or exit request")
        self._changed()

    def _tamper(self, closed: bool, t: float, initial: bool) -> None:
        active = (not closed) if self.door.tamper_closed_when_ok else closed
        if active == self.tamper:
            return
        self.tamper = active
        if active or not initial:
            detail = "tamper switch triggered" if active else "tamper switch restored"
            self._note(kinds.TAMPER, t, detail, {"active": active})
        self._changed()

    def tick(self, now: float) -> None:
        """Held open too long; summaries of bursts that ended."""
        if self.next_wake(now) <= 0:
            self.held_sent = True
            held = self.door.held_open_s
            self._note(kinds.HELD_OPEN, now, f"door open for more than {held:g} s",
                       {"held_open_s": held})  # fmt: skip
        for s in self.limiter.due(now):
            self._summary(s)

    def flush(self, now: float) -> None:
        """Every summary still held (the door stops)."""
        for s in self.limiter.due(now, force=True):
            self._summary(s)

    # -- entries -------------------------------------------------------------------------

    def _note(self, kind: str, t: float, detail: str, data: dict[str, Any] | None = None) -> None:
        if self.limiter.admit(kind, t):
            self._record(kind, detail=detail, data=data)

    def _summary(self, s: Summary) -> None:
        data: dict[str, Any] = {"summary": True, "suppressed": s.count,
                                "span_s": round(s.span_s, 3)}  # fmt: skip
        if s.kind == kinds.TAMPER:
            data["active"] = self.tamper
        detail = f"{LABELS.get(s.kind, s.kind)} {s.count:,}× more in {s.span_s:.0f} s " \
            "(not written one by one)"  # fmt: skip
        self._record(s.kind, detail=detail, data=data)


__all__ = ["FORCED_GRACE_S", "LABELS", "Supervisor"]

"""The door controller: one owner thread drives the relay; rules, audit and events around it.

See :mod:`edge.door` for what opens the door and why. :class:`DoorController`
receives decisions from the daemon loop (:meth:`~DoorController.on_decision`),
signed remote unlocks from the MQTT thread
(:meth:`~DoorController.remote_command`) and input changes from gpiozero's
threads; only its owner thread (``door-relay``) touches the relay. The rules
and their state are :class:`edge.door.access.Access`'s; each outcome is one
audit entry, then one event through an :class:`~edge.door.record.EventSink`
(:class:`edge.door.record.Recorder`): the daemon's publisher, or nothing.
The door never imports the MQTT side; it only knows that small sink.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import edge.door.audit as aud
from edge.clock import clock_synced
from edge.door.access import Access
from edge.door.pins import GpioPins, make_pin_factory
from edge.door.policy import UNKNOWN, Verdict
from edge.door.record import EventSink, Recorder
from edge.door.remote import remote_key

if TYPE_CHECKING:
    from edge.config import Config, DoorConfig
    from edge.types import Decision

log = logging.getLogger("facegate.door")

FORCED_GRACE_S = 2.0
"""An opening this long after the relay released still counts as authorised."""
MAX_WAIT_S = 0.5
"""Longest sleep of the owner thread between checks of its deadlines."""
STATUS_TOPIC = "door"
"""The retained door status lives on ``<prefix>/<device>/door``."""


class GroupSource(Protocol):
    """What the door needs from the gallery: a person's groups."""

    def __contains__(self, name: object) -> bool: ...

    def groups(self, name: str) -> tuple[str, ...]: ...


@dataclass
class OwnerState:
    """What only the owner thread reads and writes: the relay, its deadline, the inputs."""

    energised: bool = False
    deadline: float = 0.0
    """When the current pulse ends (monotonic)."""
    authorised_until: float = float("-inf")
    """An opening of the door before this (monotonic) is not forced."""
    door_open: bool | None = None
    opened_at: float = 0.0
    held_sent: bool = False
    tamper: bool | None = None
    was_locked: bool = False

    def status(self, locked: bool) -> dict[str, Any]:
        """The retained door status (``lock``, ``door``, ``tamper``, ``lockout``)."""
        door = None if self.door_open is None else ("open" if self.door_open else "closed")
        return {
            "lock": "unlocked" if self.energised else "locked",
            "door": door,
            "tamper": self.tamper,
            "lockout": locked,
        }

    def next_wake(self, now: float, held_open_s: float) -> float:
        """Seconds until the owner thread must look again (a pulse ends, the door is held open)."""
        wake = MAX_WAIT_S
        if self.energised:
            wake = min(wake, self.deadline - now)
        if self.door_open and not self.held_sent:
            wake = min(wake, self.opened_at + held_open_s - now)
        return max(0.0, wake)


class DoorController:
    """The door: relay owner thread, supervision, rules, lockout, audit and events.

    Constructing it releases the relay first, then opens the audit log and
    starts the owner thread; :meth:`stop` releases and joins it. Thread-safe:
    :meth:`on_decision` (daemon loop), :meth:`remote_command` (MQTT thread)
    and the input callbacks (gpiozero threads) only post requests to the
    owner thread, which alone drives the relay.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        events: EventSink | None = None,
        factory: Any = None,
        audit: aud.AuditLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        synced: Callable[[], bool] | None = None,
    ) -> None:
        d = cfg.door
        self.cfg = cfg
        self.door = d
        self._clock = clock
        synced = synced or clock_synced
        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stopped = False
        # Released before anything else (the constructor of GpioPins does that first).
        pin_factory = factory if factory is not None else make_pin_factory(cfg)
        self._pins = GpioPins(d, pin_factory, self._on_input)
        self._own_audit = audit is None
        try:
            self.audit = audit or aud.AuditLog(
                cfg.audit_file, d.audit_max_age_days, d.audit_max_rows, wall=wall
            )
            key = remote_key(cfg) if d.remote_unlock else None
            self._access = Access(cfg, key=key, clock=clock, wall=wall, synced=synced)
        except BaseException:
            self._pins.close()
            raise
        self._recorder = Recorder(self.audit, events, wall, synced)
        self.gate: Callable[[], tuple[str, str] | None] | None = None
        """fleet: a last check on each grant; (reason, detail) denies it (edge.fleet.sync)."""
        self._s = OwnerState()
        self.relay_log: deque[tuple[float, bool, str]] = deque(maxlen=1000)
        """(clock, energised, why) for every relay change: diagnostics and tests."""
        self._thread = threading.Thread(target=self._owner_main, name="door-relay", daemon=True)
        self._thread.start()
        log.info("door: %s, audit log %s", describe_wiring(d), self.audit.path)

    # -- life cycle ------------------------------------------------------------------
    def __enter__(self) -> DoorController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        """The owner thread runs (False after a fatal relay error: restart the service)."""
        return self._thread.is_alive() and not self._stopped

    @property
    def energised(self) -> bool:
        return self._s.energised

    def release(self, why: str = "release") -> None:
        """End any pulse now (config or gallery reload)."""
        self._q.put(("release", why))

    def stop(self, timeout: float = 2.0, why: str = "stop") -> None:
        """Release the relay, stop the owner thread, free the pins (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._q.put(("stop", why))
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            # Last resort: the owner is stuck. Fail-secure beats single ownership.
            log.error("door: relay owner thread did not stop; releasing from the stopping thread")
            try:
                self._pins.relay.off()
            except Exception:
                log.exception("door: releasing the relay failed")
        self._pins.close()
        if self._own_audit:
            self.audit.close()
        log.info("door: stopped, relay released")

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until the owner thread handled everything posted so far (tests, door test)."""
        done = threading.Event()
        self._q.put(("sync", done))
        return done.wait(timeout)

    def pulse(self, seconds: float | None = None, why: str = "pulse") -> None:
        """Energise the relay for ``seconds`` (``door.unlock_s``); the owner thread does it."""
        self._q.put(("pulse", self.door.unlock_s if seconds is None else seconds, why))

    def inputs(self) -> dict[str, bool | None]:
        """The raw inputs now: True when the switch is closed, None when not wired."""
        return {w: self._pins.closed(w) for w in GpioPins.INPUTS}

    @property
    def refused_unrecorded(self) -> int:
        """Refused remote commands beyond the audit log's per-minute budget, counted only."""
        return self._access.refused_unrecorded

    # -- decisions (daemon loop) ------------------------------------------------------
    def on_decision(self, decision: Decision, gallery: GroupSource | None = None) -> Verdict:
        """Judge one live decision from the tracker; pulse the relay when granted."""
        d = self.door
        name = decision.name
        groups: tuple[str, ...] = ()
        if name and gallery is not None and name in gallery:
            groups = tuple(gallery.groups(name))
        j = self._access.judge(decision, groups)
        verdict = j.verdict
        held = self.gate() if verdict.granted and self.gate is not None else None
        if held is not None:  # fleet: the gallery is not known to be the newest
            verdict = Verdict(False, held[0], held[1])
        if verdict.granted:
            self.pulse(d.unlock_s, f"granted {name}")
        kind = aud.GRANTED if verdict.granted else aud.DENIED
        self._record(kind, name=name, reason=verdict.reason, detail=verdict.detail, data=j.data)
        if j.lockout_until is not None:
            self._record(
                aud.LOCKOUT,
                reason=UNKNOWN,
                detail=f"{d.max_denials} unknown faces within {d.lockout_window_s:g} s: "
                f"locked for {d.lockout_s:g} s",
                data={"until": j.lockout_until, "lockout_s": d.lockout_s},
            )
            self._q.put(("status",))
        return verdict

    # -- remote unlock (MQTT thread) ------------------------------------------------------
    def remote_command(self, payload: bytes) -> bool:
        """A remote unlock from the command topic: verified, then pulsed or refused.

        Returns whether it was accepted. Called on the MQTT thread.
        """
        if self._stopped:
            return False  # the service is stopping: the door takes nothing more
        reason = self._access.verify(payload)
        if reason is None:
            self.pulse(self.door.unlock_s, "remote unlock")
            self._record(
                aud.REMOTE_UNLOCK, detail="signed remote unlock", data={"source": "remote"}
            )
            return True
        log.warning("door: remote unlock refused: %s", reason)
        if self._access.record_refusal():
            self._record(
                aud.REMOTE_REFUSED,
                reason=reason,
                detail=f"remote unlock refused: {reason}",
                data={"source": "remote"},
            )
        return False

    # -- recording ----------------------------------------------------------------------
    def _record(
        self,
        kind: str,
        *,
        name: str | None = None,
        reason: str | None = None,
        detail: str = "",
        data: dict[str, Any] | None = None,
    ) -> aud.AuditEntry | None:
        """One audit entry, then its event (:meth:`edge.door.record.Recorder.record`)."""
        return self._recorder.record(kind, name=name, reason=reason, detail=detail, data=data)

    def _publish_status(self) -> None:
        if self._recorder.events is not None:
            self._recorder.status(STATUS_TOPIC, self._s.status(self._access.locked()))

    # -- the owner thread ------------------------------------------------------------------
    def _on_input(self, which: str, closed: bool) -> None:
        # gpiozero's thread: only post it, the owner thread decides.
        self._q.put(("input", which, closed, self._clock()))

    def _owner_main(self) -> None:
        try:
            self._owner_loop()
        except BaseException:
            log.exception("door: relay owner thread failed")
        finally:
            try:
                self._set_relay(False, "owner thread ended", force=True)
            except Exception:
                log.exception("door: releasing the relay failed")

    def _owner_loop(self) -> None:
        now = self._clock()
        for which in GpioPins.INPUTS:
            closed = self._pins.closed(which)
            if closed is not None:
                self._input(which, closed, now, initial=True)
        self._publish_status()
        while True:
            self._tick()
            try:
                item = self._q.get(timeout=self._s.next_wake(self._clock(), self.door.held_open_s))
            except queue.Empty:
                continue
            if item[0] == "stop":
                self._set_relay(False, str(item[1]), force=True)
                return
            try:
                self._handle(item)
            except Exception:
                log.exception("door: error handling %r; relay released", item[0])
                self._set_relay(False, "error", force=True)

    def _handle(self, item: tuple[Any, ...]) -> None:
        what = item[0]
        now = self._clock()
        if what == "pulse":
            seconds, why = float(item[1]), str(item[2])
            self._s.deadline = max(self._s.deadline if self._s.energised else now, now + seconds)
            self._s.authorised_until = self._s.deadline + FORCED_GRACE_S
            self._set_relay(True, why)
        elif what == "release":
            if self._s.energised:
                self._s.authorised_until = now + FORCED_GRACE_S
            self._set_relay(False, str(item[1]), force=True)
        elif what == "input":
            self._input(str(item[1]), bool(item[2]), float(item[3]))
        elif what == "sync":
            self._tick()
            item[1].set()
        elif what == "status":
            self._publish_status()

    def _tick(self) -> None:
        now = self._clock()
        if self._s.energised and now >= self._s.deadline:
            self._set_relay(False, "pulse ended")
        if (
            self._s.door_open
            and not self._s.held_sent
            and now - self._s.opened_at >= self.door.held_open_s
        ):
            self._s.held_sent = True
            self._record(
                aud.HELD_OPEN,
                detail=f"door open for more than {self.door.held_open_s:g} s",
                data={"held_open_s": self.door.held_open_s},
            )
        locked = self._access.locked()
        if locked != self._s.was_locked:
            self._s.was_locked = locked
            self._publish_status()

    def _set_relay(self, on: bool, why: str, force: bool = False) -> None:
        if on == self._s.energised and not force:
            return
        changed = on != self._s.energised
        if on:
            self._pins.relay.on()
        else:
            self._pins.relay.off()
        self._s.energised = on
        if changed:
            self.relay_log.append((self._clock(), on, why))
            log.info("door: relay %s (%s)", "energised" if on else "released", why)
            self._publish_status()

    def _input(self, which: str, closed: bool, t: float, initial: bool = False) -> None:
        d = self.door
        if which == "contact":
            is_open = (not closed) if d.contact_closed_when_shut else closed
            if is_open == self._s.door_open:
                return
            self._s.door_open = is_open
            if is_open:
                self._s.opened_at, self._s.held_sent = t, False
                if not initial and t > self._s.authorised_until:
                    self._record(aud.FORCED, detail="door opened without a grant or exit request")
            self._publish_status()
        elif which == "exit":
            if closed and not initial:
                self._handle(("pulse", d.unlock_s, "exit request"))  # open first, then log
                self._record(aud.EXIT, detail="request-to-exit button", data={"source": "exit"})
        elif which == "tamper":
            active = (not closed) if d.tamper_closed_when_ok else closed
            if active == self._s.tamper:
                return
            self._s.tamper = active
            if active or not initial:
                self._record(
                    aud.TAMPER,
                    detail="tamper switch triggered" if active else "tamper switch restored",
                    data={"active": active},
                )
            self._publish_status()


def _pin(p: int | None) -> str:
    return "-" if p is None else f"GPIO{p}"


def describe_wiring(d: DoorConfig) -> str:
    """One line saying how the door is wired and set up (the start-up log line)."""
    return (
        f"relay GPIO{d.relay_pin} ({'active high' if d.active_high else 'active low'}), "
        f"contact {_pin(d.contact_pin)}, exit {_pin(d.exit_pin)}, tamper {_pin(d.tamper_pin)}, "
        f"allow {', '.join(d.allow) or 'nobody'}, unlock {d.unlock_s:.1f} s, "
        f"remote unlock {'on' if d.remote_unlock else 'off'}"
    )


def make_door(cfg: Config, events: EventSink | None = None) -> DoorController:
    """The daemon's door controller (relay released first), or DoorError/ConfigError."""
    return DoorController(cfg, events=events)


__all__ = [
    "FORCED_GRACE_S",
    "STATUS_TOPIC",
    "DoorController",
    "GroupSource",
    "OwnerState",
    "describe_wiring",
    "make_door",
]

"""The door controller: one owner thread drives the relay; rules, supervision and records around it.

See :mod:`edge.door` for what opens the door and why. :class:`DoorController`
receives decisions from the daemon loop (:meth:`~DoorController.on_decision`),
signed remote unlocks from the MQTT thread
(:meth:`~DoorController.remote_command`) and input changes from gpiozero's
threads; only its owner thread (``door-relay``) touches the relay, and it
never waits on storage or the network. The rules and their state are
:class:`edge.door.access.Access`'s (persisted in
:class:`edge.door.state.DoorState`), the inputs
:class:`edge.door.supervise.Supervisor`'s; each outcome is one audit entry,
then one event, written by :class:`edge.door.record.Recorder`'s own thread
through an :class:`~edge.door.record.EventSink`: the daemon's publisher, or
nothing. The door never imports the MQTT side; it only knows that small sink.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import edge.door.audit as aud
from edge.clock import clock_synced
from edge.door.access import Access
from edge.door.pins import GpioPins, make_pin_factory
from edge.door.policy import UNKNOWN, Finding, Verdict, check_names, raise_errors
from edge.door.record import BUSY_TIMEOUT_S, EventSink, Recorder
from edge.door.remote import remote_key
from edge.door.state import STATE_NAME, DoorState
from edge.door.supervise import FORCED_GRACE_S, Supervisor

if TYPE_CHECKING:
    from edge.config import Config, DoorConfig
    from edge.types import Decision

log = logging.getLogger("facegate.door")

MAX_WAIT_S = 0.5
"""Longest sleep of the owner thread between checks of its deadlines."""
STATUS_TOPIC = "door"
"""The retained door status lives on ``<prefix>/<device>/door``."""


class GroupSource(Protocol):
    """What the door needs from the gallery: who is enrolled, and a person's groups."""

    @property
    def names(self) -> list[str]: ...

    def __contains__(self, name: object) -> bool: ...

    def groups(self, name: str) -> tuple[str, ...]: ...


class DoorController:
    """The door: relay owner thread, supervision, rules, lockout, audit and events.

    Constructing it releases the relay first, then opens the audit log and
    the door state and starts the owner thread; :meth:`stop` releases and
    joins it. Thread-safe: :meth:`on_decision` (daemon loop),
    :meth:`remote_command` (MQTT thread) and the input callbacks (gpiozero
    threads) only post requests to the owner thread, which alone drives the relay.
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
        self.cfg, self.door, self._clock = cfg, d, clock
        synced = synced or clock_synced
        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stopped = False
        # Released before anything else (the constructor of GpioPins does that first).
        self._pins = GpioPins(d, factory or make_pin_factory(cfg), self._on_input)
        self._own_audit = audit is None
        try:
            self.audit = audit or aud.AuditLog(
                cfg.audit_file, d.audit_max_age_days, d.audit_max_rows,
                wall=wall, mono=clock, busy_timeout=BUSY_TIMEOUT_S,
            )  # fmt: skip
            key = remote_key(cfg) if d.remote_unlock else None
            state = DoorState(cfg.audit_file.parent / STATE_NAME, wall())
            self._access = Access(cfg, key=key, clock=clock, wall=wall, synced=synced, state=state)
        except BaseException:
            self._pins.close()
            raise
        self._recorder = Recorder(self.audit, events, wall, synced)
        self._sup = Supervisor(d, self._record, self.pulse, self._changed)
        self.energised = False
        self._deadline = 0.0  # when the current pulse ends (monotonic)
        self._was_locked = False
        self.gate: Callable[[], tuple[str, str] | None] | None = None
        """fleet: a last check on each grant; (reason, detail) denies it (edge.fleet.sync)."""
        self.relay_log: deque[tuple[float, bool, str]] = deque(maxlen=1000)
        """(clock, energised, why) for every relay change: diagnostics and tests."""
        if self._access.resumed_s > 0:
            self._resumed(self._access.resumed_s)
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

    def release(self, why: str = "release") -> None:
        """End any pulse now (config or gallery reload)."""
        self._q.put(("release", why))

    def stop(self, timeout: float = 2.0, why: str = "stop") -> None:
        """Release the relay, stop the owner thread, write what is queued, free the pins."""
        if self._stopped:
            return
        self._stopped = True
        end = time.monotonic() + timeout
        self._q.put(("stop", why))
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            # Last resort: the owner is stuck. Fail-secure beats single ownership.
            log.error("door: relay owner thread did not stop; releasing from the stopping thread")
            try:
                self._pins.relay.off()
            except Exception:
                log.exception("door: releasing the relay failed")
        self._recorder.close(max(0.2, end - time.monotonic()))
        self._pins.close()
        if self._own_audit:
            self.audit.close()
        log.info("door: stopped, relay released")

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until everything posted so far is handled and written (tests, door test)."""
        done = threading.Event()
        end = time.monotonic() + timeout
        self._q.put(("sync", done))
        return done.wait(timeout) and self._recorder.flush(max(0.0, end - time.monotonic()))

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

    def check_gallery(self, gallery: GroupSource, strict: bool = True) -> list[Finding]:
        """door.allow and door.schedule against the gallery (:func:`edge.door.policy.check_names`).

        Warnings are logged; a near miss is a ConfigError (``strict``, at
        start) or an error line (a reload: the service goes on).
        """
        names = list(gallery.names)
        found = check_names(
            self.door.allow, self.door.schedule, names, {n: gallery.groups(n) for n in names}
        )
        for f in found:
            level = logging.ERROR if f.level == "error" else logging.WARNING
            log.log(level, "%s: %s", f.key, f.message)
        if strict:
            raise_errors(found)
        return found

    # -- decisions (daemon loop) and remote unlocks (MQTT thread) -------------------------
    def on_decision(self, decision: Decision, gallery: GroupSource | None = None) -> Verdict:
        """Judge one live decision from the tracker; pulse the relay when granted."""
        d = self.door
        name = decision.name
        groups: tuple[str, ...] = ()
        if name and gallery is not None and name in gallery:
            groups = tuple(gallery.groups(name))
        j = self._access.judge(decision, groups, tampered=self._sup.tampered)
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

    def authentic(self, payload: bytes) -> bool:
        """Whether ``payload`` is an unlock signed with this door's key (no state, one HMAC)."""
        return self._access.authentic(payload)

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
        if self._access.record_refusal():  # at most 30 a minute; the rest only counted
            log.warning("door: remote unlock refused: %s", reason)
            why = f"remote unlock refused: {reason}"
            self._record(aud.REMOTE_REFUSED, reason=reason, detail=why, data={"source": "remote"})
        return False

    # -- recording ----------------------------------------------------------------------
    def _record(self, kind: str, **fields: Any) -> None:
        """One audit entry, then its event, queued (:meth:`edge.door.record.Recorder.record`)."""
        self._recorder.record(kind, **fields)

    def _resumed(self, left: float) -> None:
        d = self.door
        self._record(
            aud.LOCKOUT,
            reason=UNKNOWN,
            detail=f"lockout saved before the restart: {left:.0f} s of {d.lockout_s:g} s still run",
            data={"resumed": True, "left_s": round(left, 1), "lockout_s": d.lockout_s},
        )

    def _changed(self) -> None:
        """The status changed (owner thread): the newest one goes out, never waiting."""
        status = {
            "lock": "unlocked" if self.energised else "locked",
            **self._sup.status(),
            "lockout": self._access.locked(),
        }
        self._recorder.status(STATUS_TOPIC, status)

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
            self._sup.flush(self._clock())

    def _owner_loop(self) -> None:
        now = self._clock()
        for which in GpioPins.INPUTS:
            closed = self._pins.closed(which)
            if closed is not None:
                self._sup.input(which, closed, now, initial=True)
        self._changed()
        while True:
            self._tick()
            try:
                item = self._q.get(timeout=self._next_wake(self._clock()))
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

    def _next_wake(self, now: float) -> float:
        wake = min(MAX_WAIT_S, self._sup.next_wake(now))
        if self.energised:
            wake = min(wake, self._deadline - now)
        return max(0.0, wake)

    def _handle(self, item: tuple[Any, ...]) -> None:
        what = item[0]
        now = self._clock()
        if what == "pulse":
            seconds, why = float(item[1]), str(item[2])
            self._deadline = max(self._deadline if self.energised else now, now + seconds)
            self._sup.authorised_until = self._deadline + FORCED_GRACE_S
            self._set_relay(True, why)
        elif what == "release":
            if self.energised:
                self._sup.authorised_until = now + FORCED_GRACE_S
            self._set_relay(False, str(item[1]), force=True)
        elif what == "input":
            self._sup.input(str(item[1]), bool(item[2]), float(item[3]))
        elif what == "sync":
            self._tick()
            item[1].set()
        elif what == "status":
            self._changed()

    def _tick(self) -> None:
        now = self._clock()
        if self.energised and now >= self._deadline:
            self._set_relay(False, "pulse ended")
        self._sup.tick(now)
        locked = self._access.locked()
        if locked != self._was_locked:
            self._was_locked = locked
            self._changed()

    def _set_relay(self, on: bool, why: str, force: bool = False) -> None:
        if on == self.energised and not force:
            return
        changed = on != self.energised
        if on:
            self._pins.relay.on()
        else:
            self._pins.relay.off()
        self.energised = on
        if changed:
            self.relay_log.append((self._clock(), on, why))
            log.info("door: relay %s (%s)", "energised" if on else "released", why)
            self._changed()


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
    "MAX_WAIT_S",
    "STATUS_TOPIC",
    "DoorController",
    "GroupSource",
    "describe_wiring",
    "make_door",
]

"""The door's rules with their state: replays, the lockout, nonces and the refusal budget.

:class:`Access` applies the pure rules (:func:`edge.door.policy.judge`,
:func:`edge.door.remote.verify_unlock`) to live input, keeping what they
need to remember between calls: decisions already seen (a replay is stale),
unknown-face denials (the :class:`~edge.door.policy.Lockout`), accepted
nonces, and how many refused remote commands were recorded in the last
minute. Accepted nonces and the lockout also go to disk
(:class:`~edge.door.state.DoorState`) before they count, so a restart
neither makes a captured unlock new nor ends a lockout. It never touches
the relay: the controller pulses on its answers. Thread-safe (the daemon
loop and the MQTT thread call it).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.config.values import parse_window, zone
from edge.door.policy import UNKNOWN, Lockout, Verdict, judge, windows_for
from edge.door.remote import REMOTE_DISABLED, NonceCache, verify_unlock
from edge.door.remote import authentic as signed_for_door
from edge.door.state import DoorState

if TYPE_CHECKING:
    from edge.config import Config
    from edge.types import Decision

REFUSED_AUDIT_PER_MIN = 30
"""Refused remote commands recorded per minute; more are only counted (a flood fills no disk)."""
SEEN_KEPT = 256
"""Decisions remembered to refuse a replay of one."""


@dataclass(frozen=True)
class Judgement:
    """The verdict on one decision, with what the audit entry and event say about it."""

    verdict: Verdict
    data: dict[str, Any]
    lockout_until: float | None = None
    """Set when this decision engaged the lockout: when it ends, by the wall clock."""


class Access:
    """The granting rules and the remote unlock check, with their state (see the module)."""

    def __init__(
        self,
        cfg: Config,
        *,
        key: bytes | None,
        clock: Callable[[], float],
        wall: Callable[[], float],
        synced: Callable[[], bool],
        state: DoorState | None = None,
    ) -> None:
        d = cfg.door
        self.door = d
        self.device_id = cfg.device.id
        # liveness: with mode "require" only a track that passed may open.
        self.liveness_required = cfg.liveness.mode == "require"
        self._key = key
        self._clock = clock
        self._wall = wall
        self._synced = synced
        self._state = state
        self._tz = zone(d.timezone)
        self._schedule = {k: [parse_window(w) for w in v] for k, v in d.schedule.items()}
        self._lock = threading.Lock()
        self._lockout = Lockout(d.max_denials, d.lockout_window_s, d.lockout_s)
        self._seen: deque[tuple[Any, ...]] = deque(maxlen=SEEN_KEPT)
        self._nonces = NonceCache(store=state)
        self._refused_times: deque[float] = deque()
        self.refused_unrecorded = 0
        """Refused remote commands beyond :data:`REFUSED_AUDIT_PER_MIN`, counted only."""
        self.resumed_s = 0.0
        """Seconds of a lockout saved before the start that still ran at start (0: none)."""
        if state is not None:
            self.resumed_s = state.lockout_left(wall(), d.lockout_s)
            if self.resumed_s > 0:
                self._lockout.until = clock() + self.resumed_s

    def locked(self) -> bool:
        """Whether a lockout is in force now."""
        with self._lock:
            return self._lockout.active(self._clock())

    def judge(
        self, decision: Decision, groups: tuple[str, ...], tampered: bool = False
    ) -> Judgement:
        """The rules on one live decision (``groups``: the person's, from the gallery).

        ``tampered``: the tamper alarm is in force (it denies only with
        ``door.deny_while_tampered``).
        """
        d = self.door
        wall_now, now = self._wall(), self._clock()
        name = decision.name
        windows = windows_for(name, groups, self._schedule) if name else None
        with self._lock:
            key = (decision.track_id, decision.timestamp, decision.kind, name)
            replayed = key in self._seen
            if not replayed:
                self._seen.append(key)
            verdict = judge(
                decision,
                allow=d.allow,
                groups=groups,
                windows=windows,
                tz=self._tz,
                wall_now=wall_now,
                max_age_s=d.max_decision_age_ms / 1000.0,
                synced=self._synced() if windows is not None else True,
                locked=self._lockout.active(now),
                replayed=replayed,
                tampered=tampered and d.deny_while_tampered,
                liveness_required=self.liveness_required,
            )
            engaged = verdict.reason == UNKNOWN and self._lockout.denied_unknown(now)
            until = round(wall_now + (self._lockout.until - now), 3) if engaged else None
            if until is not None and self._state is not None:
                self._state.set_lockout(wall_now, until)  # on disk before it is reported
        return Judgement(verdict, decision_data(decision, groups, wall_now), until)

    def authentic(self, payload: bytes) -> bool:
        """A well-formed unlock signed with this door's key (stateless; see the command gate)."""
        if self._key is None:
            return False
        return signed_for_door(payload, key=self._key, device_id=self.device_id)

    def verify(self, payload: bytes) -> str | None:
        """A remote unlock command: None when accepted, else why it is refused."""
        if not self.door.remote_unlock or self._key is None:
            return REMOTE_DISABLED
        with self._lock:
            return verify_unlock(
                payload,
                key=self._key,
                device_id=self.device_id,
                now=self._wall(),
                mono=self._clock(),
                synced=self._synced(),
                nonces=self._nonces,
            )

    def record_refusal(self) -> bool:
        """Whether a refused remote command gets its audit entry (else it is only counted)."""
        now = self._clock()
        with self._lock:
            while self._refused_times and now - self._refused_times[0] > 60.0:
                self._refused_times.popleft()
            if len(self._refused_times) < REFUSED_AUDIT_PER_MIN:
                self._refused_times.append(now)
                return True
            self.refused_unrecorded += 1
            return False


def decision_data(decision: Decision, groups: tuple[str, ...], wall_now: float) -> dict[str, Any]:
    """What an access_granted/denied entry records about the decision behind it."""
    data: dict[str, Any] = {
        "source": "face",
        "track_id": decision.track_id,
        "confidence": round(float(decision.confidence), 4),
        "distance": round(float(decision.distance), 4),
        "age_ms": round((wall_now - decision.timestamp) * 1000.0),
    }
    if groups:
        data["groups"] = list(groups)
    if decision.liveness is not None:
        data["liveness"] = decision.liveness.to_json()
    return data


__all__ = ["REFUSED_AUDIT_PER_MIN", "Access", "Judgement", "decision_data"]

"""What the door remembers across a restart: accepted remote-unlock nonces and the lockout.

Both used to live in memory only: a remote unlock captured on the network
worked again once the service restarted (kill -9, restart in 1.7 s, replay
at 2.8 s: the relay pulsed), and a power cycle ended a lockout at once.

:class:`DoorState` keeps them in ``door-state.json`` beside the audit log,
written with :func:`edge.files.write_atomic` (fsync, rename, folder fsync)
*before* the door acts: a nonce is on disk before its unlock pulses the
relay, so no crash can come between the two. Nonces are kept by number
(the newest :data:`NONCES_KEPT`), never by the wall clock, so no clock
step can make an old nonce forgettable. A nonce that cannot be saved
refuses its unlock (fail closed).

A state file that cannot be read is moved aside (``.corrupt-<time>``) and
the door starts with nothing remembered, and so refuses every remote unlock
signed before it started plus :data:`REMOTE_MAX_AGE_S` (a command accepted
before the loss could otherwise come again).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from edge.errors import FacegateError
from edge.files import move_aside, read_bounded, write_atomic

log = logging.getLogger("facegate.door")

STATE_NAME = "door-state.json"
"""The file, in the audit log's folder."""
NONCES_KEPT = 1024
"""Accepted nonces remembered on disk, the newest first kept."""
MAX_STATE_BYTES = 1 << 20
REMOTE_MAX_AGE_S = 5.0  # edge.door.remote's window (kept here: remote imports this module)


class DoorState:
    """``door-state.json``: nonces of accepted remote unlocks and the lockout (thread-safe)."""

    def __init__(self, path: Path | str, wall_now: float) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._lockout: dict[str, float] | None = None
        self.not_before = -math.inf
        """Remote unlocks signed before this (Unix time) are refused: the state was lost."""
        self._load(wall_now)

    def _load(self, wall_now: float) -> None:
        if not self.path.exists():
            return
        try:
            doc = json.loads(read_bounded(self.path, MAX_STATE_BYTES, "door state"))
            nonces = [(str(n), float(t)) for n, t in doc.get("nonces", [])]
            lock = doc.get("lockout")
            lockout = None if lock is None else {k: float(lock[k]) for k in ("since", "until")}
        except (FacegateError, ValueError, TypeError, KeyError, AttributeError) as e:
            self.not_before = wall_now + REMOTE_MAX_AGE_S
            try:
                aside = move_aside(self.path).name
            except OSError:
                aside = "(could not be moved)"
            log.error(
                "door: %s is unreadable (%s), kept as %s; remote unlocks signed before now "
                "are refused", self.path, e, aside,
            )  # fmt: skip
            return
        self._nonces = OrderedDict(nonces[-NONCES_KEPT:])
        self._lockout = lockout

    def _save(self) -> None:
        doc: dict[str, Any] = {
            "v": 1,
            "nonces": [[n, t] for n, t in self._nonces.items()],
            "lockout": self._lockout,
        }
        write_atomic(self.path, json.dumps(doc, separators=(",", ":")).encode(), "door state")

    # -- nonces ----------------------------------------------------------------------------

    def seen(self, nonce: str) -> bool:
        """Whether an unlock with this nonce was ever accepted (as far as the file goes back)."""
        with self._lock:
            return nonce in self._nonces

    def remember(self, nonce: str, ts: float) -> bool:
        """Put the nonce on disk (synced) before its unlock acts; False when that failed."""
        with self._lock:
            self._nonces[nonce] = ts
            while len(self._nonces) > NONCES_KEPT:
                self._nonces.popitem(last=False)
            try:
                self._save()
            except FacegateError as e:
                del self._nonces[nonce]
                log.error("door: the nonce of a remote unlock cannot be saved: %s", e)
                return False
        return True

    # -- the lockout -----------------------------------------------------------------------

    def set_lockout(self, since: float, until: float) -> None:
        """A lockout engaged at ``since`` until ``until`` (wall clock): on disk now."""
        with self._lock:
            self._lockout = {"since": since, "until": until}
            try:
                self._save()
            except FacegateError as e:  # it still holds in memory
                log.error("door: the lockout cannot be saved: %s", e)

    def lockout_left(self, wall_now: float, lockout_s: float) -> float:
        """Seconds of a saved lockout still to run at start (0: none).

        ``until - now`` while the clock reads between its start and end; the
        whole ``lockout_s`` when the clock reads before its start (it went
        back: a Pi without RTC boots in 1970); never more than ``lockout_s``.
        """
        with self._lock:
            lock = self._lockout
        if lock is None:
            return 0.0
        since, until = lock["since"], lock["until"]
        if wall_now < since:
            return min(lockout_s, until - since)
        return max(0.0, min(lockout_s, until - wall_now))


__all__ = ["NONCES_KEPT", "STATE_NAME", "DoorState"]

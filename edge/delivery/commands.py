"""The command topic's one entrance, for the MQTT publisher and the offline one.

:meth:`CommandGate.handle` takes a payload as it came from the broker and
decides, in this order:

1. a retained command is refused (it would fire again on every reconnect);
2. the payload must parse (:func:`parse_command`: exactly
   ``{"command": "reload-gallery"}``, or the door's signed unlock; every key
   at most once);
3. an unlock needs a door on this device (``on_unlock``), and must be
   signed with the door's key: the door's cheap, stateless check
   (``verify_unlock``: one parse, one HMAC) runs *before* the rate limit. An
   unlock that fails it spends no token: it is counted as rejected and still
   handed to the door, which records the refusal within its own budget;
   an enrol command needs ``review.enrol_command`` (``on_enrol``), and its
   signature is checked the same way (``verify_enrol``); a forged one is
   counted and logged here and goes no further (no event per forgery);
4. at most :data:`COMMAND_BURST` commands at once and :data:`COMMAND_RATE`
   per second after that are acted on (a :class:`~edge.delivery.ratelimit.TokenBucket`);
   the rest are dropped and counted. Refused payloads cost no token, so junk
   (a wrong-key unlock flood included) cannot starve a real command.

Every outcome is counted (:attr:`~CommandGate.accepted`,
:attr:`~CommandGate.rejected`, :attr:`~CommandGate.limited`) and logged
through a :class:`~edge.delivery.ratelimit.BurstLog`: the first
:data:`COMMAND_LOG_FIRST` of a burst one line each, the rest summed up in one
line, so a flood of 1,000 commands writes a handful of lines, not 1,000.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge.delivery.codec import DuplicateKeyError, loads_strict
from edge.delivery.ratelimit import BurstLog, TokenBucket
from edge.errors import FacegateError

log = logging.getLogger("facegate.commands")

RELOAD_GALLERY = "reload-gallery"
COMMANDS = (RELOAD_GALLERY,)
UNLOCK = "unlock"
"""The door's signed remote unlock, checked by :func:`edge.door.remote.verify_unlock`."""
ENROL = "enrol"
"""review: the signed "enrol the next face as N" (:func:`edge.door.remote.verify_enrol`)."""
MAX_COMMAND_BYTES = 2048
"""Command payloads longer than this are rejected before they are parsed (an enrol command
carries a name of up to 128 characters, each up to 12 bytes as JSON escapes)."""


class CommandError(FacegateError):
    """A command payload received over MQTT is malformed or not allowed."""


def parse_command(payload: bytes) -> str:
    """The command in a ``command`` topic payload, or :class:`CommandError`.

    Accepted is exactly a JSON object ``{"command": NAME}`` with NAME in
    :data:`COMMANDS`, at most :data:`MAX_COMMAND_BYTES` long, each key once
    (:func:`loads_strict`). Anything else (other or repeated keys, other
    types, invalid UTF-8 or JSON) is rejected: nothing but a gallery reload
    (and the door's signed unlock) can be triggered over the network.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command: payload of {len(payload)} bytes is too long")
    try:
        doc = loads_strict(payload)
    except DuplicateKeyError as e:
        raise CommandError(f"command: {e}") from None
    except ValueError:  # UnicodeDecodeError too
        raise CommandError("command: payload is not UTF-8 JSON") from None
    if isinstance(doc, dict) and doc.get("command") == UNLOCK:
        return UNLOCK  # door: the signed unlock, verified by edge.door.remote (ts, nonce, hmac)
    if isinstance(doc, dict) and doc.get("command") == ENROL:
        return ENROL  # review: signed like the unlock, verified by whoever enrols (on_enrol)
    if not isinstance(doc, dict) or set(doc) != {"command"}:
        raise CommandError('command: expected exactly {"command": ...}')
    cmd = doc["command"]
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise CommandError(f"command: {cmd!r} is not an accepted command")
    return cmd


COMMAND_RATE = 1.0
"""Commands acted on per second, sustained."""
COMMAND_BURST = 5
"""Commands acted on at once after a quiet spell."""
COMMAND_LOG_FIRST = 5
"""Commands of a burst logged one line each; the rest are summed up."""

ACCEPTED = "accepted"
REJECTED = "rejected"
LIMITED = "over the rate limit"


class CommandGate:
    """Checks, rate-limits, counts, logs and dispatches command payloads (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.on_command: Callable[[str], None] | None = None
        """Called with the command's name (``reload-gallery``)."""
        self.on_unlock: Callable[[bytes], object] | None = None
        """door: called with the whole payload of an unlock, which the door verifies."""
        self.on_enrol: Callable[[bytes], object] | None = None
        """review: called with the whole payload of an enrol command, which it verifies."""
        self.verify_unlock: Callable[[bytes], bool] | None = None
        """door: whether an unlock is signed with its key (checked before a token is spent)."""
        self.verify_enrol: Callable[[bytes], bool] | None = None
        """review: whether an enrol command is signed with its key (the same, for enrolment)."""
        self.accepted = 0
        self.rejected = 0
        self.limited = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._bucket = TokenBucket(COMMAND_RATE, COMMAND_BURST, clock())
        self._log = BurstLog(log, "command", first=COMMAND_LOG_FIRST)

    def handle(self, payload: bytes, retained: bool = False) -> bool:
        """Act on one command payload; whether it was accepted (and dispatched)."""
        with self._lock:
            now = self._clock()
            cmd = self._check(now, payload, retained)
            if cmd is None:
                return False
            forged = not self._authentic(cmd, payload)
            if forged:
                self.rejected += 1
                self._log.note(now, REJECTED, f"rejected: {cmd} not signed with its key",
                               logging.WARNING)  # fmt: skip
            elif not self._bucket.take(now):
                self.limited += 1
                self._log.note(
                    now,
                    LIMITED,
                    f"{cmd!r} dropped: more than {COMMAND_BURST} at once or "
                    f"{COMMAND_RATE:g} per second",
                    logging.WARNING,
                )
                return False
            else:
                self.accepted += 1
                self._log.note(now, ACCEPTED, f"{cmd!r} received")
        # Outside the lock: the callbacks may take their time (the door's). A forged
        # unlock goes to the door too, which records the refusal (within its budget);
        # a forged enrol command stops here (counted and logged above).
        if cmd == UNLOCK:
            if self.on_unlock is not None:
                self.on_unlock(payload)
        elif cmd == ENROL:
            if self.on_enrol is not None and not forged:
                self.on_enrol(payload)
        elif self.on_command is not None:
            self.on_command(cmd)
        return not forged

    def _authentic(self, cmd: str, payload: bytes) -> bool:
        """The stateless signature check of an unlock or enrol command (True for others, and
        when no check is set)."""
        check = {UNLOCK: self.verify_unlock, ENROL: self.verify_enrol}.get(cmd)
        if check is None:
            return True
        try:
            return bool(check(payload))
        except Exception:
            log.exception("command: %s pre-verification failed; refused", cmd)
            return False

    def _check(self, now: float, payload: bytes, retained: bool) -> str | None:
        """The command, or None when refused (counted and logged)."""
        why = None
        cmd = None
        if retained:
            why = "retained command ignored"
        else:
            try:
                cmd = parse_command(payload)
            except CommandError as e:
                why = str(e).removeprefix("command: ")
            if cmd == UNLOCK and self.on_unlock is None:
                why = "unlock: no door on this device"
            if cmd == ENROL and self.on_enrol is None:
                why = "enrol: off on this device (review.enrol_command)"
        if why is None:
            return cmd
        self.rejected += 1
        self._log.note(now, REJECTED, f"rejected: {why}", logging.WARNING)
        return None

    def flush_log(self, force: bool = False) -> None:
        """Log the summary of a burst that ended (or of everything held, ``force``)."""
        with self._lock:
            self._log.flush(self._clock(), force)


class GatedCommands:
    """A publisher's command callbacks, kept by its :class:`CommandGate` (``self.commands``)."""

    commands: CommandGate

    @property
    def on_command(self) -> Callable[[str], None] | None:
        """Called (on the thread that received it) with each accepted command's name."""
        return self.commands.on_command

    @on_command.setter
    def on_command(self, fn: Callable[[str], None] | None) -> None:
        self.commands.on_command = fn

    @property
    def on_unlock(self) -> Callable[[bytes], object] | None:
        """door: called with the payload of each accepted unlock (the door verifies it)."""
        return self.commands.on_unlock

    @on_unlock.setter
    def on_unlock(self, fn: Callable[[bytes], object] | None) -> None:
        self.commands.on_unlock = fn

    @property
    def on_enrol(self) -> Callable[[bytes], object] | None:
        """review: called with the payload of each accepted enrol command (it verifies it)."""
        return self.commands.on_enrol

    @on_enrol.setter
    def on_enrol(self, fn: Callable[[bytes], object] | None) -> None:
        self.commands.on_enrol = fn

    @property
    def verify_unlock(self) -> Callable[[bytes], bool] | None:
        """door: the stateless signature check run before an unlock spends a token."""
        return self.commands.verify_unlock

    @verify_unlock.setter
    def verify_unlock(self, fn: Callable[[bytes], bool] | None) -> None:
        self.commands.verify_unlock = fn

    @property
    def verify_enrol(self) -> Callable[[bytes], bool] | None:
        """review: the stateless signature check run before an enrol command spends a token."""
        return self.commands.verify_enrol

    @verify_enrol.setter
    def verify_enrol(self, fn: Callable[[bytes], bool] | None) -> None:
        self.commands.verify_enrol = fn

    @property
    def rejected_commands(self) -> int:
        return self.commands.rejected


__all__ = [
    "COMMANDS",
    "COMMAND_BURST",
    "COMMAND_LOG_FIRST",
    "COMMAND_RATE",
    "ENROL",
    "MAX_COMMAND_BYTES",
    "RELOAD_GALLERY",
    "UNLOCK",
    "CommandError",
    "CommandGate",
    "GatedCommands",
    "parse_command",
]

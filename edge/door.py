"""The door: a fail-secure strike relay, door supervision and the access rules.

Hardware goes through gpiozero (the optional extra ``door``), imported only
when a :class:`DoorController` is built. ``door.pin_factory = "mock"`` uses
gpiozero's own ``MockFactory``: the daemon and ``facegate door test`` then
run without a Pi, and tests read the pin states over time.

**Who opens the door.** Access is granted only for a decision handed over
in-process by the daemon loop, straight from the k-of-n tracker, that is all
of (:func:`judge`, in this order):

1. not during a lockout;
2. ``recognized`` with a name (``unknown`` is denied, and counts towards a lockout);
3. not seen before (the same decision twice is a replay) and younger than
   ``door.max_decision_age_ms`` by the wall clock (frame timestamps are
   wall-clock capture times);
4. for a person in ``door.allow`` (a name, or ``group:NAME`` with the groups
   from the gallery's person metadata);
5. inside the person's weekly schedule, in the device's time zone, when a
   schedule applies to them; a schedule needs a synced clock
   (:func:`edge.events.clock_synced`), without one it denies.

Every decision, granted or not, is one audit entry (:mod:`edge.audit`) and one
MQTT event through the outbox. MQTT plays no part in the decision: the door
never reads the event topic or the outbox, and works with MQTT disabled. The
only broker message that can open it is a signed remote unlock
(:func:`verify_unlock`), and only with ``door.remote_unlock = true``.

**Lockout.** ``door.max_denials`` unknown-face denials within
``door.lockout_window_s`` lock the door for ``door.lockout_s``: every
decision is then denied with reason ``lockout``, and a ``lockout`` alarm is
raised. Requests to exit and signed remote unlocks still work (egress is a
safety matter; a remote unlock is an operator's explicit act).

**The relay.** One owner thread (``door-relay``) drives the strike relay;
nothing else touches it. The controller's constructor creates the relay
output *released* before it does anything else; the owner thread then
energises it for ``door.unlock_s`` per grant and releases it at the deadline.
It is released at once on any exception in the owner thread, on
:meth:`DoorController.release` (the daemon's reload), and on
:meth:`DoorController.stop` (SIGTERM, a failed loop, a watchdog abort).

**Supervision** (the owner thread, from the door contact, request-to-exit
button and tamper switch, each a gpiozero ``Button`` with debounce): the door
opening without a grant or exit request in force is ``door_forced``; open
longer than ``door.held_open_s`` is ``door_held_open``; the tamper switch
gives ``tamper``; the exit button pulses the relay and is logged as
``exit_request``.

Every clock is injectable (``clock`` for pulses, lockouts and held-open
timers, ``wall`` for decision ages and schedules), so tests need no sleeps.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge import audit as aud
from edge.errors import ConfigError, FacegateError

if TYPE_CHECKING:
    from edge.config import Config, DoorConfig
    from edge.types import Decision

log = logging.getLogger("facegate.door")

# -- denial reasons (the ``reason`` of access_denied entries and events) ------------
UNKNOWN = "unknown"
NOT_ALLOWED = "not_allowed"
OUTSIDE_SCHEDULE = "outside_schedule"
CLOCK_NOT_SYNCED = "clock_not_synced"
LOCKOUT = "lockout"
STALE = "stale"
DENIAL_REASONS = (UNKNOWN, NOT_ALLOWED, OUTSIDE_SCHEDULE, CLOCK_NOT_SYNCED, LOCKOUT, STALE)

# -- remote unlock refusals (the ``reason`` of remote_refused) -----------------------
REMOTE_DISABLED = "remote_disabled"
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
REPLAYED = "replayed"
BUSY = "busy"
REMOTE_REASONS = (
    REMOTE_DISABLED,
    MALFORMED,
    BAD_SIGNATURE,
    CLOCK_NOT_SYNCED,
    STALE,
    REPLAYED,
    BUSY,
)

REMOTE_MAX_AGE_S = 5.0
"""A remote unlock whose ``ts`` is further than this from the device's clock is refused."""
NONCE_KEEP_S = 600.0
"""Nonces are remembered at least this long (monotonic), whatever the wall clock does."""
NONCE_MAX = 4096
"""More remembered nonces than this: further commands are refused (``busy``)."""
FUTURE_SLACK_S = 0.25
"""A decision stamped further than this in the future (the clock stepped back) is stale."""
FORCED_GRACE_S = 2.0
"""An opening this long after the relay released still counts as authorised."""
MAX_WAIT_S = 0.5
"""Longest sleep of the owner thread between checks of its deadlines."""
REFUSED_AUDIT_PER_MIN = 30
"""Refused remote commands recorded per minute; more are only counted (a flood fills no disk)."""
MAX_PIN = 27  # also the range of the pin keys in edge.config.DoorConfig
UNLOCK_MESSAGE_VERSION = "facegate-unlock-v1"
STATUS_TOPIC = "door"
"""The retained door status lives on ``<prefix>/<device>/door``."""
HA_COMMAND_SUFFIX = "door/set"
"""Home Assistant's lock entity publishes LOCK/UNLOCK here; the device never acts on it."""


class DoorError(FacegateError):
    """The door hardware cannot be set up (no GPIO, gpiozero missing, pin in use)."""


# -- schedules ------------------------------------------------------------------------

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW_RE = re.compile(
    r"^\s*(?P<days>[A-Za-z*,\-]+)\s+(?P<h0>\d{1,2}):(?P<m0>\d{2})\s*-\s*(?P<h1>\d{1,2}):(?P<m1>\d{2})\s*$"
)


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


def in_schedule(windows: Iterable[Window], wall: float, tz: tzinfo | None) -> bool:
    """Whether Unix time ``wall``, in zone ``tz`` (None: the system's), lies in any window."""
    t = datetime.fromtimestamp(wall, tz=tz)
    minute = t.hour * 60 + t.minute
    return any(w.contains(t.weekday(), minute) for w in windows)


def _zone(name: str) -> tzinfo | None:
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


# -- config checks ------------------------------------------------------------------------


def check_door_config(cfg: Config) -> None:
    """The ``[door]`` checks that go beyond types (called by :func:`edge.config.parse_config`)."""
    from edge.gallery import check_group

    d = cfg.door
    # Ranges (pins, debounce, unlock_s, max_decision_age_ms) live on the fields
    # of edge.config.DoorConfig; here only what ties keys together.
    pins: dict[int, str] = {}
    for key in ("relay_pin", "contact_pin", "exit_pin", "tamper_pin"):
        pin = getattr(d, key)
        if pin is None:
            continue
        if pin in pins:
            raise ConfigError(f"door.{key}: GPIO{pin} is already door.{pins[pin]}")
        pins[pin] = key
    for i, who in enumerate(d.allow):
        _check_who(f"door.allow[{i}]", who, check_group)
    for who, windows in d.schedule.items():
        _check_who(f"door.schedule.{who}", who, check_group)
        for i, w in enumerate(windows):
            try:
                parse_window(w)
            except ValueError as e:
                raise ConfigError(f"door.schedule.{who}[{i}]: {e}") from None
    _zone(d.timezone)
    if d.mock_log and d.pin_factory != "mock":
        raise ConfigError("door.mock_log: only with door.pin_factory = 'mock'")
    if d.remote_unlock:
        if not (d.remote_key_file or d.remote_key_credential):
            raise ConfigError(
                "door.remote_unlock: needs door.remote_key_file or door.remote_key_credential"
            )
        if not (cfg.mqtt.enabled and cfg.mqtt.commands):
            raise ConfigError(
                "door.remote_unlock: needs mqtt.enabled = true and mqtt.commands = true"
            )


def _check_who(path: str, who: str, check_group: Callable[[str], str]) -> None:
    if who.startswith("group:"):
        try:
            check_group(who.removeprefix("group:"))
        except FacegateError as e:
            raise ConfigError(f"{path}: {e}") from None
    elif not who.strip():
        raise ConfigError(f"{path}: an empty name")


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
    direct = not name.lower().startswith("group:")
    return (direct and name in allowed) or any(f"group:{g}" in allowed for g in groups)


def windows_for(
    name: str, groups: Iterable[str], schedule: Mapping[str, Sequence[Window]]
) -> list[Window] | None:
    """Every window that applies to a person (theirs and their groups'); None when none does."""
    keys = [name, *(f"group:{g}" for g in groups)]
    found = [w for k in keys if k in schedule for w in schedule[k]]
    return found if any(k in schedule for k in keys) else None


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
) -> Verdict:
    """The granting rules (module docstring), in order; the first that fails is the reason.

    Pure: the caller supplies the person's groups, the windows that apply to
    them (None: no schedule), the wall clock, whether it is synced, whether
    a lockout is in force and whether this decision was seen before. The age
    is ``wall_now - decision.timestamp``; it must lie in
    ``[-FUTURE_SLACK_S, max_age_s]``.
    """
    if locked:
        return Verdict(False, LOCKOUT, "the door is locked out after repeated unknown faces")
    if decision.kind != "recognized" or not decision.name:
        return Verdict(False, UNKNOWN, "face not recognized")
    if replayed:
        return Verdict(False, STALE, "replayed decision (seen before)")
    age = wall_now - decision.timestamp
    if age > max_age_s:
        why = f"decision is {age * 1000:.0f} ms old (max {max_age_s * 1000:.0f})"
        return Verdict(False, STALE, why)
    if age < -FUTURE_SLACK_S:
        why = f"decision is {-age * 1000:.0f} ms in the future (the clock stepped)"
        return Verdict(False, STALE, why)
    groups = list(groups)
    if not is_allowed(decision.name, groups, allow):
        return Verdict(False, NOT_ALLOWED, f"{decision.name} is not allowed at this door")
    if windows is not None:
        if not synced:
            return Verdict(
                False, CLOCK_NOT_SYNCED, "a schedule applies and the clock is not synchronised"
            )
        if not in_schedule(windows, wall_now, tz):
            return Verdict(False, OUTSIDE_SCHEDULE, f"{decision.name} is outside their schedule")
    return Verdict(True)


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


# -- remote unlock ---------------------------------------------------------------------------

_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_HMAC_RE = re.compile(r"^[0-9a-f]{64}$")


def unlock_message(device_id: str, ts: int, nonce: str) -> bytes:
    """The bytes a remote unlock signs: ``facegate-unlock-v1\\n<device.id>\\n<ts>\\n<nonce>``.

    The device id is part of it, so a command signed for one door opens no other.
    """
    return f"{UNLOCK_MESSAGE_VERSION}\n{device_id}\n{ts}\n{nonce}".encode()


def sign_unlock(
    key: bytes, device_id: str, ts: int | None = None, nonce: str | None = None
) -> dict[str, Any]:
    """A signed ``{"command": "unlock", "ts", "nonce", "hmac"}`` command.

    ``ts``: integer Unix seconds (now by default); ``nonce``: 32 random hex
    digits by default; ``hmac``: hex HMAC-SHA256 of :func:`unlock_message` with ``key``.
    """
    t = int(time.time()) if ts is None else ts
    n = nonce or secrets.token_hex(16)
    mac = hmac.new(key, unlock_message(device_id, t, n), hashlib.sha256).hexdigest()
    return {"command": "unlock", "ts": t, "nonce": n, "hmac": mac}


class NonceCache:
    """Nonces of accepted remote unlocks, remembered while their command could still be fresh.

    A nonce is forgotten only when its command is stale by the wall clock
    *and* it was accepted more than :data:`NONCE_KEEP_S` ago by the monotonic
    clock, so stepping the wall clock back does not make an old command new.
    """

    def __init__(self, max_entries: int = NONCE_MAX) -> None:
        self.max_entries = max_entries
        self._seen: dict[str, tuple[float, float]] = {}  # nonce -> (ts, accepted at, monotonic)

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: str, ts: float, now: float, mono: float) -> str | None:
        """Remember ``nonce``; None when new, else :data:`REPLAYED` or :data:`BUSY`."""
        self._seen = {
            n: (t, m)
            for n, (t, m) in self._seen.items()
            if now - t <= REMOTE_MAX_AGE_S or mono - m <= NONCE_KEEP_S
        }
        if nonce in self._seen:
            return REPLAYED
        if len(self._seen) >= self.max_entries:
            return BUSY
        self._seen[nonce] = (ts, mono)
        return None


def verify_unlock(
    payload: bytes | Mapping[str, Any],
    *,
    key: bytes,
    device_id: str,
    now: float,
    mono: float,
    synced: bool,
    nonces: NonceCache,
) -> str | None:
    """Check a remote unlock command; None when accepted, else why it is refused.

    In order: the payload is exactly ``{"command": "unlock", "ts": INT,
    "nonce": STR, "hmac": HEX}`` (else :data:`MALFORMED`); the HMAC matches
    (constant-time compare; else :data:`BAD_SIGNATURE`); the clock is synced
    (else :data:`CLOCK_NOT_SYNCED`); ``|now - ts| <= REMOTE_MAX_AGE_S``
    (else :data:`STALE`); the nonce is new (else :data:`REPLAYED`). Only an
    accepted command's nonce is remembered, so unsigned junk cannot fill the cache.
    """
    if isinstance(payload, bytes | bytearray):
        from edge.events import loads_strict

        try:
            doc = loads_strict(bytes(payload))  # a key given twice is malformed
        except ValueError:
            return MALFORMED
    else:
        doc = payload
    if not isinstance(doc, Mapping) or set(doc) != {"command", "ts", "nonce", "hmac"}:
        return MALFORMED
    ts, nonce, mac = doc["ts"], doc["nonce"], doc["hmac"]
    if (
        doc["command"] != "unlock"
        or not isinstance(ts, int)
        or isinstance(ts, bool)
        or not isinstance(nonce, str)
        or not _NONCE_RE.match(nonce)
        or not isinstance(mac, str)
        or not _HMAC_RE.match(mac)
    ):
        return MALFORMED
    want = hmac.new(key, unlock_message(device_id, ts, nonce), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, mac):
        return BAD_SIGNATURE
    if not synced:
        return CLOCK_NOT_SYNCED
    if abs(now - ts) > REMOTE_MAX_AGE_S:
        return STALE
    return nonces.add(nonce, float(ts), now, mono)


# -- hardware ----------------------------------------------------------------------------------


def make_pin_factory(cfg: Config) -> Any:
    """The gpiozero pin factory named by ``door.pin_factory`` (gpiozero imported here)."""
    d = cfg.door
    name = d.pin_factory
    try:
        import gpiozero  # noqa: F401
    except ImportError:
        raise DoorError(
            "door: gpiozero is not installed (pip install 'facegate[door]'; on Raspberry Pi OS "
            "also python3-lgpio)"
        ) from None
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        if d.mock_log:
            return MockFactory(pin_class=recording_pin_class(cfg.resolve(d.mock_log)))
        return MockFactory()
    paths = {
        "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
        "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
        "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
        "native": ("gpiozero.pins.native", "NativeFactory"),
    }
    names = ["lgpio", "rpigpio", "native"] if name == "auto" else [name]
    errors = []
    for n in names:
        mod, cls = paths[n]
        try:
            module = __import__(mod, fromlist=[cls])
            return getattr(module, cls)()
        except Exception as e:  # ImportError, no /dev/gpiochip*, not a Pi
            errors.append(f"{n}: {e}")
    raise DoorError(
        "door: no GPIO pin factory works here (" + "; ".join(errors) + "); on a machine "
        "without GPIO use door.pin_factory = 'mock'"
    )


def recording_pin_class(path: Path) -> type:
    """A gpiozero ``MockPin`` that also appends each state it is set to to ``path``.

    One line per write, ``PID PIN STATE`` (``1234 GPIO17 0``), written with
    O_APPEND straight to the kernel: another process (a test) sees the line
    even if this one is SIGKILLed right after. For dry runs and tests only.
    """
    from gpiozero.pins.mock import MockPin

    target = str(path)

    class RecordingMockPin(MockPin):  # type: ignore[misc]
        def _set_state(self, value: Any) -> None:
            super()._set_state(value)
            line = f"{os.getpid()} {self.info.name} {int(bool(value))}\n".encode()
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    return RecordingMockPin


class GpioPins:
    """The strike relay (an ``OutputDevice``) and the optional input ``Button``s.

    The relay is created released before the inputs. Inputs are wired from
    the GPIO to ground with the internal pull-up (gpiozero's ``Button``
    convention): "pressed" means the switch is closed. ``on_input(which,
    closed)`` is called from gpiozero's threads.
    """

    INPUTS = ("contact", "exit", "tamper")

    def __init__(self, d: DoorConfig, factory: Any, on_input: Callable[[str, bool], None]) -> None:
        try:
            from gpiozero import Button, OutputDevice
            from gpiozero.exc import GPIOZeroError
        except ImportError:
            raise DoorError(
                "door: gpiozero is not installed (pip install 'facegate[door]')"
            ) from None
        try:
            # First, before anything else: the relay output, released.
            self.relay = OutputDevice(
                d.relay_pin, active_high=d.active_high, initial_value=False, pin_factory=factory
            )
        except (GPIOZeroError, OSError, RuntimeError) as e:
            raise DoorError(f"door.relay_pin: cannot drive GPIO{d.relay_pin} ({e})") from None
        self.buttons: dict[str, Any] = {}
        try:
            for which in self.INPUTS:
                pin = getattr(d, f"{which}_pin")
                if pin is None:
                    continue
                b = Button(
                    pin,
                    pull_up=True,
                    bounce_time=(d.debounce_ms / 1000.0) or None,
                    pin_factory=factory,
                )
                b.when_pressed = _callback(on_input, which, True)
                b.when_released = _callback(on_input, which, False)
                self.buttons[which] = b
        except (GPIOZeroError, OSError, RuntimeError) as e:
            self.close()
            raise DoorError(f"door.{which}_pin: cannot read GPIO{pin} ({e})") from None

    def closed(self, which: str) -> bool | None:
        """Whether an input's switch is closed now (None: not wired)."""
        b = self.buttons.get(which)
        return None if b is None else bool(b.is_pressed)

    def close(self) -> None:
        for b in self.buttons.values():
            try:
                b.close()
            except Exception as e:  # closing is best effort
                log.debug("door: closing an input failed: %s", e)
        self.buttons.clear()
        try:
            self.relay.close()
        except Exception as e:
            log.debug("door: closing the relay output failed: %s", e)


def _callback(fn: Callable[[str, bool], None], which: str, closed: bool) -> Callable[[], None]:
    def cb() -> None:
        fn(which, closed)

    return cb


# -- the controller ----------------------------------------------------------------------------


class EventSink(Protocol):
    """Where door events go: the daemon's publisher (outbox + retained status topic)."""

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]: ...

    def publish_status(self, name: str, fields: dict[str, Any]) -> None: ...


class GroupSource(Protocol):
    """What the door needs from the gallery: a person's groups."""

    def __contains__(self, name: object) -> bool: ...

    def groups(self, name: str) -> tuple[str, ...]: ...


def audit_path(cfg: Config) -> Path:
    """``door.audit_path``; a relative path is taken inside ``service.state_dir``."""
    p = Path(cfg.door.audit_path).expanduser()
    return p if p.is_absolute() else cfg.resolve(cfg.service.state_dir) / p


def remote_key(cfg: Config) -> bytes | None:
    """The remote unlock key from ``door.remote_key_file`` / ``remote_key_credential``."""
    return cfg.door.remote_key.read(cfg.base_dir)  # 16+ bytes (ConfigError otherwise)


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
        from edge.events import clock_synced

        d = cfg.door
        self.cfg = cfg
        self.door = d
        self._clock = clock
        self._wall = wall
        self._synced = synced or clock_synced
        self._events = events
        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stopped = False
        # Released before anything else (the constructor of GpioPins does that first).
        pin_factory = factory if factory is not None else make_pin_factory(cfg)
        self._pins = GpioPins(d, pin_factory, self._on_input)
        self._own_audit = audit is None
        try:
            self.audit = audit or aud.AuditLog(
                audit_path(cfg), d.audit_max_age_days, d.audit_max_rows, wall=wall
            )
            self._key = remote_key(cfg) if d.remote_unlock else None
            self._tz = _zone(d.timezone)
            self._schedule = {k: [parse_window(w) for w in v] for k, v in d.schedule.items()}
        except BaseException:
            self._pins.close()
            raise
        self._lock = threading.Lock()  # rules state (lockout, seen decisions, nonces)
        self._record_lock = threading.Lock()  # audit id order == event seq order
        self._lockout = Lockout(d.max_denials, d.lockout_window_s, d.lockout_s)
        self._seen: deque[tuple[Any, ...]] = deque(maxlen=256)
        self._nonces = NonceCache()
        self._refused_times: deque[float] = deque()
        self.refused_unrecorded = 0
        # Owner-thread state.
        self._energised = False
        self._deadline = 0.0
        self._authorised_until = float("-inf")
        self._door_open: bool | None = None
        self._opened_at = 0.0
        self._held_sent = False
        self._tamper: bool | None = None
        self._was_locked = False
        self.relay_log: deque[tuple[float, bool, str]] = deque(maxlen=1000)
        """(clock, energised, why) for every relay change: diagnostics and tests."""
        self._thread = threading.Thread(target=self._owner_main, name="door-relay", daemon=True)
        self._thread.start()
        log.info(
            "door: relay GPIO%d (%s), contact %s, exit %s, tamper %s, allow %s, unlock %.1f s, "
            "remote unlock %s, audit log %s",
            d.relay_pin,
            "active high" if d.active_high else "active low",
            _pin(d.contact_pin),
            _pin(d.exit_pin),
            _pin(d.tamper_pin),
            ", ".join(d.allow) or "nobody",
            d.unlock_s,
            "on" if d.remote_unlock else "off",
            self.audit.path,
        )

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
        return self._energised

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

    # -- decisions (daemon loop) ------------------------------------------------------
    def on_decision(self, decision: Decision, gallery: GroupSource | None = None) -> Verdict:
        """Judge one live decision from the tracker; pulse the relay when granted."""
        d = self.door
        wall_now, now = self._wall(), self._clock()
        name = decision.name
        groups: tuple[str, ...] = ()
        if name and gallery is not None and name in gallery:
            groups = tuple(gallery.groups(name))
        windows = windows_for(name, groups, self._schedule) if name else None
        with self._lock:
            key = (decision.track_id, decision.timestamp, decision.kind, name)
            replayed = key in self._seen
            if not replayed:
                self._seen.append(key)
            locked = self._lockout.active(now)
            verdict = judge(
                decision,
                allow=d.allow,
                groups=groups,
                windows=windows,
                tz=self._tz,
                wall_now=wall_now,
                max_age_s=d.max_decision_age_ms / 1000.0,
                synced=self._synced() if windows is not None else True,
                locked=locked,
                replayed=replayed,
            )
            engaged = verdict.reason == UNKNOWN and self._lockout.denied_unknown(now)
            until = self._lockout.until
        if verdict.granted:
            self.pulse(d.unlock_s, f"granted {name}")
        data = {
            "source": "face",
            "track_id": decision.track_id,
            "confidence": round(float(decision.confidence), 4),
            "distance": round(float(decision.distance), 4),
            "age_ms": round((wall_now - decision.timestamp) * 1000.0),
        }
        if groups:
            data["groups"] = list(groups)
        self._record(
            aud.GRANTED if verdict.granted else aud.DENIED,
            name=name,
            reason=verdict.reason,
            detail=verdict.detail,
            data=data,
        )
        if engaged:
            self._record(
                aud.LOCKOUT,
                reason=UNKNOWN,
                detail=f"{d.max_denials} unknown faces within {d.lockout_window_s:g} s: "
                f"locked for {d.lockout_s:g} s",
                data={"until": round(wall_now + (until - now), 3), "lockout_s": d.lockout_s},
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
        wall_now, now = self._wall(), self._clock()
        if not self.door.remote_unlock or self._key is None:
            reason: str | None = REMOTE_DISABLED
        else:
            with self._lock:
                reason = verify_unlock(
                    payload,
                    key=self._key,
                    device_id=self.cfg.device.id,
                    now=wall_now,
                    mono=now,
                    synced=self._synced(),
                    nonces=self._nonces,
                )
        if reason is None:
            self.pulse(self.door.unlock_s, "remote unlock")
            self._record(
                aud.REMOTE_UNLOCK, detail="signed remote unlock", data={"source": "remote"}
            )
            return True
        log.warning("door: remote unlock refused: %s", reason)
        with self._lock:
            while self._refused_times and now - self._refused_times[0] > 60.0:
                self._refused_times.popleft()
            record = len(self._refused_times) < REFUSED_AUDIT_PER_MIN
            if record:
                self._refused_times.append(now)
            else:
                self.refused_unrecorded += 1
        if record:
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
        """One audit entry, then its MQTT event (in that order, one at a time)."""
        try:
            synced = bool(self._synced())
        except Exception:
            synced = False
        with self._record_lock:
            entry: aud.AuditEntry | None
            try:
                entry = self.audit.append(
                    kind, name=name, reason=reason, detail=detail, data=data,
                    ts=self._wall(), clock_synced=synced,
                )  # fmt: skip
                fields = entry.event_fields()
                ts = entry.ts
            except Exception:
                # The door keeps working; the event below still tells the world.
                log.exception("door: audit entry %s not stored", kind)
                entry = None
                fields = {"audit_id": None, "name": name, "reason": reason, "detail": detail}
                fields.update(data or {})
                ts = self._wall()
            log.info(
                "door: %s%s%s%s",
                kind,
                f" name={name}" if name else "",
                f" reason={reason}" if reason else "",
                f" ({detail})" if detail else "",
            )
            if self._events is not None:
                try:
                    self._events.publish_event(kind, fields, ts)
                except Exception:
                    log.exception("door: event %s not published", kind)
        return entry

    def _publish_status(self) -> None:
        if self._events is None:
            return
        with self._lock:
            locked = self._lockout.active(self._clock())
        status = {
            "lock": "unlocked" if self._energised else "locked",
            "door": None if self._door_open is None else ("open" if self._door_open else "closed"),
            "tamper": self._tamper,
            "lockout": locked,
        }
        try:
            self._events.publish_status(STATUS_TOPIC, status)
        except Exception:
            log.exception("door: status not published")

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
                item = self._q.get(timeout=self._next_wake())
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
            self._deadline = max(self._deadline if self._energised else now, now + seconds)
            self._authorised_until = self._deadline + FORCED_GRACE_S
            self._set_relay(True, why)
        elif what == "release":
            if self._energised:
                self._authorised_until = now + FORCED_GRACE_S
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
        if self._energised and now >= self._deadline:
            self._set_relay(False, "pulse ended")
        if (
            self._door_open
            and not self._held_sent
            and now - self._opened_at >= self.door.held_open_s
        ):
            self._held_sent = True
            self._record(
                aud.HELD_OPEN,
                detail=f"door open for more than {self.door.held_open_s:g} s",
                data={"held_open_s": self.door.held_open_s},
            )
        locked = self._lockout.active(now)
        if locked != self._was_locked:
            self._was_locked = locked
            self._publish_status()

    def _next_wake(self) -> float:
        now = self._clock()
        wake = MAX_WAIT_S
        if self._energised:
            wake = min(wake, self._deadline - now)
        if self._door_open and not self._held_sent:
            wake = min(wake, self._opened_at + self.door.held_open_s - now)
        return max(0.0, wake)

    def _set_relay(self, on: bool, why: str, force: bool = False) -> None:
        if on == self._energised and not force:
            return
        changed = on != self._energised
        if on:
            self._pins.relay.on()
        else:
            self._pins.relay.off()
        self._energised = on
        if changed:
            self.relay_log.append((self._clock(), on, why))
            log.info("door: relay %s (%s)", "energised" if on else "released", why)
            self._publish_status()

    def _input(self, which: str, closed: bool, t: float, initial: bool = False) -> None:
        d = self.door
        if which == "contact":
            is_open = (not closed) if d.contact_closed_when_shut else closed
            if is_open == self._door_open:
                return
            self._door_open = is_open
            if is_open:
                self._opened_at, self._held_sent = t, False
                if not initial and t > self._authorised_until:
                    self._record(aud.FORCED, detail="door opened without a grant or exit request")
            self._publish_status()
        elif which == "exit":
            if closed and not initial:
                self._handle(("pulse", d.unlock_s, "exit request"))  # open first, then log
                self._record(aud.EXIT, detail="request-to-exit button", data={"source": "exit"})
        elif which == "tamper":
            active = (not closed) if d.tamper_closed_when_ok else closed
            if active == self._tamper:
                return
            self._tamper = active
            if active or not initial:
                self._record(
                    aud.TAMPER,
                    detail="tamper switch triggered" if active else "tamper switch restored",
                    data={"active": active},
                )
            self._publish_status()


def _pin(p: int | None) -> str:
    return "-" if p is None else f"GPIO{p}"


def make_door(cfg: Config, events: EventSink | None = None) -> DoorController:
    """The daemon's door controller (relay released first), or DoorError/ConfigError."""
    return DoorController(cfg, events=events)


# -- Home Assistant ------------------------------------------------------------------------------


def ha_discovery(
    base_topic: str, cfg: Config, like: Mapping[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant discovery for the door: ``(topic, config)`` pairs, to publish retained.

    ``like`` is one of the device's other discovery configs: the door's
    entities copy its device block and availability, so they join the same
    device. Entities, all reading the retained ``<base>/door`` status:

    - ``lock``: the strike (``locked`` / ``unlocked``). Its LOCK/UNLOCK go to
      ``<base>/door/set``, which the device never acts on: an unlock from Home
      Assistant must be signed (README: a script publishes the signed command,
      and only with ``door.remote_unlock = true``).
    - ``binary_sensor`` door (``device_class: door``), when ``door.contact_pin`` is wired;
    - ``binary_sensor`` tamper (``device_class: tamper``), when ``door.tamper_pin`` is wired.
    """
    d = cfg.door
    common = {
        k: like[k]
        for k in (
            "device",
            "availability",
            "availability_topic",
            "availability_mode",
            "payload_available",
            "payload_not_available",
            "origin",
        )
        if k in like
    }
    ident = str(common.get("device", {}).get("identifiers", ["facegate_door"])[0])
    node = ident.removeprefix("facegate_")
    prefix = cfg.mqtt.ha_prefix
    status = f"{base_topic}/{STATUS_TOPIC}"
    out: list[tuple[str, dict[str, Any]]] = [
        (
            f"{prefix}/lock/{node}/door_lock/config",
            {
                **common,
                "name": "Door lock",
                "unique_id": f"{ident}_door_lock",
                "state_topic": status,
                "value_template": "{{ value_json.lock }}",
                "state_locked": "locked",
                "state_unlocked": "unlocked",
                "command_topic": f"{base_topic}/{HA_COMMAND_SUFFIX}",
                "payload_lock": "LOCK",
                "payload_unlock": "UNLOCK",
                "optimistic": False,
                "qos": 1,
                "icon": "mdi:door-closed-lock",
            },
        )
    ]
    if d.contact_pin is not None:
        out.append(
            (
                f"{prefix}/binary_sensor/{node}/door/config",
                {
                    **common,
                    "name": "Door",
                    "unique_id": f"{ident}_door",
                    "device_class": "door",
                    "state_topic": status,
                    "value_template": "{{ value_json.door }}",
                    "payload_on": "open",
                    "payload_off": "closed",
                    "qos": 1,
                },
            )
        )
    if d.tamper_pin is not None:
        out.append(
            (
                f"{prefix}/binary_sensor/{node}/tamper/config",
                {
                    **common,
                    "name": "Tamper",
                    "unique_id": f"{ident}_tamper",
                    "device_class": "tamper",
                    "entity_category": "diagnostic",
                    "state_topic": status,
                    "value_template": "{{ 'ON' if value_json.tamper else 'OFF' }}",
                    "qos": 1,
                },
            )
        )
    return out


# -- facegate door test ----------------------------------------------------------------------------


def door_test(
    cfg: Config,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    out: Callable[[str], None] = print,
    factory: Any = None,
) -> dict[str, Any]:
    """``facegate door test``: pulse the relay once, read the inputs before and after.

    Logged in the audit log as ``door_test``. Returns what it printed, as a dict.
    """
    stop = stop or threading.Event()
    pulse_s = cfg.door.unlock_s if seconds is None else seconds
    ctl = DoorController(cfg, factory=factory)
    try:
        before = ctl.inputs()
        out(f"inputs before: {_describe(cfg.door, before)}")
        ctl._record(
            aud.DOOR_TEST, detail=f"relay test pulse of {pulse_s:g} s", data={"inputs": before}
        )
        ctl.pulse(pulse_s, "door test")
        ctl.sync()
        out(f"relay GPIO{cfg.door.relay_pin} energised for {pulse_s:g} s")
        deadline = time.monotonic() + pulse_s + 2.0
        while ctl.energised and time.monotonic() < deadline and not stop.wait(0.05):
            pass
        stopped = stop.is_set()
        after = ctl.inputs()
        out(f"relay released{' (stopped early)' if stopped else ''}")
        out(f"inputs after: {_describe(cfg.door, after)}")
        return {"before": before, "after": after, "pulse_s": pulse_s, "stopped": stopped}
    finally:
        ctl.stop(why="door test done")


def _describe(d: DoorConfig, inputs: Mapping[str, bool | None]) -> str:
    parts = []
    c = inputs.get("contact")
    if c is not None:
        is_open = (not c) if d.contact_closed_when_shut else c
        parts.append(f"door {'open' if is_open else 'closed'} (GPIO{d.contact_pin})")
    e = inputs.get("exit")
    if e is not None:
        parts.append(f"exit button {'pressed' if e else 'released'} (GPIO{d.exit_pin})")
    t = inputs.get("tamper")
    if t is not None:
        active = (not t) if d.tamper_closed_when_ok else t
        parts.append(f"tamper {'TRIGGERED' if active else 'ok'} (GPIO{d.tamper_pin})")
    return ", ".join(parts) or "none wired"


__all__ = [
    "CLOCK_NOT_SYNCED",
    "DENIAL_REASONS",
    "LOCKOUT",
    "NOT_ALLOWED",
    "OUTSIDE_SCHEDULE",
    "REMOTE_MAX_AGE_S",
    "REMOTE_REASONS",
    "STALE",
    "UNKNOWN",
    "DoorController",
    "DoorError",
    "EventSink",
    "GpioPins",
    "Lockout",
    "NonceCache",
    "Verdict",
    "Window",
    "audit_path",
    "check_door_config",
    "door_test",
    "ha_discovery",
    "in_schedule",
    "is_allowed",
    "judge",
    "make_door",
    "make_pin_factory",
    "parse_window",
    "sign_unlock",
    "unlock_message",
    "verify_unlock",
    "windows_for",
]

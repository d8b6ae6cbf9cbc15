"""``facegate door test``: pulse the relay once and read the inputs before and after."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import edge.door.audit as aud
from edge.config import DoorConfig
from edge.config.checker import check_value, field_types
from edge.door.controller import DoorController
from edge.errors import FacegateError
from edge.files import StateLock

if TYPE_CHECKING:
    from edge.config import Config


def pulse_seconds(seconds: float) -> float:
    """``--seconds`` checked with ``door.unlock_s``'s own rule: finite, in (0, 120].

    A test pulse is an unlock: a longer one (or ``inf``, ``nan``) would hold
    the strike open until someone notices.
    """
    try:
        return float(
            check_value("door test --seconds", field_types(DoorConfig)["unlock_s"], seconds)
        )
    except FacegateError as e:
        raise FacegateError(f"{e} (the bounds of door.unlock_s)") from None


def door_test(
    cfg: Config,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    out: Callable[[str], None] = print,
    factory: Any = None,
) -> dict[str, Any]:
    """``facegate door test``: pulse the relay once, read the inputs before and after.

    Logged in the audit log as ``door_test``. Returns what it printed, as a dict.
    ``seconds`` has the bounds of ``door.unlock_s`` (:func:`pulse_seconds`).
    It holds the state_dir's lock, as the daemon does: with the service
    running (it holds the pins) it stops in one line, before the relay.
    """
    stop = stop or threading.Event()
    pulse_s = cfg.door.unlock_s if seconds is None else pulse_seconds(seconds)
    with StateLock(cfg.state_dir):
        return _pulse_once(cfg, pulse_s, stop, out, factory)


def _pulse_once(
    cfg: Config,
    pulse_s: float,
    stop: threading.Event,
    out: Callable[[str], None],
    factory: Any,
) -> dict[str, Any]:
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


__all__ = ["door_test", "pulse_seconds"]

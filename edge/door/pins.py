"""The door's GPIO: the strike relay and the input switches, through gpiozero.

gpiozero (the optional extra ``door``) is imported only when pins are made.
``door.pin_factory = "mock"`` uses gpiozero's own ``MockFactory``: the daemon
and ``facegate door test`` then run without a Pi, and tests read the pin
states over time (:func:`recording_pin_class` also writes them to a file).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import FacegateError

if TYPE_CHECKING:
    from edge.config import Config, DoorConfig

log = logging.getLogger("facegate.door")

MAX_PIN = 27  # also the range of the pin keys in edge.config.DoorConfig


class DoorError(FacegateError):
    """The door hardware cannot be set up (no GPIO, gpiozero missing, pin in use)."""


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


__all__ = ["MAX_PIN", "DoorError", "GpioPins", "make_pin_factory", "recording_pin_class"]

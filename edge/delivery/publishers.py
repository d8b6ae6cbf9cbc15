"""Where the daemon's events go: the publisher interface and the publishers without MQTT.

:class:`PublisherLike` is what :func:`edge.daemon.run` needs from a
publisher. :func:`edge.daemon.make_publisher` picks one from the config: the
MQTT :class:`edge.daemon.Publisher` when ``mqtt.enabled``, else a
:class:`StdoutPublisher` (each event as one JSON line on stdout) around a
:class:`MemoryPublisher`, which numbers and keeps the payloads in memory.
``MemoryPublisher`` is also what tests and the door's rigs publish to.

Every publisher makes its events with :mod:`edge.delivery.events`, so a
printed event and a published one are the same payload. Commands go through
one :class:`~edge.delivery.commands.CommandGate` per publisher.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Protocol

from edge.clock import clock_synced
from edge.delivery.commands import CommandGate, GatedCommands
from edge.delivery.events import build_state, decision_event, door_event
from edge.delivery.signing import sign_key, wire_event

if TYPE_CHECKING:
    from edge.config import Config
    from edge.types import Decision


class PublisherLike(Protocol):
    """What the daemon needs from a publisher (the MQTT one and the others below)."""

    on_command: Callable[[str], None] | None
    on_unlock: Callable[[bytes], object] | None
    on_enrol: Callable[[bytes], object] | None
    verify_unlock: Callable[[bytes], bool] | None
    verify_enrol: Callable[[bytes], bool] | None

    def start(self) -> None: ...

    def publish_decision(self, decision: Decision) -> dict[str, Any]: ...

    def set_state(self, **fields: Any) -> None: ...

    def set_gallery(self, names: list[str] | tuple[str, ...]) -> None: ...

    def set_presence(self, present: bool) -> None: ...

    def set_ready(self) -> None: ...

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]: ...

    def publish_status(self, name: str, fields: dict[str, Any]) -> None: ...

    def alive(self) -> bool: ...

    def stop(self, timeout: float) -> None: ...


class MemoryPublisher(GatedCommands):
    """The publisher interface without a network: payloads kept in lists.

    The daemon's publisher when MQTT is off (inside :class:`StdoutPublisher`),
    and the tests'. Sequence numbers start at 1 per instance; nothing is
    stored on disk.
    """

    def __init__(self, cfg: Config | None = None) -> None:
        from edge.config import Config

        self.cfg = cfg or Config()
        self.commands = CommandGate()
        self.payloads: list[dict[str, Any]] = []
        self.statuses: dict[str, dict[str, Any]] = {}
        self.states: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {}
        self.started = False
        self.stopped = False
        self.ready = False
        self.people: tuple[str, ...] = ()
        self.presence: list[bool] = []
        self._seq = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.started = True

    def publish_decision(self, decision: Decision) -> dict[str, Any]:
        """The event, numbered; ``delivery`` as it would be if published now."""
        synced = clock_synced()
        age = max(0.0, time.time() - decision.timestamp)
        with self._lock:
            self._seq += 1
            payload = decision_event(self.cfg, decision, self._seq, synced, age)
            self.payloads.append(payload)
        return payload

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]:
        synced = clock_synced()
        with self._lock:
            self._seq += 1
            payload = door_event(
                self.cfg, kind, fields, self._seq, synced, time.time() if ts is None else ts
            )
            self.payloads.append(payload)
        return payload

    def publish_status(self, name: str, fields: dict[str, Any]) -> None:
        with self._lock:
            self.statuses[name] = build_state(self.cfg.device.id, **fields)

    def set_state(self, **fields: Any) -> None:
        with self._lock:
            self.state.update(fields)
            self.states.append(build_state(self.cfg.device.id, **self.state))

    def set_ready(self) -> None:
        self.ready = True

    def set_gallery(self, names: list[str] | tuple[str, ...]) -> None:
        self.people = tuple(sorted(set(names)))

    def set_presence(self, present: bool) -> None:
        if not self.presence or self.presence[-1] != present:
            self.presence.append(present)

    def command(self, payload: bytes) -> bool:
        """Feed a command payload as if it came from the broker; whether it was accepted."""
        return self.commands.handle(payload)

    def alive(self) -> bool:
        return self.started and not self.stopped

    def stop(self, timeout: float = 5.0) -> None:
        self.commands.flush_log(force=True)
        self.stopped = True


class StdoutPublisher:
    """Each event payload as one JSON line on stdout (or ``out``), then to ``inner``.

    The publisher when MQTT is off (``inner`` a :class:`MemoryPublisher`);
    with a real :class:`edge.delivery.mqtt.MqttPublisher` as ``inner`` it prints and
    publishes, as ``facegate demo --broker`` does.
    """

    def __init__(
        self, cfg: Config, out: IO[str] | None = None, inner: PublisherLike | None = None
    ) -> None:
        self._inner: PublisherLike = inner if inner is not None else MemoryPublisher(cfg)
        self._out = out
        self._key = sign_key(cfg)

    @property
    def on_command(self) -> Callable[[str], None] | None:
        return self._inner.on_command

    @on_command.setter
    def on_command(self, fn: Callable[[str], None] | None) -> None:
        # Commands arrive through the wrapped publisher: hand it the callback.
        self._inner.on_command = fn

    @property
    def on_unlock(self) -> Callable[[bytes], object] | None:
        return self._inner.on_unlock

    @on_unlock.setter
    def on_unlock(self, fn: Callable[[bytes], object] | None) -> None:
        self._inner.on_unlock = fn

    @property
    def on_enrol(self) -> Callable[[bytes], object] | None:
        return self._inner.on_enrol

    @on_enrol.setter
    def on_enrol(self, fn: Callable[[bytes], object] | None) -> None:
        self._inner.on_enrol = fn

    @property
    def verify_unlock(self) -> Callable[[bytes], bool] | None:
        return self._inner.verify_unlock

    @verify_unlock.setter
    def verify_unlock(self, fn: Callable[[bytes], bool] | None) -> None:
        self._inner.verify_unlock = fn

    @property
    def verify_enrol(self) -> Callable[[bytes], bool] | None:
        return self._inner.verify_enrol

    @verify_enrol.setter
    def verify_enrol(self, fn: Callable[[bytes], bool] | None) -> None:
        self._inner.verify_enrol = fn

    def _print(self, payload: dict[str, Any]) -> dict[str, Any]:
        out = self._out or sys.stdout
        # The line is the payload as the broker would carry it, signature included.
        out.write(wire_event(payload, self._key).decode() + "\n")
        out.flush()
        return payload

    def start(self) -> None:
        self._inner.start()

    def publish_decision(self, decision: Decision) -> dict[str, Any]:
        return self._print(self._inner.publish_decision(decision))

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]:
        return self._print(self._inner.publish_event(kind, fields, ts))

    def publish_status(self, name: str, fields: dict[str, Any]) -> None:
        self._inner.publish_status(name, fields)

    def set_state(self, **fields: Any) -> None:
        self._inner.set_state(**fields)

    def set_gallery(self, names: list[str] | tuple[str, ...]) -> None:
        self._inner.set_gallery(names)

    def set_presence(self, present: bool) -> None:
        self._inner.set_presence(present)

    def set_ready(self) -> None:
        self._inner.set_ready()

    def alive(self) -> bool:
        return self._inner.alive()

    def stop(self, timeout: float) -> None:
        self._inner.stop(timeout)


__all__ = ["MemoryPublisher", "PublisherLike", "StdoutPublisher"]

"""Where the daemon's events go: the publisher interface and the publishers without MQTT.

:class:`PublisherLike` is what :func:`edge.daemon.run` needs from a
publisher. :func:`make_publisher` picks one from the config: the MQTT
:class:`edge.mqtt.Publisher` when ``mqtt.enabled``, else a
:class:`StdoutPublisher` (each event as one JSON line on stdout) around a
:class:`MemoryPublisher`, which numbers and keeps the payloads in memory.
``MemoryPublisher`` is also what tests and the door's rigs publish to.

Events are made here for every publisher (:func:`decision_event`,
:func:`door_event`), so a printed event and a published one are the same
payload. Commands go through one :class:`~edge.commands.CommandGate` per
publisher.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Protocol

from edge.commands import CommandGate, GatedCommands
from edge.events import (
    build_door_event,
    build_event,
    build_state,
    clock_synced,
    delivery_of,
    encode,
    new_event_id,
    sign_payload,
)

if TYPE_CHECKING:
    from edge.config import Config
    from edge.types import Decision


class PublisherLike(Protocol):
    """What the daemon needs from a publisher (:class:`edge.mqtt.Publisher` and the others)."""

    on_command: Callable[[str], None] | None
    on_unlock: Callable[[bytes], object] | None

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


def sign_key(cfg: Config) -> bytes | None:
    """The event signing key (``events.sign_key_file`` / ``sign_key_credential``), or None.

    Read once when a publisher is made, so a missing or short key stops the
    start, not the first event.
    """
    return cfg.events.sign_key.read(cfg.base_dir)  # 16+ bytes (ConfigError otherwise)


def wire_event(payload: dict[str, Any], key: bytes | None) -> bytes:
    """The bytes of an event as they go out: :func:`encode`, signed when there is a key."""
    body = encode(payload)
    return sign_payload(body, key) if key is not None else body


def initial_delivery(
    payload: dict[str, Any], valid_for_s: float, age_s: float, synced_now: bool
) -> str:
    """The ``delivery`` an event gets when it is made (a replay of old frames is late at once)."""
    return delivery_of(
        payload, valid_for_s=valid_for_s, age_s=age_s, now=time.time(), synced_now=synced_now
    )


def decision_event(
    cfg: Config, decision: Decision, seq: int, synced: bool, age_s: float
) -> dict[str, Any]:
    """The event of ``decision`` numbered ``seq``, ``delivery`` as if sent at age ``age_s``."""
    valid_for = cfg.events.valid_for_s
    payload = build_event(
        decision,
        device_id=cfg.device.id,
        seq=seq,
        event_id=new_event_id(),
        clock_synced=synced,
        valid_for_s=valid_for,
    )
    payload["delivery"] = initial_delivery(payload, valid_for, age_s, synced)
    return payload


def door_event(
    cfg: Config, kind: str, fields: dict[str, Any], seq: int, synced: bool, ts: float
) -> dict[str, Any]:
    """A door event (:func:`~edge.events.build_door_event`) numbered ``seq``."""
    return build_door_event(
        kind,
        fields,
        device_id=cfg.device.id,
        seq=seq,
        event_id=new_event_id(),
        clock_synced=synced,
        ts=ts,
    )


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
    with a real :class:`edge.mqtt.Publisher` as ``inner`` it prints and
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


def make_publisher(cfg: Config) -> PublisherLike:
    """The MQTT publisher when ``mqtt.enabled``, else JSON lines on stdout."""
    if cfg.mqtt.enabled:
        from edge.mqtt import Publisher

        return Publisher(cfg)
    return StdoutPublisher(cfg)


__all__ = [
    "MemoryPublisher",
    "PublisherLike",
    "StdoutPublisher",
    "decision_event",
    "door_event",
    "initial_delivery",
    "make_publisher",
    "sign_key",
    "wire_event",
]

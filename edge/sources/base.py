"""What every frame source shares: the Protocol, the registry, pacing and backoff.

A backend module registers a factory under its name with :func:`register`;
:func:`open_source` looks the configured ``camera.source`` up there. The
names themselves are :data:`edge.config.SourceName` (a ``Literal``), the one
list that the config validates against and the registry is checked against.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from edge.errors import SourceError
from edge.types import Frame, Image

if TYPE_CHECKING:
    from edge.config import Config, SourceName

log = logging.getLogger("edge.sources")

READ_TIMEOUT_S = 0.1
"""How long the capture thread waits in one ``read`` before checking its stop event."""

NET_TIMEOUT_MS = 5000
"""Open and read timeout for network streams (RTSP/HTTP), so a dropped stream fails fast."""

MAX_REPLAY_FPS = 240.0
"""A video file claiming more than this (or nothing) plays at ``camera.fps`` instead."""


@runtime_checkable
class FrameSource(Protocol):
    """Where frames come from; see :mod:`edge.sources` for the contract."""

    def open(self) -> None: ...

    def read(self, timeout: float) -> Frame | None: ...

    def close(self) -> None: ...

    @property
    def exhausted(self) -> bool: ...

    @property
    def live(self) -> bool:
        """True for a camera (keep only the newest frame), False for a replay (keep all)."""
        ...


# --------------------------------------------------------------------------- registry

Factory = Callable[["Config"], FrameSource]
_F = TypeVar("_F", bound=Factory)
_REGISTRY: dict[str, Factory] = {}


def register(name: SourceName) -> Callable[[_F], _F]:
    """Decorator: ``@register("opencv")`` makes a factory the backend of that source name."""

    def deco(factory: _F) -> _F:
        _REGISTRY[name] = factory
        return factory

    return deco


def registered() -> tuple[str, ...]:
    """The registered source names, sorted."""
    return tuple(sorted(_REGISTRY))


def open_source(cfg: Config) -> FrameSource:
    """The frame source chosen by ``[camera]`` (not opened yet: ``open()`` does that).

    Relative folder and video paths are relative to the config file. A folder
    is replayed recursively (sorted by path), so a folder of per-person
    sub-folders works as is. Replays are paced at ``camera.fps`` (a video
    file at its own rate) when ``camera.realtime``, else delivered as fast as
    the consumer takes them.
    """
    factory = _REGISTRY.get(cfg.camera.source)
    if factory is None:
        raise SourceError(f"camera.source: unknown source {cfg.camera.source!r}")
    return factory(cfg)


# --------------------------------------------------------------------------- helpers


def redact_uri(uri: str) -> str:
    """A URI safe to log: ``rtsp://user:secret@host/x`` -> ``rtsp://***@host/x``."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", uri)


def to_rgb(bgr: Any) -> Image:
    """OpenCV's BGR (or grey / BGRA) frame as a contiguous RGB uint8 array."""
    arr = np.asarray(bgr)
    if arr.dtype != np.uint8:
        raise SourceError(f"unexpected frame dtype {arr.dtype} (expected uint8)")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        # Channel order B, G, R (, A/X): drop the 4th channel and reverse.
        arr = arr[:, :, 2::-1]
    else:
        raise SourceError(f"unexpected frame shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


class Pacer:
    """Spaces frames ``1/fps`` seconds apart (replays shown "as if live").

    The schedule is ``due_k = due_{k-1} + 1/fps``; when the consumer falls more
    than one period behind, the schedule restarts from now instead of
    delivering a burst of late frames.
    """

    def __init__(self, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.period = 1.0 / fps
        self._due: float | None = None

    def ready(self, timeout: float) -> bool:
        """Sleep until the next frame is due (True) or ``timeout`` passes (False)."""
        now = time.monotonic()
        if self._due is None:
            self._due = now
        wait = self._due - now
        if wait > timeout:
            time.sleep(max(0.0, timeout))
            return False
        if wait > 0:
            time.sleep(wait)
        self._due = self._due + self.period
        if self._due < time.monotonic() - self.period:
            self._due = time.monotonic() + self.period
        return True


class Backoff:
    """Bounded exponential backoff for re-opening a live source.

    Attempt ``k`` (1-based) waits ``min(cap_s, base_s * 2**(k-1))`` seconds;
    after ``max_attempts`` failed attempts in a row the source gives up.
    """

    def __init__(self, what: str, max_attempts: int, base_s: float, cap_s: float) -> None:
        self.what = what
        self.max_attempts = max_attempts
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempts = 0
        self._next_at = 0.0

    def failed(self, reason: str) -> None:
        """Schedule the next attempt (one log line), or raise SourceError when out of tries."""
        self.attempts += 1
        if self.attempts > self.max_attempts:
            raise SourceError(
                f"{self.what}: {reason}; gave up after {self.max_attempts} reconnect attempts"
            )
        delay = min(self.cap_s, self.base_s * 2 ** (self.attempts - 1))
        log.warning(
            "%s: %s; reconnect attempt %d/%d in %.1f s",
            self.what,
            reason,
            self.attempts,
            self.max_attempts,
            delay,
        )
        self._next_at = time.monotonic() + delay

    def due(self, timeout: float) -> bool:
        """Sleep until the scheduled attempt (True) or for ``timeout`` (False)."""
        wait = self._next_at - time.monotonic()
        if wait > timeout:
            time.sleep(max(0.0, timeout))
            return False
        if wait > 0:
            time.sleep(wait)
        return True

    def reset(self) -> None:
        self.attempts = 0


__all__ = [
    "MAX_REPLAY_FPS",
    "NET_TIMEOUT_MS",
    "READ_TIMEOUT_S",
    "Backoff",
    "FrameSource",
    "Pacer",
    "open_source",
    "redact_uri",
    "register",
    "registered",
    "to_rgb",
]

"""The fake source: synthetic frames, or a given list of RGB arrays (tests, the demo)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge.errors import SourceError
from edge.sources.base import Pacer, register
from edge.types import Frame, Image

if TYPE_CHECKING:
    from edge.config import Config


class FakeSource:
    """Frames for tests: synthetic ones, or a given list of RGB arrays.

    Synthetic frames are ``height x width`` grey gradients with a bright square
    that moves with the index, so consecutive frames differ. ``count`` makes a
    synthetic source finite (None: endless); a list of ``frames`` is finite
    unless ``loop``. ``fps`` paces delivery (None: as fast as read).
    """

    def __init__(
        self,
        frames: Sequence[Image] | None = None,
        *,
        count: int | None = None,
        width: int = 64,
        height: int = 48,
        fps: float | None = None,
        loop: bool = False,
        label: str = "fake",
    ) -> None:
        if frames is not None:
            for i, f in enumerate(frames):
                if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
                    raise SourceError(f"fake frame {i}: expected (H, W, 3) uint8, got {f.shape}")
        self._frames = list(frames) if frames is not None else None
        self._count = count
        self.width = width
        self.height = height
        self.loop = loop
        self.label = label
        self._pacer = Pacer(fps) if fps else None
        self._pos = 0
        self._index = 0
        self._exhausted = False
        self.opened = False
        self.closed = False

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    @property
    def live(self) -> bool:
        """False: a fake source is a replay (the capture thread may keep every frame)."""
        return False

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def _synthetic(self, i: int) -> Image:
        h, w = self.height, self.width
        img = np.empty((h, w, 3), dtype=np.uint8)
        img[:] = (np.arange(w, dtype=np.uint32) * 255 // max(1, w - 1)).astype(np.uint8)[
            None, :, None
        ]
        s = max(1, min(h, w) // 4)
        x = (i * 3) % max(1, w - s)
        y = (i * 2) % max(1, h - s)
        img[y : y + s, x : x + s] = (255, 64, 0)
        return img

    def read(self, timeout: float) -> Frame | None:
        if not self.opened:
            raise SourceError(f"{self.label}: read before open")
        if self._exhausted:
            return None
        total = len(self._frames) if self._frames is not None else self._count
        if total is not None and self._pos >= total:
            if self.loop and total > 0:
                self._pos = 0
            else:
                self._exhausted = True
                return None
        if self._pacer is not None and not self._pacer.ready(timeout):
            return None
        if self._frames is not None:
            image = self._frames[self._pos]
        else:
            image = self._synthetic(self._index)
        self._pos += 1
        frame = Frame(image=image, index=self._index, timestamp=time.time(), source=self.label)
        self._index += 1
        return frame


@register("fake")
def from_config(cfg: Config) -> FakeSource:
    """``camera.source = "fake"``: endless synthetic frames at ``camera.fps``."""
    cam = cfg.camera
    return FakeSource(width=cam.width, height=cam.height, fps=cam.fps, loop=cam.loop)

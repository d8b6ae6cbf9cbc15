"""The Raspberry Pi camera through ``picamera2`` (imported when the camera is opened)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from edge.errors import SourceError
from edge.sources.base import Backoff, log, register, to_rgb
from edge.types import Frame

if TYPE_CHECKING:
    from edge.config import Config


class Picamera2Source:
    """The Raspberry Pi camera through ``picamera2`` (imported on ``open`` only).

    The main stream is configured as ``RGB888``, which libcamera stores as
    B, G, R bytes per pixel (the picamera2 manual: "RGB888 - 24 bits per
    pixel, ordered [B, G, R]"), so each frame is reversed to RGB here. A
    capture that fails or takes longer than ``capture_timeout_s`` re-opens
    the camera with the same bounded backoff as :class:`OpenCVSource`.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float | None = None,
        *,
        max_retries: int = 8,
        retry_base_s: float = 0.5,
        retry_cap_s: float = 10.0,
    ) -> None:
        self.width = width
        self.height = height
        self.fps = fps
        self.label = "picamera2"
        self.capture_timeout_s = max(2.0, 3.0 / fps) if fps else 2.0
        self._backoff = Backoff(self.label, max_retries, retry_base_s, retry_cap_s)
        self._cam: Any = None
        self._opened = False
        self._index = 0

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def live(self) -> bool:
        """True: a camera never runs out and must not be throttled by the consumer."""
        return True

    def _connect(self) -> Any:
        try:
            from picamera2 import Picamera2
        except ImportError as e:
            raise SourceError(
                f"picamera2 is not available ({e}); it ships with Raspberry Pi OS "
                "(apt install python3-picamera2); elsewhere use camera.source = 'opencv'"
            ) from None
        cam: Any = None
        try:
            cam = Picamera2()
            controls: dict[str, Any] = {"FrameRate": float(self.fps)} if self.fps else {}
            config = cam.create_preview_configuration(
                main={"size": (self.width, self.height), "format": "RGB888"}, controls=controls
            )
            cam.configure(config)
            cam.start()
        except Exception as e:  # libcamera raises several types for "no camera"
            if cam is not None:
                self._release(cam)
            raise SourceError(f"{self.label}: cannot open the camera ({e})") from None
        return cam

    @staticmethod
    def _release(cam: Any) -> None:
        for method in ("stop", "close"):
            try:
                getattr(cam, method)()
            except Exception as e:  # releasing a broken camera must not raise
                log.debug("picamera2: %s failed: %s", method, e)

    def open(self) -> None:
        if self._opened:
            return
        self._cam = self._connect()
        self._opened = True
        log.info("%s: opened at %dx%d", self.label, self.width, self.height)

    def close(self) -> None:
        if self._cam is not None:
            self._release(self._cam)
        self._cam = None
        self._opened = False

    def read(self, timeout: float) -> Frame | None:
        if not self._opened:
            raise SourceError(f"{self.label}: read before open")
        if self._cam is None:
            if not self._backoff.due(timeout):
                return None
            try:
                self._cam = self._connect()
            except SourceError as e:
                self._backoff.failed(str(e).removeprefix(f"{self.label}: "))
                return None
            log.info("%s: re-opened", self.label)
        try:
            # A number for ``wait`` is a timeout in current picamera2 (older ones
            # take it as True): a stalled camera raises instead of hanging.
            arr = self._cam.capture_array("main", wait=self.capture_timeout_s)
            image = to_rgb(arr)  # B, G, R (, X) -> R, G, B
        except Exception as e:
            self._release(self._cam)
            self._cam = None
            self._backoff.failed(f"capture failed ({e})")
            return None
        self._backoff.reset()
        frame = Frame(image=image, index=self._index, timestamp=time.time(), source=self.label)
        self._index += 1
        return frame


@register("picamera2")
def from_config(cfg: Config) -> Picamera2Source:
    """``camera.source = "picamera2"``: the Pi camera at ``camera.width`` x ``camera.height``."""
    return Picamera2Source(cfg.camera.width, cfg.camera.height, cfg.camera.fps)

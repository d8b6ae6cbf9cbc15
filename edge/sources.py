"""Frame sources (Pi camera, OpenCV, image folder, fake) and the capture thread.

Every source delivers :class:`edge.types.Frame` records: an RGB uint8 image, an
index that increases by one per delivered frame (also across loops and
reconnects), the wall-clock capture time (``time.time()``) and a label naming
where it came from. They share one small interface, :class:`FrameSource`:

* ``open()`` raises :class:`~edge.errors.SourceError` when the source cannot
  be opened (no camera, missing file or folder); it is idempotent.
* ``read(timeout)`` returns the next frame, or None when there is none yet;
  it never blocks much longer than ``timeout`` (an OpenCV network stream may
  block for its read timeout, see :data:`NET_TIMEOUT_MS`). A live camera that
  stops delivering is re-opened with exponential backoff, one log line per
  attempt; when the attempts run out ``read`` raises ``SourceError``.
* ``exhausted`` is True once a finite replay (folder, video file) has
  delivered its last frame and is not looping.
* ``close()`` releases the device; it is idempotent.

A :class:`CaptureThread` reads a source on its own thread so that a slow
consumer never stalls the camera. For a live camera it keeps only the newest
frame and counts the ones overwritten before the consumer took them as
dropped; for a replay (``keep_all=True``) it blocks the producer on a small
bounded queue instead, so every frame is delivered in order. All waits have
timeouts, so setting the caller's stop event ends the thread promptly.

Hardware libraries are imported lazily: ``import edge.sources`` imports
neither ``picamera2`` nor OpenCV.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote

import numpy as np

from edge.errors import FacegateError, ImageError, SourceError
from edge.types import Frame, Image

if TYPE_CHECKING:
    from edge.config import Config

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 0.1
"""How long the capture thread waits in one ``read`` before checking its stop event."""

NET_TIMEOUT_MS = 5000
"""Open and read timeout for network streams (RTSP/HTTP), so a dropped stream fails fast."""

MAX_REPLAY_FPS = 240.0
"""A video file claiming more than this (or nothing) plays at ``camera.fps`` instead."""


@runtime_checkable
class FrameSource(Protocol):
    """Where frames come from; see the module docstring for the contract."""

    def open(self) -> None: ...

    def read(self, timeout: float) -> Frame | None: ...

    def close(self) -> None: ...

    @property
    def exhausted(self) -> bool: ...


# --------------------------------------------------------------------------- helpers


def redact_uri(uri: str) -> str:
    """A URI safe to log: ``rtsp://user:secret@host/x`` -> ``rtsp://***@host/x``."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", uri)


def uri_with_password(uri: str, password: str) -> str:
    """``rtsp://user@host/x`` + password -> ``rtsp://user:PASSWORD@host/x``.

    The password is percent-encoded (RFC 3986 userinfo), so ``@``, ``:`` or
    ``/`` in it cannot change where the URI points.
    """
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@:]+)@(.*)$", uri, re.DOTALL)
    if not m:
        raise SourceError(
            f"camera.uri: {redact_uri(uri)} has no user name to go with the password "
            "(rtsp://USER@host/...)"
        )
    scheme, user, rest = m.groups()
    return f"{scheme}{user}:{quote(password, safe='')}@{rest}"


def _to_rgb(bgr: Any) -> Image:
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


class _Pacer:
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


class _Backoff:
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


# --------------------------------------------------------------------------- sources


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
        self._pacer = _Pacer(fps) if fps else None
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


class FolderSource:
    """Replays the images in a folder in sorted order.

    Files that cannot be read are skipped with one logged reason each (and
    not retried on later loops); a folder with no readable image at all is
    exhausted even when looping. ``fps`` paces delivery (None: as fast as
    read). Labels are ``folder:<path relative to the folder>``.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        fps: float | None = None,
        loop: bool = False,
        recursive: bool = False,
    ) -> None:
        self.path = Path(path)
        self.loop = loop
        self.recursive = recursive
        self._pacer = _Pacer(fps) if fps else None
        self._files: list[Path] | None = None
        self._bad: set[Path] = set()
        self._pos = 0
        self._pass_delivered = 0
        self._index = 0
        self._exhausted = False

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    @property
    def live(self) -> bool:
        """False: a folder is a replay."""
        return False

    @property
    def skipped(self) -> int:
        """How many files were skipped as unreadable."""
        return len(self._bad)

    def open(self) -> None:
        if self._files is not None:
            return
        from edge.imageio import list_images

        if not self.path.is_dir():
            raise SourceError(f"{self.path}: image folder does not exist")
        try:
            files = list_images(self.path, recursive=self.recursive)
        except OSError as e:
            raise SourceError(f"{self.path}: cannot list folder ({e.strerror or e})") from None
        if not files:
            how = " (recursively)" if self.recursive else ""
            raise SourceError(f"{self.path}: no image files{how}")
        self._files = files

    def close(self) -> None:
        pass

    def read(self, timeout: float) -> Frame | None:
        from edge.imageio import read_image

        if self._files is None:
            raise SourceError(f"{self.path}: read before open")
        if self._exhausted:
            return None
        if self._pacer is not None and not self._pacer.ready(timeout):
            return None
        files = self._files
        # At most one full pass per call: bad files are skipped right away.
        for _ in range(len(files) + 1):
            if self._pos >= len(files):
                if self.loop and self._pass_delivered > 0:
                    self._pos = 0
                    self._pass_delivered = 0
                else:
                    if self._pass_delivered == 0 and self.loop:
                        log.warning("%s: no readable image; stopping the replay", self.path)
                    self._exhausted = True
                    return None
            p = files[self._pos]
            self._pos += 1
            if p in self._bad:
                continue
            try:
                image = read_image(p)
            except ImageError as e:
                self._bad.add(p)
                log.warning("folder source: skipping %s", e)
                continue
            self._pass_delivered += 1
            frame = Frame(
                image=image,
                index=self._index,
                timestamp=time.time(),
                source=f"folder:{p.relative_to(self.path).as_posix()}",
            )
            self._index += 1
            return frame
        self._exhausted = True
        return None


def _is_network(uri: str) -> bool:
    return "://" in uri


class OpenCVSource:
    """``cv2.VideoCapture``: a USB camera index (``"0"``), a stream URL or a video file.

    Cameras and streams are live: a failed open raises SourceError; a failed
    read closes the capture and re-opens it with bounded backoff
    (``max_retries`` attempts, ``retry_base_s * 2**k`` seconds apart, at
    most ``retry_cap_s``). A video file is finite: at its end the source is
    exhausted, or starts again when ``loop``. ``realtime`` paces a file at its
    own frame rate (``fps`` when the file has none); a live source is paced by
    the device. ``width``/``height``/``fps`` are requested from a USB camera.
    """

    def __init__(
        self,
        uri: str | int | Path,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        loop: bool = False,
        realtime: bool = True,
        max_retries: int = 8,
        retry_base_s: float = 0.5,
        retry_cap_s: float = 10.0,
    ) -> None:
        self.uri = uri
        s = str(uri)
        self.device_index: int | None = (
            int(s) if isinstance(uri, int) or (s.isdigit() and not isinstance(uri, Path)) else None
        )
        self.is_file = self.device_index is None and not _is_network(s)
        self.label = (
            f"opencv:{self.device_index}"
            if self.device_index is not None
            else (f"opencv:{Path(s).name}" if self.is_file else f"opencv:{redact_uri(s)}")
        )
        self.width = width
        self.height = height
        self.fps = fps
        self.loop = loop
        self.realtime = realtime
        self._backoff = _Backoff(self.label, max_retries, retry_base_s, retry_cap_s)
        self._cap: Any = None
        self._opened = False
        self._pacer: _Pacer | None = None
        self._pass_delivered = 0
        self._index = 0
        self._exhausted = False
        self.file_fps: float | None = None

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    @property
    def live(self) -> bool:
        """True for cameras and streams, False for a video file (a replay)."""
        return not self.is_file

    def _connect(self) -> Any:
        """A new, opened ``cv2.VideoCapture``; SourceError if it does not open."""
        import cv2

        if self.device_index is not None:
            cap = cv2.VideoCapture(self.device_index)
            if cap.isOpened():
                # Requests only: the driver picks the nearest mode it supports.
                if self.width and self.height:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(self.width))
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(self.height))
                if self.fps:
                    cap.set(cv2.CAP_PROP_FPS, float(self.fps))
                # A small driver queue keeps the newest frame fresh.
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1.0)
        elif self.is_file:
            path = Path(str(self.uri))
            if not path.is_file():
                raise SourceError(f"{path}: video file does not exist")
            cap = cv2.VideoCapture(str(path))
        else:
            # Bounded open/read times, so an unplugged stream fails instead of hanging.
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                NET_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                NET_TIMEOUT_MS,
            ]
            cap = cv2.VideoCapture(str(self.uri), cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            what = "cannot open video file" if self.is_file else "cannot open camera or stream"
            raise SourceError(f"{self.label}: {what}")
        return cap

    def open(self) -> None:
        if self._opened:
            return
        import cv2

        self._cap = self._connect()
        self._opened = True
        if self.is_file:
            fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self.file_fps = fps if 0 < fps <= MAX_REPLAY_FPS and math.isfinite(fps) else None
            rate = self.file_fps or self.fps
            if self.realtime and rate:
                self._pacer = _Pacer(rate)
        log.info("%s: opened", self.label)

    def close(self) -> None:
        if self._cap is not None:
            try:
                self._cap.release()
            except Exception as e:  # closing must not fail the shutdown
                log.debug("%s: release failed: %s", self.label, e)
        self._cap = None
        self._opened = False

    def _frame(self, bgr: Any) -> Frame:
        frame = Frame(
            image=_to_rgb(bgr), index=self._index, timestamp=time.time(), source=self.label
        )
        self._index += 1
        return frame

    def read(self, timeout: float) -> Frame | None:
        if not self._opened:
            raise SourceError(f"{self.label}: read before open")
        if self._exhausted:
            return None
        if self.is_file:
            return self._read_file(timeout)
        return self._read_live(timeout)

    def _read_file(self, timeout: float) -> Frame | None:
        if self._pacer is not None and not self._pacer.ready(timeout):
            return None
        for _ in range(2):
            ok, bgr = self._cap.read()
            if ok and bgr is not None:
                self._pass_delivered += 1
                return self._frame(bgr)
            # End of the file (or an undecodable tail).
            if not (self.loop and self._pass_delivered > 0):
                self._exhausted = True
                self._cap.release()
                return None
            self._cap.release()
            self._cap = self._connect()
            self._pass_delivered = 0
        self._exhausted = True
        return None

    def _read_live(self, timeout: float) -> Frame | None:
        if self._cap is None:
            if not self._backoff.due(timeout):
                return None
            try:
                self._cap = self._connect()
            except SourceError as e:
                self._backoff.failed(str(e).removeprefix(f"{self.label}: "))
                return None
            log.info("%s: re-opened", self.label)
        try:
            ok, bgr = self._cap.read()
        except Exception as e:  # some backends raise on a vanished device
            ok, bgr = False, None
            log.debug("%s: read raised %s", self.label, e)
        if not ok or bgr is None:
            self._cap.release()
            self._cap = None
            self._backoff.failed("no frame (camera unplugged or stream dropped?)")
            return None
        self._backoff.reset()
        return self._frame(bgr)


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
        self._backoff = _Backoff(self.label, max_retries, retry_base_s, retry_cap_s)
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
            image = _to_rgb(arr)  # B, G, R (, X) -> R, G, B
        except Exception as e:
            self._release(self._cam)
            self._cam = None
            self._backoff.failed(f"capture failed ({e})")
            return None
        self._backoff.reset()
        frame = Frame(image=image, index=self._index, timestamp=time.time(), source=self.label)
        self._index += 1
        return frame


def open_source(cfg: Config) -> FrameSource:
    """The frame source chosen by ``[camera]`` (not opened yet: ``open()`` does that).

    Relative folder and video paths are relative to the config file. A folder
    is replayed recursively (sorted by path), so a folder of per-person
    sub-folders works as is. Replays are paced at ``camera.fps`` (a video
    file at its own rate) when ``camera.realtime``, else delivered as fast as
    the consumer takes them.
    """
    cam = cfg.camera
    if cam.source == "picamera2":
        return Picamera2Source(cam.width, cam.height, cam.fps)
    if cam.source == "opencv":
        uri: str | Path = cam.uri.strip()
        if not uri:
            raise SourceError("camera.uri: empty (a camera index like '0', a URL or a video file)")
        if not str(uri).isdigit() and not _is_network(str(uri)):
            uri = cfg.resolve(str(uri))
        from edge.config import read_secret, uri_has_password

        secret = read_secret(
            cam.password_file,
            cam.password_credential,
            "camera.password_file" if cam.password_file else "camera.password_credential",
            base_dir=cfg.base_dir,
        )
        if secret is not None:
            try:
                password = secret.decode("utf-8")
            except UnicodeDecodeError:
                raise SourceError("camera password: not UTF-8 text") from None
            uri = uri_with_password(str(uri), password)
        elif uri_has_password(str(uri)):
            log.warning(
                "camera.uri holds a password in the config; move it to camera.password_file "
                "or a systemd credential (camera.password_credential)"
            )
        return OpenCVSource(
            uri,
            width=cam.width,
            height=cam.height,
            fps=cam.fps,
            loop=cam.loop,
            realtime=cam.realtime,
        )
    if cam.source == "folder":
        return FolderSource(
            cfg.resolve(cam.path),
            fps=cam.fps if cam.realtime else None,
            loop=cam.loop,
            recursive=True,
        )
    if cam.source == "fake":
        return FakeSource(width=cam.width, height=cam.height, fps=cam.fps, loop=cam.loop)
    raise SourceError(f"camera.source: unknown source {cam.source!r}")


# --------------------------------------------------------------------------- capture thread


class CaptureThread:
    """Reads a source on a background thread and hands frames to one consumer.

    ``keep_all=False`` (live cameras): only the newest frame is kept; a frame
    replaced before the consumer took it counts in ``dropped``. So, once the
    thread has ended and the consumer has taken everything,
    ``captured == delivered + dropped``.

    ``keep_all=True`` (replays): frames wait in a queue of ``queue_size``; a
    full queue blocks the producer (in steps of :data:`READ_TIMEOUT_S`, so
    the stop event is honoured) and nothing is dropped (except the one frame
    in hand when a stop interrupts that wait). At any time
    ``captured == delivered + dropped + pending``.

    :meth:`start` opens the source on the caller's thread, so a camera that
    cannot be opened raises :class:`SourceError` there; the thread closes the
    source when it ends. An error while reading ends the thread and is kept
    in ``error``; ``finished`` means a finite source ended and every frame was
    taken.
    """

    def __init__(
        self,
        source: FrameSource,
        stop: threading.Event,
        keep_all: bool = False,
        *,
        queue_size: int = 4,
        name: str = "capture",
    ) -> None:
        self.source = source
        self.stop = stop
        self.keep_all = keep_all
        self._max = max(1, queue_size) if keep_all else 1
        self._queue: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._source_ended = False
        self._done = False
        self.dropped = 0
        self.captured = 0
        self.delivered = 0
        self.error: BaseException | None = None

    def start(self) -> None:
        """Open the source (SourceError when it cannot) and start reading."""
        self.source.open()
        self._thread.start()

    def _put(self, frame: Frame) -> bool:
        """Hand one frame over; False when stopped while waiting for room."""
        with self._cond:
            # Counted under the lock so the invariant holds at every instant.
            self.captured += 1
            if not self.keep_all:
                if self._queue:
                    self._queue.clear()
                    self.dropped += 1
                self._queue.append(frame)
                self._cond.notify_all()
                return True
            while len(self._queue) >= self._max:
                if self.stop.is_set():
                    # Stopped while the queue was full: this frame is never handed out.
                    self.dropped += 1
                    return False
                self._cond.wait(timeout=READ_TIMEOUT_S)
            self._queue.append(frame)
            self._cond.notify_all()
            return True

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                frame = self.source.read(READ_TIMEOUT_S)
                if frame is None:
                    if self.source.exhausted:
                        with self._cond:
                            self._source_ended = True
                        log.info(
                            "%s: replay ended after %d frames", self._thread.name, self.captured
                        )
                        break
                    continue
                if not self._put(frame):
                    break
        except FacegateError as e:
            self.error = e
            log.error("%s: %s", self._thread.name, e)
        except Exception as e:  # a bug or a driver crash: keep it for the caller
            self.error = e
            log.exception("%s: reading frames failed", self._thread.name)
        finally:
            try:
                self.source.close()
            except Exception as e:  # closing must not hide the real outcome
                log.warning("%s: closing the source failed: %s", self._thread.name, e)
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        """The next frame (the newest one unless ``keep_all``), or None after ``timeout``."""
        with self._cond:
            if not self._queue and not self._done:
                self._cond.wait_for(lambda: bool(self._queue) or self._done, timeout=timeout)
            if not self._queue:
                return None
            frame = self._queue.popleft()
            self.delivered += 1
            self._cond.notify_all()
            return frame

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the thread to end (set the stop event first)."""
        if self._thread.ident is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """The reading thread is running."""
        return self._thread.is_alive()

    @property
    def finished(self) -> bool:
        """A finite source ended and every captured frame was handed out."""
        with self._cond:
            return self._source_ended and not self._queue

    @property
    def pending(self) -> int:
        """Frames captured but not yet taken."""
        with self._cond:
            return len(self._queue)


def frames(source: FrameSource, limit: int | None = None, timeout: float = 1.0) -> Iterator[Frame]:
    """Read a source synchronously (opens and closes it): for tools and tests.

    Stops when the source is exhausted, after ``limit`` frames, or when no
    frame came for ``timeout`` seconds.
    """
    source.open()
    try:
        n = 0
        last = time.monotonic()
        while limit is None or n < limit:
            frame = source.read(min(READ_TIMEOUT_S, timeout))
            if frame is None:
                if source.exhausted or time.monotonic() - last > timeout:
                    return
                continue
            last = time.monotonic()
            n += 1
            yield frame
    finally:
        source.close()


__all__ = [
    "CaptureThread",
    "FakeSource",
    "FolderSource",
    "FrameSource",
    "OpenCVSource",
    "Picamera2Source",
    "frames",
    "open_source",
    "redact_uri",
    "uri_with_password",
]

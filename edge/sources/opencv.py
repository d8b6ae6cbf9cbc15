"""The OpenCV source: a USB camera index, a network stream (RTSP/HTTP) or a video file."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from edge.errors import SourceError
from edge.imageio import import_cv2, quiet_opencv
from edge.sources.base import (
    MAX_REPLAY_FPS,
    NET_TIMEOUT_MS,
    Backoff,
    Pacer,
    log,
    redact_uri,
    register,
    to_rgb,
)
from edge.types import Frame

if TYPE_CHECKING:
    from edge.config import Config


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


def _ffmpeg_or_any(cv2: Any) -> int:
    """``cv2.CAP_FFMPEG`` when this OpenCV has it, else ``cv2.CAP_ANY``."""
    return int(cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY)


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
        self._backoff = Backoff(self.label, max_retries, retry_base_s, retry_cap_s)
        self._cap: Any = None
        self._opened = False
        self._pacer: Pacer | None = None
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
        cv2 = import_cv2()

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
            # FFmpeg by name: with CAP_ANY a '%' in the name selects OpenCV's
            # image-sequence reader, which also prints the name.
            with quiet_opencv(cv2):
                cap = cv2.VideoCapture(str(path), _ffmpeg_or_any(cv2))
        else:
            # FFmpeg by name, never CAP_ANY: OpenCV's image-sequence reader takes
            # a URI with '%' (a percent-encoded password) for a file pattern and
            # prints the whole URI. OpenCV's own log is silenced while the URI
            # is handed over. Bounded open/read times, so an unplugged stream
            # fails instead of hanging.
            if not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
                raise SourceError(
                    f"{self.label}: this OpenCV has no FFmpeg backend for network streams"
                )
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                NET_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                NET_TIMEOUT_MS,
            ]
            with quiet_opencv(cv2):
                cap = cv2.VideoCapture(str(self.uri), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            what = "cannot open video file" if self.is_file else "cannot open camera or stream"
            raise SourceError(f"{self.label}: {what}")
        return cap

    def open(self) -> None:
        if self._opened:
            return
        cv2 = import_cv2()

        self._cap = self._connect()
        self._opened = True
        if self.is_file:
            fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self.file_fps = fps if 0 < fps <= MAX_REPLAY_FPS and math.isfinite(fps) else None
            rate = self.file_fps or self.fps
            if self.realtime and rate:
                self._pacer = Pacer(rate)
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
            image=to_rgb(bgr), index=self._index, timestamp=time.time(), source=self.label
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


@register("opencv")
def from_config(cfg: Config) -> OpenCVSource:
    """``camera.source = "opencv"``: ``camera.uri`` with the password from its secret, if any."""
    from edge.config import uri_has_password

    cam = cfg.camera
    uri: str | Path = cam.uri.strip()
    if not uri:
        raise SourceError("camera.uri: empty (a camera index like '0', a URL or a video file)")
    if not str(uri).isdigit() and not _is_network(str(uri)):
        uri = cfg.resolve(str(uri))
    secret = cam.password.read(cfg.base_dir)
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

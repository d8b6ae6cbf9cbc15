"""Frame sources (Pi camera, OpenCV, image folder, fake) and the capture thread.

One module per backend (:mod:`~edge.sources.picamera2`,
:mod:`~edge.sources.opencv`, :mod:`~edge.sources.folder`,
:mod:`~edge.sources.fake`), each registering its factory under its
``camera.source`` name (:func:`~edge.sources.base.register`);
:func:`open_source` picks the configured one. The names are
:data:`edge.config.SourceName`, the one list the config validates against.

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
* ``live`` is True for a camera or stream (the consumer gets only the newest
  frame) and False for a replay (every frame is delivered, in order).
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

# The backend modules register themselves on import (cheap: no hardware library).
from edge.sources import fake, folder, opencv, picamera2
from edge.sources.base import (
    MAX_REPLAY_FPS,
    NET_TIMEOUT_MS,
    READ_TIMEOUT_S,
    FrameSource,
    open_source,
    redact_uri,
    registered,
)
from edge.sources.capture import CaptureThread, frames
from edge.sources.fake import FakeSource
from edge.sources.folder import FolderSource
from edge.sources.opencv import OpenCVSource, uri_with_password
from edge.sources.picamera2 import Picamera2Source

__all__ = [
    "MAX_REPLAY_FPS",
    "NET_TIMEOUT_MS",
    "READ_TIMEOUT_S",
    "CaptureThread",
    "FakeSource",
    "FolderSource",
    "FrameSource",
    "OpenCVSource",
    "Picamera2Source",
    "fake",
    "folder",
    "frames",
    "open_source",
    "opencv",
    "picamera2",
    "redact_uri",
    "registered",
    "uri_with_password",
]

"""The capture thread (one source, one consumer) and a synchronous reader for tools."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator

from edge.errors import FacegateError
from edge.sources.base import READ_TIMEOUT_S, FrameSource, log
from edge.types import Frame


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

"""The folder source: replays the image files of a folder, sorted by path."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import ImageError, SourceError
from edge.sources.base import Pacer, log, register
from edge.types import Frame

if TYPE_CHECKING:
    from edge.config import Config


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
        self._pacer = Pacer(fps) if fps else None
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


@register("folder")
def from_config(cfg: Config) -> FolderSource:
    """``camera.source = "folder"``: ``camera.path`` replayed recursively."""
    cam = cfg.camera
    return FolderSource(
        cfg.resolve(cam.path),
        fps=cam.fps if cam.realtime else None,
        loop=cam.loop,
        recursive=True,
    )

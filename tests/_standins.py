"""Recognizers without models, for tests of the daemon around them.

:class:`StandInRecognizer` has the interface :func:`edge.daemon.run` needs and
sees no face; :class:`ScriptedRecognizer` sees the face a frame's ``source``
names (``""``: none, ``"?"``: an unknown face, ``"!"``: the pipeline fails).
"""

from __future__ import annotations

import numpy as np

from edge.identity.gallery import Gallery
from edge.types import Box, Detection, FaceResult, Frame, FrameResult, Match


class StandInRecognizer:
    """The recognizer's interface without models: one empty frame result per frame."""

    def __init__(self, gallery: Gallery) -> None:
        self._gallery = gallery
        self.swaps = 0  # gallery reloads handed over by the daemon

    @property
    def gallery(self) -> Gallery:
        return self._gallery

    @property
    def model_sha256(self) -> str:
        return self._gallery.model_sha256

    @property
    def threshold(self) -> float:
        return 0.4

    def set_gallery(self, gallery: Gallery) -> None:
        self._gallery = gallery
        self.swaps += 1

    def process(self, frame: Frame) -> FrameResult:
        return FrameResult(frame.index, frame.timestamp, ())


class ScriptedRecognizer(StandInRecognizer):
    """One face per frame whose identity is ``frame.source``.

    ``spread``: each person stands somewhere else in the frame, so a new face
    never continues an old track; otherwise every face is in the same box.
    """

    def __init__(self, gallery: Gallery, spread: bool = False) -> None:
        super().__init__(gallery)
        self.spread = spread

    def process(self, frame: Frame) -> FrameResult:
        if frame.source == "!":
            raise RuntimeError("the pipeline failed")
        if not frame.source:
            return FrameResult(frame.index, frame.timestamp, ())
        name = None if frame.source == "?" else frame.source
        d = 0.2 if name else 0.7
        x = 10 + 100 * sum(map(ord, frame.source)) if self.spread else 10
        det = Detection(Box(x, 10, 20, 20), 0.9, np.zeros((6, 2), np.float32))
        face = FaceResult(det, Match(name, d, d + 0.2, 1 - d))
        return FrameResult(frame.index, frame.timestamp, (face,))

"""Open-set matching of face embeddings against the gallery, vectorised.

For each face: cosine distances to every enrolled embedding in one matrix
product, the per-person minimum (``np.minimum.reduceat``), then the open-set
rule of :func:`edge.numerics.open_set_decision`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge.gallery import Gallery
from edge.numerics import Confidence, open_set_decision, person_min_distances
from edge.types import Match


class Matcher:
    """A gallery snapshot prepared for fast matching (rebuild it when the gallery changes)."""

    def __init__(
        self, gallery: Gallery, threshold: float, margin: float, confidence: Confidence
    ) -> None:
        self.threshold = threshold
        self.margin = margin
        self.confidence = confidence
        self.names, self._E, self._starts = gallery.matrix()

    def person_distances(self, embeddings: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(F, P) per-person minimum cosine distances for unit embeddings (F, D)."""
        q = np.atleast_2d(embeddings).astype(np.float32, copy=False)
        if not self.names:
            return np.zeros((len(q), 0), np.float32)
        d = np.clip(1.0 - q @ self._E.T, 0.0, 2.0)
        return np.minimum.reduceat(d, self._starts, axis=1).astype(np.float32)

    def match_many(self, embeddings: npt.NDArray[np.float32]) -> list[Match]:
        """The open-set match of each unit embedding (F, D)."""
        pd = self.person_distances(embeddings)
        return [
            open_set_decision(self.names, row, self.threshold, self.margin, self.confidence)
            for row in pd
        ]

    def match(self, embedding: npt.NDArray[np.float32]) -> Match:
        return self.match_many(np.atleast_2d(embedding))[0]


__all__ = ["Matcher", "person_min_distances"]

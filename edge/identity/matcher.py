"""Open-set matching of face embeddings against the gallery, vectorised.

For each face: cosine distances to every enrolled embedding in a matrix
product (in blocks that keep the BLAS on one thread), the per-person minimum
(``np.minimum.reduceat``), then the open-set rule of
:func:`edge.numerics.open_set_decision`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge.identity.gallery import Gallery
from edge.numerics import Confidence, open_set_decision, person_min_distances
from edge.types import Match

# OpenBLAS runs a matrix product of at most 65536 * 4 multiply-adds (its
# GEMM_MULTITHREAD_THRESHOLD default) on the calling thread.
BLAS_SINGLE_THREAD_MACS = 65536 * 4


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
        # The similarity matrix in column blocks small enough for the BLAS to
        # run each on the calling thread. One big product (1,000 people) makes
        # OpenBLAS wake its worker threads, and on a 2-core device busy with
        # TFLite's threads a worker that is not scheduled at once costs a time
        # slice: measured under load, median 8-24 ms instead of 0.1 ms.
        sim = np.empty((len(q), len(self._E)), np.float32)
        step = max(1, BLAS_SINGLE_THREAD_MACS // (q.shape[0] * q.shape[1]))
        for s in range(0, len(self._E), step):
            np.matmul(q, self._E[s : s + step].T, out=sim[:, s : s + step])
        d = np.clip(np.subtract(1.0, sim, out=sim), 0.0, 2.0, out=sim)
        return person_min_distances(d, self._starts)

    def match_many(self, embeddings: npt.NDArray[np.float32]) -> list[Match]:
        """The open-set match of each unit embedding (F, D)."""
        pd = self.person_distances(embeddings)
        return [
            open_set_decision(self.names, row, self.threshold, self.margin, self.confidence)
            for row in pd
        ]

    def match(self, embedding: npt.NDArray[np.float32]) -> Match:
        return self.match_many(np.atleast_2d(embedding))[0]

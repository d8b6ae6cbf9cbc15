"""Matching one face against galleries of 10, 100 and 1,000 people (random embeddings).

Matching time depends only on the gallery's size and the embedding's
dimension, not on what the embeddings show, so seeded random ones stand in.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from tools.bench.common import EMBEDDINGS_PER_PERSON, GALLERY_SIZES, median, time_ms


def bench_matching(dim: int, repeats: int, seed: int = 0) -> dict[int, float]:
    """Median ms to match one face against galleries of 10, 100 and 1,000 people."""
    from edge.identity.gallery import Gallery
    from edge.identity.matcher import Matcher
    from edge.numerics import Confidence, l2_normalize

    rng = np.random.default_rng(seed)
    out = {}
    for n in GALLERY_SIZES:
        g = Gallery("bench", dim)
        for p in range(n):
            g.add(
                f"person{p:04d}",
                rng.standard_normal((EMBEDDINGS_PER_PERSON, dim)).astype(np.float32),
            )
        m = Matcher(g, 0.4, 0.05, Confidence(0.4, 0.04))
        q = l2_normalize(rng.standard_normal((1, dim)).astype(np.float32))
        out[n] = median(time_ms(partial(m.match_many, q), repeats, 5))
    return out

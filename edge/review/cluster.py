"""Recurring strangers as one entry: visits grouped by the embedder's same-person threshold.

Each visit (one unknown track) carries the track's mean embedding. A new
visit joins the cluster whose mean direction is nearest, if that is closer
than the embedder's calibrated threshold (the distance under which the
matcher takes two faces for one person); otherwise it starts its own
cluster. The centroid of a cluster of unit embeddings ``e_1 .. e_k`` is

    c = (e_1 + ... + e_k) / |e_1 + ... + e_k|

and a visit ``v`` joins the cluster minimising ``d(v, c) = 1 - <v, c>`` when
``d(v, c) < threshold``. Comparing with the centroid rather than the nearest
member keeps one stranger who looks a little like another from chaining two
clusters together, and visits are assigned once, when they arrive, so an
entry's id never changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from edge.numerics import l2_normalize

Vector = npt.NDArray[np.float32]


def centroids(members: Iterable[tuple[int, Vector]]) -> dict[int, Vector]:
    """``cluster id -> c`` (the normalised sum of its members' unit embeddings)."""
    sums: dict[int, npt.NDArray[np.float64]] = {}
    for cluster, e in members:
        v = np.asarray(e, np.float64)
        sums[cluster] = sums[cluster] + v if cluster in sums else v.copy()
    return {k: l2_normalize(v.astype(np.float32)) for k, v in sums.items()}


def assign(embedding: Vector, clusters: Mapping[int, Vector], threshold: float) -> int | None:
    """The cluster a visit joins: the nearest centroid closer than ``threshold`` (None: a new one).

    Ties go to the smaller (older) cluster id.
    """
    if not clusters:
        return None
    e = l2_normalize(np.asarray(embedding, np.float32))
    ids = sorted(clusters)
    C = np.stack([clusters[i] for i in ids])
    d = 1.0 - C @ e
    j = int(np.argmin(d))
    return ids[j] if float(d[j]) < threshold else None


__all__ = ["assign", "centroids"]

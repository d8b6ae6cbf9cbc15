"""Held-aside numbers: did fine-tuning help on people it never saw?

Two questions, answered on the embeddings of people never trained on, with
:mod:`tools.stats` (one implementation of each rate):

* **verification**: TAR (genuine pairs accepted) at a FAR of 1e-3 and 1e-4,
  over every pair of the people's photos (:func:`tools.stats.pair_distances`,
  thresholds by :func:`tools.stats.threshold_for_far`);
* **open-set identification** (what a door does): every other person (sorted
  by name) is enrolled from their first photo; their other photos are mated
  searches, every photo of the people not enrolled a stranger's search. The
  threshold is the one that names at most 1% of the strangers (FPIR 1%,
  :func:`tools.stats.threshold_for_far` on the strangers' nearest distance);
  FNIR is the share of mated searches not named correctly at it
  (:func:`tools.stats.identification_rates`, margin 0).

A rate the data cannot resolve (fewer than ``1 / rate`` impostor pairs or
strangers' searches) is None, not a number pretending to be one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tools import stats

F32 = npt.NDArray[np.float32]
TAR_FARS = (1e-3, 1e-4)
FPIR = 0.01


@dataclass(frozen=True)
class HeldOut:
    """The held-aside numbers of one model on one set of people."""

    people: int
    faces: int
    genuine_pairs: int
    impostor_pairs: int
    tar_at_far: dict[str, float | None]  # "0.001" -> TAR
    fnir_at_fpir: float | None  # at FPIR 1%
    fpir: float | None  # the FPIR actually reached (<= 1%)
    enrolled: int
    mated_searches: int
    stranger_searches: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tar_at(genuine: F32, impostor: F32, far: float) -> float | None:
    """Share of genuine pairs accepted at the largest threshold with FAR <= ``far``."""
    if len(genuine) == 0 or len(impostor) * far < 1.0:
        return None
    t = stats.threshold_for_far(impostor, far)
    return 1.0 - stats.frr_at(genuine, t)


def selection_score(
    embeddings: F32, labels: Sequence[str], far: float = 1e-3
) -> tuple[float | None, float]:
    """(TAR, the FAR it was measured at): at ``far``, or at ``1 / #impostor pairs`` (the
    strictest rate the pairs resolve) when there are too few pairs for ``far``."""
    gen, imp = stats.pair_distances(np.asarray(embeddings, dtype=np.float32), list(labels))
    if len(imp) == 0 or len(gen) == 0:
        return None, far
    rate = max(far, 1.0 / len(imp))
    return tar_at(gen, imp, min(rate, 0.5)), rate


def open_set(embeddings: F32, labels: Sequence[str], fpir: float = FPIR) -> dict[str, Any]:
    """FNIR at FPIR ``fpir`` with every other person enrolled from one photo (module docstring)."""
    people = sorted(set(labels))
    rows: dict[str, list[int]] = {p: [] for p in people}
    for i, lab in enumerate(labels):
        rows[lab].append(i)
    multi = [p for p in people if len(rows[p]) >= 2]
    enrolled = multi[::2]
    strangers = [p for p in people if p not in set(enrolled)]
    gallery = np.stack([embeddings[rows[p][0]] for p in enrolled]) if enrolled else None
    mated = [i for p in enrolled for i in rows[p][1:]]
    nonmated = [i for p in strangers for i in rows[p]]
    out: dict[str, Any] = {
        "enrolled": len(enrolled),
        "mated_searches": len(mated),
        "stranger_searches": len(nonmated),
        "fnir": None,
        "fpir": None,
    }
    if gallery is None or len(enrolled) < 2 or not mated or len(nonmated) * fpir < 1.0:
        return out
    probes = mated + nonmated
    d = np.clip(1.0 - embeddings[probes] @ gallery.T, 0.0, 2.0)
    _, d1, _ = stats.nearest_two(d)
    t = stats.threshold_for_far(d1[len(mated) :], fpir)
    point = stats.identification_rates(d, [labels[i] for i in probes], enrolled, [t])[0]
    out.update(fnir=point.fnir, fpir=point.fpir)
    return out


def held_out(embeddings: F32, labels: Sequence[str]) -> HeldOut:
    """Verification and open-set numbers of unit ``embeddings`` with their people's ``labels``."""
    e = np.asarray(embeddings, dtype=np.float32)
    gen, imp = stats.pair_distances(e, list(labels))
    osi = open_set(e, labels)
    return HeldOut(
        people=len(set(labels)),
        faces=len(labels),
        genuine_pairs=len(gen),
        impostor_pairs=len(imp),
        tar_at_far={f"{r:g}": tar_at(gen, imp, r) for r in TAR_FARS},
        fnir_at_fpir=osi["fnir"],
        fpir=osi["fpir"],
        enrolled=osi["enrolled"],
        mated_searches=osi["mated_searches"],
        stranger_searches=osi["stranger_searches"],
    )


def distances(embeddings: F32, labels: Sequence[str]) -> tuple[F32, F32]:
    """Genuine and impostor cosine distances (for the histograms)."""
    return stats.pair_distances(np.asarray(embeddings, dtype=np.float32), list(labels))

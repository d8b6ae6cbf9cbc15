"""The threshold that follows the gallery size: pure functions over the calibration tables.

A stranger at the door is compared with every one of the ``M`` enrolled
embeddings and is wrongly named when any comparison is accepted, so a fixed
per-comparison threshold lets in more strangers as the gallery grows. The
calibration (``tools.calibrate``) stores two tables in the model's manifest:

* the **FAR table**: impostor distance quantiles, ``FAR -> threshold``, from
  FAR 0.5 down to the data's resolution (the rule of three, ``3 / n``);
* the **FRR table**: genuine distance quantiles, ``FRR -> threshold``.

The device turns its target false-positive identification rate (FPIR) into
the per-comparison rate ``f = 1 - (1 - FPIR)^(1/M)`` and reads the threshold
for ``f`` from the FAR table (:func:`operating_point`), and the false-negative
rate expected there from the FRR table. docs/calibration.md states the
formulas and their assumptions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.vision.manifest import RateTable

DEFAULT_TARGET_FPIR = 0.01


# -- the gallery-size formula ----------------------------------------------------------
def per_comparison_far(fpir: float, comparisons: int) -> float:
    """The per-comparison FAR that gives ``fpir`` for a stranger searched against a gallery.

    A stranger is compared with every one of the ``M`` enrolled embeddings
    (``M`` = people x embeddings per person) and is falsely named when *any*
    comparison is accepted. If the ``M`` comparisons were independent, each
    with false-accept rate ``f``::

        FPIR = 1 - (1 - f)^M        =>        f = 1 - (1 - FPIR)^(1/M)

    (about ``FPIR / M`` for small rates). Independence is an assumption: one
    stranger's distances to several people are correlated (a stranger who
    looks like one enrolled person often looks like their relatives), so the
    true FPIR can be higher; ``tools.evaluate`` measures it directly. The
    open-set margin rule only ever rejects more, so it does not invalidate
    the bound. Computed with ``log1p``/``expm1`` to stay exact for tiny rates.
    """
    if not 0.0 < fpir < 1.0:
        raise ValueError(f"fpir must be in (0, 1), got {fpir}")
    if comparisons < 1:
        raise ValueError(f"gallery comparisons must be >= 1, got {comparisons}")
    return float(-math.expm1(math.log1p(-fpir) / comparisons))


def fpir_from_far(far: float, comparisons: int) -> float:
    """Inverse of :func:`per_comparison_far`: ``FPIR = 1 - (1 - far)^M``."""
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    if far == 1.0:
        return 1.0
    return float(-math.expm1(comparisons * math.log1p(-far)))


# -- reading the tables ----------------------------------------------------------------
@dataclass(frozen=True)
class TableThreshold:
    """A threshold read from the FAR table for a requested per-comparison rate."""

    threshold: float
    far: float  # the empirical FAR at the threshold (count / n of its row)
    clamped: bool  # the request was below the table's resolution


def threshold_at_far(table: RateTable, far: float) -> TableThreshold:
    """The threshold for a per-comparison FAR ``far``: the row with the largest rate <= ``far``.

    Between two rows the threshold is taken from the *stricter* one
    (piecewise-constant interpolation, rounding towards smaller thresholds):
    it is the only choice that holds whatever the shape of the impostor
    distribution between the rows, and with ten rows per decade it costs at
    most a factor ``10^0.1 = 1.26`` in FAR. The chosen threshold's empirical
    FAR is ``count / n <= rate <= far``.

    Below the table's last row (the rule-of-three limit ``3 / n``: a sample of
    ``n`` impostor pairs cannot tell smaller rates from zero) the strictest
    row is used and ``clamped`` is set; the FAR there is then only known to be
    about ``3 / n``, more than requested.
    """
    if not 0.0 < far <= 1.0:
        raise ValueError(f"far must be in (0, 1], got {far}")
    best = -1
    for i, r in enumerate(table.rate):
        if r <= far and (best < 0 or r > table.rate[best]):
            best = i
    if best >= 0:
        return TableThreshold(table.threshold[best], table.empirical(best), False)
    strictest = min(range(len(table.rate)), key=lambda i: (table.rate[i], table.threshold[i]))
    return TableThreshold(table.threshold[strictest], table.empirical(strictest), True)


def far_at_threshold(table: RateTable, threshold: float) -> float:
    """An upper estimate of the per-comparison FAR at any ``threshold``, from the FAR table.

    ``FAR(t) = #{d < t} / n`` grows with ``t``, so for the first row with
    ``threshold[j] >= t``: ``FAR(t) <= count[j] / n``. A threshold looser than
    every row gives 1.0: the table says nothing about it.
    """
    for i, t in enumerate(table.threshold):
        if t >= threshold:
            return table.empirical(i)
    return 1.0


def frr_at_threshold(table: RateTable, threshold: float) -> float:
    """An upper estimate of the per-comparison FRR at ``threshold``, from the FRR table.

    ``FRR(t) = #{d >= t} / n`` falls as ``t`` grows, so for the last row with
    ``threshold[j] <= t``: ``FRR(t) <= count[j] / n``. A threshold stricter
    than every row gives 1.0.
    """
    best = 1.0
    for i, t in enumerate(table.threshold):
        if t <= threshold:
            best = table.empirical(i)
    return best


def genuine_quantile(table: RateTable, frr: float) -> float | None:
    """The distance that at most ``frr`` of genuine pairs reach: the row of rate ``<= frr``.

    Of the rows whose rate is at most ``frr`` the one with the smallest
    threshold, i.e. the tightest distance with ``#{d >= t} / n <= frr``;
    None when the table has no such row.
    """
    rows = [i for i, r in enumerate(table.rate) if r <= frr]
    if not rows:
        return None
    return min(table.threshold[i] for i in rows)


# -- the device's operating point ------------------------------------------------------
@dataclass(frozen=True)
class OperatingPoint:
    """The threshold the device uses for its gallery, and what it expects there.

    ``source``: ``"table"`` (from the FAR table for the gallery size),
    ``"config"`` (``[matching] threshold`` given) or ``"fixed"`` (a manifest
    without tables: its single calibrated threshold, as before tables existed).
    ``far``, ``expected_fpir`` and ``expected_fnir`` are None when the
    manifest has no table to estimate them from.
    """

    threshold: float
    comparisons: int  # M: enrolled embeddings a stranger is compared with
    target_fpir: float
    target_far: float  # f = 1 - (1 - target_fpir)^(1/M)
    far: float | None  # per-comparison FAR at the threshold (upper estimate from the table)
    expected_fpir: float | None  # 1 - (1 - far)^M
    expected_fnir: float | None  # per-comparison FRR at the threshold (genuine table)
    source: str
    clamped: bool = False

    @property
    def looser_than_target(self) -> bool:
        """The expected FPIR exceeds the target (a clamped table or a loose config threshold)."""
        return self.expected_fpir is not None and self.expected_fpir > self.target_fpir * 1.000001

    def describe(self) -> str:
        """One line for logs and ``facegate gallery stats``."""

        def pct(x: float | None) -> str:
            return "unknown" if x is None else f"{100 * x:.2f}%"

        how = {
            "table": f"from the FAR table for {self.comparisons} enrolled embedding(s)",
            "config": "set by [matching] threshold",
            "fixed": "fixed: the manifest has no calibration tables",
        }.get(self.source, self.source)
        far = "" if self.far is None else f", per-comparison FAR {self.far:.3g}"
        return (
            f"threshold {self.threshold:.5f} ({how}{far}): expected FPIR "
            f"{pct(self.expected_fpir)} (target {100 * self.target_fpir:g}%), expected FNIR "
            f"{pct(self.expected_fnir)}"
        )


def operating_point(
    threshold: float,
    far_table: RateTable | None,
    frr_table: RateTable | None,
    comparisons: int,
    target_fpir: float = DEFAULT_TARGET_FPIR,
    override: float | None = None,
) -> OperatingPoint:
    """The threshold for a gallery of ``comparisons`` embeddings, and its expected error rates.

    * ``override`` (``[matching] threshold``) wins; the tables only estimate
      what it gives.
    * Else, with a FAR table: ``f = 1 - (1 - target_fpir)^(1/M)``
      (:func:`per_comparison_far`, ``M = max(comparisons, 1)``) and the
      threshold of :func:`threshold_at_far`; the expected FPIR is
      ``1 - (1 - FAR)^M`` with the empirical FAR of that row.
    * Else the manifest's fixed ``threshold`` (old manifests).

    The expected FNIR is the per-comparison FRR at the threshold
    (:func:`frr_at_threshold`): the rate for a person enrolled from one
    photo, ignoring the margin. Several enrolment photos lower it (the
    nearest of them counts); the margin raises it by at most the share of
    genuine searches it was calibrated to give up.
    """
    m = max(int(comparisons), 1)
    f = per_comparison_far(target_fpir, m)
    clamped = False
    if override is not None:
        t, source = float(override), "config"
        far = None if far_table is None else far_at_threshold(far_table, t)
    elif far_table is not None:
        tt = threshold_at_far(far_table, f)
        t, far, clamped, source = tt.threshold, tt.far, tt.clamped, "table"
    else:
        t, far, source = float(threshold), None, "fixed"
    return OperatingPoint(
        threshold=t,
        comparisons=int(comparisons),
        target_fpir=target_fpir,
        target_far=f,
        far=far,
        expected_fpir=None if far is None else fpir_from_far(far, m),
        expected_fnir=None if frr_table is None else frr_at_threshold(frr_table, t),
        source=source,
        clamped=clamped,
    )

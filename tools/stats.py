"""Pure statistics of open-set face matching: thresholds, confidence, DET, FNIR/FPIR.

No I/O and no models here: every function takes arrays of cosine distances
(``d = 1 - cos``, in [0, 2]; a *match* is accepted when ``d < threshold``)
and returns numbers, so each one is tested on synthetic distributions with
exact expected values. ``tools.calibrate`` and ``tools.evaluate`` feed them
real distances; ``docs/calibration.md`` explains the formulas with a worked
example.

Vocabulary:

* *genuine* pair: two faces of the same person; *impostor* pair: different people.
* FMR / FAR(t): fraction of impostor distances ``< t`` (falsely accepted).
* FNMR / FRR(t): fraction of genuine distances ``>= t`` (falsely rejected).
* FPIR(t): fraction of strangers (not enrolled) that the open-set rule names.
* FNIR(t): fraction of enrolled people's probes not named correctly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# One implementation of the gallery-size formula, shared with the device.
from edge.identity.thresholds import fpir_from_far as fpir_from_far
from edge.identity.thresholds import per_comparison_far as per_comparison_far
from edge.vision.manifest import RateTable

FloatArray = npt.NDArray[np.floating]
F64 = npt.NDArray[np.float64]

# floor(far * n) must not lose a whole count to binary rounding (1e-3 * 3000
# is 3.0000000000000004 but 0.003 * 1000 can land just under 3).
_COUNT_EPS = 1e-9

MAX_DISTANCE = 2.0  # the largest cosine distance


def _as_1d(x: FloatArray, what: str) -> F64:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: distances must be finite")
    return a


def _check_rate(rate: float, what: str) -> None:
    if not 0.0 < rate < 1.0:
        raise ValueError(f"{what} must be in (0, 1), got {rate}")


# -- thresholds -----------------------------------------------------------------
def allowed_errors(rate: float, n: int) -> int:
    """``k = floor(rate * n)``: how many of ``n`` trials may err at error rate ``rate``."""
    return math.floor(rate * n + _COUNT_EPS)


def threshold_for_far(impostor: FloatArray, far: float) -> float:
    """The largest threshold ``t`` whose empirical false-accept rate is at most ``far``.

    A pair is accepted when ``d < t``, so the empirical rate is
    ``FAR(t) = #{i : d_i < t} / n``. With the impostor distances sorted
    ascending, ``d_(1) <= ... <= d_(n)``, and ``k = floor(far * n)``::

        t* = d_(k+1)

    because ``#{d_i < t} <= k`` holds exactly for ``t <= d_(k+1)``. Ties: at
    ``t = d_(k+1)`` every impostor *equal* to ``d_(k+1)`` is rejected (the
    comparison is strict), so ties never push the rate above ``far``; when
    ``d_(k) == d_(k+1)`` fewer than ``k`` impostors are accepted. With
    ``k = 0`` the threshold is the smallest impostor distance: no impostor
    of the sample is accepted.
    """
    _check_rate(far, "far")
    d = np.sort(_as_1d(impostor, "impostor"))
    if d.size == 0:
        raise ValueError("no impostor distances: cannot choose a threshold")
    k = allowed_errors(far, d.size)  # k <= n - 1 because far < 1
    return float(d[k])


def stored_threshold(t: float, decimals: int = 5, guard: float = 2e-6) -> float:
    """The threshold as written to a manifest: ``floor((t - guard) * 10^decimals) / 10^decimals``.

    Rounded *down*, never up: ``t = d_(k+1)`` is an impostor distance, and a
    threshold rounded up past it would accept that impostor. The ``guard``
    keeps it below ``t`` by more than float32 rounding can move a distance
    (the device computes ``1 - <a, b>`` of 512-d float32 vectors, which can
    differ from the calibration's value by ~1e-7..1e-6), so the boundary
    impostor stays rejected on the device too. Five decimals are far finer
    than the statistical uncertainty of any threshold.
    """
    scale = 10.0**decimals
    return math.floor((t - guard) * scale) / scale


def far_at(impostor: FloatArray, threshold: float) -> float:
    """Empirical false-accept rate ``#{d_i < t} / n``."""
    d = _as_1d(impostor, "impostor")
    return float(np.mean(d < threshold)) if d.size else 0.0


def frr_at(genuine: FloatArray, threshold: float) -> float:
    """Empirical false-reject rate ``#{d_i >= t} / n``."""
    d = _as_1d(genuine, "genuine")
    return float(np.mean(d >= threshold)) if d.size else 0.0


# -- the calibration tables the device reads -------------------------------------------
def far_levels(n: int, per_decade: int = 10, loosest: float = 0.5) -> list[float]:
    """FAR levels of the table: ``10^(-j / per_decade)`` from ``loosest`` down to ``3 / n``.

    Each level is rounded to 3 significant digits, and the last row is the
    rule-of-three limit ``3 / n`` itself: with ``n`` impostor pairs a smaller
    rate cannot be told apart from zero (0 errors in ``n`` trials bound the
    rate only below ~``3 / n`` at 95%). When ``3 / n`` exceeds the loosest
    level (fewer than 8 pairs) the table has the one row ``min(3 / n, 1)``.
    """
    if n < 1:
        raise ValueError("a FAR table needs impostor distances")
    floor_rate = min(3.0 / n, 1.0)
    out: list[float] = []
    j = 0
    while True:
        r = float(f"{10 ** (-j / per_decade):.3g}")
        j += 1
        if r > loosest:
            continue
        if r < floor_rate * (1 + 1e-9):
            break
        out.append(r)
    out.append(float(f"{floor_rate:.6g}"))
    return sorted(set(out))


FRR_LEVELS = (
    [0.001, 0.002, 0.003, 0.005, 0.0075]
    + [round(0.01 * k, 2) for k in range(1, 31)]
    + [round(0.05 * k, 2) for k in range(7, 20)]
    + [0.99]
)
"""FRR levels of the genuine table: fine where FNIR targets live (1%-30%)."""


def far_table(impostor: FloatArray, per_decade: int = 10) -> RateTable:
    """Impostor distance quantiles: for each FAR level ``r``, :func:`threshold_for_far` at ``r``.

    Row: ``t_r = stored_threshold(d_(k+1))`` with ``k = floor(r n)`` and
    ``count = #{d < t_r} <= k``, at the levels of :func:`far_levels` (ten per
    decade down to ``3 / n``); rows in increasing threshold. Rounded down like
    the manifest's threshold, so each row's rate holds on the device too.
    """
    d = np.sort(_as_1d(impostor, "impostor"))
    if d.size == 0:
        raise ValueError("no impostor distances: cannot build a FAR table")
    rates, ts, counts = [], [], []
    for r in far_levels(int(d.size), per_decade):
        k = min(allowed_errors(r, d.size), d.size - 1)
        t = max(stored_threshold(float(d[k])), 0.0)
        rates.append(r)
        ts.append(t)
        counts.append(int(np.searchsorted(d, t, side="left")))
    return RateTable(int(d.size), tuple(rates), tuple(ts), tuple(counts))


def frr_table(genuine: FloatArray, levels: Sequence[float] = FRR_LEVELS) -> RateTable:
    """Genuine distance quantiles: for each FRR level ``r`` the smallest threshold rejecting <= r.

    A genuine pair is rejected when ``d >= t``, so ``#{d >= t} <= k = floor(r n)``
    holds exactly for ``t > d_(n-k)`` (sorted ascending, 1-based). The row's
    threshold is ``d_(n-k)`` rounded *up* to 5 decimals past a 2e-6 guard
    (the mirror image of :func:`stored_threshold`), and ``count = #{d >= t}``.
    Levels below ``3 / n`` are left out (the data cannot resolve them); rows
    in increasing threshold.
    """
    d = np.sort(_as_1d(genuine, "genuine"))
    n = int(d.size)
    if n == 0:
        raise ValueError("no genuine distances: cannot build an FRR table")
    rows = []
    for r in sorted(set(levels), reverse=True):
        if not 0.0 < r < 1.0 or r < 3.0 / n:
            continue
        k = allowed_errors(r, n)
        t = min(math.ceil((float(d[n - k - 1]) + 2e-6) * 1e5) / 1e5, MAX_DISTANCE)
        rows.append((t, r, n - int(np.searchsorted(d, t, side="left"))))
    if not rows:  # too few pairs for any level: one row at the largest distance
        t = min(math.ceil((float(d[-1]) + 2e-6) * 1e5) / 1e5, MAX_DISTANCE)
        rows.append((t, 1.0, n - int(np.searchsorted(d, t, side="left"))))
    rows.sort()
    return RateTable(
        n, tuple(r for _, r, _ in rows), tuple(t for t, _, _ in rows), tuple(c for _, _, c in rows)
    )


# -- how much the data can say ---------------------------------------------------
def binomial_upper_bound(n: int, errors: int = 0, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on an error rate after ``errors`` in ``n`` trials.

    The rate ``p`` such that ``P(Binomial(n, p) <= errors) = 1 - confidence``.
    For ``errors = 0`` this is exactly ``1 - (1 - confidence)^(1/n)``, which
    for 95% is ~``3 / n`` ("the rule of three"). Solved by bisection on the
    binomial CDF (log-space, ``math.lgamma``), so no scipy is needed.
    """
    if n <= 0:
        return 1.0
    if not 0 <= errors <= n:
        raise ValueError(f"errors must be in [0, {n}], got {errors}")
    alpha = 1.0 - confidence
    if errors == n:
        return 1.0
    if errors == 0:
        return float(-math.expm1(math.log(alpha) / n))

    def cdf(p: float) -> float:
        lp, lq = math.log(p), math.log1p(-p)
        terms = [
            math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(errors + 1)
        ]
        m = max(terms)
        return math.exp(m) * sum(math.exp(t - m) for t in terms)

    lo, hi = errors / n, 1.0
    for _ in range(100):  # the CDF falls monotonically in p
        mid = 0.5 * (lo + hi)
        if mid >= 1.0:
            break
        if cdf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return float(hi)


@dataclass(frozen=True)
class DataCheck:
    """Whether ``n`` impostor pairs can support a requested FAR, and what they do support."""

    ok: bool
    n_impostor: int
    required: int  # ceil(3 / far): the rule of three
    upper_bound: float  # 95% upper bound on the true FAR when the sample shows k errors
    message: str


def check_enough_impostors(n_impostor: int, far: float, errors: int = 0) -> DataCheck:
    """The rule of three: ``n`` impostor pairs with 0 errors bound the FAR only at ~``3/n``.

    To *demonstrate* ``FAR <= far`` at 95% confidence one needs at least
    ``ceil(3 / far)`` impostor pairs (zero observed errors). With fewer, the
    threshold is still the empirical one, but the estimate is worth no more
    than its upper bound; the message says so in numbers.
    """
    _check_rate(far, "far")
    required = math.ceil(3.0 / far - _COUNT_EPS)
    ub = binomial_upper_bound(n_impostor, errors)
    ok = n_impostor >= required
    if ok:
        msg = (
            f"{n_impostor} impostor pairs support FAR {far:g} (rule of three needs {required}); "
            f"95% upper bound on the true FAR at the chosen threshold: {ub:.3g}"
        )
    else:
        msg = (
            f"too few impostor pairs for FAR {far:g}: {n_impostor} < {required} (= 3/FAR). "
            f"With {errors} error(s) in {n_impostor} pairs the true FAR is only known to be "
            f"below {ub:.3g} (95% upper bound), not {far:g}; "
            f"the threshold is the empirical one and should be confirmed on more data"
        )
    return DataCheck(ok, n_impostor, required, ub, msg)


# -- DET ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DetCurve:
    """FMR and FNMR at each threshold of a sweep (all arrays the same length)."""

    thresholds: F64
    fmr: F64
    fnmr: F64


def det_curve(genuine: FloatArray, impostor: FloatArray) -> DetCurve:
    """FMR(t) and FNMR(t) at every distinct observed distance (and beyond the largest).

    ``FMR(t) = #{impostor < t} / n_i``, ``FNMR(t) = #{genuine >= t} / n_g``,
    computed with two ``searchsorted`` calls on sorted arrays.
    """
    g = np.sort(_as_1d(genuine, "genuine"))
    i = np.sort(_as_1d(impostor, "impostor"))
    if g.size == 0 or i.size == 0:
        raise ValueError("DET curve needs genuine and impostor distances")
    ts = np.unique(np.concatenate([g, i, [max(g[-1], i[-1]) + 1e-6]]))
    fmr = np.searchsorted(i, ts, side="left") / i.size
    fnmr = 1.0 - np.searchsorted(g, ts, side="left") / g.size
    return DetCurve(ts, fmr.astype(np.float64), fnmr.astype(np.float64))


def equal_error_rate(curve: DetCurve) -> tuple[float, float]:
    """(EER, threshold): the sweep point where ``max(FMR, FNMR)`` is smallest."""
    worst = np.maximum(curve.fmr, curve.fnmr)
    j = int(np.argmin(worst))
    return float(0.5 * (curve.fmr[j] + curve.fnmr[j])), float(curve.thresholds[j])


# -- calibrated confidence ------------------------------------------------------------
@dataclass(frozen=True)
class LogisticFit:
    """``p(genuine | d) = 1 / (1 + exp((d - midpoint) / scale))``, as fitted."""

    midpoint: float
    scale: float
    iterations: int
    converged: bool
    prior_genuine: float

    def __call__(self, d: FloatArray) -> F64:
        z = np.clip((np.asarray(d, dtype=np.float64) - self.midpoint) / self.scale, -60, 60)
        return np.asarray(1.0 / (1.0 + np.exp(z)), dtype=np.float64)


def _irls(X: F64, y: F64, w: F64, penalty: F64, max_iter: int, tol: float) -> tuple[F64, int, bool]:
    """Weighted logistic regression by Newton's method: ``(beta, iterations, converged)``.

    With ``p = sigmoid(X beta)`` each step solves ``H step = g`` for the
    gradient ``g = X^T (w (y - p)) - penalty * beta`` and the Hessian
    ``H = X^T diag(w p (1 - p)) X + diag(penalty)``, until the largest
    ``|step|`` is below ``tol`` (converged) or after ``max_iter`` steps.
    """
    beta = np.zeros(X.shape[1])
    for iterations in range(1, max_iter + 1):
        eta = np.clip(X @ beta, -30, 30)
        p = 1.0 / (1.0 + np.exp(-eta))
        grad = X.T @ (w * (y - p)) - penalty * beta
        H = (X * (w * p * (1 - p))[:, None]).T @ X + np.diag(penalty)
        step = np.linalg.solve(H, grad)
        beta = beta + step
        if float(np.max(np.abs(step))) < tol:
            return beta, iterations, True
    return beta, max_iter, False


def _targets_and_weights(n_g: int, n_i: int, prior: float, smooth: bool) -> tuple[F64, F64]:
    """Targets (``(n_g+1)/(n_g+2)`` and ``1/(n_i+2)`` when ``smooth``, else 1 and 0) and
    weights (``prior / n_g`` per genuine pair, ``(1 - prior) / n_i`` per impostor pair),
    genuine pairs first."""
    t_pos = (n_g + 1) / (n_g + 2) if smooth else 1.0
    t_neg = 1 / (n_i + 2) if smooth else 0.0
    y = np.concatenate([np.full(n_g, t_pos), np.full(n_i, t_neg)])
    w = np.concatenate([np.full(n_g, prior / n_g), np.full(n_i, (1 - prior) / n_i)])
    return y, w


def fit_confidence(
    genuine: FloatArray,
    impostor: FloatArray,
    prior_genuine: float = 0.5,
    smooth_targets: bool = True,
    ridge: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> LogisticFit:
    """Logistic regression of "genuine" on the distance, fitted by Newton's method (IRLS).

    Model: ``logit p(genuine | d) = a + b d`` (``b < 0``), reported as
    ``midpoint = -a / b`` (where p = 0.5) and ``scale = -1 / b``.

    Weights: there are far more impostor pairs than genuine ones, and the
    raw ratio says nothing about a door (where most faces are enrolled
    people). So the two classes are re-weighted to the stated prior: each
    genuine pair weighs ``prior_genuine / n_g`` and each impostor pair
    ``(1 - prior_genuine) / n_i``. With the default 0.5 the confidence is the
    posterior for a face that is a priori equally likely genuine or not; for
    another prior ``pi`` the midpoint moves by ``scale * ln(pi / (1 - pi))``
    (see docs/calibration.md).

    Targets: a perfect separation of the two samples (common with good
    models and small sets) would make the maximum-likelihood slope infinite
    and the confidence a 0%/100% step, claiming more than ``n`` pairs can
    show. As in Platt scaling (Platt, 1999), the 0/1 labels are replaced by
    ``(n_g + 1) / (n_g + 2)`` for genuine and ``1 / (n_i + 2)`` for impostor
    pairs (Laplace's rule of succession): the curve stays finite, its
    steepness limited by how much data there is, and with thousands of pairs
    the change is negligible. ``ridge`` optionally adds ``ridge/2 * b_s^2``
    (``b_s`` the slope in standardised distance units) to the loss.
    """
    g, i = _as_1d(genuine, "genuine"), _as_1d(impostor, "impostor")
    if g.size == 0 or i.size == 0:
        raise ValueError("confidence fit needs genuine and impostor distances")
    _check_rate(prior_genuine, "prior_genuine")
    x = np.concatenate([g, i])
    y, w = _targets_and_weights(g.size, i.size, prior_genuine, smooth_targets)
    # Standardise for a well-conditioned Newton step; map back at the end.
    mu = float(np.sum(w * x))
    sd = float(np.sqrt(np.sum(w * (x - mu) ** 2)))
    sd = sd if sd > 1e-12 else 1.0
    X = np.stack([np.ones_like(x), (x - mu) / sd], axis=1)
    beta, iterations, converged = _irls(X, y, w, np.array([0.0, ridge]), max_iter, tol)
    a_s, b_s = float(beta[0]), float(beta[1])
    if b_s >= 0:
        raise ValueError(
            "confidence fit: genuine distances are not smaller than impostor ones "
            "(is the model or the labelling broken?)"
        )
    b, a = b_s / sd, a_s - b_s * mu / sd
    return LogisticFit(
        midpoint=-a / b,
        scale=-1.0 / b,
        iterations=iterations,
        converged=converged,
        prior_genuine=prior_genuine,
    )


def shift_for_prior(midpoint: float, scale: float, prior_from: float, prior_to: float) -> float:
    """The midpoint for another prior: ``m' = m + scale * (logit(pi') - logit(pi))``.

    ``logit p = (m - d) / scale`` plus the log prior odds, so changing the
    prior adds ``ln(pi'/(1-pi')) - ln(pi/(1-pi))`` to the logit at every
    distance, i.e. moves the midpoint by ``scale`` times that.
    """
    _check_rate(prior_from, "prior_from")
    _check_rate(prior_to, "prior_to")

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    return midpoint + scale * (logit(prior_to) - logit(prior_from))


# -- margin --------------------------------------------------------------------------
def choose_margin(
    gaps: FloatArray, max_loss: float = 0.01, default: float = 0.05, cap: float = 0.10
) -> float:
    """The margin of the open-set rule, from the gaps of correctly-ranked genuine searches.

    ``gaps[j] = d2 - d1`` for a genuine probe whose nearest person is the
    right one (``d1``) and would be accepted by the threshold; ``d2`` is the
    nearest *other* person. The rule ``d2 - d1 >= margin`` refuses to name a
    face when two people are about equally close; it should cost few genuine
    matches. We take the largest margin that rejects at most ``max_loss`` of
    those probes (the ``max_loss`` quantile of the gaps, lower interpolation),
    capped at ``cap``; with no such probes, ``default``.
    """
    g = _as_1d(gaps, "gaps")
    if g.size == 0:
        return float(default)
    k = allowed_errors(max_loss, g.size)
    srt = np.sort(g)
    # Rejected when gap < margin: margin = srt[k] rejects at most k probes.
    m = float(srt[min(k, g.size - 1)])
    return float(min(max(m, 0.0), cap))


# -- open-set identification ------------------------------------------------------------
def nearest_two(person_distances: FloatArray) -> tuple[npt.NDArray[np.intp], F64, F64]:
    """Per probe row: index of the nearest person, its distance ``d1``, and ``d2``.

    ``d2`` is the second-smallest distance (``inf`` with a single person).
    """
    D = np.atleast_2d(np.asarray(person_distances, dtype=np.float64))
    if D.shape[1] == 0:
        raise ValueError("identification needs at least one enrolled person")
    i1 = np.argmin(D, axis=1)
    d1 = D[np.arange(len(D)), i1]
    single = D.shape[1] == 1
    d2 = np.full(len(D), np.inf) if single else np.partition(D, 1, axis=1)[:, 1]
    return i1.astype(np.intp), d1, d2


@dataclass(frozen=True)
class IdentificationPoint:
    """Open-set identification rates at one threshold.

    ``fnir``: mated searches (the probe's person is enrolled) that did not
    return that person, counting faces the detector missed as misses (as
    NIST does for failures to make a template). ``fpir``: non-mated searches
    (strangers) that returned any name; a stranger whose face was not
    detected named no one. ``rank1``: mated searches whose nearest person is
    the right one, whatever the threshold (closed-set rank-1 rate, also over
    all mated probes including undetected ones).
    """

    threshold: float
    fnir: float
    fpir: float
    rank1: float
    mated: int
    nonmated: int
    false_negatives: int
    false_positives: int


def identification_rates(
    person_distances: FloatArray,
    probe_labels: list[str],
    gallery_names: list[str],
    thresholds: FloatArray | Sequence[float],
    margin: float = 0.0,
    undetected_mated: int = 0,
    undetected_nonmated: int = 0,
) -> list[IdentificationPoint]:
    """FNIR, FPIR and rank-1 over a threshold sweep, with the device's open-set rule.

    ``person_distances`` is (P, G): probe ``p``'s minimum cosine distance to
    enrolled person ``g`` (``gallery_names[g]``). The rule is the device's
    (:func:`edge.numerics.open_set_decision`): the nearest person is named
    when ``d1 < t`` and ``d2 - d1 >= margin``. A probe is mated when its
    label is in ``gallery_names``. Undetected probes enter the denominators
    (mated ones as misses).
    """
    D = np.atleast_2d(np.asarray(person_distances, dtype=np.float64))
    if D.shape[0] != len(probe_labels):
        raise ValueError(f"{D.shape[0]} distance rows for {len(probe_labels)} probe labels")
    if D.shape[1] != len(gallery_names):
        raise ValueError(f"{D.shape[1]} distance columns for {len(gallery_names)} names")
    enrolled = {n: j for j, n in enumerate(gallery_names)}
    truth = np.array([enrolled.get(lab, -1) for lab in probe_labels], dtype=np.intp)
    mated = truth >= 0
    if len(probe_labels):
        i1, d1, d2 = nearest_two(D)
    else:
        i1, d1, d2 = np.zeros(0, np.intp), np.zeros(0), np.zeros(0)
    clear = (d2 - d1) >= margin
    n_mated = int(mated.sum()) + undetected_mated
    n_non = int((~mated).sum()) + undetected_nonmated
    correct_rank1 = mated & (i1 == truth)
    rank1 = float(correct_rank1.sum() / n_mated) if n_mated else float("nan")
    out = []
    for t in np.asarray(thresholds, dtype=np.float64).reshape(-1):
        named = (d1 < t) & clear
        fn = int(n_mated - (named & correct_rank1).sum())
        fp = int((named & ~mated).sum())
        out.append(
            IdentificationPoint(
                threshold=float(t),
                fnir=fn / n_mated if n_mated else float("nan"),
                fpir=fp / n_non if n_non else float("nan"),
                rank1=rank1,
                mated=n_mated,
                nonmated=n_non,
                false_negatives=fn,
                false_positives=fp,
            )
        )
    return out


# -- pairs from labelled embeddings ------------------------------------------------------
def pair_distances(
    embeddings: FloatArray, labels: list[str]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """All genuine and impostor cosine distances among labelled unit embeddings.

    Each unordered pair ``i < j`` once: genuine when ``labels[i] == labels[j]``.
    """
    E = np.asarray(embeddings, dtype=np.float32)
    if E.ndim != 2 or len(E) != len(labels):
        raise ValueError("embeddings must be (N, D) with one label each")
    lab = np.asarray(labels)
    D = np.clip(1.0 - E @ E.T, 0.0, 2.0)
    iu, ju = np.triu_indices(len(E), k=1)
    same = lab[iu] == lab[ju]
    d = D[iu, ju]
    return d[same].astype(np.float32), d[~same].astype(np.float32)


def leave_one_out_gaps(
    embeddings: FloatArray, labels: list[str], threshold: float
) -> npt.NDArray[np.float64]:
    """``d2 - d1`` for each leave-one-out genuine search that the threshold would accept.

    Every face in turn is a probe against all *other* faces, grouped per
    person (minimum distance); only faces whose person still has another
    face count, and only those whose nearest person is their own with
    ``d1 < threshold`` (the searches the margin could wrongly reject).
    """
    E = np.asarray(embeddings, dtype=np.float32)
    names = sorted(set(labels))
    if len(names) < 2:
        return np.zeros(0)
    lab_idx = np.array([names.index(x) for x in labels])
    D = np.clip(1.0 - E @ E.T, 0.0, 2.0).astype(np.float64)
    np.fill_diagonal(D, np.inf)
    P = np.full((len(E), len(names)), np.inf)
    for j in range(len(names)):
        cols = lab_idx == j
        P[:, j] = D[:, cols].min(axis=1)
    i1, d1, d2 = nearest_two(P)
    ok = (i1 == lab_idx) & (d1 < threshold) & np.isfinite(d1)
    return np.asarray((d2 - d1)[ok], dtype=np.float64)

"""The pure statistics of calibration and evaluation, on synthetic distances with exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools import stats


# -- threshold for a FAR ----------------------------------------------------------------
def test_threshold_is_the_k_plus_first_smallest_impostor() -> None:
    imp = np.arange(1, 1001) / 1000.0  # 0.001, 0.002, ..., 1.000
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(imp)
    # k = floor(0.01 * 1000) = 10 -> t = d_(11) = 0.011: exactly 10 impostors are < t.
    t = stats.threshold_for_far(shuffled, 0.01)
    assert t == pytest.approx(0.011)
    assert stats.far_at(shuffled, t) == pytest.approx(0.01)
    # Any larger threshold lets an 11th impostor in.
    assert stats.far_at(shuffled, np.nextafter(t, 1.0)) > 0.01


def test_threshold_with_zero_allowed_errors_is_the_smallest_impostor() -> None:
    imp = np.array([0.9, 0.7, 0.8, 0.75])
    assert stats.threshold_for_far(imp, 0.1) == 0.7  # floor(0.4) = 0
    assert stats.far_at(imp, 0.7) == 0.0


def test_threshold_ties_never_exceed_the_far() -> None:
    imp = np.array([0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    # k = floor(0.3 * 10) = 3; d_(4) = 0.5; strict comparison accepts none of the ties.
    t = stats.threshold_for_far(imp, 0.3)
    assert t == 0.5
    assert stats.far_at(imp, t) == 0.0
    assert stats.far_at(imp, np.nextafter(t, 1.0)) == 0.4  # just above: all four ties


def test_stored_threshold_rounds_down_with_a_guard() -> None:
    assert stats.stored_threshold(0.32487863302230835) == 0.32487
    assert stats.stored_threshold(0.5) == 0.49999  # an exact boundary still moves below
    assert stats.stored_threshold(0.123456789, decimals=3) == 0.123
    imp = np.array([0.32487863302230835, 0.5, 0.9])
    t = stats.stored_threshold(stats.threshold_for_far(imp, 0.1))
    # float32 noise on the device cannot bring the boundary impostor under the threshold
    assert np.float32(imp[0]) - np.float32(1e-6) > t


def test_allowed_errors_is_robust_to_binary_rounding() -> None:
    assert stats.allowed_errors(1e-3, 3000) == 3
    assert stats.allowed_errors(0.003, 1000) == 3
    assert stats.allowed_errors(0.07, 100) == 7  # 0.07 * 100 = 7.000000000000001


def test_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        stats.threshold_for_far(np.array([]), 0.01)
    with pytest.raises(ValueError):
        stats.threshold_for_far(np.array([0.5]), 0.0)
    with pytest.raises(ValueError):
        stats.threshold_for_far(np.array([0.5, np.nan]), 0.1)


# -- gallery-size correction ----------------------------------------------------------
def test_per_comparison_far_inverts_the_gallery_formula() -> None:
    f = stats.per_comparison_far(0.01, 100)
    assert f == pytest.approx(1 - 0.99 ** (1 / 100), rel=1e-12)
    assert stats.fpir_from_far(f, 100) == pytest.approx(0.01, rel=1e-12)
    assert stats.per_comparison_far(0.05, 1) == pytest.approx(0.05)
    # Small rates: f ~ FPIR / M, a bit larger.
    tiny = stats.per_comparison_far(1e-6, 1000)
    assert 1e-9 <= tiny <= 1.0000006e-9


def test_gallery_correction_matches_simulated_independent_strangers() -> None:
    rng = np.random.default_rng(1)
    M, fpir = 20, 0.1
    f = stats.per_comparison_far(fpir, M)
    # Independent uniform impostor distances: FAR(t) = t, so the threshold is f.
    hits = rng.random((20000, M)) < f
    assert np.mean(hits.any(axis=1)) == pytest.approx(fpir, abs=0.01)


def test_gallery_correction_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        stats.per_comparison_far(0.01, 0)


# -- too few data ---------------------------------------------------------------------
def test_rule_of_three_warning() -> None:
    few = stats.check_enough_impostors(1000, 1e-3)
    assert not few.ok
    assert few.required == 3000
    assert few.upper_bound == pytest.approx(1 - 0.05 ** (1 / 1000))
    assert few.upper_bound == pytest.approx(3 / 1000, rel=0.01)
    assert "too few" in few.message and "3000" in few.message
    enough = stats.check_enough_impostors(3000, 1e-3)
    assert enough.ok


def test_binomial_upper_bound_with_errors_matches_its_definition() -> None:
    n, k = 200, 3
    ub = stats.binomial_upper_bound(n, k)
    cdf = sum(math.comb(n, i) * ub**i * (1 - ub) ** (n - i) for i in range(k + 1))
    assert cdf == pytest.approx(0.05, abs=1e-6)
    assert ub > k / n


# -- DET ---------------------------------------------------------------------------
def test_det_curve_rates() -> None:
    gen = np.array([0.1, 0.2, 0.3, 0.4])
    imp = np.array([0.35, 0.5, 0.6, 0.7])
    c = stats.det_curve(gen, imp)
    j = int(np.searchsorted(c.thresholds, 0.35))
    assert c.thresholds[j] == 0.35
    assert c.fmr[j] == 0.0  # no impostor < 0.35
    assert c.fnmr[j] == 0.25  # genuine 0.4 >= 0.35
    assert np.all(np.diff(c.fmr) >= 0) and np.all(np.diff(c.fnmr) <= 0)
    assert c.fmr[-1] == 1.0 and c.fnmr[-1] == 0.0
    eer, t = stats.equal_error_rate(c)
    assert eer == pytest.approx(0.125)
    assert c.fmr[np.searchsorted(c.thresholds, t)] <= 0.25


# -- confidence ------------------------------------------------------------------------
def test_confidence_fit_recovers_a_known_logistic() -> None:
    # Sample d ~ uniform, label ~ Bernoulli(logistic(midpoint 0.6, scale 0.05)):
    # the genuine-vs-impostor class split of that sample, equally weighted, is the same model
    # once each class is weighted by its share (prior = fraction genuine).
    rng = np.random.default_rng(2)
    d = rng.uniform(0.2, 1.0, 200_000)
    p = 1 / (1 + np.exp((d - 0.6) / 0.05))
    y = rng.random(d.size) < p
    prior = float(y.mean())
    fit = stats.fit_confidence(d[y], d[~y], prior_genuine=prior, smooth_targets=False)
    assert fit.converged
    assert fit.midpoint == pytest.approx(0.6, abs=0.005)
    assert fit.scale == pytest.approx(0.05, rel=0.05)
    assert fit(np.array([fit.midpoint]))[0] == pytest.approx(0.5)


def test_balanced_confidence_of_two_gaussians_has_the_analytic_midpoint() -> None:
    # Equal-variance Gaussians N(0.3, s) vs N(0.7, s): with equal priors the exact posterior is
    # logistic with midpoint 0.5 and scale s^2 / (0.7 - 0.3).
    rng = np.random.default_rng(3)
    s = 0.08
    gen = rng.normal(0.3, s, 50_000)
    imp = rng.normal(0.7, s, 400_000)  # 8x more impostors: the balancing must undo that
    fit = stats.fit_confidence(gen, imp, prior_genuine=0.5, smooth_targets=False)
    assert fit.midpoint == pytest.approx(0.5, abs=0.003)
    assert fit.scale == pytest.approx(s * s / 0.4, rel=0.05)


def test_confidence_fit_stays_finite_when_classes_separate() -> None:
    # Perfectly separated samples: the unsmoothed slope would diverge. With Platt's targets
    # the fit is finite, and more data of the same shape earn a steeper (surer) curve.
    gen, imp = np.array([0.1, 0.2, 0.25]), np.array([0.6, 0.7, 0.9])
    scales = []
    for reps in (1, 10, 100):
        fit = stats.fit_confidence(np.tile(gen, reps), np.tile(imp, reps))
        assert fit.converged
        assert 0.25 < fit.midpoint < 0.6
        assert fit(np.array([0.1]))[0] > 0.5 > fit(np.array([0.9]))[0]
        scales.append(fit.scale)
    assert 0 < scales[2] < scales[1] < scales[0] < np.inf


def test_confidence_fit_refuses_inverted_data() -> None:
    with pytest.raises(ValueError):
        stats.fit_confidence(np.array([0.8, 0.9]), np.array([0.1, 0.2]))


def test_prior_shift_moves_the_midpoint_by_scale_times_log_odds() -> None:
    m = stats.shift_for_prior(0.5, 0.05, 0.5, 0.9)
    assert m == pytest.approx(0.5 + 0.05 * math.log(9))


# -- margin and identification ------------------------------------------------------------
def test_margin_is_the_loss_quantile_of_gaps() -> None:
    gaps = np.arange(100) / 1000.0  # 0.000 .. 0.099
    assert stats.choose_margin(gaps, max_loss=0.05) == pytest.approx(0.005)
    assert stats.choose_margin(gaps, max_loss=0.5) == pytest.approx(0.05)
    assert stats.choose_margin(gaps, max_loss=0.99, cap=0.08) == 0.08
    assert stats.choose_margin(np.array([]), default=0.03) == 0.03


def test_identification_rates_count_each_kind_of_error() -> None:
    names = ["ann", "bob", "cat"]
    D = np.array(
        [
            [0.20, 0.80, 0.90],  # ann, clear: named ann below t
            [0.70, 0.30, 0.32],  # bob, but cat is within the margin: refused
            [0.25, 0.90, 0.95],  # cat, nearest is ann: wrong person (rank-1 miss)
            [0.90, 0.85, 0.80],  # stranger, far from everyone
            [0.90, 0.35, 0.80],  # stranger who looks like bob
        ]
    )
    labels = ["ann", "bob", "cat", "zed", "yan"]
    pts = stats.identification_rates(
        D, labels, names, [0.3, 0.4], margin=0.05, undetected_mated=1, undetected_nonmated=1
    )
    p30, p40 = pts
    assert (p30.mated, p30.nonmated) == (4, 3)
    assert p30.rank1 == pytest.approx(2 / 4)
    assert p30.false_negatives == 3 and p30.fnir == pytest.approx(3 / 4)  # bob, cat, undetected
    assert p30.false_positives == 0
    assert p40.false_positives == 1 and p40.fpir == pytest.approx(1 / 3)  # yan named bob
    assert p40.false_negatives == 3


def test_pair_distances_and_leave_one_out_gaps() -> None:
    e = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0.6, 0.8], [0, 0, 1]], np.float32)
    labels = ["a", "a", "b", "b", "c"]
    gen, imp = stats.pair_distances(e, labels)
    assert sorted(np.round(gen, 6)) == pytest.approx([0.2, 0.4])
    assert len(imp) == 10 - 2
    gaps = stats.leave_one_out_gaps(e, labels, threshold=0.5)
    # Face 0 (a): own 0.2, b at 1.0 -> gap 0.8. Face 1 (a): own 0.2, b at 0.4 -> gap 0.2.
    # Face 2 (b): own 0.4 ties with a at 0.4 and a comes first -> not a correct search.
    # Face 3 (b): c is nearer (0.2). Face 4 (c): its only face, so no genuine search.
    assert gaps == pytest.approx([0.8, 0.2])
    assert stats.leave_one_out_gaps(e, labels, threshold=0.1).size == 0


# -- the calibration tables -------------------------------------------------------------
def test_far_levels_reach_the_rule_of_three_limit() -> None:
    lv = stats.far_levels(1000)
    assert lv[0] == 0.003 and lv[-1] == 0.398  # 3/n ... 10^-0.4
    assert lv[1] == 0.00316  # 10^-2.5, three significant digits
    assert len(lv) == 23  # 10^-0.4 ... 10^-2.5 (22 levels) and 3/n
    assert stats.far_levels(4) == [0.75]  # too few pairs: the one row 3/n


def test_far_table_on_exact_synthetic_distances() -> None:
    d = np.arange(1, 1001) / 1000.0  # 0.001, 0.002, ..., 1.000
    t = stats.far_table(d[::-1])  # order does not matter
    assert t.n == 1000 and t.rate[0] == 0.003 and t.rate[-1] == 0.398
    row = t.rate.index(0.01)
    # k = floor(0.01 * 1000) = 10: t = d_(11) = 0.011, stored rounded down past the guard.
    assert t.threshold[row] == 0.01099 and t.count[row] == 10
    # The rule-of-three row: k = 3, t = d_(4) = 0.004 -> 0.00399, 3 impostors below it.
    assert (t.threshold[0], t.count[0]) == (0.00399, 3)
    assert all(c / t.n <= r for r, c in zip(t.rate, t.count, strict=True))
    assert list(t.threshold) == sorted(t.threshold)


def test_frr_table_on_exact_synthetic_distances() -> None:
    g = np.arange(1, 101) / 100.0  # 0.01 ... 1.00
    t = stats.frr_table(g)
    assert min(t.rate) >= 0.03  # levels below 3/n are left out
    row = t.rate.index(0.1)
    # k = 10: the threshold just above d_(90) = 0.90; 0.91 ... 1.00 are rejected.
    assert t.threshold[row] == 0.90001 and t.count[row] == 10
    row = t.rate.index(0.5)
    assert t.threshold[row] == 0.50001 and t.count[row] == 50
    assert all(c / t.n <= r for r, c in zip(t.rate, t.count, strict=True))
    assert list(t.threshold) == sorted(t.threshold)


def test_tables_feed_the_device_rule() -> None:
    from edge.identity.thresholds import operating_point

    rng = np.random.default_rng(3)
    imp = rng.normal(0.9, 0.1, 200_000)
    gen = rng.normal(0.3, 0.08, 5_000)
    far_t, frr_t = stats.far_table(imp), stats.frr_table(gen)
    for m in (1, 10, 100):
        p = operating_point(0.5, far_t, frr_t, m, 0.01)
        # Never looser than asked: the empirical FAR at the chosen threshold <= f.
        assert not p.clamped and stats.far_at(imp, p.threshold) <= p.target_far
        assert p.expected_fpir is not None and p.expected_fpir <= 0.01
        # The FNIR estimate is an upper bound of the empirical FRR there.
        assert p.expected_fnir is not None and stats.frr_at(gen, p.threshold) <= p.expected_fnir
    # 1,000 embeddings need f = 1.005e-5, below 3/n = 1.5e-5: the strictest row, and it says so.
    p = operating_point(0.5, far_t, frr_t, 1000, 0.01)
    assert p.clamped and p.far == pytest.approx(1.5e-5)
    assert stats.far_at(imp, p.threshold) <= 1.5e-5 and p.looser_than_target


@pytest.mark.parametrize(
    ("n", "k", "expected"),
    [  # one-sided 95% Clopper-Pearson upper bounds (the beta quantile B(0.95; k+1, n-k))
        (10, 1, 0.3941633024),
        (100, 5, 0.1022533776),
        (1224, 14, 0.0178234825),
        (185, 45, 0.3007308930),
        (30, 0, 0.0950338529),
        (1000, 10, 0.0169031751),
    ],
)
def test_clopper_pearson_known_values(n: int, k: int, expected: float) -> None:
    assert stats.binomial_upper_bound(n, k) == pytest.approx(expected, abs=1e-9)

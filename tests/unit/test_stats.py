"""Tests of mtdqn.evaluation.stats against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from mtdqn.evaluation import stats


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        ([1.0, 2.0, 3.0], 2.0),  # n=3: int(0.75) = 0 cut, plain mean
        ([4.0, 1.0, 3.0, 2.0], 2.5),  # n=4: drop 1 each side -> mean(2, 3)
        ([0, 0, 0, 10, 10, 100], 5.0),  # n=6: drop 1 each side -> mean(0, 0, 10, 10)
        ([8, 7, 6, 5, 4, 3, 2, 1], 4.5),  # n=8: drop 2 each side -> mean(3, 4, 5, 6)
        ([[0.2, 0.4], [0.5, 0.6], [0.9, 1.3]], 0.6),  # 2-D: flattened -> mean(0.4, 0.5, 0.6, 0.9)
        ([7.0], 7.0),
    ],
)
def test_iqm_hand_computed(x: list[float], expected: float) -> None:
    assert stats.iqm(x) == pytest.approx(expected)


def test_iqm_matches_scipy_trim_mean() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n in range(1, 30):
        x = rng.normal(size=n) ** 3
        assert stats.iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25, axis=None))
    m = rng.normal(size=(5, 7))
    assert stats.iqm(m) == pytest.approx(scipy_stats.trim_mean(m, 0.25, axis=None))


def test_mean_median_empty_is_nan() -> None:
    assert np.isnan(stats.iqm([])) and np.isnan(stats.mean([])) and np.isnan(stats.median([]))
    assert stats.median([[1.0, 9.0], [2.0, 3.0]]) == 2.5


def test_bootstrap_ci_hand_computed_two_points() -> None:
    # Resampled means of {0, 1} are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: the 2.5% / 97.5% points are 0 and 1.
    assert stats.bootstrap_ci([0.0, 1.0], stats.mean, n_boot=2000) == (0.0, 1.0)
    assert stats.bootstrap_ci([3.0, 3.0, 3.0], stats.iqm) == (3.0, 3.0)
    assert stats.bootstrap_ci([5.0], stats.median) == (5.0, 5.0)
    assert all(np.isnan(stats.bootstrap_ci([], stats.mean)))


def test_bootstrap_ci_brackets_and_is_reproducible() -> None:
    x = np.random.default_rng(0).normal(loc=2.0, size=40)
    low, high = stats.bootstrap_ci(x, stats.mean, n_boot=1000, seed=3)
    assert low < np.mean(x) < high
    assert (low, high) == stats.bootstrap_ci(x, stats.mean, n_boot=1000, seed=3)
    # the vectorized path for the module's own statistics equals a plain callable
    assert stats.bootstrap_ci(x, stats.iqm, n_boot=500, seed=1) == pytest.approx(
        stats.bootstrap_ci(x, lambda a: stats.iqm(a), n_boot=500, seed=1)
    )
    low50, high50 = stats.bootstrap_ci(x, stats.mean, ci=0.5, n_boot=1000, seed=3)
    assert low < low50 < high50 < high


def test_bootstrap_ci_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1.0, 2.0], stats.mean, ci=1.5)
    with pytest.raises(ValueError):
        stats.stratified_bootstrap_ci([1.0, 2.0], stats.mean, backend="torch")


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_stratified_bootstrap_resamples_within_tasks(backend: str) -> None:
    # Each task's runs are constant: every stratified resample has the same mean (an iid one would not).
    scores = np.array([[1.0, 5.0], [1.0, 5.0], [1.0, 5.0]])
    assert stats.stratified_bootstrap_ci(scores, stats.mean, backend=backend) == pytest.approx((3.0, 3.0))
    # Only task 0 varies ({0, 1}); task 1 is 10: resampled means are 5, 5.25 or 5.5.
    scores = np.array([[0.0, 10.0], [1.0, 10.0]])
    assert stats.stratified_bootstrap_ci(scores, stats.mean, backend=backend) == pytest.approx((5.0, 5.5))


def test_stratified_bootstrap_draws_each_tasks_runs_independently() -> None:
    # Runs [0, 1] and [1, 0]: every whole run averages 0.5, so drawing the same run indices for every task would
    # give a CI of [0.5, 0.5]. Drawn per task, each task's mean is 0, 0.5 or 1 (1/4, 1/2, 1/4) and their average
    # is 0 or 1 with probability 1/16 each (> 2.5%): the 95% CI is [0, 1]. No rliable needed.
    scores = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert stats.stratified_bootstrap_ci(scores, stats.mean, backend="numpy") == pytest.approx((0.0, 1.0))


def test_stratified_bootstrap_1d_and_single_run() -> None:
    x = np.array([0.0, 1.0])
    assert stats.stratified_bootstrap_ci(x, stats.mean, backend="numpy") == stats.bootstrap_ci(x, stats.mean)
    assert stats.stratified_bootstrap_ci([[2.0, 4.0]], stats.mean) == (3.0, 3.0)


def test_stratified_numpy_agrees_with_rliable() -> None:
    if not stats.rliable_available():
        pytest.skip(f"rliable not importable: {stats.rliable_import_error()}")
    scores = np.random.default_rng(7).gamma(2.0, 0.5, size=(10, 5))
    for fn in (stats.iqm, stats.mean, stats.median):
        lo_np, hi_np = stats.stratified_bootstrap_ci(scores, fn, n_boot=2000, seed=0, backend="numpy")
        lo_rl, hi_rl = stats.stratified_bootstrap_ci(scores, fn, n_boot=2000, seed=0, backend="rliable")
        tol = 0.1 * (hi_np - lo_np)  # a 2.5% quantile of 2000 resamples is within ~0.015 widths (1 s.e.)
        assert lo_rl == pytest.approx(lo_np, abs=tol) and hi_rl == pytest.approx(hi_np, abs=tol)
        assert lo_rl <= fn(scores) <= hi_rl


def test_rliable_backend_global_rng_is_restored() -> None:
    if not stats.rliable_available():
        pytest.skip(f"rliable not importable: {stats.rliable_import_error()}")
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    stats.stratified_bootstrap_ci(np.ones((3, 2)) * [[1], [2], [3]], stats.mean, n_boot=50, backend="rliable")
    assert np.random.random() == expected


def test_aggregate_hand_computed() -> None:
    scores = np.array([[0.2, 0.4], [0.5, 0.6], [0.9, 1.3]])  # sorted: 0.2 0.4 0.5 0.6 0.9 1.3
    agg = stats.aggregate(scores, n_boot=500)
    assert agg["iqm"] == pytest.approx(0.6)
    assert agg["mean"] == pytest.approx(3.9 / 6)
    assert agg["median"] == pytest.approx(0.55)
    for name in ("iqm", "mean", "median"):
        low, high = agg[f"{name}_ci"]
        assert low <= agg[name] <= high and low < high


def test_performance_profile_hand_computed() -> None:
    profile = stats.performance_profile([0.1, 0.5, 0.9, 1.2], [0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(profile, [1.0, 0.5, 0.25, 0.0])  # strictly greater than tau
    np.testing.assert_allclose(stats.performance_profile([[0.0, 1.0], [2.0, 3.0]], [0.5]), [0.75])


def test_area_under_curve_hand_computed() -> None:
    assert stats.area_under_curve([0, 10, 30], [0.0, 1.0, 1.0]) == pytest.approx(25 / 30)
    assert stats.area_under_curve([30, 0, 10], [1.0, 0.0, 1.0]) == pytest.approx(25 / 30)  # unsorted input
    assert stats.area_under_curve([100, 200], [2.0, 2.0]) == pytest.approx(2.0)
    assert stats.area_under_curve([5], [0.7]) == pytest.approx(0.7)
    assert np.isnan(stats.area_under_curve([], []))
    with pytest.raises(ValueError):
        stats.area_under_curve([0, 1], [1.0])


def test_bootstrap_mean_band_ignores_nan() -> None:
    curves = np.array([[0.0, 1.0, np.nan, np.nan], [2.0, 3.0, 4.0, np.nan]])
    mu, low, high = stats.bootstrap_mean_band(curves, n_boot=500)
    np.testing.assert_allclose(mu[:3], [1.0, 2.0, 4.0])
    assert np.isnan(mu[3]) and np.isnan(low[3]) and np.isnan(high[3])
    np.testing.assert_allclose([low[0], high[0]], [0.0, 2.0])
    np.testing.assert_allclose([low[2], high[2]], [4.0, 4.0])


def test_bootstrap_diff_ci_hand_computed() -> None:
    # constant samples: every resample gives the same difference
    assert stats.bootstrap_diff_ci([2.0, 2.0], [0.5, 0.5, 0.5]) == (1.5, 1.5)
    # x = {0, 1} (means 0, 0.5, 1 with prob 1/4, 1/2, 1/4) minus a constant 1: the 95% interval spans [-1, 0]
    assert stats.bootstrap_diff_ci([0.0, 1.0], [1.0, 1.0], n_boot=4000) == (-1.0, 0.0)
    lo, hi = stats.bootstrap_diff_ci([0.8, 0.85, 0.9], [0.6, 0.7, 0.65], n_boot=4000)
    assert 0.0 < lo < 0.2 < hi < 0.3  # disjoint samples: the difference's CI excludes 0
    with pytest.raises(ValueError, match="ci="):
        stats.bootstrap_diff_ci([1.0], [1.0], ci=1.5)


def test_probability_of_improvement_hand_computed() -> None:
    inf = float("inf")
    assert stats.probability_of_improvement([1.0, 2.0], [3.0, 4.0]) == 1.0
    assert stats.probability_of_improvement([3.0, 4.0], [1.0, 2.0]) == 0.0
    # pairs (1,2) win, (1,3) win, (3,2) lose, (3,3) tie -> (2 + 0.5) / 4
    assert stats.probability_of_improvement([1.0, 3.0], [2.0, 3.0]) == 0.625
    # never-solved runs (inf) lose to every solved run and tie with each other: (1,inf) win, (1,2) win,
    # (inf,inf) tie, (inf,2) lose -> 2.5 / 4
    assert stats.probability_of_improvement([1.0, inf], [inf, 2.0]) == 0.625
    with pytest.raises(ValueError, match="NaN"):
        stats.probability_of_improvement([1.0, float("nan")], [2.0])
    with pytest.raises(ValueError, match="empty"):
        stats.probability_of_improvement([], [2.0])


def test_probability_of_improvement_ci_and_permutation_pvalue() -> None:
    # identical single values: every resample gives 0.5
    assert stats.probability_of_improvement_ci([5.0], [5.0]) == (0.5, 0.5)
    lo, hi = stats.probability_of_improvement_ci([1.0, 2.0, 3.0], [2.0, 3.0, 4.0], n_boot=4000)
    assert lo < stats.probability_of_improvement([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) < hi
    # 5 vs 5 completely separated: the exact two-sided p is 2 / C(10, 5) = 0.0079
    p = stats.permutation_pvalue([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], n_perm=20000)
    assert abs(p - 2 / 252) < 0.003
    assert stats.permutation_pvalue([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    with pytest.raises(ValueError, match="n_perm"):
        stats.permutation_pvalue([1.0], [2.0], n_perm=0)

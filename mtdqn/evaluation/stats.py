"""Aggregate statistics for comparing RL runs: IQM, bootstrap CIs, performance profiles, AUC.

Conventions follow rliable (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical Precipice"):
scores are arrays of shape (runs,) or (runs, tasks); IQM is `scipy.stats.trim_mean(x, 0.25)` over all
entries; stratified bootstrap resamples runs with replacement independently within each task. Everything
here is plain numpy; rliable is used for the stratified bootstrap only when it imports cleanly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

StatFn = Callable[[np.ndarray], Any]

_rliable_library: Any = None
_rliable_error: str | None = None


def _load_rliable() -> Any:
    """rliable.library, or None when it (or its `arch` dependency) does not import."""
    global _rliable_library, _rliable_error
    if _rliable_library is None and _rliable_error is None:
        try:
            from rliable import library  # optional `report` extra
        except Exception as exc:  # ImportError, or e.g. TypeError from an arch/pandas version clash
            _rliable_error = f"{type(exc).__name__}: {exc}"
        else:
            _rliable_library = library
    return _rliable_library


def rliable_available() -> bool:
    """Whether rliable's stratified bootstrap can be used."""
    return _load_rliable() is not None


def rliable_import_error() -> str | None:
    """Why rliable could not be imported, or None if it can."""
    _load_rliable()
    return _rliable_error


def _flat(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=float).ravel()


def iqm(x: Any) -> float:
    """Interquartile mean over all entries: `scipy.stats.trim_mean(x, 0.25, axis=None)` semantics."""
    a = np.sort(_flat(x))
    n = a.size
    if n == 0:
        return float("nan")
    cut = int(0.25 * n)
    return float(np.mean(a[cut : n - cut]))


def mean(x: Any) -> float:
    """Mean over all entries (equals rliable's mean of per-task means for a full runs x tasks matrix)."""
    a = _flat(x)
    return float(np.mean(a)) if a.size else float("nan")


def median(x: Any) -> float:
    """Median over all entries (runs x tasks flattened; rliable's aggregate_median uses per-task means)."""
    a = _flat(x)
    return float(np.median(a)) if a.size else float("nan")


def _apply_stat(stat_fn: StatFn, batch: np.ndarray) -> np.ndarray:
    """stat_fn applied to each batch[i]; vectorized for this module's iqm, mean and median."""
    flat = batch.reshape(batch.shape[0], -1)
    if stat_fn is mean:
        return flat.mean(axis=1)
    if stat_fn is median:
        return np.median(flat, axis=1)
    if stat_fn is iqm:
        cut = int(0.25 * flat.shape[1])
        return np.sort(flat, axis=1)[:, cut : flat.shape[1] - cut].mean(axis=1)
    return np.array([stat_fn(b) for b in batch], dtype=float)


def _percentile_interval(stats: np.ndarray, ci: float) -> tuple[float, float]:
    alpha = (1.0 - ci) / 2.0
    low, high = np.percentile(stats, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def _check_ci(ci: float, n_boot: int) -> None:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci={ci} must lie in (0, 1)")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 1")


def bootstrap_ci(
    x: Any, stat_fn: StatFn = mean, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of `stat_fn` over the 1-D sample `x` (resampled with replacement)."""
    _check_ci(ci, n_boot)
    a = _flat(x)
    if a.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    return _percentile_interval(_apply_stat(stat_fn, a[idx]), ci)


def bootstrap_diff_ci(
    x: Any, y: Any, stat_fn: StatFn = mean, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of stat(x) - stat(y) for two independent samples (each resampled with
    replacement on its own): whether one group of runs beats another, not just whether their CIs overlap."""
    _check_ci(ci, n_boot)
    a, b = _flat(x), _flat(y)
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(n_boot, a.size))
    ib = rng.integers(0, b.size, size=(n_boot, b.size))
    return _percentile_interval(_apply_stat(stat_fn, a[ia]) - _apply_stat(stat_fn, b[ib]), ci)


def _as_runs_by_tasks(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2:
        raise ValueError(f"scores must have shape (runs,) or (runs, tasks), got {s.shape}")
    return s


def _stratified_numpy(
    s: np.ndarray, stat_fn: StatFn, n_boot: int, ci: float, seed: int
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n_runs, n_tasks = s.shape
    idx = rng.integers(0, n_runs, size=(n_boot, n_runs, n_tasks))
    resampled = s[idx, np.arange(n_tasks)]  # (n_boot, runs, tasks): runs drawn per task independently
    return _percentile_interval(_apply_stat(stat_fn, resampled), ci)


def _stratified_rliable(
    s: np.ndarray, stat_fn: StatFn, n_boot: int, ci: float, seed: int
) -> tuple[float, float]:
    library = _load_rliable()
    # rliable draws its indices from numpy's global RNG: seed it, and restore the caller's state after.
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        _, intervals = library.get_interval_estimates(
            {"x": s},
            lambda m: np.atleast_1d(np.asarray(stat_fn(m), dtype=float)),
            reps=n_boot,
            confidence_interval_size=ci,
            method="percentile",
        )
    finally:
        np.random.set_state(state)
    return float(intervals["x"][0, 0]), float(intervals["x"][1, 0])


def stratified_bootstrap_ci(
    scores: Any,
    stat_fn: StatFn = iqm,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    backend: str = "auto",
) -> tuple[float, float]:
    """Percentile CI of `stat_fn` over (runs, tasks) scores, resampling runs independently per task.

    `backend`: "rliable" (requires it), "numpy", or "auto" (rliable when it imports, else numpy).
    """
    _check_ci(ci, n_boot)
    if backend not in ("auto", "rliable", "numpy"):
        raise ValueError(f"backend={backend!r} must be 'auto', 'rliable' or 'numpy'")
    s = _as_runs_by_tasks(scores)
    if s.size == 0:
        return float("nan"), float("nan")
    if s.shape[0] == 1:  # a single run: every resample is the data itself
        v = float(stat_fn(s))
        return v, v
    if backend == "rliable" and not rliable_available():
        raise ImportError(f"rliable is not usable: {rliable_import_error()}")
    if backend != "numpy" and rliable_available():
        return _stratified_rliable(s, stat_fn, n_boot, ci, seed)
    return _stratified_numpy(s, stat_fn, n_boot, ci, seed)


def aggregate(
    scores: Any, n_boot: int = 2000, ci: float = 0.95, seed: int = 0, backend: str = "auto"
) -> dict[str, Any]:
    """IQM, mean and median of (runs,) or (runs, tasks) scores with stratified-bootstrap CIs."""
    s = _as_runs_by_tasks(scores)
    out: dict[str, Any] = {}
    for name, fn in (("iqm", iqm), ("mean", mean), ("median", median)):
        out[name] = fn(s)
        out[f"{name}_ci"] = stratified_bootstrap_ci(s, fn, n_boot=n_boot, ci=ci, seed=seed, backend=backend)
    return out


def performance_profile(scores: Any, taus: Sequence[float] | np.ndarray) -> np.ndarray:
    """Fraction of run scores (over all runs x tasks) strictly greater than each tau."""
    a = _flat(scores)
    t = np.asarray(taus, dtype=float)
    if a.size == 0:
        return np.full(t.shape, np.nan)
    return (a[None, :] > t.ravel()[:, None]).mean(axis=1).reshape(t.shape)


def area_under_curve(steps: Any, values: Any) -> float:
    """Trapezoidal area under values(steps) divided by the step span (a step-weighted mean value)."""
    x = np.asarray(steps, dtype=float).ravel()
    y = np.asarray(values, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"steps {x.shape} and values {y.shape} must have the same length")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size == 0:
        return float("nan")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    span = x[-1] - x[0]
    if span == 0:
        return float(np.mean(y))
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / span)


def bootstrap_mean_band(
    curves: Any, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs of (runs, points) curves with a per-point percentile-bootstrap CI; NaNs are ignored."""
    _check_ci(ci, n_boot)
    c = np.asarray(curves, dtype=float)
    if c.ndim != 2:
        raise ValueError(f"curves must have shape (runs, points), got {c.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = np.isfinite(c)
        count = valid.sum(axis=0)
        filled = np.where(valid, c, 0.0)
        mu = np.where(count > 0, filled.sum(axis=0) / np.maximum(count, 1), np.nan)
        if c.shape[0] == 0:
            return mu, mu.copy(), mu.copy()
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, c.shape[0], size=(n_boot, c.shape[0]))
        bs_sum = filled[idx].sum(axis=1)  # (n_boot, points)
        bs_cnt = valid[idx].sum(axis=1)
        bs_mean = np.where(bs_cnt > 0, bs_sum / np.maximum(bs_cnt, 1), np.nan)
        alpha = (1.0 - ci) / 2.0
        low = np.full(mu.shape, np.nan)
        high = np.full(mu.shape, np.nan)
        has = count > 0
        if has.any():
            low[has] = np.nanpercentile(bs_mean[:, has], 100.0 * alpha, axis=0)
            high[has] = np.nanpercentile(bs_mean[:, has], 100.0 * (1.0 - alpha), axis=0)
    return mu, low, high


def _pairwise_less(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(A < B) + P(A = B) / 2 over all pairs, for batches a (n, m) and b (n, k)."""
    less = (a[:, :, None] < b[:, None, :]).mean(axis=(1, 2))
    ties = (a[:, :, None] == b[:, None, :]).mean(axis=(1, 2))
    return less + 0.5 * ties


def _censored(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty: a probability of improvement needs at least one run on each side")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN: pass never-reached runs as inf (censored), not NaN")
    return a


def probability_of_improvement(x: Any, y: Any) -> float:
    """P(X < Y) + P(X = Y) / 2 for one random run of each sample: the chance that a run of the first setting
    needs less of a cost (env steps to solve) than a run of the second; 0.5 = no difference. The Mann-Whitney
    U statistic divided by len(x) * len(y) (rliable's `probability_of_improvement`, Agarwal et al. 2021, with
    lower = better). Runs that never reached the goal enter as `inf`: worse than any run that did, tied with
    each other, so censored runs need no invented value."""
    a, b = _censored(x, "x"), _censored(y, "y")
    return float(_pairwise_less(a[None], b[None])[0])


def probability_of_improvement_ci(
    x: Any, y: Any, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of `probability_of_improvement(x, y)`, each sample resampled on its own."""
    _check_ci(ci, n_boot)
    a, b = _censored(x, "x"), _censored(y, "y")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(n_boot, a.size))
    ib = rng.integers(0, b.size, size=(n_boot, b.size))
    return _percentile_interval(_pairwise_less(a[ia], b[ib]), ci)


def permutation_pvalue(x: Any, y: Any, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided permutation test of "both samples come from one distribution", with the probability of
    improvement as the statistic: the share of random relabellings of the pooled runs whose statistic is at
    least as far from 0.5 as the observed one (the observed labelling counted, so p > 0)."""
    if n_perm < 1:
        raise ValueError(f"n_perm={n_perm} must be >= 1")
    a, b = _censored(x, "x"), _censored(y, "y")
    pooled = np.concatenate([a, b])
    observed = abs(probability_of_improvement(a, b) - 0.5)
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_perm, pooled.size)), axis=1)
    shuffled = pooled[perms]
    stat = np.abs(_pairwise_less(shuffled[:, : a.size], shuffled[:, a.size :]) - 0.5)
    return float((1 + np.sum(stat >= observed - 1e-12)) / (n_perm + 1))

"""Transfer metrics against a from-scratch baseline (Taylor & Stone 2009), from logged eval curves.

Every run's eval curve of `metric` (default `eval/mean_normalized`) is interpolated on one env-step grid: the union
of all runs' eval steps within the range every run covers (so a run never counts outside its own data). That
common range is stated in the report, with the runs that limit it (a later first or an earlier last evaluation than
the others: a run still going, another evaluation schedule); no common range, or fewer than 2 evaluations on it,
is refused. Every column, forgetting included, is computed on that range. Failed runs are left out and listed;
runs without a completed summary.json are used and listed (`skip_incomplete` leaves them out). A group's
learning curve is the mean over its runs. Against the baseline group (scratch, `transfer.mode=none`):

- jumpstart: first-eval score of transfer minus scratch (first grid point; with `callbacks.eval.at_start=true`
  that is env step 0, before any update).
- asymptotic gain: final score of transfer minus scratch (last grid point; with `window` k > 1 the mean of the
  last k grid points, so one noisy evaluation does not decide it).
- time-to-threshold ratio: env steps until the mean curve first reaches `threshold` (an eval >= it; with `window`
  k > 1, the end of the first k consecutive grid points whose mean is >= it), transfer / scratch; < 1 is faster.
  inf when transfer never reaches it, undefined (None) when scratch never does.
- per-run time to threshold: each run's own env steps to `threshold` (same rule and window on its own curve), the
  median over runs, and the ratio of the medians, transfer / scratch. The mean-curve time above asks when the
  average run is there; this one when the typical run gets there (the median keeps runs that never reach it, inf,
  without making the estimate inf unless half of them never do).
- area ratio: area under the mean learning curve, transfer / scratch; undefined when the scratch area is <= 0.
- forgetting (per group, no baseline): source-task score at the start of the common range minus at its end
  (`eval/source/<task>/normalized`, and their mean `eval/source/mean_normalized`); > 0 is forgetting.
- peak forgetting: the first eval minus the lowest later one (the worst drop along the way, which a recovery
  by the last eval hides from `forgetting`).

Uncertainty: percentile bootstrap over runs (seeds), each group resampled with replacement independently,
every statistic recomputed on the resampled mean curves; `n_boot` resamples, `ci` coverage. Resamples where a
statistic is undefined (a ratio whose resampled scratch area is <= 0 or whose resampled scratch curve never
reaches the threshold) are left out of its CI; their count is kept (`n_undefined`) and reported as a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtdqn.evaluation.compare import (
    Run,
    _md_cell,
    check_group_keys,
    config_group_labels,
    curves_on_grid,
    get_config_value,
    load_runs,
    mixed_group_notes,
    run_labels,
    to_jsonable,
    varying_keys,
)

SOURCE_PREFIX = "eval/source/"
SOURCE_MEAN = f"{SOURCE_PREFIX}mean_normalized"


def common_grid(runs: Sequence[Run], metric: str) -> np.ndarray:
    """Union of the runs' eval steps of `metric` within [latest first step, earliest last step]."""
    series = [r.series(metric)[0] for r in runs]
    series = [s for s in series if s.size]
    if not series:
        return np.empty(0)
    lo, hi = max(s[0] for s in series), min(s[-1] for s in series)
    union = np.unique(np.concatenate(series))
    return union[(union >= lo) & (union <= hi)]


def time_to_threshold(grid: np.ndarray, curve: np.ndarray, threshold: float, window: int = 1) -> float:
    """First grid step where `curve` >= `threshold`, inf if never. With window k > 1: the last step of the first
    k consecutive grid points whose mean is >= threshold (the step by which the level is held on average)."""
    k = max(1, int(window))
    if curve.size < k:
        return math.inf
    held = np.convolve(curve, np.ones(k) / k, mode="valid") if k > 1 else curve
    hit = np.flatnonzero(held >= threshold)
    return float(grid[hit[0] + k - 1]) if hit.size else math.inf


def final_score(curve: np.ndarray, window: int = 1) -> float:
    """Mean of the last `window` points of `curve` (the last point for window 1)."""
    return float(curve[-max(1, int(window)):].mean())


def curve_area(grid: np.ndarray, curve: np.ndarray) -> float:
    """Trapezoidal area under `curve` over `grid` (score x env steps)."""
    if grid.size < 2:
        return float(curve[0]) if curve.size else math.nan
    return float(np.sum((grid[1:] - grid[:-1]) * (curve[1:] + curve[:-1]) / 2.0))


def ratio(a: float, b: float) -> float:
    """a / b for positive b; NaN (undefined) when b <= 0, b = inf or either is NaN."""
    if math.isnan(a) or math.isnan(b) or b <= 0 or math.isinf(b):
        return math.nan
    return a / b


def curve_stats(grid: np.ndarray, curve: np.ndarray, threshold: float, window: int = 1) -> dict[str, float]:
    """first, final, area and steps to threshold of one (mean) learning curve (`window`: see the module doc)."""
    return {"first": float(curve[0]), "final": final_score(curve, window), "area": curve_area(grid, curve),
            "steps_to_threshold": time_to_threshold(grid, curve, threshold, window)}


def transfer_vs_scratch(grid: np.ndarray, transfer: np.ndarray, scratch: np.ndarray,
                        threshold: float, window: int = 1) -> dict[str, float]:
    """The four Taylor & Stone metrics of two mean learning curves on `grid`."""
    t, s = curve_stats(grid, transfer, threshold, window), curve_stats(grid, scratch, threshold, window)
    return {
        "jumpstart": t["first"] - s["first"],
        "asymptotic_gain": t["final"] - s["final"],
        "time_to_threshold_ratio": ratio(t["steps_to_threshold"], s["steps_to_threshold"])
        if math.isfinite(s["steps_to_threshold"]) else math.nan,
        "area_ratio": ratio(t["area"], s["area"]),
    }


def own_run_times(runs: Sequence[Run], metric: str, grid: np.ndarray, threshold: float,
                  window: int = 1) -> np.ndarray:
    """Each run's env steps to `threshold` at its own evaluations within the grid's range (inf where it never gets
    there): on the common grid, a step where the run was not evaluated holds an interpolated score, which could
    count as reached (runs evaluated on other schedules)."""
    lo, hi = (float(grid[0]), float(grid[-1])) if grid.size else (math.inf, -math.inf)
    times = []
    for run in runs:
        steps, values = run.series(metric)
        inside = (steps >= lo) & (steps <= hi)
        times.append(time_to_threshold(steps[inside], values[inside], threshold, window))
    return np.array(times, dtype=float)


def forgetting(first: np.ndarray, last: np.ndarray) -> float:
    """Mean over runs of (first-eval score - last-eval score) of a source task."""
    return float(np.mean(first - last)) if first.size else math.nan


def peak_forgetting(curves: Sequence[np.ndarray]) -> float:
    """Mean over runs of (first-eval score - lowest later score) of a source task: the worst drop."""
    drops = [float(c[0] - c[1:].min()) for c in curves if c.size > 1]
    return float(np.mean(drops)) if drops else math.nan


@dataclass
class Estimate:
    """A point estimate with its bootstrap CI (bounds may be inf; NaN = undefined)."""

    value: float
    low: float
    high: float
    n_undefined: int = 0  # bootstrap resamples where the statistic was undefined (NaN), left out of the CI

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN and inf become None (with `value_str` keeping inf readable)."""
        return {"value": to_jsonable(self.value), "low": to_jsonable(self.low), "high": to_jsonable(self.high),
                "value_str": fmt(self.value), "n_undefined": self.n_undefined}


def bootstrap(samples: Sequence[np.ndarray], fn: Callable[..., float], n_boot: int = 2000, ci: float = 0.95,
              seed: int = 0) -> Estimate:
    """fn(*samples) with a percentile CI: each sample (rows = runs) resampled with replacement independently."""
    point = fn(*samples)
    rng = np.random.default_rng(seed)
    stats = np.array([fn(*(s[rng.integers(0, len(s), len(s))] for s in samples)) for _ in range(n_boot)])
    undefined = int(np.isnan(stats).sum())
    stats = stats[~np.isnan(stats)]
    if not stats.size:
        return Estimate(point, math.nan, math.nan, undefined)
    alpha = 100.0 * (1.0 - ci) / 2.0
    low, high = np.percentile(stats, [alpha, 100.0 - alpha], method="nearest")
    return Estimate(point, float(low), float(high), undefined)


def _mean(curves: np.ndarray) -> np.ndarray:
    return curves.mean(axis=0)


def group_report(runs: Sequence[Run], baseline: Sequence[Run] | None, metric: str, grid: np.ndarray,
                 threshold: float, boot: Mapping[str, Any], window: int = 1) -> dict[str, Any]:
    """Absolute curve statistics of a group and, with a baseline, the transfer metrics against it; everything on
    `grid` (forgetting too: over the grid's env-step range)."""
    curves = curves_on_grid(runs, metric, grid)
    out: dict[str, Any] = {"n_runs": len(runs), "runs": [str(r.path) for r in runs]}
    for key in ("first", "final", "area", "steps_to_threshold"):
        out[key] = bootstrap([curves], lambda c, k=key: curve_stats(grid, _mean(c), threshold, window)[k], **boot)
    times = own_run_times(runs, metric, grid, threshold, window)[:, None]  # (runs, 1): resampled as the curves
    out["run_steps"] = times[:, 0].tolist()  # in the order of out["runs"]
    out["run_steps_median"] = bootstrap([times], lambda t: float(np.median(t)), **boot)
    if baseline is not None:
        base = curves_on_grid(baseline, metric, grid)
        base_times = own_run_times(baseline, metric, grid, threshold, window)[:, None]
        for key in ("jumpstart", "asymptotic_gain", "time_to_threshold_ratio", "area_ratio"):
            out[key] = bootstrap(
                [curves, base], lambda c, b, k=key: transfer_vs_scratch(grid, _mean(c), _mean(b), threshold, window)[k],
                **boot)
        out["run_time_ratio"] = bootstrap(
            [times, base_times], lambda a, b: ratio(float(np.median(a)), float(np.median(b))), **boot)
    out["forgetting"] = source_forgetting(runs, boot, span=(float(grid[0]), float(grid[-1])))
    out["peak_forgetting"] = source_forgetting(runs, boot, peak=True, span=(float(grid[0]), float(grid[-1])))
    return out


def source_metrics(runs: Sequence[Run]) -> list[str]:
    """`eval/source/<task>/normalized` names present in the runs (returns where no normalized score), and the
    mean over source tasks last."""
    names = {n for r in runs for n in r.metric_names() if n.startswith(SOURCE_PREFIX)}
    tasks = sorted({n[len(SOURCE_PREFIX):].rsplit("/", 1)[0] for n in names if n.count("/") == 3})
    out = [f"{SOURCE_PREFIX}{t}/normalized" if f"{SOURCE_PREFIX}{t}/normalized" in names
           else f"{SOURCE_PREFIX}{t}/return" for t in tasks]
    return out + ([SOURCE_MEAN] if SOURCE_MEAN in names else [])


def series_in_span(run: Run, metric: str, span: tuple[float, float] | None) -> np.ndarray | None:
    """The run's `metric` values within the env-step `span` (its own evaluations there, and its values at both
    ends, interpolated between its evaluations); None when the run's series does not cover the span. Without a
    span: the whole series (None when empty)."""
    steps, values = run.series(metric)
    if not steps.size:
        return None
    if span is None:
        return values
    lo, hi = span
    if steps[0] > lo or steps[-1] < hi:
        return None
    xs = np.unique(np.concatenate([[lo, hi], steps[(steps >= lo) & (steps <= hi)]]))
    return np.interp(xs, steps, values)


def source_forgetting(runs: Sequence[Run], boot: Mapping[str, Any], peak: bool = False,
                      span: tuple[float, float] | None = None) -> dict[str, Estimate]:
    """Per source metric: the score at the start of `span` (env steps; default each run's whole series) minus at
    its end (`peak`: minus the lowest later score), mean over the runs that cover the span, with a bootstrap CI."""
    out = {}
    for m in source_metrics(runs):
        series = [v for v in (series_in_span(r, m, span) for r in runs) if v is not None]
        if not series:
            continue
        if peak:
            out[m] = bootstrap([np.array(series, dtype=object)], lambda a: peak_forgetting(list(a)), **boot)
        else:
            arr = np.array([(v[0], v[-1]) for v in series], dtype=float)
            out[m] = bootstrap([arr], lambda a: forgetting(a[:, 0], a[:, 1]), **boot)
    return out


def _fmt_steps(x: float) -> str:
    return f"{x:,.0f}"


def _names(runs: Sequence[Run], labels: Mapping[Path, str], limit: int = 8) -> str:
    names = [labels.get(r.path, str(r.path)) + ("" if r.status == "completed" else f" ({r.status})") for r in runs]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def common_range(runs: Sequence[Run], metric: str, labels: Mapping[Path, str]) -> tuple[np.ndarray, list[str]]:
    """The common grid of `runs` (`common_grid`) and notes naming the runs that limit its env-step range; a range
    that no step is common to, or with fewer than 2 evaluations, is refused (ValueError naming the runs)."""
    series = {r.path: r.series(metric)[0] for r in runs}
    firsts, lasts = {p: s[0] for p, s in series.items()}, {p: s[-1] for p, s in series.items()}
    lo, hi = max(firsts.values()), min(lasts.values())
    late = [r for r in runs if firsts[r.path] == lo] if lo > min(firsts.values()) else []
    early = [r for r in runs if lasts[r.path] == hi] if hi < max(lasts.values()) else []
    hint = (" (runs without a completed summary.json: --skip-incomplete leaves them out)"
            if any(r.status != "completed" for r in late + early) else "")
    if lo > hi:
        raise ValueError(
            f"no env-step range common to every run's {metric!r}: {_names(late, labels)} evaluate(s) from "
            f"{_fmt_steps(lo)} env steps, {_names(early, labels)} end(s) at {_fmt_steps(hi)}{hint}; "
            "report runs with overlapping evaluations")
    grid = common_grid(runs, metric)
    if grid.size < 2:
        limits = [f"starts at {_fmt_steps(lo)}, the first evaluation of {_names(late, labels)}"] if late else []
        limits += [f"ends at {_fmt_steps(hi)}, the last evaluation of {_names(early, labels)}"] if early else []
        raise ValueError(
            f"the env-step range common to every run's {metric!r} is {_fmt_steps(lo)}-{_fmt_steps(hi)} with "
            f"{grid.size} evaluation(s); at least 2 are needed (first != final, an area)"
            + (f"; the range {'; '.join(limits)}{hint}" if limits else ""))
    notes = []
    if late:
        notes.append(f"common env-step range starts at {_fmt_steps(lo)}, not {_fmt_steps(min(firsts.values()))}: "
                     f"the first evaluation of {_names(late, labels)}; earlier evaluations of the other runs are "
                     "not used (first score and jumpstart are at that step)")
    if early:
        notes.append(f"common env-step range ends at {_fmt_steps(hi)}, not {_fmt_steps(max(lasts.values()))}: the "
                     f"last evaluation of {_names(early, labels)}; later evaluations of the other runs are not used "
                     f"(final score, asymptotic gain and forgetting are at that step){hint}")
    sparse = [r for r in runs if not np.isin(grid, series[r.path]).all()]
    if sparse:
        notes.append(f"{len(sparse)} of {len(runs)} runs were not evaluated at every one of the grid's {grid.size} "
                     f"env steps (another evaluation schedule); their scores there are interpolated linearly "
                     f"between their evaluations: {_names(sparse, labels)}")
    return grid, notes


def group_labels(runs: Sequence[Run], by: str) -> list[str]:
    """Each run's group label: its value at `by` (`config_group_labels`: a config node with a `_target_` by its
    class); a whole config node without a `_target_` (`--by transfer`) is refused, naming its keys that differ."""
    values = [get_config_value(r.config, by) for r in runs]
    if any(isinstance(v, dict) and not isinstance(v.get("_target_"), str) for v in values):
        differ = [k for k in varying_keys([r.config for r in runs]) if k.startswith(f"{by}.")]
        raise ValueError(f"--by {by}: a config node, not one value; group by one of its keys"
                         + (f" that differ between these runs: {', '.join(differ[:10])}" if differ
                            else " (they do not differ between these runs)"))
    return [label[len(by) + 1:] for label in config_group_labels([r.config for r in runs], [by])]


def _undefined_notes(groups: Mapping[str, Mapping[str, Any]], n_boot: int) -> list[str]:
    """A warning per estimate whose CI left out undefined resamples (a defined point estimate)."""
    notes = []
    for name, g in groups.items():
        items = [(k, v) for k, v in g.items() if isinstance(v, Estimate)]
        items += [(f"{k} {m}", v) for k in ("forgetting", "peak_forgetting") for m, v in g.get(k, {}).items()]
        for key, est in items:
            if est.n_undefined and not math.isnan(est.value):
                notes.append(f"{name}: {key}: {est.n_undefined} of {n_boot} bootstrap resamples undefined (a "
                             "resampled scratch area <= 0 or scratch curve never reaching the threshold); its CI "
                             f"is over the other {n_boot - est.n_undefined}")
    return notes


def transfer_report(paths: Sequence[str | Path], by: str = "transfer.mode", baseline: str = "none",
                    metric: str = "eval/mean_normalized", threshold: float = 0.9, n_boot: int = 2000,
                    ci: float = 0.95, seed: int = 0, exclude: Sequence[str | Path] = (),
                    window: int = 1, skip_incomplete: bool = False) -> dict[str, Any]:
    """Load the runs below `paths`, group them by config key `by` and compute every group's transfer metrics on
    the env-step range every run covers. Failed runs are left out; runs without a completed summary.json are used
    unless `skip_incomplete` (as scripts/compare.py); both are listed, with the runs' load warnings."""
    if int(window) < 1:
        raise ValueError(f"--window {window!r} is invalid: expected an integer >= 1 (evaluations averaged)")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"--ci {ci!r} is invalid: expected a coverage strictly between 0 and 1, e.g. 0.95")
    if int(n_boot) < 1:
        raise ValueError(f"--n-boot {n_boot!r} is invalid: expected an integer >= 1 (bootstrap resamples)")
    if not math.isfinite(threshold):
        raise ValueError(f"--threshold {threshold!r} is invalid: expected a finite score")
    loaded = load_runs(paths, exclude)
    labels = run_labels([r.path for r in loaded])
    failed = [r for r in loaded if r.status == "failed"]
    skipped = [r for r in loaded if r.status not in ("failed", "completed") and skip_incomplete]
    usable = [r for r in loaded if r.status != "failed" and r not in skipped]
    no_metric = [r for r in usable if not r.series(metric)[0].size]
    runs = [r for r in usable if r.series(metric)[0].size]
    if not runs:
        left_out = f" ({len(failed)} failed, {len(skipped)} incomplete skipped)" if failed or skipped else ""
        raise ValueError(f"no completed or running run with metric {metric!r} below {[str(p) for p in paths]}"
                         + left_out)
    check_group_keys([r.config for r in runs], [by])
    task_sets: dict[str, list[Run]] = {}
    for r in runs:
        task_sets.setdefault(str(get_config_value(r.config, "task_set.tasks", None)), []).append(r)
    if len(task_sets) > 1:  # e.g. the source run beside the transfer sweep: it joined the scratch group
        raise ValueError("the runs train different task sets: " + "; ".join(
            f"{tasks} ({_names(members, labels)})" for tasks, members in task_sets.items())
            + "; a transfer report compares runs on one target task set: give only their folders")
    groups: dict[str, list[Run]] = {}
    for r, label in zip(runs, group_labels(runs, by), strict=True):
        groups.setdefault(label, []).append(r)
    base = groups.get(baseline)
    grid, range_notes = common_range(runs, metric, labels)
    if int(window) > grid.size:
        raise ValueError(f"--window {window}: the common env-step range {_fmt_steps(grid[0])}-{_fmt_steps(grid[-1])}"
                         f" has only {grid.size} evaluations; use --window {grid.size} or less")
    boot = {"n_boot": n_boot, "ci": ci, "seed": seed}
    order = sorted(groups, key=lambda g: (g != baseline, g))
    warnings = list(range_notes) + mixed_group_notes(groups, [by])
    if not base:
        warnings.append(f"no baseline group {by}={baseline!r} (groups: {', '.join(order)}): transfer metrics "
                        "skipped; name one with --baseline")
    span = (float(grid[0]), float(grid[-1]))
    for m in source_metrics(runs):
        short = [r for r in runs if m in r.metric_names() and series_in_span(r, m, span) is None]
        if short:
            warnings.append(f"`{m}` does not cover the common env-step range in {_names(short, labels)}: left out "
                            "of its forgetting")
    warnings += [f"{labels[r.path]}: no {metric!r} value: left out" for r in no_metric]
    warnings += [w for r in loaded for w in r.warnings]
    report = {
        "inputs": [str(p) for p in paths], "group_by": by, "baseline": baseline, "metric": metric,
        "threshold": threshold, "window": int(window), "ci": ci, "n_boot": n_boot, "grid": grid.tolist(),
        "env_step_range": [float(grid[0]), float(grid[-1])], "n_evaluations": int(grid.size),
        "skip_incomplete": skip_incomplete,
        "failed": [{"path": str(r.path), "error": r.error or "(no error recorded)"} for r in failed],
        "incomplete": [str(r.path) for r in runs if r.status != "completed"],
        "skipped_incomplete": [str(r.path) for r in skipped],
        "warnings": warnings,
        "groups": {g: group_report(groups[g], base if g != baseline else None, metric, grid, threshold, boot,
                                   int(window)) for g in order},
    }
    report["warnings"] += _undefined_notes(report["groups"], n_boot)
    report["curves"] = {g: {"mean": _mean(curves_on_grid(groups[g], metric, grid)).tolist()} for g in order}
    report["source_curves"] = source_curves(groups, order, span)
    return report


def source_curves(groups: Mapping[str, Sequence[Run]], order: Sequence[str],
                  span: tuple[float, float] | None = None) -> dict[str, Any]:
    """Mean `eval/source/mean_normalized` curve per group (steps, values) on the group's own common grid, within
    the env-step `span` when given."""
    out = {}
    for g in order:
        grid = common_grid(groups[g], SOURCE_MEAN)
        if span is not None:
            grid = grid[(grid >= span[0]) & (grid <= span[1])]
        if grid.size:
            curves = curves_on_grid(groups[g], SOURCE_MEAN, grid)
            curves = curves[~np.isnan(curves).any(axis=1)]
            if curves.size:
                out[g] = {"steps": grid.tolist(), "mean": _mean(curves).tolist()}
    return out


def fmt(v: float | None, digits: int = 3, steps: bool = False) -> str:
    """A number for tables: '-' for undefined, 'inf' for never; env steps (`steps`) always as integers with
    thousands separators (4,096, not 4096.000)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:,.0f}" if steps or abs(v) >= 1e4 else f"{v:.{digits}f}"


def _cell(e: Estimate | None, steps: bool = False) -> str:
    return "" if e is None else f"{fmt(e.value, steps=steps)} [{fmt(e.low, steps=steps)}, {fmt(e.high, steps=steps)}]"


def render_markdown(report: Mapping[str, Any], plot: str | None = None) -> str:
    """The report as markdown: one row per group, transfer metrics against the baseline, forgetting per task."""
    pct = f"{round(100 * report['ci'])}% CI"
    thr = report["threshold"]
    lines = [
        "# Transfer report", "",
        f"Runs grouped by `{report['group_by']}`, baseline `{report['baseline']}`, metric `{report['metric']}`, "
        f"threshold {thr:g}. Values: estimate [{pct}] (bootstrap over runs, {report['n_boot']} resamples). "
        + (f"Window {report['window']}: final = mean of the last {report['window']} evaluations of the mean curve; "
           f"env steps to threshold = the end of the first {report['window']} consecutive evaluations whose mean "
           "is >= the threshold. " if report.get("window", 1) > 1 else "")
        + "Jumpstart and asymptotic gain are score differences (transfer - scratch); time-to-threshold and area "
        "ratios are transfer / scratch (< 1 time ratio = faster; inf = never reached, - = undefined). Forgetting = "
        "source score at the first eval minus at the last (> 0 = forgotten); peak forgetting = the first eval minus "
        "the lowest later one (the worst drop on the way).", "",
        f"Env-step range: {fmt_steps_range(report)} ({report['n_evaluations']} evaluation steps on the grid), the "
        "range every run covers; every column (forgetting too) is computed on it"
        + (" (see Warnings for the runs that limit it)." if any(w.startswith("common env-step range")
                                                                  for w in report["warnings"]) else "."), "",
        "| group | runs | first | final | area (score x env steps) | env steps to threshold | jumpstart | "
        "asymptotic gain | time-to-threshold ratio | area ratio | forgetting (source mean) | peak forgetting |",
        "|" + "---|" * 12,
    ]
    for name, g in report["groups"].items():
        forget = g["forgetting"].get(f"{SOURCE_PREFIX}mean_normalized")
        peak = g.get("peak_forgetting", {}).get(f"{SOURCE_PREFIX}mean_normalized")
        cells = [name, str(g["n_runs"])] + [_cell(g[k]) for k in ("first", "final", "area")]
        cells.append(_cell(g["steps_to_threshold"], steps=True))
        cells += [_cell(g.get(k)) for k in ("jumpstart", "asymptotic_gain", "time_to_threshold_ratio", "area_ratio")]
        lines.append("| " + " | ".join([*cells, _cell(forget), _cell(peak)]) + " |")
    if any("run_steps" in g for g in report["groups"].values()):
        lines += ["", "## Per-run env steps to threshold", "",
                  "Each run's own env steps to the threshold (same rule" + (" and window" if report.get("window", 1) > 1
                  else "") + "), the median over runs, and the ratio of the medians (transfer / scratch).", "",
                  "| group | each run (ascending) | median | median ratio |", "|---|---|---|---|"]
        for name, g in report["groups"].items():
            if "run_steps" in g:
                each = "; ".join(fmt(v, steps=True) for v in sorted(g["run_steps"]))
                lines.append(f"| {name} | {each} | {_cell(g['run_steps_median'], steps=True)} | "
                             f"{_cell(g.get('run_time_ratio'))} |")
    tasks = sorted({m for g in report["groups"].values() for m in g["forgetting"]} - {SOURCE_MEAN})
    if tasks:
        lines += ["", "## Forgetting per source task", "", "| group | " + " | ".join(f"`{t}`" for t in tasks) + " |",
                  "|" + "---|" * (len(tasks) + 1)]
        for name, g in report["groups"].items():
            lines.append(f"| {name} | " + " | ".join(_cell(g["forgetting"].get(t)) for t in tasks) + " |")
        lines += ["", "## Peak forgetting per source task", "",
                  "| group | " + " | ".join(f"`{t}`" for t in tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
        for name, g in report["groups"].items():
            peaks = g.get("peak_forgetting", {})
            lines.append(f"| {name} | " + " | ".join(_cell(peaks.get(t)) for t in tasks) + " |")
    if plot:
        lines += ["", f"![transfer curves]({plot})"]
    if report.get("failed"):
        lines += ["", "## Failed runs (left out)", "", "| run | error |", "|---|---|"]
        lines += [f"| `{f['path']}` | {_md_cell(f['error'])} |" for f in report["failed"]]
    for title, key in (("Incomplete runs (no completed summary.json; included)", "incomplete"),
                       ("Incomplete runs (left out: --skip-incomplete)", "skipped_incomplete"),
                       ("Warnings", "warnings")):
        if report.get(key):
            lines += ["", f"## {title}", "", *(f"- {_md_cell(w, 1000)}" for w in report[key])]
    return "\n".join(lines) + "\n"


def fmt_steps_range(report: Mapping[str, Any]) -> str:
    """The report's common env-step range as `lo-hi env steps`."""
    lo, hi = report["env_step_range"]
    return f"{lo:,.0f}-{hi:,.0f} env steps"


def report_json(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report with every Estimate as a dict, NaN/inf as None."""
    def conv(obj: Any) -> Any:
        if isinstance(obj, Estimate):
            return obj.as_dict()
        if isinstance(obj, Mapping):
            return {str(k): conv(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [conv(v) for v in obj]
        return to_jsonable(obj)

    return conv(report)


def plot_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """PNG: the target metric's mean learning curve per group and, if logged, the source tasks' mean score."""
    from matplotlib.figure import Figure

    with_source = bool(report["source_curves"])
    fig = Figure(figsize=(12 if with_source else 7, 4.5), layout="constrained")
    axes = fig.subplots(1, 2 if with_source else 1, squeeze=False)[0]
    grid = np.asarray(report["grid"], dtype=float)
    for i, (name, c) in enumerate(report["curves"].items()):
        n = report["groups"][name]["n_runs"]
        axes[0].plot(grid, c["mean"], color=f"C{i % 10}", label=f"{name} (n={n})")
    axes[0].axhline(report["threshold"], color="gray", linestyle=":", linewidth=1)
    axes[0].set(title=f"target: {report['metric']}", xlabel="environment steps", ylabel=report["metric"])
    if with_source:
        for i, name in enumerate(report["curves"]):
            c = report["source_curves"].get(name)
            if c:
                axes[1].plot(c["steps"], c["mean"], color=f"C{i % 10}", label=name)
        axes[1].set(title="source tasks (forgetting)", xlabel="environment steps",
                    ylabel=f"{SOURCE_PREFIX}mean_normalized")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return Path(path)

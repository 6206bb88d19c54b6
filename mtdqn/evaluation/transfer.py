"""Transfer metrics against a from-scratch baseline (Taylor & Stone 2009), from logged eval curves.

Every run's eval curve of `metric` (default `eval/mean_normalized`) is interpolated on one env-step grid: the union
of all runs' eval steps within the range every run covers (so a run never counts outside its own data). A group's
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
- forgetting (per group, no baseline): source-task score at the first eval minus at the last
  (`eval/source/<task>/normalized`, and their mean `eval/source/mean_normalized`); > 0 is forgetting.
- peak forgetting: the first eval minus the lowest later one (the worst drop along the way, which a recovery
  by the last eval hides from `forgetting`).

Uncertainty: percentile bootstrap over runs (seeds), each group resampled with replacement independently,
every statistic recomputed on the resampled mean curves; `n_boot` resamples, `ci` coverage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtdqn.evaluation.compare import Run, curves_on_grid, load_runs, to_jsonable

SOURCE_PREFIX = "eval/source/"


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


def run_times(grid: np.ndarray, curves: np.ndarray, threshold: float, window: int = 1) -> np.ndarray:
    """Each run's (row's) env steps to `threshold` on its own curve (inf where it never gets there)."""
    return np.array([time_to_threshold(grid, c, threshold, window) for c in curves])


def median_time(grid: np.ndarray, curves: np.ndarray, threshold: float, window: int = 1) -> float:
    """Median over runs of `run_times` (inf only when at least half of the runs never reach the threshold)."""
    return float(np.median(run_times(grid, curves, threshold, window)))


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

    def as_dict(self) -> dict[str, float | None]:
        """JSON-ready: NaN and inf become None (with `value_str` keeping inf readable)."""
        return {"value": to_jsonable(self.value), "low": to_jsonable(self.low), "high": to_jsonable(self.high),
                "value_str": fmt(self.value)}


def bootstrap(samples: Sequence[np.ndarray], fn: Callable[..., float], n_boot: int = 2000, ci: float = 0.95,
              seed: int = 0) -> Estimate:
    """fn(*samples) with a percentile CI: each sample (rows = runs) resampled with replacement independently."""
    point = fn(*samples)
    rng = np.random.default_rng(seed)
    stats = np.array([fn(*(s[rng.integers(0, len(s), len(s))] for s in samples)) for _ in range(n_boot)])
    stats = stats[~np.isnan(stats)]
    if not stats.size:
        return Estimate(point, math.nan, math.nan)
    alpha = 100.0 * (1.0 - ci) / 2.0
    low, high = np.percentile(stats, [alpha, 100.0 - alpha], method="nearest")
    return Estimate(point, float(low), float(high))


def _mean(curves: np.ndarray) -> np.ndarray:
    return curves.mean(axis=0)


def group_report(runs: Sequence[Run], baseline: Sequence[Run] | None, metric: str, grid: np.ndarray,
                 threshold: float, boot: Mapping[str, Any], window: int = 1) -> dict[str, Any]:
    """Absolute curve statistics of a group and, with a baseline, the transfer metrics against it."""
    curves = curves_on_grid(runs, metric, grid)
    out: dict[str, Any] = {"n_runs": len(runs), "runs": [str(r.path) for r in runs]}
    for key in ("first", "final", "area", "steps_to_threshold"):
        out[key] = bootstrap([curves], lambda c, k=key: curve_stats(grid, _mean(c), threshold, window)[k], **boot)
    out["run_steps"] = run_times(grid, curves, threshold, window).tolist()  # in the order of out["runs"]
    out["run_steps_median"] = bootstrap([curves], lambda c: median_time(grid, c, threshold, window), **boot)
    if baseline is not None:
        base = curves_on_grid(baseline, metric, grid)
        for key in ("jumpstart", "asymptotic_gain", "time_to_threshold_ratio", "area_ratio"):
            out[key] = bootstrap(
                [curves, base], lambda c, b, k=key: transfer_vs_scratch(grid, _mean(c), _mean(b), threshold, window)[k],
                **boot)
        out["run_time_ratio"] = bootstrap(
            [curves, base], lambda c, b: ratio(median_time(grid, c, threshold, window),
                                               median_time(grid, b, threshold, window)), **boot)
    out["forgetting"] = source_forgetting(runs, boot)
    out["peak_forgetting"] = source_forgetting(runs, boot, peak=True)
    return out


def source_metrics(runs: Sequence[Run]) -> list[str]:
    """`eval/source/<task>/normalized` names present in the runs (returns where no normalized score), and the
    mean over source tasks last."""
    names = {n for r in runs for n in r.metric_names() if n.startswith(SOURCE_PREFIX)}
    tasks = sorted({n[len(SOURCE_PREFIX):].rsplit("/", 1)[0] for n in names if n.count("/") == 3})
    out = [f"{SOURCE_PREFIX}{t}/normalized" if f"{SOURCE_PREFIX}{t}/normalized" in names
           else f"{SOURCE_PREFIX}{t}/return" for t in tasks]
    return out + ([f"{SOURCE_PREFIX}mean_normalized"] if f"{SOURCE_PREFIX}mean_normalized" in names else [])


def source_forgetting(runs: Sequence[Run], boot: Mapping[str, Any], peak: bool = False) -> dict[str, Estimate]:
    """Per source metric: first-eval minus last-eval score (`peak`: minus the lowest later score), mean over runs
    with a bootstrap CI."""
    out = {}
    for m in source_metrics(runs):
        series = [np.asarray(v, dtype=float) for v in (r.series(m)[1] for r in runs) if v.size]
        if not series:
            continue
        if peak:
            out[m] = bootstrap([np.array(series, dtype=object)], lambda a: peak_forgetting(list(a)), **boot)
        else:
            arr = np.array([(v[0], v[-1]) for v in series], dtype=float)
            out[m] = bootstrap([arr], lambda a: forgetting(a[:, 0], a[:, 1]), **boot)
    return out


def transfer_report(paths: Sequence[str | Path], by: str = "transfer.mode", baseline: str = "none",
                    metric: str = "eval/mean_normalized", threshold: float = 0.9, n_boot: int = 2000,
                    ci: float = 0.95, seed: int = 0, exclude: Sequence[str | Path] = (),
                    window: int = 1) -> dict[str, Any]:
    """Load the runs below `paths`, group them by config key `by` and compute every group's transfer metrics."""
    from mtdqn.evaluation.compare import check_group_keys, get_config_value

    if int(window) < 1:
        raise ValueError(f"window={window!r} is invalid: expected an integer >= 1 (evaluations averaged)")
    runs = [r for r in load_runs(paths, exclude) if r.status != "failed" and r.series(metric)[0].size]
    if not runs:
        raise ValueError(f"no completed or running run with metric {metric!r} below {[str(p) for p in paths]}")
    check_group_keys([r.config for r in runs], [by])
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(str(get_config_value(r.config, by)), []).append(r)
    base = groups.get(baseline)
    grid = common_grid(runs, metric)
    boot = {"n_boot": n_boot, "ci": ci, "seed": seed}
    order = sorted(groups, key=lambda g: (g != baseline, g))
    report = {
        "inputs": [str(p) for p in paths], "group_by": by, "baseline": baseline, "metric": metric,
        "threshold": threshold, "window": int(window), "ci": ci, "n_boot": n_boot, "grid": grid.tolist(),
        "warnings": [] if base else [f"no baseline group {by}={baseline!r}: transfer metrics skipped"],
        "groups": {g: group_report(groups[g], base if g != baseline else None, metric, grid, threshold, boot,
                                   int(window)) for g in order},
    }
    report["curves"] = {g: {"mean": _mean(curves_on_grid(groups[g], metric, grid)).tolist()} for g in order}
    report["source_curves"] = source_curves(groups, order)
    return report


def source_curves(groups: Mapping[str, Sequence[Run]], order: Sequence[str]) -> dict[str, Any]:
    """Mean `eval/source/mean_normalized` curve per group (steps, values) on the group's own common grid."""
    out = {}
    metric = f"{SOURCE_PREFIX}mean_normalized"
    for g in order:
        grid = common_grid(groups[g], metric)
        if grid.size:
            out[g] = {"steps": grid.tolist(), "mean": _mean(curves_on_grid(groups[g], metric, grid)).tolist()}
    return out


def fmt(v: float | None, digits: int = 3) -> str:
    """A number for tables: '-' for undefined, 'inf' for never."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.{digits}f}"


def _cell(e: Estimate | None) -> str:
    return "" if e is None else f"{fmt(e.value)} [{fmt(e.low)}, {fmt(e.high)}]"


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
        "| group | runs | first | final | area (score x env steps) | env steps to threshold | jumpstart | "
        "asymptotic gain | time-to-threshold ratio | area ratio | forgetting (source mean) | peak forgetting |",
        "|" + "---|" * 12,
    ]
    for name, g in report["groups"].items():
        forget = g["forgetting"].get(f"{SOURCE_PREFIX}mean_normalized")
        peak = g.get("peak_forgetting", {}).get(f"{SOURCE_PREFIX}mean_normalized")
        cells = [name, str(g["n_runs"])] + [_cell(g[k]) for k in ("first", "final", "area", "steps_to_threshold")]
        cells += [_cell(g.get(k)) for k in ("jumpstart", "asymptotic_gain", "time_to_threshold_ratio", "area_ratio")]
        lines.append("| " + " | ".join([*cells, _cell(forget), _cell(peak)]) + " |")
    if any("run_steps" in g for g in report["groups"].values()):
        lines += ["", "## Per-run env steps to threshold", "",
                  "Each run's own env steps to the threshold (same rule" + (" and window" if report.get("window", 1) > 1
                  else "") + "), the median over runs, and the ratio of the medians (transfer / scratch).", "",
                  "| group | each run (ascending) | median | median ratio |", "|---|---|---|---|"]
        for name, g in report["groups"].items():
            if "run_steps" in g:
                each = "; ".join(fmt(v) for v in sorted(g["run_steps"]))
                lines.append(f"| {name} | {each} | {_cell(g['run_steps_median'])} | {_cell(g.get('run_time_ratio'))} |")
    tasks = sorted({m for g in report["groups"].values() for m in g["forgetting"]})
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
    if report["warnings"]:
        lines += ["", "## Warnings", "", *(f"- {w}" for w in report["warnings"])]
    return "\n".join(lines) + "\n"


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

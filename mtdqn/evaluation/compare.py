"""Compare training runs from their local run directories: load, group, curves on a grid, score tables.

A run directory holds `metrics.jsonl` (one JSON object per line with `env_steps`, `step`, `time` and metric
names such as `eval/<task>/normalized`), `config.yaml` (the resolved run config) and, once the run has
ended, `summary.json` (`"status": "completed"` or `"failed"` with `"error"`). Only local files are read.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mtdqn.evaluation import stats

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
STEP_KEY = "env_steps"
TRAIN_SECONDS = "time/train_seconds"  # logged with every evaluation (EvalCallback): seconds of training so far
MISSING = "<missing>"
DEFAULT_METRIC = "eval/mean_normalized"  # the headline; gym runs without reference scores do not log it
_TASK_RE = re.compile(r"^eval/(?P<task>.+)/(?P<kind>normalized|return)$")
_TASK_METRIC_RE = re.compile(r"^eval/(?P<task>.+)/[^/]+$")  # any per-task evaluation metric


@dataclass
class Run:
    """One run directory: its config, metric rows (file order) and summary."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    task_steps: bool = False  # x of eval/<task>/... metrics: the run's env steps on that task where logged
    window: int = 1  # final score: the mean of the run's last `window` evaluations (1: the last one)
    failed_score: float | None = None  # a failed run's final score of every metric (compare --failed <number>)

    @property
    def status(self) -> str:
        """'completed', 'failed', 'interrupted' (from summary.json; an interrupted run is used as an incomplete
        one), or 'incomplete' when there is no summary status."""
        status = (self.summary or {}).get("status")
        return str(status) if status else "incomplete"

    @property
    def error(self) -> str | None:
        """The error recorded in summary.json, if any."""
        err = (self.summary or {}).get("error")
        return None if err is None else str(err)

    def metric_names(self) -> set[str]:
        """Every metric name present in metrics.jsonl."""
        return {k for row in self.rows for k in row}

    def series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(env_steps, values) of `metric`, sorted by env_steps, finite values only, last value per step.

        With `task_steps`, a task's metric (`eval/<task>/...`) is placed at the run's env steps on that task
        (`time/<task>/env_steps`, which multi-task runs log with every evaluation) instead of the env steps summed
        over its tasks, so a multi-task agent's curve of a task lines up with that task's single-task agent's
        (whose env steps are all on the task); rows without it keep `env_steps`."""
        match = _TASK_METRIC_RE.match(metric) if self.task_steps else None
        task_key = f"time/{match['task']}/env_steps" if match else None
        by_step: dict[float, float] = {}
        for row in self.rows:
            x = _number(row.get(task_key)) if task_key in row else _number(row.get(STEP_KEY))
            y = _number(row.get(metric))
            if x is not None and y is not None:
                by_step[x] = y
        xs = np.array(sorted(by_step), dtype=float)
        return xs, np.array([by_step[x] for x in xs], dtype=float)

    def final(self, metric: str) -> float | None:
        """Last finite value of `metric` in metrics.jsonl (file order), else from summary.json, else None."""
        for row in reversed(self.rows):
            v = _number(row.get(metric))
            if v is not None:
                return v
        return _number((self.summary or {}).get(metric))

    def final_score(self, metric: str) -> float | None:
        """The run's final score of `metric`: its last value (`final`), or with `window` > 1 the mean of its last
        `window` evaluations (all of them when it has fewer), which steadies a score whose evaluations swing.
        A failed run given a `failed_score` scores that, whatever it logged before it failed."""
        if self.failed_score is not None and self.status == "failed":
            return self.failed_score
        if self.window <= 1:
            return self.final(metric)
        values = self.series(metric)[1]
        return float(values[-self.window:].mean()) if values.size else self.final(metric)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _is_run_dir(d: Path) -> bool:
    if (d / METRICS_FILE).is_file():
        return True
    summary = _read_json(d / SUMMARY_FILE)  # runs that failed before logging anything
    return isinstance(summary, dict) and "status" in summary


def find_run_dirs(paths: Iterable[str | Path], exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Every run directory at or below `paths` (sorted, deduplicated), skipping `exclude` and wandb/ dirs."""
    skip = [Path(p).resolve() for p in exclude]
    found: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such run or sweep directory: {root}")
        root = root.parent if root.is_file() else root
        candidates = {root} | {p.parent for name in (METRICS_FILE, SUMMARY_FILE) for p in root.rglob(name)}
        for d in candidates:
            if any(part == "wandb" or part.startswith(".") for part in d.relative_to(root).parts):
                continue
            resolved = d.resolve()
            if any(resolved == s or s in resolved.parents for s in skip):
                continue
            if _is_run_dir(d):
                found.add(resolved)
    return sorted(found, key=_natural_key)


def run_labels(dirs: Sequence[Path], min_parts: int = 1) -> dict[Path, str]:
    """A label per run directory: its last `min_parts` or more path components, as many as make every label
    unique (two sweeps' job `0` become `sweep_a/0` and `sweep_b/0`, not one pooled `0`)."""
    parts = [Path(d).resolve().parts for d in dirs]
    longest = max((len(p) for p in parts), default=1)
    for k in range(min(max(1, min_parts), longest), longest + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            break
    return dict(zip(dirs, labels, strict=True)) if parts else {}


def _natural_key(p: Path) -> list[Any]:
    """Sort sweep job folders 0, 1, ..., 10 numerically."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(p)) if t]


def run_status(run_dir: str | Path) -> str | None:
    """summary.json's status (completed, failed, interrupted, running), None without a readable one."""
    summary = _read_json(Path(run_dir) / SUMMARY_FILE)
    status = summary.get("status") if isinstance(summary, dict) else None
    return None if status is None else str(status)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_rows(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            warnings.append(f"{path}:{i}: unreadable line skipped")
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def saved_config(path: str | Path) -> dict[str, Any]:
    """A run directory's config.yaml as a dict ({} when absent or unreadable)."""
    try:
        cfg = yaml.safe_load((Path(path) / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def load_run(path: str | Path) -> Run:
    """Read one run directory; unreadable files become warnings, never exceptions."""
    d = Path(path)
    run = Run(path=d)
    run.rows = _read_rows(d / METRICS_FILE, run.warnings)
    bad: dict[str, int] = {}  # evaluations that are NaN or inf: left out of every curve and score, said so
    for row in run.rows:
        for k, v in row.items():
            if k.startswith("eval/") and isinstance(v, float) and not math.isfinite(v):
                bad[k] = bad.get(k, 0) + 1
    if bad:
        run.warnings.append(f"{d}: non-finite evaluations left out (a final score is then the last finite one): "
                            + ", ".join(f"{k} x{n}" for k, n in sorted(bad.items())))
    if (d / CONFIG_FILE).is_file():
        try:
            cfg = yaml.safe_load((d / CONFIG_FILE).read_text())
            run.config = cfg if isinstance(cfg, dict) else {}
        except (OSError, yaml.YAMLError) as exc:
            run.warnings.append(f"{d / CONFIG_FILE}: unreadable ({type(exc).__name__})")
    else:
        run.warnings.append(f"{d}: no {CONFIG_FILE}")
    if (d / SUMMARY_FILE).is_file():
        summary = _read_json(d / SUMMARY_FILE)
        if isinstance(summary, dict):
            run.summary = summary
        else:
            run.warnings.append(f"{d / SUMMARY_FILE}: unreadable")
    return run


def load_runs(paths: Iterable[str | Path], exclude: Iterable[str | Path] = ()) -> list[Run]:
    """Load every run directory found below `paths`."""
    return [load_run(d) for d in find_run_dirs(paths, exclude)]


def get_config_value(config: Mapping[str, Any], dotted: str, default: Any = MISSING) -> Any:
    """Value at a dotted path (`optimizer.name`) in a nested config; list items by index (`tasks.0`)."""
    node: Any = config
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return default
    return node


def _value_str(v: Any) -> str:
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)
    return str(v)


def group_label(keys: Sequence[str], values: Sequence[Any], short: bool = False) -> str:
    """Display label of a group, e.g. `optimizer.name=adam, transfer.mode=none`; `short` names a config node
    with a `_target_` by its class (`optimizer=RMSprop` for `--by optimizer`)."""
    def text(v: Any) -> str:
        if short and isinstance(v, dict) and isinstance(v.get("_target_"), str):
            return v["_target_"].rsplit(".", 1)[-1]
        return _value_str(v)

    return ", ".join(f"{k}={text(v)}" for k, v in zip(keys, values, strict=True))


def _sort_key(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        (0, float(v), "")
        if isinstance(v, int | float) and not isinstance(v, bool)
        else (1, 0.0, _value_str(v))
        for v in values
    )


def _config_leaves(config: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(config, Mapping) and config:
        return {k: v for key, sub in config.items() for k, v in _config_leaves(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: _value_str(config)}


def varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dotted config keys whose values differ between `configs` (seed included), sorted."""
    leaves = [_config_leaves(c) for c in configs]
    keys = set().union(*leaves) if leaves else set()
    return sorted(k for k in keys if len({leaf.get(k, MISSING) for leaf in leaves}) > 1)


_COPIES = ("model.net", "model.optimizer", "model.scheduler")  # the model's copies of the net, optimizer, ... groups


def _telling_keys(keys: Sequence[str]) -> list[str]:
    """The keys a user would group by: without per-run paths and names (a resumed run's ckpt_path), seeds derived
    from `seed`, the model's copies of other groups, the siblings of a differing `_target_` or the children of a
    differing parent."""
    def per_run(k: str) -> bool:
        last = k.rsplit(".", 1)[-1]
        return (k.startswith(("paths.", "hydra.")) or k == "ckpt_path" or last in ("dirpath", "name")
                or last.endswith("dir") or (last == "seed" and k != "seed")
                or k.startswith(tuple(f"{c}." for c in _COPIES)))

    kept = [k for k in keys if not per_run(k)]
    targets = {k.rsplit(".", 1)[0] for k in kept if k.endswith("._target_")}
    kept = [k for k in kept if k.endswith("._target_") or k.rsplit(".", 1)[0] not in targets]
    return [k for k in kept if not any(k.startswith(f"{p}.") for p in kept)]


def mixed_group_notes(groups: Mapping[str, Sequence[Run]], by: Sequence[str], limit: int = 4) -> list[str]:
    """A warning per group whose runs differ in config keys other than the seed and the `by` keys (an optimizer
    sweep compared without --by, `transfer.torso_lr_scale`, `transfer.checkpoint`, ...): they are pooled as if they
    were seeds of one setting."""
    notes = []
    for name, members in groups.items():
        configs = [r.config for r in members]
        keys = [k for k in _telling_keys(varying_keys(configs)) if k != "seed" and k not in by
                and not k.startswith(tuple(f"{b}." for b in by))] if len(members) > 1 else []
        if not keys:
            continue
        detail = "; ".join(f"{k}: " + ", ".join(
            f"{v} ({n} run{'s' if n > 1 else ''})"
            for v, n in Counter(_value_str(get_config_value(c, k)) for c in configs).items()) for k in keys[:limit])
        more = f"; and {len(keys) - limit} more key(s)" if len(keys) > limit else ""
        notes.append(f"group {name}: its {len(members)} runs differ in {', '.join(keys)} ({detail}{more}) but are "
                     f"pooled as seeds of one setting; split them with --by {keys[0]}, or report each setting's runs "
                     "separately")
    return notes


def check_group_keys(configs: Sequence[Mapping[str, Any]], keys: Sequence[str], flag: str = "--by") -> None:
    """A grouping key that no run's config has (a typo: every run would land in one `<missing>` group) is refused,
    naming the keys that do tell these runs apart."""
    for key in keys:
        if configs and all(get_config_value(c, key) is MISSING for c in configs):
            differ = _telling_keys(varying_keys(configs))
            hint = (f"keys whose values differ between these runs: {', '.join(differ[:15])}"
                    f"{' ...' if len(differ) > 15 else ''}") if differ else "these runs' configs do not differ"
            raise ValueError(f"{flag} {key}: no run's config.yaml has this key; {hint}")


def group_runs(runs: Iterable[Run], keys: Sequence[str]) -> dict[str, list[Run]]:
    """Runs grouped by their config values at the dotted `keys`, as {label: runs}, sorted by value; a key that no
    run has is refused (check_group_keys)."""
    runs = list(runs)
    check_group_keys([r.config for r in runs], keys)
    by_values: dict[tuple[str, ...], tuple[tuple[Any, ...], list[Run]]] = {}
    for run in runs:
        values = tuple(get_config_value(run.config, k) for k in keys)
        ident = tuple(_value_str(v) for v in values)
        by_values.setdefault(ident, (values, []))[1].append(run)
    ordered = sorted(by_values.values(), key=lambda item: _sort_key(item[0]))
    labels = [group_label(keys, values, short=True) for values, _ in ordered]
    if len(set(labels)) < len(labels):  # two nodes with one class (e.g. Adam at two learning rates): full labels
        labels = [group_label(keys, values) for values, _ in ordered]
    return {label: members for label, (_, members) in zip(labels, ordered, strict=True)}


def config_group_labels(configs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """Each config's group label at the dotted `keys`, as `group_runs` names groups: a node with a `_target_` by its
    class (`optimizer=Adam`), unless two groups would then share a label (full values then)."""
    values = [[get_config_value(c, k) for k in keys] for c in configs]
    full = [group_label(keys, v) for v in values]
    short = [group_label(keys, v, short=True) for v in values]
    same_split = len(set(zip(full, short, strict=True))) == len(set(short))
    return short if same_split else full


def task_metrics(runs: Iterable[Run], tasks: Sequence[str] | None = None) -> dict[str, str]:
    """{task: metric} for every `eval/<task>/normalized`, falling back to `eval/<task>/return`."""
    kinds: dict[str, set[str]] = {}
    for run in runs:
        for name in run.metric_names():
            m = _TASK_RE.match(name)
            if m:
                kinds.setdefault(m["task"], set()).add(m["kind"])
    wanted = sorted(kinds) if tasks is None else [t for t in tasks if t in kinds]
    return {t: f"eval/{t}/{'normalized' if 'normalized' in kinds[t] else 'return'}" for t in wanted}


def make_grid(step_arrays: Iterable[Any], n_points: int = 200) -> np.ndarray:
    """Common env_steps grid: the union of all eval steps, or `n_points` evenly spaced if the union is larger."""
    arrays = [np.asarray(a, dtype=float).ravel() for a in step_arrays]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return np.empty(0)
    union = np.unique(np.concatenate(arrays))
    return union if union.size <= n_points else np.linspace(union[0], union[-1], n_points)


def interpolate_on_grid(steps: Any, values: Any, grid: Any) -> np.ndarray:
    """Linear interpolation of one curve on `grid`; NaN outside the run's [first, last] eval step."""
    x, y, g = (np.asarray(a, dtype=float).ravel() for a in (steps, values, grid))
    out = np.full(g.shape, np.nan)
    if x.size:
        inside = (g >= x[0]) & (g <= x[-1])
        out[inside] = np.interp(g[inside], x, y)
    return out


def curves_on_grid(runs: Sequence[Run], metric: str, grid: Any) -> np.ndarray:
    """(runs, points) matrix of each run's `metric` interpolated on `grid` (NaN where a run has no data)."""
    g = np.asarray(grid, dtype=float)
    if not runs:
        return np.empty((0, g.size))
    return np.stack([interpolate_on_grid(*run.series(metric), g) for run in runs])


def learning_curves(
    groups: Mapping[str, Sequence[Run]],
    metric: str,
    n_points: int = 200,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per group: mean over runs of `metric` on a grid shared by all groups, with a bootstrap CI band."""
    with_data = {label: [r for r in runs if r.series(metric)[0].size] for label, runs in groups.items()}
    with_data = {label: runs for label, runs in with_data.items() if runs}
    grid = make_grid((r.series(metric)[0] for runs in with_data.values() for r in runs), n_points)
    out: dict[str, Any] = {"metric": metric, "grid": grid, "groups": {}}
    for label, runs in with_data.items():
        mu, low, high = stats.bootstrap_mean_band(curves_on_grid(runs, metric, grid), n_boot, ci, seed)
        out["groups"][label] = {"n_runs": len(runs), "mean": mu, "low": low, "high": high}
    return out


def steps_to_threshold(run: Run, metric: str, threshold: float) -> float:
    """First env_steps at which `metric` >= `threshold`, or inf if it never gets there."""
    steps, values = run.series(metric)
    hit = np.flatnonzero(values >= threshold)
    return float(steps[hit[0]]) if hit.size else math.inf


def threshold_summary(runs: Sequence[Run], metric: str, threshold: float) -> dict[str, Any]:
    """Median over runs of the steps to reach `threshold` (None when not reached by the median run)."""
    reach = np.array([steps_to_threshold(r, metric, threshold) for r in runs], dtype=float)
    med = float(np.median(reach)) if reach.size else math.inf
    return {
        "steps_to_threshold": med if math.isfinite(med) else None,
        "n_reached": int(np.isfinite(reach).sum()),
    }


def final_score_matrix(runs: Sequence[Run], metrics: Sequence[str]) -> tuple[np.ndarray, list[Run]]:
    """(runs, metrics) final scores of the runs that have every metric, and those runs."""
    rows, kept = [], []
    for run in runs:
        finals = [run.final_score(m) for m in metrics]
        if finals and all(v is not None for v in finals):
            rows.append(finals)
            kept.append(run)
    return np.array(rows, dtype=float).reshape(len(rows), len(metrics)), kept


def score_row(
    runs: Sequence[Run],
    metrics: Sequence[str],
    threshold: float | None = None,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    backend: str = "auto",
) -> dict[str, Any] | None:
    """Final-score aggregates (IQM/mean/median + CIs) over runs x `metrics`, AUC and steps to threshold."""
    scores, kept = final_score_matrix(runs, metrics)
    if not kept:
        return None
    row: dict[str, Any] = {"n_runs": len(kept),
                           "n_incomplete": sum(r.status not in ("completed", "failed") for r in kept),
                           "n_failed_scored": sum(r.status == "failed" for r in kept)}  # compare --failed
    row.update(stats.aggregate(scores, n_boot=n_boot, ci=ci, seed=seed, backend=backend))
    per_run = scores.mean(axis=1)  # across-seed spread of each run's final score (mean over tasks)
    row["std"] = float(per_run.std(ddof=1)) if per_run.size > 1 else 0.0
    row["min"], row["max"] = float(per_run.min()), float(per_run.max())
    aucs = [stats.area_under_curve(*r.series(m)) for r in kept for m in metrics if r.series(m)[0].size]
    row["auc"] = float(np.mean(aucs)) if aucs else None
    seconds = [s for s in (r.final(TRAIN_SECONDS) for r in kept) if s is not None]
    row["train_minutes"] = float(np.median(seconds)) / 60 if seconds else None  # evaluation time excluded
    if threshold is not None and len(metrics) == 1:
        row.update(threshold_summary(kept, metrics[0], threshold))
    row["final_scores"] = scores.tolist()
    return row


def comparable(metrics: Iterable[str]) -> bool:
    """Scores that may share one average, table or profile: normalized scores of any tasks, or one metric."""
    metrics = list(metrics)
    return len(metrics) <= 1 or all(m.endswith("/normalized") for m in metrics)


def score_tables(
    groups: Mapping[str, Sequence[Run]],
    tasks: Mapping[str, str],
    headline: str | None,
    threshold: float,
    return_threshold: float | None = None,
    **boot: Any,
) -> list[dict[str, Any]]:
    """Tables of final scores: the headline metric, one per task, and all tasks together (if > 1). The env steps
    to `threshold` are timed on normalized scores, to `return_threshold` (when given) on returns: one bar for
    both would time a CartPole return against 0.9."""
    def bar(metric: str) -> float | None:
        return threshold if metric.endswith("normalized") else return_threshold

    specs: list[tuple[str, str, list[str], float | None]] = []
    if headline and any(r.final(headline) is not None for runs in groups.values() for r in runs):
        specs.append((headline, "headline", [headline], bar(headline)))
    specs += [(task, "task", [metric], bar(metric)) for task, metric in tasks.items()]
    if len(tasks) > 1 and comparable(tasks.values()):  # not CartPole's and Acrobot's returns in one average
        specs.append(("all tasks", "aggregate", list(tasks.values()), None))
    tables = []
    for name, kind, metrics, thr in specs:
        rows = {label: score_row(runs, metrics, thr, **boot) for label, runs in groups.items()}
        rows = {label: row for label, row in rows.items() if row is not None}
        tables.append({"name": name, "kind": kind, "metrics": metrics, "rows": rows, "threshold": thr})
    return tables


def performance_profiles(
    groups: Mapping[str, Sequence[Run]], metrics: Sequence[str], n_taus: int = 201
) -> dict[str, Any]:
    """Fraction of (run, task) final scores above each tau, per group, on a tau grid shared by all groups."""
    scores = {label: final_score_matrix(runs, metrics)[0] for label, runs in groups.items()}
    scores = {label: s for label, s in scores.items() if s.size}
    if not scores:
        return {"metrics": list(metrics), "taus": [], "groups": {}}
    every = np.concatenate([s.ravel() for s in scores.values()])
    lo, hi = min(0.0, float(every.min())), max(float(every.max()), 0.0)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    taus = np.linspace(lo - pad, hi + pad, n_taus)
    profiles = {label: stats.performance_profile(s, taus) for label, s in scores.items()}
    return {"metrics": list(metrics), "taus": taus, "groups": profiles}


@dataclass
class Comparison:
    """Result of `compare_runs`: the JSON-ready summary plus the arrays behind the plots."""

    summary: dict[str, Any]
    curves: dict[str, dict[str, Any]]
    profiles: dict[str, Any]


def compare_runs(
    paths: Sequence[str | Path],
    by: Sequence[str] = ("experiment_name",),
    metric: str | None = "eval/mean_normalized",
    tasks: Sequence[str] | None = None,
    threshold: float = 0.9,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    n_points: int = 200,
    exclude: Iterable[str | Path] = (),
    skip_incomplete: bool = False,
    backend: str = "auto",
    task_steps: bool = False,
    window: int = 1,
    return_threshold: float | None = None,
    failed: str | float = "exclude",
) -> Comparison:
    """Load the runs below `paths`, group them by config `by` keys and compute curves, tables and profiles.
    `task_steps`: each task's curves, AUC and env steps to threshold over the run's env steps on that task
    (Run.series), for a multi-task agent against single-task agents. `window`: each run's final score is the mean
    of its last `window` evaluations (Run.final_score). `failed`: what a run that failed after it began training
    (diverged, crashed) counts as: `exclude` (left out of scores and curves, counted beside its group's), `last`
    (its last evaluation before it failed) or a number (that final score on every metric, e.g. 0 normalized: no
    better than random); either way it enters the curves as far as it got and never reaches the threshold after
    it stopped. A run that failed before it logged anything (bad input) is always left out."""
    failed_score = parse_failed(failed)
    if window < 1:
        raise ValueError(f"--window={window}: the final score averages the last N >= 1 evaluations")
    if n_points < 2:
        raise ValueError(f"--points={n_points}: the curves' env-step grid needs at least 2 points")
    runs = load_runs(paths, exclude)
    if not runs:  # as the other report scripts: one line, not an empty report
        raise FileNotFoundError(f"no run directory (metrics.jsonl, or summary.json with a status) at or below "
                                f"{', '.join(map(str, paths))}")
    for run in runs:
        run.task_steps, run.window, run.failed_score = task_steps, window, failed_score
    scored = failed != "exclude"

    def scorable(r: Run) -> bool:  # a failed run that trained, with a score: its own evaluation or the given one
        return scored and bool(r.rows) and (failed_score is not None
                                            or any(m.startswith("eval/") for m in r.metric_names()))

    failed = [r for r in runs if r.status == "failed" and not scorable(r)]
    usable = [r for r in runs if (r.status == "failed" and scorable(r))
              or (r.status != "failed" and (r.status == "completed" or not skip_incomplete))]
    unscored = [f"{r.path}: failed before its first evaluation: --failed last has no score for it; left out of every "
                "table (counted as failed; --failed 0 scores it)" for r in failed if scored and r.rows]
    groups = group_runs(usable, by)
    task_map = task_metrics(usable, tasks)
    if metric and metric != DEFAULT_METRIC and usable and not any(metric in r.metric_names() for r in usable):
        logged = sorted({m for r in usable for m in r.metric_names() if m.startswith("eval/")})
        raise ValueError(f"--metric {metric}: no run logged it; their evaluation metrics: {', '.join(logged)}")
    boot = {"n_boot": n_boot, "ci": ci, "seed": seed, "backend": backend}
    headline_missing = (metric == DEFAULT_METRIC and usable
                        and not any(metric in r.metric_names() for r in usable))
    tables = score_tables(groups, task_map, metric, threshold, return_threshold, **boot)
    if any(r.status == "failed" for r in runs):  # each group's failed runs (diverged, say) beside its scores:
        failed_in = {label: sum(r.status == "failed" for r in members)  # leaving them out unmentioned flatters it
                     for label, members in group_runs([*usable, *failed], by).items()}
        for table in tables:
            for label, row in table["rows"].items():
                row["n_failed"] = failed_in.get(label, 0)
            # a group whose runs all failed (an optimizer whose every seed diverged) has no scores, but a row
            table["failed_only"] = {label: n for label, n in failed_in.items() if n and label not in table["rows"]}
    curves = {
        t["name"]: learning_curves(groups, t["metrics"][0], n_points, n_boot, ci, seed)
        for t in tables
        if t["kind"] != "aggregate"
    }
    profile_metrics = list(task_map.values()) if comparable(task_map.values()) else []
    profiles = performance_profiles(groups, profile_metrics or ([metric] if tables and not task_map else []))
    summary = {
        "inputs": [str(p) for p in paths],
        "group_by": list(by),
        "metric": metric,
        "threshold": threshold,
        "return_threshold": return_threshold,
        "ci": ci,
        "n_boot": n_boot,
        "seed": seed,
        "stats_backend": _backend_name(backend),
        "n_runs": len(runs),
        "task_steps": task_steps,
        "window": window,
        "failed_runs": "exclude" if not scored else ("last" if failed_score is None else failed_score),
        "groups": [_group_info(label, members, by) for label, members in groups.items()],
        "tasks": task_map,
        "tables": tables,
        "failed": [_failed_info(r, by) for r in failed],
        "failed_scored": [_failed_info(r, by) for r in usable if r.status == "failed"],
        "incomplete": [str(r.path) for r in usable if r.status not in ("completed", "failed")],
        "skipped_incomplete": [
            str(r.path) for r in runs if r.status not in ("failed", "completed") and skip_incomplete
        ],
        "warnings": _warnings(runs, tasks, task_map, len(usable)) + unscored
        + _coverage_warnings(groups, task_map, tables) + mixed_group_notes(groups, by)
        + ([f"no headline table: no run logged {DEFAULT_METRIC} (its tasks have no normalized score, e.g. gym ids); "
            "each task's return has its own table (--metric eval/<task>/return makes one the headline)"]
           if headline_missing else []),
    }
    return Comparison(summary=summary, curves=curves, profiles=profiles)


def parse_failed(failed: str | float) -> float | None:
    """compare --failed: None for `exclude` and `last` (the run's own values), else the failed runs' score."""
    if failed in ("exclude", "last"):
        return None
    try:
        value = float(failed)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"--failed {failed}: expected exclude, last or a finite number (the score a failed run "
                         "counts as, e.g. 0 normalized)")
    return value


def _backend_name(backend: str) -> str:
    if backend == "numpy" or not stats.rliable_available():
        return (
            "numpy" if backend == "numpy" else f"numpy (rliable unavailable: {stats.rliable_import_error()})"
        )
    return "rliable"


def _group_info(label: str, runs: Sequence[Run], by: Sequence[str]) -> dict[str, Any]:
    return {
        "label": label,
        "keys": {k: get_config_value(runs[0].config, k) for k in by},
        "n_runs": len(runs),
        "n_completed": sum(r.status == "completed" for r in runs),
        "runs": [str(r.path) for r in runs],
    }


def _failed_info(run: Run, by: Sequence[str]) -> dict[str, Any]:
    values = [get_config_value(run.config, k) for k in by]
    return {
        "path": str(run.path),
        "group": group_label(by, values, short=True),
        "error": run.error or "(no error recorded)",
    }


def _warnings(
    runs: Sequence[Run], tasks: Sequence[str] | None, task_map: Mapping[str, str], n_usable: int
) -> list[str]:
    out = [w for r in runs for w in r.warnings]
    out += [
        f"task {t!r}: no eval/{t}/normalized or eval/{t}/return in any run"
        for t in tasks or ()
        if t not in task_map
    ]
    if not runs:
        out.append("no run directories found")
    elif not n_usable:
        out.append("no usable runs (all failed or skipped)")
    return out


def _coverage_warnings(groups: Mapping[str, Sequence[Run]], task_map: Mapping[str, str],
                       tables: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the tables leave out or average unevenly: runs without evaluations, an all-tasks table no run fills,
    groups whose runs end at different env steps (their curve's tail averages fewer runs)."""
    out = [f"group {label}: 1 run: its CIs are that run's value, not intervals (several seeds measure the spread)"
           for label, runs in groups.items() if len(runs) == 1]
    for label, runs in groups.items():
        for r in runs:
            if not any(m.startswith("eval/") for m in r.metric_names()):
                if r.status == "failed":
                    continue  # scored all the same (compare --failed <score>)
                out.append(f"{r.path}: no evaluation logged; left out of every table")
        ends = sorted({max(float(r.series(m)[0][-1]) for m in task_map.values() if r.series(m)[0].size)
                       for r in runs if any(r.series(m)[0].size for m in task_map.values())})  # each run's last
        if len(ends) > 1 and ends[0] < 0.9 * ends[-1]:
            out.append(f"group {label}: its runs' last evaluations lie between {ends[0]:,.0f} and {ends[-1]:,.0f} "
                       f"env steps; its curves beyond {ends[0]:,.0f} average fewer runs")
    if len(task_map) > 1 and not comparable(task_map.values()):
        out.append(f"tasks scored by return ({', '.join(task_map)}): no all-tasks table or performance profile "
                   "averages returns of different tasks; each task has its own table")
    for t in tables:
        if t["kind"] == "aggregate" and not t["rows"]:
            out.append(f"no run has all {len(t['metrics'])} tasks ({', '.join(task_map)}): the all-tasks table and "
                       "performance profiles are empty; --tasks picks the ones to compare")
    if groups and not any(t["rows"] for t in tables):
        out.append("no table has a run: nothing to compare")
    return out


def to_jsonable(obj: Any) -> Any:
    """Plain-JSON copy of `obj`: numpy to lists/floats, NaN/inf to None, Paths to str."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def slug(name: str) -> str:
    """File-name-safe version of a task or metric name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "metric"


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}" if abs(v) >= 1e4 else f"{v:.{digits}f}"


def _fmt_ci(row: Mapping[str, Any], name: str) -> str:
    low, high = row[f"{name}_ci"]
    return f"{_fmt(row[name])} [{_fmt(low)}, {_fmt(high)}]"


def _md_cell(text: Any, limit: int = 300) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _threshold_cell(row: Mapping[str, Any]) -> str:
    reached = f"({row['n_reached']}/{row['n_runs']})"
    steps = row.get("steps_to_threshold")
    return f"not reached {reached}" if steps is None else f"{int(round(steps)):,} {reached}"


def _table_markdown(table: Mapping[str, Any], ci: float) -> list[str]:
    pct = f"{round(100 * ci)}% CI"
    if table["kind"] == "aggregate":
        title = f"## All tasks ({len(table['metrics'])} tasks; statistics over runs x tasks)"
    elif table["kind"] == "task":
        title = f"## Task `{table['name']}` (`{table['metrics'][0]}`)"
    else:
        title = f"## `{table['name']}`"
    header = ["group", "runs", f"IQM [{pct}]", f"mean [{pct}]", f"median [{pct}]", "std [min, max] over runs", "AUC"]
    threshold = table.get("threshold")
    with_threshold = table["kind"] != "aggregate" and threshold is not None
    header += [f"env steps to {threshold:g}"] if with_threshold else []
    header += ["train min"]
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in table["rows"].items():
        n = f"{row['n_runs']}" + (f" ({row['n_incomplete']} incomplete)" if row["n_incomplete"] else "")
        scored = row.get("n_failed_scored", 0)
        n += f" ({scored} failed, scored)" if scored else ""
        n += f" (+{row['n_failed'] - scored} failed)" if row.get("n_failed", 0) > scored else ""
        cells = [_md_cell(label), n, _fmt_ci(row, "iqm"), _fmt_ci(row, "mean"), _fmt_ci(row, "median")]
        cells += [f"{_fmt(row.get('std'))} [{_fmt(row.get('min'))}, {_fmt(row.get('max'))}]"]
        cells += [_fmt(row["auc"])] + ([_threshold_cell(row)] if with_threshold else [])
        cells += ["-" if row.get("train_minutes") is None else f"{row['train_minutes']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for label, n_failed in table.get("failed_only", {}).items():
        lines.append(f"| {_md_cell(label)} | 0 (+{n_failed} failed) |" + " - |" * (len(header) - 2))
    if not table["rows"] and not table.get("failed_only"):
        lines.append("| (no run has this metric) |" + " |" * (len(header) - 1))
    return [*lines, ""]


def render_markdown(summary: Mapping[str, Any]) -> str:
    """summary.md: settings, one final-score table per metric, plots, failed and incomplete runs, warnings."""
    s = summary
    by = ", ".join(f"`{k}`" for k in s["group_by"])
    all_failed = {label for t in s["tables"] for label in t.get("failed_only", {})}
    lines = [
        "# Run comparison",
        "",
        f"{s['n_runs']} run(s) from {', '.join(f'`{p}`' for p in s['inputs'])}, grouped by {by} into "
        f"{len(s['groups'])} group(s)"
        + (f" and {len(all_failed)} whose runs all failed" if all_failed else "")
        + f"; {len(s['failed']) + len(s.get('failed_scored', []))} failed, "
        f"{len(s['incomplete'])} incomplete.",
        "",
        ("Final score = last eval value of each run." if s.get("window", 1) <= 1 else
         f"Final score = mean of each run's last {s['window']} eval values.")
        + {"exclude": " Failed runs are left out of scores and curves (counted beside their group's).",
           "last": " A failed run scores its last evaluation before it failed."}.get(
            str(s.get("failed_runs", "exclude")), f" A failed run scores {s.get('failed_runs')} on every metric.")
        + f" Point estimates with {round(100 * s['ci'])}% "
        f"stratified-bootstrap CIs ({s['n_boot']} resamples, {s['stats_backend']}). AUC = mean over runs of "
        f"the area under the eval curve divided by its env-step span. std [min, max] over runs: spread across "
        f"runs (seeds) of each run's final score (mean over tasks). Env steps to {s['threshold']:g} (normalized "
        "scores" + ("" if s.get("return_threshold") is None else f"; returns: {s['return_threshold']:g}")
        + "): median over runs of the first eval at or above the threshold (runs that never reached it count as "
        "slower than any that did; runs that reached it / runs). Train min: median "
        "over runs of the minutes spent training (`time/train_seconds`, evaluation excluded; a shared machine's "
        "load moves it)."
        + (" Env steps of a task (curves, AUC, env steps to threshold): the run's env steps on that task "
           "(`time/<task>/env_steps` where a multi-task run logs it), not summed over its tasks."
           if s.get("task_steps") else ""),
        "",
    ]
    for table in s["tables"]:
        lines += _table_markdown(table, s["ci"])
    lines += _plots_markdown(s)
    for title, key in (("Failed runs (skipped)", "failed"), ("Failed runs (scored, included)", "failed_scored")):
        if s.get(key):
            lines += [f"## {title}", "", "| run | group | error |", "|---|---|---|"]
            lines += [f"| `{f['path']}` | {_md_cell(f['group'])} | {_md_cell(f['error'])} |" for f in s[key]]
            lines.append("")
    for title, key in (
        ("Incomplete runs (running, interrupted or without a summary.json status; included)", "incomplete"),
        ("Incomplete runs (skipped)", "skipped_incomplete"),
        ("Warnings", "warnings"),
    ):
        if s.get(key):
            lines += [f"## {title}", "", *(f"- {_md_cell(x, 500)}" for x in s[key]), ""]
    return "\n".join(lines)


def _plots_markdown(summary: Mapping[str, Any]) -> list[str]:
    if summary.get("plots_skipped"):
        return ["## Plots", "", f"Plots skipped: {summary['plots_skipped']}", ""]
    plots = summary.get("plots") or []
    return ["## Plots", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""] if plots else []


def _new_figure(width: float = 7.0, height: float = 4.5) -> Any:
    """A matplotlib Figure drawn with Agg, independent of pyplot's global backend (raises ImportError)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _colors(labels: Iterable[str]) -> dict[str, str]:
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def plot_learning_curves(
    curves: Mapping[str, Any], path: str | Path, title: str, colors: Mapping[str, str]
) -> Path:
    """PNG of one metric's mean curve per group over env steps, with its bootstrap CI band."""
    fig = _new_figure()
    ax = fig.subplots()
    grid = np.asarray(curves["grid"], dtype=float)
    for label, c in curves["groups"].items():
        color = colors.get(label)
        ax.plot(grid, c["mean"], color=color, label=f"{label} (n={c['n_runs']})")
        ax.fill_between(grid, c["low"], c["high"], color=color, alpha=0.2, linewidth=0)
    ax.set(title=title, xlabel="environment steps", ylabel=curves["metric"])
    ax.grid(alpha=0.3)
    if curves["groups"]:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_performance_profiles(
    profiles: Mapping[str, Any], path: str | Path, colors: Mapping[str, str]
) -> Path:
    """PNG of the fraction of (run, task) final scores above tau, per group."""
    fig = _new_figure()
    ax = fig.subplots()
    for label, fractions in profiles["groups"].items():
        ax.plot(profiles["taus"], fractions, color=colors.get(label), label=label, drawstyle="steps-post")
    metrics = profiles["metrics"]
    xlabel = metrics[0] if len(metrics) == 1 else f"final score ({len(metrics)} tasks)"
    ax.set(
        title="Performance profiles",
        xlabel=f"{xlabel} threshold tau",
        ylabel="fraction of runs with score > tau",
    )
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if profiles["groups"]:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return Path(path)


def write_plots(comparison: Comparison, out_dir: Path) -> list[str]:
    """Learning-curve and performance-profile PNGs in `out_dir`; file names (raises ImportError w/o matplotlib)."""
    colors = _colors(g["label"] for g in comparison.summary["groups"])
    names = []
    for name, curves in comparison.curves.items():
        if curves["groups"]:
            title = f"task {name}" if name in comparison.summary["tasks"] else name
            names.append(
                plot_learning_curves(curves, out_dir / f"curves_{slug(name)}.png", title, colors).name
            )
    if comparison.profiles["groups"]:
        names.append(
            plot_performance_profiles(comparison.profiles, out_dir / "performance_profiles.png", colors).name
        )
    return names


def write_report(comparison: Comparison, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write the PNGs (unless matplotlib is missing), summary.md and summary.json; return written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "summary.json").is_file():  # an earlier report's plots would sit beside this one's tables
        for old in [*out.glob("curves_*.png"), out / "performance_profiles.png"]:
            old.unlink(missing_ok=True)
    summary = comparison.summary
    summary["plots"], summary["plots_skipped"] = [], None if plots else "disabled (--no-plots)"
    if plots:
        try:
            summary["plots"] = write_plots(comparison, out)
        except ImportError as exc:
            summary["plots_skipped"] = f"matplotlib is not installed ({exc}); install the `report` extra"
    (out / "summary.json").write_text(json.dumps(to_jsonable(summary), indent=2) + "\n")
    (out / "summary.md").write_text(render_markdown(summary))
    return [out / p for p in summary["plots"]] + [out / "summary.md", out / "summary.json"]

#!/usr/bin/env python
"""Is one multi-task setting faster than another? Compares settings from bench_mtl.py records.

bench_mtl.py answers "multi-task vs single-task"; this answers "option vs baseline", which its per-setting CIs
cannot: with few seeds the CIs of two settings overlap even when one is better, and they can look apart when
the seeds merely drew well. For each setting (one or more records, pooled: every run counts, including a seed
repeated on another machine) it prints the runs, how many solved, and the median env steps (summed over tasks)
to the criterion with a bootstrap CI; then each setting against the first: the probability of improvement
(the chance that one random run of the setting needs fewer env steps than one random run of the baseline; 0.5 =
no difference; runs that never got there count as slower than any that did), its bootstrap CI, and a two-sided
permutation p-value. The multi-task env steps are compared directly, not through ratios to single-task agents:
both settings would share that denominator; unless the option changes the single-task agents too (an observation
option such as the stop point), where `--vs-single` compares each run's ratio to its own seed's single-task agents
(summed env steps; from bench_mtl.py records, which hold both).

    python scripts/compare_mtl.py --setting preset docs/results/mtl/a.json docs/results/mtl/b.json \
        --setting eps80k outputs/multirun/eps80k/<time>

Each --setting takes a label and its runs: bench_mtl.py records (--out files) and/or multi-task train.py run
directories (logger=jsonl; e.g. a multirun over seeds: its folder stands for all its runs), timed here as bench_mtl.py times them: each task at its
bar (normalized >= --threshold for the driving tasks; a gymnasium id's reward_threshold or --solve-return's mean eval
return). Runs timed at different bars are refused.

Criteria (--criterion): `all` (every task at its bar at one evaluation; bench_mtl's main criterion), `each`
(every task has reached it once), `own` (each task's own env steps until it first reached it, summed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtdqn.evaluation import stats  # noqa: E402

CRITERIA = ("all", "each", "own")
SWEEP_FILES = ("multirun.yaml",)  # Hydra's record of a multirun, beside its job folders: not a run


def run_cost(mtl: dict, criterion: str) -> float:
    """Env steps (summed over tasks) a multi-task run needed by `criterion`; inf when it never got there."""
    if criterion == "all":
        v = mtl.get("solved_steps")
    elif criterion == "each":
        v = mtl.get("each_steps")
    elif criterion == "own":
        own = mtl.get("own_steps")
        v = None if not own or any(x is None for x in own.values()) else sum(own.values())
    else:
        raise ValueError(f"criterion={criterion!r}: allowed {', '.join(CRITERIA)}")
    return math.inf if v is None else float(v)


def _record_runs(path: Path, threshold: float) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise SystemExit(f"{path}: not a bench_mtl.py record (no 'runs' list)")
    recorded = (data.get("args") or {}).get("threshold", threshold)
    if recorded != threshold:
        raise SystemExit(f"{path}: timed at threshold {recorded}, not --threshold {threshold}; compare runs "
                         "timed alike")
    return [{"seed": r.get("seed"), "source": path.name, "mtl": r["mtl"],
             "single": (r.get("single") or {}).get("solved_steps")} for r in data["runs"] if r.get("mtl")]


def _run_dir(path: Path, threshold: float, solve_return: Sequence[str] = ()) -> dict:
    import bench_mtl  # the same timing as bench_mtl's --runs (imports torch: only when a run directory is given)

    try:
        returns = dict(bench_mtl.parse_solve_return(x) for x in solve_return)
    except bench_mtl.argparse.ArgumentTypeError as exc:
        raise SystemExit(f"--solve-return {exc}") from None
    rd = bench_mtl.load_run_dir(path, threshold, returns, flag="")
    if rd.agent != "mtl":
        raise SystemExit(f"{path}: a single-task run ({rd.agent}); compare_mtl compares multi-task runs")
    return {"seed": rd.seed, "source": str(path), "mtl": bench_mtl.mtl_entry(rd.history, rd.wall, rd.bars, rd.shares)}


def _run_dirs(path: Path) -> list[Path]:
    """A run directory, or the runs below a sweep directory (a multirun's time folder or its parents)."""
    if (path / "config.yaml").is_file():
        return [path]
    from mtdqn.evaluation.compare import find_run_dirs

    found = [d for d in find_run_dirs([path]) if (d / "config.yaml").is_file()]
    if not found:
        raise SystemExit(f"{path}: neither a run directory (no config.yaml) nor a sweep with runs below it")
    return found


def _bars(mtl: dict, threshold: float) -> str:
    """A run's bars as text (records from before 2026-11-30 timed every task at normalized >= threshold)."""
    tasks = mtl.get("final") or mtl.get("own_steps") or {}
    bars = mtl.get("bars") or {t: ["normalized", threshold] for t in tasks}
    return ", ".join(f"{t} {m} >= {v:g}" for t, (m, v) in bars.items())


def _budget(mtl: dict) -> float | None:
    """The env steps a run could have solved within: its last env step, or for a run stopped once solved
    (callbacks.eval.stop_at_*) the budget it was configured with (None where not recorded: it ended at its cost,
    which is no limit on the others)."""
    if mtl.get("stopped_solved"):
        return mtl.get("configured_steps")
    return mtl.get("budget_steps")


def load_setting(paths: list[Path], criterion: str, threshold: float = 0.9, vs_single: bool = False,
                 solve_return: Sequence[str] = ()) -> list[dict]:
    """The multi-task runs of the records and run directories: [{'seed', 'source', 'cost', 'budget', 'single',
    'bars'}] ('single': the seed's single-task agents' summed env steps to solve, or None: one of them never solved;
    with `vs_single` only records)."""
    runs = []
    for path in paths:
        if path.is_dir():
            if vs_single:
                raise SystemExit(f"{path}: --vs-single needs bench_mtl.py records (a run directory has no single-task "
                                 "agents)")
            found = [_run_dir(d, threshold, solve_return) for d in _run_dirs(path)]
        elif path.name in SWEEP_FILES:  # `<sweep>/*` also lists Hydra's own files
            continue
        elif path.is_file():
            found = _record_runs(path, threshold)
        else:
            raise SystemExit(f"{path}: no such record or run directory")
        runs += [{"seed": r["seed"], "source": r["source"], "cost": run_cost(r["mtl"], criterion),
                  "budget": _budget(r["mtl"]),
                  "single": r.get("single"),
                  "bars": _bars(r["mtl"], threshold)} for r in found]
    if not runs:
        raise SystemExit(f"{', '.join(map(str, paths))}: no multi-task runs")
    return runs


def _kilo(v: float, ratio: bool = False) -> str:
    return "never" if math.isinf(v) else f"{v:.2f}" if ratio else f"{v / 1000:.0f}k"


def _median(costs: np.ndarray) -> float:
    # the lower middle value for even counts, so a median is always a run's own value (or inf: never)
    return float(np.sort(costs)[(costs.size - 1) // 2])


def _median_ci(costs: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    boot = np.sort(costs[rng.integers(0, costs.size, size=(n_boot, costs.size))], axis=1)[:, (costs.size - 1) // 2]
    return float(np.percentile(boot, 2.5, method="lower")), float(np.percentile(boot, 97.5, method="higher"))


def compare(settings: dict[str, list[dict]], n_boot: int = 2000, n_perm: int = 10000, seed: int = 0,
            vs_single: bool = False) -> dict:
    """Per setting: runs, solved, median [CI]; each later setting against the first: probability of
    improvement [CI] and the permutation p-value. `vs_single`: of each run's env steps divided by its seed's
    single-task agents' summed env steps (runs whose single-task agents never all solved have no ratio and are
    left out, counted in `no_single`)."""
    out: dict = {"settings": {}, "versus": {}}
    if vs_single:
        out["no_single"] = {k: sum(r.get("single") is None for r in v) for k, v in settings.items()}
        settings = {k: [r for r in v if r.get("single") is not None] for k, v in settings.items()}
        empty = [k for k, v in settings.items() if not v]
        if empty:
            raise SystemExit(f"--vs-single: {', '.join(empty)} has no run whose single-task agents all solved")
    costs = {k: np.array([r["cost"] for r in v], dtype=float) for k, v in settings.items()}
    # runs with different budgets are compared up to the shortest: a run that solved after it would have been a
    # never-solved run with that budget (a run stopped once solved counts with its configured budget; records from
    # before 2026-12-01 lack it, and the end of such a run is no limit on the others)
    budgets = [r["budget"] for v in settings.values() for r in v if r.get("budget") is not None]
    horizon = min(budgets) if budgets else math.inf
    cut = {k: int(np.sum(np.isfinite(c) & (c > horizon))) for k, c in costs.items()}
    costs = {k: np.where(c > horizon, math.inf, c) for k, c in costs.items()}
    if vs_single:
        costs = {k: c / np.array([r["single"] for r in settings[k]], dtype=float) for k, c in costs.items()}
    out["vs_single"] = vs_single
    out["horizon"] = None if math.isinf(horizon) else horizon
    out["beyond_horizon"] = cut
    for label, c in costs.items():
        lo, hi = _median_ci(c, n_boot, seed)
        out["settings"][label] = {"runs": int(c.size), "solved": int(np.isfinite(c).sum()),
                                  "median": _median(c), "median_ci": [lo, hi], "costs": c.tolist()}
    labels = list(costs)
    base = labels[0]
    for label in labels[1:]:
        a, b = costs[label], costs[base]
        out["versus"][label] = {
            "baseline": base,
            "probability_of_improvement": stats.probability_of_improvement(a, b),
            "ci": list(stats.probability_of_improvement_ci(a, b, n_boot=n_boot, seed=seed)),
            "p_value": stats.permutation_pvalue(a, b, n_perm=n_perm, seed=seed),
        }
    return out


def report(result: dict, criterion: str) -> str:
    ratio = bool(result.get("vs_single"))
    lines = [f"Multi-task settings compared by env steps (summed over tasks) to solve, criterion `{criterion}`"
             + (", each divided by its seed's single-task agents' summed env steps" if ratio else "")]
    left = {k: n for k, n in (result.get("no_single") or {}).items() if n}
    if left:
        lines.append("Left out (their seed's single-task agents did not all solve, so there is no ratio): "
                     + ", ".join(f"{k}: {n} run(s)" for k, n in left.items()))
    if result.get("horizon") is not None:
        lines.append(f"Compared up to {_kilo(result['horizon'])} env steps, the shortest run's budget"
                     + "".join(f"; {label}: {n} run(s) solved later, counted as never" for label, n in
                               result["beyond_horizon"].items() if n))
    lines += ["", "| setting | runs | solved | median [95% bootstrap CI] | per run |", "|---|---|---|---|---|"]
    for label, s in result["settings"].items():
        lo, hi = s["median_ci"]
        per_run = " / ".join(_kilo(v, ratio) for v in s["costs"])
        lines.append(f"| {label} | {s['runs']} | {s['solved']} | {_kilo(s['median'], ratio)} [{_kilo(lo, ratio)}, "
                     f"{_kilo(hi, ratio)}] | {per_run} |")
    if result["versus"]:
        what = "a lower ratio" if ratio else "fewer env steps"
        lines += ["", f"| setting vs baseline | P(a run of it needs {what}) [95% CI] | permutation p "
                  "(two-sided) |", "|---|---|---|"]
        for label, v in result["versus"].items():
            lo, hi = v["ci"]
            lines.append(f"| {label} vs {v['baseline']} | {v['probability_of_improvement']:.2f} [{lo:.2f}, {hi:.2f}] "
                         f"| {v['p_value']:.3f} |")
        lines += ["", "0.5 = no difference; never-solved runs count as slower than any solved run and tie with "
                  "each other."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's cookbook commands are parsed with it in a test)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", nargs="+", action="append", default=[], metavar=("LABEL", "PATH"),
                   help="a label, then bench_mtl.py records and/or multi-task run directories; the first setting is "
                        "the baseline")
    p.add_argument("--criterion", default="all", choices=CRITERIA,
                   help="all: every task >= threshold at one evaluation; each: every task once; own: each task's "
                        "own env steps to its first >= threshold, summed")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="normalized score at which a driving task counts as solved")
    p.add_argument("--solve-return", nargs="*", default=[], metavar="TASK=RETURN",
                   help="run directories: mean eval return at which a task counts as solved (default: a gymnasium "
                        "id's reward_threshold), as bench_mtl.py --solve-return")
    p.add_argument("--vs-single", action="store_true",
                   help="compare each run's env steps divided by its seed's single-task agents' summed env steps "
                        "(for options that change the single-task agents too; bench_mtl.py records only)")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--n-perm", type=int, default=10000)
    p.add_argument("--out", type=Path, default=None, help="write the comparison as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if len(args.setting) < 2:
        raise SystemExit("give at least two --setting LABEL PATH...: the baseline first, then the options")
    for group in args.setting:
        if len(group) < 2:
            raise SystemExit(f"--setting {group[0]}: give the label, then at least one record or run directory")
    labels = [group[0] for group in args.setting]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"setting labels must differ: {labels}")
    settings = {g[0]: load_setting([Path(x) for x in g[1:]], args.criterion, args.threshold, args.vs_single,
                                   args.solve_return) for g in args.setting}
    timed = {r["bars"]: f"{label}: {r['source']}" for label, runs in settings.items() for r in runs}
    if len(timed) > 1:
        raise SystemExit("the runs were timed at different bars: " + "; ".join(f"{where} at {bars}"
                                                                              for bars, where in timed.items()))
    result = compare(settings, n_boot=args.n_boot, n_perm=args.n_perm, vs_single=args.vs_single)
    print(report(result, args.criterion))
    if args.out:
        result["args"] = {"setting": args.setting, "criterion": args.criterion, "threshold": args.threshold,
                          "vs_single": args.vs_single}
        result["sources"] = {k: [(r["seed"], r["source"]) for r in v] for k, v in settings.items()}
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

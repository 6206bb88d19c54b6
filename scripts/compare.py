#!/usr/bin/env python
"""Compare runs from their local run directories: learning curves, final-score tables, performance profiles.

Examples:
    python scripts/compare.py outputs/multirun/stability_sweep/<time> --by optimizer
    python scripts/compare.py outputs/run_a outputs/run_b --metric eval/mean_normalized --out compare_out
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mtdqn.evaluation.compare import compare_runs, write_report


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare training runs (local files only). Every directory containing metrics.jsonl "
        "(or a summary.json with a status) at or below the given paths is a run.",
    )
    p.add_argument(
        "paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run directories or sweep directories"
    )
    p.add_argument(
        "--by",
        type=_csv,
        default=["experiment_name"],
        help="comma-separated dotted config keys to group runs by (default: experiment_name)",
    )
    p.add_argument(
        "--metric",
        default="eval/mean_normalized",
        help="headline metric, tabulated and plotted beside the per-task ones (default: eval/mean_normalized)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("compare_out"), help="output directory (default: ./compare_out)"
    )
    p.add_argument(
        "--tasks",
        type=_csv,
        action="extend",
        default=None,
        help="only these tasks (comma-separated, repeatable; default: every eval/<task>/... metric found)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.9,
        help="normalized score for the env-steps-to-threshold column (default: 0.9)",
    )
    p.add_argument(
        "--return-threshold",
        type=float,
        default=None,
        help="mean eval return for the env-steps-to-threshold column of tasks scored by return (default: no "
        "column for them; e.g. 475 for CartPole-v1)",
    )
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--ci", type=float, default=0.95, help="confidence-interval coverage (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument(
        "--points", type=int, default=200, help="max points of the common env-steps grid (default: 200)"
    )
    p.add_argument(
        "--skip-incomplete", action="store_true", help="leave out runs without a completed summary.json"
    )
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.add_argument(
        "--task-steps",
        action="store_true",
        help="each task's curves, AUC and env steps to threshold over the run's env steps on that task "
        "(time/<task>/env_steps, logged by multi-task runs), not summed over its tasks: a multi-task agent "
        "against single-task agents",
    )
    p.add_argument(
        "--window",
        type=int,
        default=1,
        help="final score = mean of each run's last N evaluations, for scores that swing between evaluations "
        "(default: 1, the last one)",
    )
    p.add_argument(
        "--failed",
        default="exclude",
        metavar="exclude|last|SCORE",
        help="what a run that failed after it began training (diverged, crashed) counts as in the scores: "
        "exclude (default: left out, counted beside its group's), last (its last evaluation before it failed) "
        "or a number (its final score on every metric, in that metric's units: 0 normalized is no better than "
        "random, while on a task scored by return it is a return of 0); "
        "for stability sweeps, where leaving out the runs that diverged flatters the setting that diverges",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write the report; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        comparison = compare_runs(
            args.paths,
            by=args.by or ["experiment_name"],
            metric=args.metric or None,
            tasks=args.tasks,
            threshold=args.threshold,
            return_threshold=args.return_threshold,
            n_boot=args.n_boot,
            ci=args.ci,
            seed=args.seed,
            n_points=args.points,
            exclude=[args.out],
            skip_incomplete=args.skip_incomplete,
            task_steps=args.task_steps,
            window=args.window,
            failed=args.failed,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 2
    written = write_report(comparison, args.out, plots=not args.no_plots)
    s = comparison.summary
    n_failed = len(s["failed"]) + len(s["failed_scored"])
    scored = f" ({len(s['failed_scored'])} scored as {s['failed_runs']})" if s["failed_scored"] else ""
    failed_only = {label for t in s["tables"] for label in t.get("failed_only", {})}  # rows without scores
    n_groups = len(s["groups"]) + len(failed_only - {g["label"] for g in s["groups"]})
    print(f"{s['n_runs']} run(s), {n_groups} group(s), {n_failed} failed{scored} -> {args.out}")
    if s["plots_skipped"]:
        print(f"plots skipped: {s['plots_skipped']}")
    for warning in s["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    for path in written:
        print(f"  wrote {path}")
    return 0 if any(t["rows"] for t in s["tables"]) else 1


if __name__ == "__main__":
    sys.exit(main())

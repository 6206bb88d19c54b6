#!/usr/bin/env python
"""Transfer report: jumpstart, asymptotic gain, time-to-threshold and area ratios against the scratch baseline,
and forgetting of the source tasks, with bootstrap CIs over seeds (Taylor & Stone 2009; mtdqn/evaluation/transfer.py).

Examples:
    python scripts/transfer_report.py outputs/multirun/urban_transfer/<time>
    python scripts/transfer_report.py outputs/multirun/urban_transfer/<time> --metric eval/urban/normalized --out report
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtdqn.evaluation.transfer import plot_report, render_markdown, report_json, transfer_report


def _checked(cast: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: `cast` of the text, refused unless `ok` (the message says it is not `what`)."""
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


_coverage = _checked(float, lambda v: 0.0 < v < 1.0, "a coverage strictly between 0 and 1 (e.g. 0.95)")  # --ci
_at_least_one = _checked(int, lambda v: v >= 1, "an integer >= 1")  # --n-boot, --window
_finite = _checked(float, math.isfinite, "a finite number")  # --threshold


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="transfer_report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run directories or sweep directories")
    p.add_argument("--by", default="transfer.mode", help="config key that names the group (default: transfer.mode)")
    p.add_argument("--baseline", default="none", help="the scratch group's value of --by (default: none)")
    p.add_argument("--metric", default="eval/mean_normalized", help="target metric (default: eval/mean_normalized)")
    p.add_argument("--threshold", type=_finite, default=0.9, help="score for time to threshold (default: 0.9)")
    p.add_argument("--window", type=_at_least_one, default=1,
                   help="evaluations averaged for the final score and held for time to threshold (default: 1; at "
                   "most the number of evaluations on the common env-step range)")
    p.add_argument("--n-boot", type=_at_least_one, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--ci", type=_coverage, default=0.95,
                   help="confidence-interval coverage, between 0 and 1 (default: 0.95)")
    p.add_argument("--skip-incomplete", action="store_true",
                   help="leave out runs without a completed summary.json (still running or interrupted), which "
                   "otherwise are used and can shorten the env-step range common to all runs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--out", type=Path, default=Path("transfer_report"), help="output folder (default: ./transfer_report)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Compute and write transfer_report.md, transfer_report.json and transfer_curves.png; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        report = transfer_report(args.paths, by=args.by, baseline=args.baseline, metric=args.metric,
                                 threshold=args.threshold, window=args.window, n_boot=args.n_boot, ci=args.ci,
                                 seed=args.seed, exclude=[args.out],
                                 skip_incomplete=args.skip_incomplete)
    except (FileNotFoundError, ValueError) as exc:
        print(f"transfer_report.py: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    plot = None
    if not args.no_plot:
        try:
            plot = plot_report(report, args.out / "transfer_curves.png").name
        except ImportError as exc:
            report["warnings"].append(f"plot skipped: {exc}")
    (args.out / "transfer_report.md").write_text(render_markdown(report, plot))
    (args.out / "transfer_report.json").write_text(json.dumps(report_json(report), indent=2))
    print(render_markdown(report, plot))
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {args.out}/transfer_report.md, transfer_report.json" + (f", {plot}" if plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

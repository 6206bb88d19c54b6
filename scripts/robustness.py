#!/usr/bin/env python
"""Robustness curves of trained runs: normalized score per perturbation level, the curve's area, per group.

Examples:
    python scripts/robustness.py outputs/lane_keep_dqn/<time>                        # default driving axes
    python scripts/robustness.py outputs/lane_keep_dqn/<time> --axis obs_noise --levels 0 0.05 0.1 0.2
    python scripts/robustness.py outputs/multirun/<date>/<time> --by domain_randomization --out dr_robustness
    python scripts/robustness.py RUN_DIR --axis fgsm steer_delay --episodes 64

Each RUN_DIR needs config.yaml and checkpoints/last.ckpt (weights-only). Writes robustness.json, robustness.md and
robustness.png to --out (default: RUN_DIR/robustness for one run, ./robustness_out for several).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mtdqn.evaluation.robustness import AXES, CKPT, FAILED, robustness_report, write_report


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="robustness.py", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run directories or sweep directories")
    p.add_argument("--axis", "--axes", dest="axes", nargs="+", choices=AXES, default=None,
                   help="perturbation axes (default: the task kind's knobs and fgsm)")
    p.add_argument("--levels", nargs="+", type=float, default=None,
                   help="levels of a single --axis (default: per-axis defaults)")
    p.add_argument("--by", type=_csv, default=[], help="comma-separated dotted config keys to group runs by "
                   "(e.g. domain_randomization or optimizer._target_; default: one group per run)")
    p.add_argument("--episodes", type=int, default=32, help="greedy episodes per level, run in parallel")
    p.add_argument("--seed", type=int, default=20_000, help="episode i is seeded seed + i at every level")
    p.add_argument("--ckpt", type=Path, default=CKPT, help=f"checkpoint inside each run dir (default: {CKPT})")
    p.add_argument("--out", type=Path, default=None, help="output directory")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the area CIs")
    p.add_argument("--ci", type=float, default=0.95, help="confidence-interval coverage")
    p.add_argument("--baseline", default=None, help="the group the others are compared with (a substring of "
                   "its label, e.g. 'domain_randomization={}'; default: the first group)")
    p.add_argument("--failed", choices=FAILED, default="exclude",
                   help="runs whose summary.json says failed (diverged, crashed): exclude (default: left out, "
                        "counted beside their group, as compare.py does) or include (evaluated at their last "
                        "checkpoint)")
    p.add_argument("--no-plots", action="store_true", help="skip robustness.png")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate, write the report, print the markdown; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes < 1:  # 0 ended in an IndexError traceback
        parser.error(f"--episodes {args.episodes} must be an integer >= 1 (greedy episodes per level)")
    torch.set_num_threads(1)
    if args.levels is not None and (args.axes is None or len(args.axes) != 1):
        print("robustness.py: error: --levels needs exactly one --axis", file=sys.stderr)
        return 2
    axes = {args.axes[0]: args.levels} if args.levels is not None else args.axes
    try:
        report = robustness_report(args.paths, axes, by=args.by, episodes=args.episodes, seed=args.seed,
                                   ckpt=args.ckpt, n_boot=args.n_boot, ci=args.ci,
                                   baseline=args.baseline, failed=args.failed)  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        print(f"robustness.py: error: {exc}", file=sys.stderr)
        return 2
    out = args.out or (Path(report["runs"][0]["path"]) / "robustness" if len(report["runs"]) == 1
                       else Path("robustness_out"))  # fmt: skip
    written = write_report(report, out, plots=not args.no_plots)
    print((out / "robustness.md").read_text())
    for path in written:
        print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

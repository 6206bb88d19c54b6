#!/usr/bin/env python
"""How trained policies' episodes end: normalized score beside completion / collision / red-light / offroad rates.

Examples:
    python scripts/episode_report.py outputs/lane_keep_mtl/<time>                 # every task of the run
    python scripts/episode_report.py outputs/multirun/<date>/<time> --by transfer.mode --out urban_outcomes
    python scripts/episode_report.py <pedestrian run> --tasks pedestrian urban    # a single-task policy elsewhere
    python scripts/episode_report.py outputs/cartpole_dqn/<time> --video videos    # and watch it: one GIF per task

Each RUN_DIR needs config.yaml and checkpoints/last.ckpt (weights-only). Writes outcomes.json and outcomes.md to
--out (default: ./outcomes_out) and prints the markdown. `--video DIR` also records each run's episode 0 of every
task it plays as a GIF, `DIR/<run parent>/<run>/<task>.gif` (any task that can draw frames: driving, gymnasium
ids with an rgb_array render mode; classic control needs the optional extra '.[render]').
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mtdqn.evaluation.outcomes import outcome_report, render_markdown
from mtdqn.evaluation.robustness import CKPT


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="episode_report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run directories or sweep directories")
    p.add_argument("--tasks", nargs="+", default=(), help="tasks to play (default: each run's own tasks; a "
                   "single-task run plays any task with its observation and action spaces)")
    p.add_argument("--by", default="", help="comma-separated dotted config keys to group runs by (default: one "
                   "group per run)")
    p.add_argument("--episodes", type=int, default=128, help="greedy episodes per run and task, in parallel")
    p.add_argument("--seed", type=int, default=30_000, help="episode i is seeded seed + i")
    p.add_argument("--ckpt", type=Path, default=CKPT, help=f"checkpoint inside each run dir (default: {CKPT})")
    p.add_argument("--out", type=Path, default=Path("outcomes_out"), help="output directory")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the CIs over runs")
    p.add_argument("--video", type=Path, default=None, metavar="DIR", help="also record episode 0 (seed --seed) of "
                   "every run and task as DIR/<run parent>/<run>/<task>.gif")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    by = [k.strip() for k in args.by.split(",") if k.strip()]
    try:
        report = outcome_report(args.paths, args.tasks, by, args.episodes, args.seed, args.ckpt, args.n_boot,
                                video_dir=args.video)
    except (ValueError, FileNotFoundError) as exc:
        print(f"episode_report.py: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "outcomes.json").write_text(json.dumps(report, indent=2))
    text = render_markdown(report)
    (args.out / "outcomes.md").write_text(text)
    print(text)
    for path in report["videos"]:
        print(f"video: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compute (or --check) REFERENCE_SCORES of the driving tasks: scripted reference vs uniform random policy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from mtdqn.envs.driving import TASKS
from mtdqn.envs.driving.controllers import REFERENCE_SCORES, evaluate_policy, random_policy, reference_policy


def compute(episodes: int, seed: int) -> dict[str, tuple[float, float]]:
    """{task: (reference mean return, random mean return)} with the default DrivingConfig."""
    scores = {}
    for task in TASKS:
        ref = evaluate_policy(task, reference_policy(task), episodes, seed)
        rnd = evaluate_policy(task, random_policy(seed), episodes, seed)
        scores[task] = (round(ref, 2), round(rnd, 2))
    return scores


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's cookbook commands are parsed with it in a test)."""
    p = argparse.ArgumentParser(prog="driving_reference_scores.py", description=__doc__)
    p.add_argument("--episodes", type=int, default=100, help="episodes per policy and task (default 100)")
    p.add_argument("--seed", type=int, default=12345, help="base seed; episode i uses seed + i (default 12345)")
    p.add_argument("--check", action="store_true", help="exit 1 unless the stored REFERENCE_SCORES match")
    p.add_argument("--tol", type=float, default=0.05, help="absolute tolerance for --check (default 0.05)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table as a Python literal; with --check compare to the constants in controllers.py."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes < 1:  # 0 ended in the simulator's ValueError traceback, 'num_envs must be >= 1'
        parser.error(f"--episodes {args.episodes} must be an integer >= 1 (episodes per policy and task)")
    torch.set_num_threads(1)
    scores = compute(args.episodes, args.seed)
    print("REFERENCE_SCORES: dict[str, tuple[float, float]] = {")
    for task, (ref, rnd) in scores.items():
        print(f"    {task!r}: ({ref}, {rnd}),")
    print("}")
    if args.check:
        bad = [t for t in TASKS if any(abs(a - b) > args.tol for a, b in zip(scores[t], REFERENCE_SCORES[t], strict=True))]
        print("check:", "OK" if not bad else f"MISMATCH for {bad}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

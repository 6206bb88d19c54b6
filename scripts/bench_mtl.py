#!/usr/bin/env python
"""Multi-task vs single-task DQN on the driving suite: does sharing one network make the three tasks cheaper?

For each seed: one multi-task agent (+experiment=lane_keep_mtl) on lane_keep, pedestrian and traffic_light, and
three single-task agents (+experiment=lane_keep_dqn task_set=<task>) with the same network size and
hyperparameters and the same env steps per task. Reports the env steps (summed over tasks) until every task
reaches normalized >= threshold (multi-task: the first evaluation where all three are; single-task: the sum of each
agent's own time to threshold), the final normalized score per task with 95% bootstrap CIs over seeds, and wall
time. Prints markdown; --out writes JSON.

    python scripts/bench_mtl.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from learning_results import first_reach, run_seed, summarize  # noqa: E402

TASKS = ("lane_keep", "pedestrian", "traffic_light")


def steps_all_solved(history: list[dict], threshold: float) -> float | None:
    """Env steps of the first evaluation where every task's normalized score is >= threshold."""
    for m in history:
        if all(m.get(f"eval/{t}/normalized", float("-inf")) >= threshold for t in TASKS):
            return m["time/env_steps"]
    return None


def run(seed: int, args: argparse.Namespace) -> dict:
    """One seed: the multi-task agent and the three single-task agents."""
    per_task_evals = args.eval_every
    mtl = run_seed(["+experiment=lane_keep_mtl", f"callbacks.eval.every_env_steps={per_task_evals * len(TASKS)}",
                    *args.mtl], seed)
    out = {"mtl": {"solved_steps": steps_all_solved(mtl["history"], args.threshold), "wall": mtl["wall"],
                   "final": {t: mtl["history"][-1][f"eval/{t}/normalized"] for t in TASKS}}}
    singles = {}
    for task in TASKS:
        r = run_seed(["+experiment=lane_keep_dqn", f"task_set={task}",
                      f"callbacks.eval.every_env_steps={per_task_evals}", *args.single], seed)
        steps, _ = first_reach(r["history"], f"eval/{task}/normalized", args.threshold)
        singles[task] = {"solved_steps": steps, "wall": r["wall"],
                         "final": r["history"][-1][f"eval/{task}/normalized"]}
    solved = [s["solved_steps"] for s in singles.values()]
    out["single"] = {"tasks": singles, "solved_steps": None if None in solved else sum(solved),
                     "wall": sum(s["wall"] for s in singles.values())}
    print(f"seed {seed}: {json.dumps(out)}", flush=True)
    return out


def report(runs: list[dict], args: argparse.Namespace) -> str:
    """Markdown table: steps to solve all, final normalized per task (median [95% CI]), wall time."""
    lines = [
        f"Driving suite, multi-task vs single-task DQN, seeds {args.seeds}, threshold {args.threshold}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} CPUs, torch threads {args.threads}",
        "",
        "| agent | env steps to solve all (summed over tasks) | " + " | ".join(f"final {t}" for t in TASKS)
        + " | wall s |",
        "|---|---|" + "---|" * len(TASKS) + "---|",
    ]
    for name in ("mtl", "single"):
        solved = [r[name]["solved_steps"] for r in runs]
        reached = [s for s in solved if s is not None]
        finals = [[r[name]["final"][t] if name == "mtl" else r[name]["tasks"][t]["final"] for r in runs]
                  for t in TASKS]
        lines.append(f"| {'multi-task' if name == 'mtl' else '3 x single-task'} | "
                     f"{summarize(reached)} ({len(reached)}/{len(runs)} seeds) | "
                     + " | ".join(summarize(f) for f in finals)
                     + f" | {statistics.median(r[name]['wall'] for r in runs):.0f} |")
    pairs = [(r["mtl"]["solved_steps"], r["single"]["solved_steps"]) for r in runs]
    ratios = [m / s for m, s in pairs if m is not None and s is not None]
    if ratios:
        lines.append(f"\nRatio multi-task / single-task env steps to solve all: {summarize(ratios)} "
                     f"({len(ratios)} seeds where both solved; target <= 0.6)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--eval-every", type=int, default=10_000, help="env steps per task between evaluations")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mtl", nargs="*", default=[], help="extra overrides for the multi-task agent")
    p.add_argument("--single", nargs="*", default=[], help="extra overrides for the single-task agents")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--merge", type=Path, nargs="*", default=None,
                   help="only report: merge the runs of earlier --out files (e.g. seeds run in parallel)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        loaded = [json.loads(f.read_text()) for f in args.merge]
        runs = [r for d in loaded for r in d["runs"]]
        args.seeds = [s for d in loaded for s in d["args"]["seeds"]]
        print(report(runs, args))
        return
    runs = []
    for seed in args.seeds:
        runs.append(run(seed, args))
        if args.out:
            args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs}, indent=1))
    text = report(runs, args)
    print(text)
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs, "table": text},
                                       indent=1))


if __name__ == "__main__":
    main()

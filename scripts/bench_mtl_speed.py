#!/usr/bin/env python
"""Training time of one multi-task agent against the single-task agents it replaces, measured in one run.

For a suite of T tasks, `train.py` trains the multi-task agent for --env-steps env steps summed over its tasks and
each task's single-task agent for --env-steps / T (the same env steps in all; per task too where the multi-task
agent collects evenly, as minatar_mtl does, while lane_keep_mtl_share collects 0.15 / 0.35 / 0.5 with its by-score
schedule on top; the same network, batch per env step and replay ratio), alternating, --repeats times, one run at a time. Each run's training seconds
(`time/train_seconds`: collection and updates, evaluation excluded) come from its summary.json. Prints every repeat
and the medians: the multi-task agent's seconds, the single-task agents' summed seconds and their ratio (< 1: one
multi-task agent trains faster than its single-task agents one after another), and the env steps per second of each.

Suites:
  minatar  `+experiment=minatar_mtl` (three MinAtar games, per-game input adapters and heads; optional extra
           `.[minatar]`) against `+experiment=minatar_dqn net.conv=null 'net.hidden=[256,256]' data.batch_size=96`
           on each game: the multi-task agent's network along one task's path, its batch per summed env step
           (`--all 'net.conv=[[16,3,1]]'`: every agent reads its game through one 3x3 convolution instead)
  driving  `+experiment=lane_keep_mtl_share` against the single-task agents `scripts/bench_mtl.py` trains (the same
           shared settings, checked before anything runs)

    python scripts/bench_mtl_speed.py --suite minatar --env-steps 60000 --repeats 3
    python scripts/bench_mtl_speed.py --suite driving --mtl model.loss_balance=pcgrad
    python scripts/bench_mtl_speed.py --suite minatar --all 'net.conv=[[16,3,1]]'   # every agent: one conv encoder
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINATAR = ("MinAtar/Breakout-v1", "MinAtar/Freeway-v1", "MinAtar/Asterix-v1")
# every agent: no checkpoints or progress bar, one evaluation episode at the end (evaluation is not timed)
QUIET = ["logger=jsonl", "callbacks.progress=null", "callbacks.checkpoint=null", "callbacks.eval.episodes=1"]


def suite_overrides(suite: str) -> dict[str, list[str]]:
    """train.py overrides of the multi-task agent ("mtl") and of each task's single-task agent (budgets apart)."""
    if suite == "minatar":
        single = ["+experiment=minatar_dqn", "net.conv=null", "net.hidden=[256,256]", "data.batch_size=96"]
        return {"mtl": ["+experiment=minatar_mtl"],
                **{task: [*single, f"task_set.tasks=[{task}]"] for task in MINATAR}}
    if suite == "driving":
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_mtl import build_parser, check_overrides

        args = build_parser().parse_args(["--eval-every", "30000", "--mtl", "experiment=lane_keep_mtl_share"])
        return {name: [o for o in overrides if not o.startswith(("data.total_env_steps=", "callbacks.eval."))]
                for name, overrides in check_overrides(args).items()}
    raise SystemExit(f"--suite {suite!r} is not one of ['minatar', 'driving']")


def train(overrides: list[str], env_steps: int, seed: int) -> dict:
    """One train.py run; its summary.json (time/train_seconds, time/env_steps, ...)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "train.py", *overrides, *QUIET, f"data.total_env_steps={env_steps}",
               f"callbacks.eval.every_env_steps={env_steps}", f"seed={seed}", f"hydra.run.dir={tmp}"]
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        summary = Path(tmp) / "summary.json"
        if res.returncode != 0 or not summary.exists():
            raise SystemExit(f"train.py failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
        return json.loads(summary.read_text())


def measure(overrides: dict[str, list[str]], env_steps: int, repeats: int, seed: int) -> list[dict]:
    """Per repeat: the multi-task agent's and each single-task agent's training seconds and env steps."""
    tasks = [name for name in overrides if name != "mtl"]
    per_task = env_steps // len(tasks)
    out = []
    for r in range(repeats):
        mtl = train(overrides["mtl"], env_steps, seed)
        singles = {task: train(overrides[task], per_task, seed) for task in tasks}
        row = {"repeat": r, "mtl_seconds": mtl["time/train_seconds"], "mtl_env_steps": mtl["time/env_steps"],
               "single_seconds": {t: s["time/train_seconds"] for t, s in singles.items()},
               "single_env_steps": {t: s["time/env_steps"] for t, s in singles.items()}}
        row["singles_seconds"] = sum(row["single_seconds"].values())
        row["ratio"] = row["mtl_seconds"] / row["singles_seconds"]
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def report(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown: one line per repeat and the medians."""
    med = statistics.median
    extra = "".join(f" ({who}: {' '.join(given)})" for who, given in
                    (("every agent", args.all), ("multi-task agent", args.mtl)) if given)
    lines = [f"Suite {args.suite}{extra}: {args.env_steps} env steps summed over tasks (single-task agents: their share each), "
             f"seed {args.seed}, {len(rows)} repeats, {datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} CPUs",
             "", "| repeat | multi-task s | single-task agents s (summed) | ratio | multi-task env steps/s | "
             "single-task env steps/s (summed steps / summed s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        single_sps = sum(r["single_env_steps"].values()) / r["singles_seconds"]
        lines.append(f"| {r['repeat']} | {r['mtl_seconds']:.1f} | {r['singles_seconds']:.1f} | {r['ratio']:.3f} | "
                     f"{r['mtl_env_steps'] / r['mtl_seconds']:.0f} | {single_sps:.0f} |")
    lines.append(f"| **median** | {med(r['mtl_seconds'] for r in rows):.1f} | "
                 f"{med(r['singles_seconds'] for r in rows):.1f} | **{med(r['ratio'] for r in rows):.3f}** | | |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's commands are parsed with it in a test)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="minatar", choices=["minatar", "driving"])
    parser.add_argument("--env-steps", type=int, default=60000, help="summed over tasks for the multi-task agent")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the rows and the report as JSON")
    parser.add_argument("--mtl", nargs="*", default=[], metavar="OVERRIDE",
                        help="extra train.py overrides of the multi-task agent only, e.g. model.loss_balance=pcgrad")
    parser.add_argument("--all", nargs="*", default=[], metavar="OVERRIDE",
                        help="extra train.py overrides of every agent, after the suite's own (so they win), e.g. "
                             "'net.conv=[[16,3,1]]' (each MinAtar agent reads its game through a convolution)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.env_steps <= 0 or args.repeats <= 0:
        raise SystemExit(f"--env-steps and --repeats must be positive, got {args.env_steps} and {args.repeats}")
    overrides = suite_overrides(args.suite)
    overrides = {name: [*given, *args.all] for name, given in overrides.items()}
    overrides["mtl"] = [*overrides["mtl"], *args.mtl]
    rows = measure(overrides, args.env_steps, args.repeats, args.seed)
    text = report(rows, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                        "table": text}, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Train an experiment preset for several seeds and report learning results with bootstrap CIs.

For each seed: final greedy eval return / normalized score, and the env steps and training seconds (evaluation
excluded) at which the eval first reaches the threshold. Prints a markdown table (median and its 95% bootstrap CI
over seeds) and writes JSON with --out.

    python scripts/learning_results.py +experiment=lane_keep_dqn --seeds 0 1 2 --threshold 0.9
    python scripts/learning_results.py +experiment=lane_keep_dqn task_set=pedestrian --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mtdqn.evaluation.stats import bootstrap_ci, median  # noqa: E402
from mtdqn.overrides import compose_config  # noqa: E402
from mtdqn.train import build  # noqa: E402


def run_seed(overrides: list[str], seed: int) -> dict:
    """Train one seed through the composition root; return its eval history and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([*overrides, f"seed={seed}", "logger=none", "callbacks.progress=null",
                              "callbacks.checkpoint=null", f"paths.output_dir={tmp}", "+trainer.enable_progress_bar=false"])
        model, data, trainer = build(cfg)
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=data)
        wall = time.perf_counter() - t0
    cb = next(c for c in trainer.callbacks if hasattr(c, "history"))
    return {"task": model.task.name, "history": cb.history, "wall": wall, "eval_seconds": cb.eval_seconds,
            "eval_episodes": cb.episodes}


def first_reach(history: list[dict], key: str, threshold: float) -> tuple[float | None, float | None]:
    """(env steps, train seconds) of the first evaluation whose `key` >= threshold."""
    for m in history:
        if m.get(key, float("-inf")) >= threshold:
            return m["time/env_steps"], m["time/train_seconds"]
    return None, None


def summarize(values: list[float], digits: int = 3) -> str:
    """'median [CI low, CI high]' with a 95% percentile-bootstrap CI of that median: the interval is about the
    statistic shown (until 2026-11-30 it was the CI of the mean beside the median, which with a skewed spread of
    seeds sat to one side of the point)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    lo, hi = bootstrap_ci(values, median)
    return f"{statistics.median(values):.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's cookbook commands are parsed with it in a test)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=lane_keep_dqn")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threshold", type=float, default=0.9, help="normalized score counted as solved")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = []
    for seed in args.seeds:
        r = run_seed(args.overrides, seed)
        runs.append(r)
        last = r["history"][-1]
        print(f"seed {seed}: {json.dumps({k: round(v, 3) for k, v in last.items()})}", flush=True)
    task = runs[0]["task"]
    norm_key, ret_key = f"eval/{task}/normalized", f"eval/{task}/return"
    has_norm = norm_key in runs[0]["history"][-1]
    finals = [r["history"][-1][norm_key if has_norm else ret_key] for r in runs]
    reach = [first_reach(r["history"], norm_key, args.threshold) if has_norm else (None, None) for r in runs]
    lines = [
        f"`{' '.join(args.overrides)}`, seeds {args.seeds}, {datetime.now(timezone.utc):%Y-%m-%d}, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), torch threads {args.threads}",
        "",
        "| seed | final " + ("normalized" if has_norm else "return") + f" | env steps to {args.threshold} | "
        f"train s to {args.threshold} | wall s (whole run) |",
        "|---|---|---|---|---|",
    ]
    for seed, r, f, (st, sec) in zip(args.seeds, runs, finals, reach, strict=True):
        lines.append(f"| {seed} | {f:.3f} | {'not reached' if st is None else f'{st:,.0f}'} | "
                     f"{'-' if sec is None else f'{sec:.1f}'} | {r['wall']:.1f} |")
    reached = [s for s, _ in reach if s is not None]
    secs = [t for _, t in reach if t is not None]
    lines.append(f"| median [95% CI] | {summarize(finals)} | {summarize(reached)} ({len(reached)}/{len(runs)}) | "
                 f"{summarize(secs)} | {statistics.median(r['wall'] for r in runs):.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(json.dumps({"overrides": args.overrides, "seeds": args.seeds, "runs": runs,
                                        "table": text}, indent=1, default=float))


if __name__ == "__main__":
    from mtdqn.overrides import script_main

    script_main(main, "learning_results.py")

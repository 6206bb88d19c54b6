#!/usr/bin/env python
"""Train an experiment preset for several seeds and report learning results with bootstrap CIs.

For each seed: each task's final greedy eval normalized score (or return, for tasks without reference scores), and
the env steps and training seconds (evaluation excluded) at which an evaluation first has every task at its bar:
normalized >= --threshold, or mean return >= --return-threshold for tasks scored by return (without it those are not
timed). Prints a markdown table (median and its 95% bootstrap CI over seeds; seeds that never got there count as
slower than any that did) and writes JSON with --out.

    python scripts/learning_results.py +experiment=lane_keep_dqn --seeds 0 1 2 --threshold 0.9
    python scripts/learning_results.py +experiment=lane_keep_dqn task_set=pedestrian --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
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

import numpy as np  # noqa: E402
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
    return {"task": model.task.name, "tasks": [t.name for t in model.tasks], "history": cb.history, "wall": wall, "eval_seconds": cb.eval_seconds,
            "eval_episodes": cb.episodes}


def first_reach(history: list[dict], key: str, threshold: float) -> tuple[float | None, float | None]:
    """(env steps, train seconds) of the first evaluation whose `key` >= threshold."""
    return first_at_bars(history, {key: threshold})


def first_at_bars(history: list[dict], bars: dict[str, float]) -> tuple[float | None, float | None]:
    """(env steps, train seconds) of the first evaluation at which every metric of `bars` is at or above its bar."""
    for m in history:
        if all(m.get(key, float("-inf")) >= bar for key, bar in bars.items()):
            return m["time/env_steps"], m["time/train_seconds"]
    return None, None


def score_keys(history: list[dict], tasks: list[str]) -> dict[str, str]:
    """{task: its score metric}: the normalized score where the run logs one, else the mean eval return."""
    last = history[-1]
    return {t: f"eval/{t}/normalized" if f"eval/{t}/normalized" in last else f"eval/{t}/return" for t in tasks}


def summarize_reach(values: list[float | None], digits: int = 0) -> str:
    """'median [CI]' of env steps or seconds to the bars over seeds, a seed that never got there counting as slower
    than any that did: the median is a seed's own value (the lower middle one for an even count) or `never`, and
    its 95% bootstrap CI takes order statistics (no interpolation with `never`)."""
    if not values:
        return "-"
    x = np.array([math.inf if v is None else float(v) for v in values])
    mid = (x.size - 1) // 2
    fmt = lambda v: "never" if not math.isfinite(v) else f"{v:,.{digits}f}"  # noqa: E731
    if x.size == 1:
        return fmt(x[0])
    boot = np.sort(x[np.random.default_rng(0).integers(0, x.size, size=(2000, x.size))], axis=1)[:, mid]
    lo, hi = np.percentile(boot, 2.5, method="lower"), np.percentile(boot, 97.5, method="higher")
    return f"{fmt(np.sort(x)[mid])} [{fmt(lo)}, {fmt(hi)}]"


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
    p.add_argument("--return-threshold", type=float, default=None,
                   help="mean eval return counted as solved, for tasks without reference scores (gymnasium ids, "
                        "e.g. 475 for CartPole-v1); without it they are not timed")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.out is not None and not args.out.parent.is_dir():  # before hours of training, not after
        raise SystemExit(f"learning_results.py: error: --out {args.out}: its folder {args.out.parent} does not exist")
    torch.set_num_threads(args.threads)
    runs = []
    for seed in args.seeds:
        r = run_seed(args.overrides, seed)
        runs.append(r)
        last = r["history"][-1]
        print(f"seed {seed}: {json.dumps({k: round(v, 3) for k, v in last.items()})}", flush=True)
    tasks = runs[0]["tasks"]
    keys = score_keys(runs[0]["history"], tasks)
    bars = {k: args.threshold if k.endswith("/normalized") else args.return_threshold for k in keys.values()}
    untimed = [t for t, k in keys.items() if bars[k] is None]
    finals = [[r["history"][-1][keys[t]] for t in tasks] for r in runs]
    reach = [(None, None) if untimed else first_at_bars(r["history"], bars) for r in runs]
    bar_text = ", ".join(sorted({f"{k.rsplit('/', 1)[1]} >= {b:g}" for k, b in bars.items() if b is not None}))
    what = "every task at " + bar_text if len(tasks) > 1 else bar_text
    lines = [
        f"`{' '.join(args.overrides)}`, seeds {args.seeds}, {datetime.now(timezone.utc):%Y-%m-%d}, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), torch threads {args.threads}",
        "",
    ]
    if untimed:
        lines += [f"Not timed: {', '.join(untimed)} scored by return; --return-threshold sets its bar.", ""]
    finals_head = " | ".join(f"final {t} {keys[t].rsplit('/', 1)[1]}" for t in tasks)
    lines += [
        f"| seed | {finals_head} | env steps to {what or '-'} | train s to it | wall s (whole run) |",
        "|---|" + "---|" * (len(tasks) + 3),
    ]
    for seed, r, f, (st, sec) in zip(args.seeds, runs, finals, reach, strict=True):
        never = "-" if untimed else "not reached"
        lines.append(f"| {seed} | " + " | ".join(f"{v:.3f}" for v in f) + f" | {never if st is None else f'{st:,.0f}'}"
                     f" | {'-' if sec is None else f'{sec:.1f}'} | {r['wall']:.1f} |")
    reached = sum(st is not None for st, _ in reach)
    steps = "-" if untimed else f"{summarize_reach([st for st, _ in reach])} ({reached}/{len(runs)})"
    secs = "-" if untimed else summarize_reach([sec for _, sec in reach], digits=1)
    lines.append("| median [95% CI] | " + " | ".join(summarize([f[i] for f in finals]) for i in range(len(tasks)))
                 + f" | {steps} | {secs} | {statistics.median(r['wall'] for r in runs):.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(json.dumps({"overrides": args.overrides, "seeds": args.seeds, "runs": runs,
                                        "table": text}, indent=1, default=float))


if __name__ == "__main__":
    from mtdqn.overrides import script_main

    script_main(main, "learning_results.py")

#!/usr/bin/env python
"""Scaling with DDP: env steps/s and gradient updates/s with 1 vs N processes, measured in one run.

Runs `train.py` as a subprocess per configuration (alternating, `--repeats` times) on the same preset and budget
per process, and reads each run's summary.json (`time/sps`, `time/updates`, `time/train_seconds`). With DDP every
rank collects its own env steps (per-rank envs, seeds offset by rank) and every update's gradients are
all-reduced, so env throughput and the effective batch scale with the number of ranks while the update count is
per rank.

    python scripts/bench_scaling.py --preset lane_keep_dqn --env-steps 60000 --devices 1 2
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


def run(preset: str, env_steps: int, devices: int, extra: list[str], accelerator: str = "cpu") -> dict:
    """One training run; returns its summary plus the total env steps over ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        if devices == 1:
            trainer = [f"trainer={accelerator}"]
        else:
            trainer = ["trainer=ddp", f"trainer.devices={devices}", f"trainer.accelerator={accelerator}"]
        cmd = [sys.executable, "train.py", f"+experiment={preset}", *trainer, f"data.total_env_steps={env_steps}",
               "logger=jsonl", "callbacks.progress=null", "callbacks.checkpoint=null",
               f"callbacks.eval.every_env_steps={env_steps}", f"hydra.run.dir={tmp}", *extra]
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    seconds = summary["time/train_seconds"]
    return {"devices": devices, "seconds": seconds, "env_steps_per_s": devices * summary["time/env_steps"] / seconds,
            "updates_per_s": summary["time/updates"] / seconds, "samples_per_s":
            devices * summary["time/updates"] / seconds,
            "eval": {k: v for k, v in summary.items() if k.startswith("eval/") and k.endswith("normalized")}}


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's cookbook commands are parsed with it in a test)."""
    p = argparse.ArgumentParser(prog="bench_scaling.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="lane_keep_dqn")
    p.add_argument("--env-steps", type=int, default=60_000, help="env steps per process")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"], help="cpu processes or GPUs")
    p.add_argument("extra", nargs="*", help="more Hydra overrides")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("--devices", "--env-steps", "--repeats"):  # --devices 0 reached the Trainer, a run's failure
        given = getattr(args, flag[2:].replace("-", "_"))
        values = given if isinstance(given, list) else [given]
        if any(v < 1 for v in values):
            parser.error(f"{flag} {' '.join(map(str, values))}: "
                         f"{'each must be' if isinstance(given, list) else 'must be'} an integer >= 1")
    results: dict[int, list[dict]] = {d: [] for d in args.devices}
    for _ in range(args.repeats):
        for d in args.devices:
            results[d].append(run(args.preset, args.env_steps, d, args.extra, args.accelerator))
            print(json.dumps(results[d][-1]), flush=True)
    print(f"\n`+experiment={args.preset}`, {args.env_steps:,} env steps per process, median of {args.repeats}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} CPUs, torch threads 1 per process, "
          f"accelerator {args.accelerator}\n")
    print("| processes | env steps/s (all ranks) | updates/s (each rank, all-reduced) | minibatches/s (all ranks) |")
    print("|---|---|---|---|")
    for d, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("env_steps_per_s", "updates_per_s", "samples_per_s")}
        print(f"| {d} | {med['env_steps_per_s']:,.0f} | {med['updates_per_s']:,.0f} | {med['samples_per_s']:,.0f} |")


if __name__ == "__main__":
    main()

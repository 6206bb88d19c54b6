"""What the side-by-side benchmarks against Stable-Baselines3 share (bench_dqn, bench_minatar, bench_atari): the
command-line flags every one of them has, composing and timing our run through the normal composition root, SB3's
evaluation callback on our evaluation code, the line naming machine and date, the wall-time ratio, the JSON record.

Importing this module makes the repository importable (`mtdqn`, `conf/`) and turns W&B off unless the caller chose a
mode, so a bench script imports it before anything from mtdqn.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mtdqn.evaluation.episodes import run_episodes  # noqa: E402
from mtdqn.overrides import compose_config  # noqa: E402

EVAL_SEED = 10_000  # the seed of every evaluation's episodes, ours and SB3's


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every side-by-side bench has."""
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads for every run")
    p.add_argument("--device", default="cpu", help="cpu or cuda: networks, replay and updates of every framework")
    p.add_argument("--skip-sb3", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="write raw results and the table as JSON")
    return p


def compose_train(overrides: Sequence[str], device: str = "cpu"):
    """conf/train.yaml with `overrides` (and the GPU trainer for a cuda device), as `python train.py` composes it."""
    return compose_config([*overrides, *(["trainer=gpu"] if device.startswith("cuda") else [])])


def fit_ours(overrides: Sequence[str], device: str = "cpu") -> tuple[dict, object, object, object]:
    """Compose, build and fit one run through the composition root (as train.py does, without its logging), in a
    temporary output folder. Returns the timings (wall: training seconds, evaluation excluded), env steps, updates,
    the evaluation history [(env steps, training seconds, {metric: value})] when the run evaluates, and the built
    (model, data, trainer) for bench-specific numbers."""
    from mtdqn.train import build

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train([*overrides, f"paths.output_dir={tmp}", "+trainer.enable_progress_bar=false"], device)
        model, data, trainer = build(cfg)
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=data)
        wall = time.perf_counter() - t0
    cb = next((c for c in trainer.callbacks if hasattr(c, "history")), None)
    result = dict(wall=wall - (cb.eval_seconds if cb is not None else 0.0), env_steps=data.current_env_steps(),
                  updates=trainer.global_step)
    if cb is not None:
        result["history"] = [(int(m["time/env_steps"]), float(m["time/train_seconds"]), m) for m in cb.history]
    return result, model, data, trainer


def sb3_eval_callback(eval_env, every: int, seed: int = EVAL_SEED):
    """An SB3 callback evaluating at the rollout that reaches each multiple of `every` env steps (right after the
    previous round of updates, as mtdqn's callback does) and at the end, greedy, on mtdqn's evaluation code with the
    same episode seeds; `history` holds (env steps, training seconds, mean return), `eval_seconds` the time spent
    evaluating (the benches exclude it)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Eval(BaseCallback):
        def _on_training_start(self) -> None:
            self.t0, self.eval_seconds, self.last, self.history = time.perf_counter(), 0.0, 0, []

        def evaluate(self) -> None:
            t = time.perf_counter()
            q_net = self.model.q_net
            returns = run_episodes(lambda obs: q_net(obs).argmax(-1), eval_env, seed=seed)
            self.eval_seconds += time.perf_counter() - t
            seconds = time.perf_counter() - self.t0 - self.eval_seconds
            self.history.append((self.num_timesteps, seconds, float(returns.mean())))
            self.last = self.num_timesteps

        def _on_rollout_start(self) -> None:
            if self.num_timesteps // every > self.last // every:
                self.evaluate()

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            self.evaluate()

    return Eval()


def machine_line(args: argparse.Namespace) -> str:
    """Seeds, threads, date, CPU, torch and device: the part of every bench's headline that says where it ran."""
    gpu = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    return (f"seeds {args.seeds}, torch threads {args.threads}, {datetime.now(timezone.utc):%Y-%m-%d}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"device {args.device}{gpu}")


def speed_cells(runs: Sequence[dict], updates_per_s: str = ",.0f") -> str:
    """'wall s | env steps/s | updates | updates/s': medians over a framework's runs (the first table columns)."""
    med = statistics.median
    return (f"{med([r['wall'] for r in runs]):.1f} | {med([r['env_steps'] / r['wall'] for r in runs]):,.0f} | "
            f"{med([r['updates'] for r in runs]):,.0f} | {format(med([r['updates'] / r['wall'] for r in runs]), updates_per_s)}")


def wall_ratio_line(results: dict, work: str = "same env steps and updates") -> str | None:
    """'- wall-time ratio mtdqn / SB3 ...' (median of per-seed ratios) when both ran, else None."""
    ours, sb3 = results.get("mtdqn", []), results.get("sb3", [])
    if not (ours and sb3):
        return None
    ratio = [o["wall"] / s["wall"] for o, s in zip(ours, sb3, strict=True)]
    return (f"- wall-time ratio mtdqn / SB3 ({work}), median of per-seed ratios: {statistics.median(ratio):.3f} "
            f"(per seed: {', '.join(f'{r:.3f}' for r in ratio)})")


def finish(args: argparse.Namespace, results: dict, table: str, key: str = "report") -> None:
    """Print the bench's table and write the record with it (under `key`)."""
    print(table)
    write_record(args, results=results, **{key: table})


def write_record(args: argparse.Namespace, **payload) -> None:
    """`--out`: the arguments (paths as strings) and `payload` as JSON; nothing without `--out`. Written as results
    come in too, so the finished seeds survive a crash."""
    if args.out is None:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **payload}
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(args.out)

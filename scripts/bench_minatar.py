#!/usr/bin/env python
"""Side-by-side MinAtar DQN, learning and speed: mtdqn's `+experiment=minatar_dqn` vs Stable-Baselines3's DQN.

The same game (MinAtar v1 ids through gymnasium: sticky actions 0.1, each game's minimal action set), the same
network (`--net mlp`: 128 hidden units on the flattened 10x10xC image, the faster one per CPU minute;
`--net conv`: the MinAtar paper's one 3x3 convolution with 16 channels, then 128 hidden units; SB3 gets the same
layers as its features extractor), the preset's batch, learning rate, 3-step returns, replay size, epsilon schedule
(1 -> 0.1 over 100k env steps), target sync every 1000 env steps and updates per env step (8 envs, 0.25 updates per
env step: ours in rounds of 256 env steps, SB3 8 updates every 4 vector steps), Huber loss, gradients clipped at
norm 10, plain DQN targets (SB3 has no double-Q). Both are evaluated by identical code (greedy, the same
`--eval-episodes` seeds, every `--eval-every` env steps) and evaluation time is excluded from every timing. The
frameworks alternate seed by seed in one process; the script prints per framework the median training wall time,
env steps/s and updates/s, the final return (mean and IQM with 95% bootstrap CIs over seeds), the area under the
return curve, the env steps and training seconds to a return of `--threshold` (median; a run that never reaches it
counts as slower than any), and the wall-time ratio ours / SB3 (median of per-seed ratios).

    pip install -c constraints.txt -e '.[bench,minatar]'
    python scripts/bench_minatar.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence

import torch
from bench_common import (
    EVAL_SEED,
    add_common_args,
    compose_train,
    finish,
    fit_ours,
    machine_line,
    sb3_eval_callback,
    speed_cells,
    wall_ratio_line,
    write_record,
)
from torch import nn

from mtdqn.envs import GymVecEnv
from mtdqn.envs.gym_adapter import make_single
from mtdqn.evaluation.stats import area_under_curve, bootstrap_ci, iqm, mean

N_ENVS = 8
NETS = {"mlp": "net.conv=null", "conv": "net.conv=[[16,3,1]]"}


def ours_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    """The preset at the bench's size and game; everything else as shipped but for the double-Q target."""
    return [
        "+experiment=minatar_dqn", f"task_set.tasks=[{args.game}]", NETS[args.net], f"seed={seed}",
        "logger=none", "callbacks.progress=null", "callbacks.checkpoint=null",
        f"data.num_envs={N_ENVS}", f"data.total_env_steps={args.total_steps}",
        f"callbacks.eval.every_env_steps={args.eval_every}", f"callbacks.eval.episodes={args.eval_episodes}",
        f"callbacks.eval.seed={EVAL_SEED}",
        "model.double_q=false",  # SB3's DQN has no double-Q target
    ]


def run_ours(seed: int, args: argparse.Namespace) -> dict:
    """Train through the normal composition root (trainer.fit); evaluation time excluded."""
    result, model, _, _ = fit_ours(ours_overrides(args, seed), args.device)
    key = f"eval/{model.task.name}/return"
    return result | dict(history=[(s, t, float(m[key])) for s, t, m in result["history"]])


class MinAtarConv(nn.Module):
    """SB3 features extractor with the layers of mtdqn's `net.conv=[[16,3,1]]`: (N, 10, 10, C) -> 16 x 8 x 8."""

    def __init__(self, observation_space, features_dim: int = 128) -> None:
        super().__init__()
        h, w, c = observation_space.shape
        self.features_dim = features_dim
        self.conv = nn.Sequential(nn.Conv2d(c, 16, 3, 1), nn.ReLU(), nn.Flatten())
        self.linear = nn.Sequential(nn.Linear(16 * (h - 2) * (w - 2), features_dim), nn.ReLU())
        self.shape = (h, w, c)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float().reshape(-1, *self.shape).permute(0, 3, 1, 2)  # flattened (eval) or HWC (SB3's replay)
        return self.linear(self.conv(x))


def run_sb3(seed: int, args: argparse.Namespace) -> dict:
    """SB3's DQN with the preset's settings on the same env, evaluated by the same code."""
    from stable_baselines3 import DQN
    from stable_baselines3.common.vec_env import DummyVecEnv

    cfg = compose_train([*ours_overrides(args, seed), f"paths.output_dir={tempfile.gettempdir()}"], args.device)
    eval_env = GymVecEnv(args.game, num_envs=args.eval_episodes, device=args.device)
    env = DummyVecEnv([lambda: make_single(args.game) for _ in range(N_ENVS)])
    extractor = dict(features_extractor_class=MinAtarConv, features_extractor_kwargs=dict(features_dim=128),
                     net_arch=[]) if args.net == "conv" else dict(net_arch=list(cfg.net.hidden))
    eps = cfg.exploration
    model = DQN(
        "MlpPolicy", env, seed=seed, device=args.device, verbose=0, learning_rate=float(cfg.optimizer.lr),
        buffer_size=int(cfg.replay.capacity), learning_starts=int(cfg.data.learning_starts),
        batch_size=int(cfg.data.batch_size), gamma=float(cfg.gamma), n_steps=int(cfg.replay.n_step), train_freq=4,
        gradient_steps=int(4 * N_ENVS * float(cfg.data.replay_ratio)),
        target_update_interval=int(cfg.model.target_update_period), exploration_initial_eps=float(eps.start),
        exploration_final_eps=float(eps.end), exploration_fraction=float(eps.duration) / args.total_steps,
        max_grad_norm=float(cfg.model.max_grad_norm), policy_kwargs=extractor,
    )
    cb = sb3_eval_callback(eval_env, args.eval_every, seed=EVAL_SEED)
    t0 = time.perf_counter()
    model.learn(total_timesteps=args.total_steps, callback=cb)
    wall = time.perf_counter() - t0 - cb.eval_seconds
    env.close()
    eval_env.close()
    return dict(wall=wall, env_steps=model.num_timesteps, updates=model._n_updates, history=cb.history)


def first_reach(history: Sequence[Sequence[float]], threshold: float) -> tuple[int, float] | None:
    """(env steps, training seconds) of the first evaluation with mean return >= threshold (None: never)."""
    return next(((int(s), float(t)) for s, t, r in history if r >= threshold), None)


def _ci(values: list[float], stat) -> str:
    if len(values) < 2:
        return f"{stat(values):.2f}"
    lo, hi = bootstrap_ci(values, stat)
    return f"{stat(values):.2f} [{lo:.2f}, {hi:.2f}]"


def _reached(values: list[float], runs: int, spec: str) -> str:
    """The median over runs, never-reached runs counted as slower: 'not reached' unless more than half reached."""
    return format(statistics.median(values + [float("inf")] * (runs - len(values))), spec) \
        if len(values) * 2 > runs else "not reached"


def report(results: dict, args: argparse.Namespace) -> str:
    """Markdown table: medians over seeds for speed, mean / IQM with 95% bootstrap CIs for the final return."""
    med = statistics.median
    lines = [
        f"{args.game} DQN ({args.net}), {args.total_steps:,} env steps, {N_ENVS} envs, "
        f"{args.eval_episodes} evaluation episodes every {args.eval_every:,} env steps, {machine_line(args)}",
        "",
        f"| run | wall s (train) | env steps/s | updates | updates/s | final return, mean [95% CI] | IQM [95% CI] | "
        f"AUC | env steps to {args.threshold:g} | train s to {args.threshold:g} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        if not runs:
            continue
        finals = [r["history"][-1][-1] for r in runs]
        reach = [first_reach(r["history"], args.threshold) for r in runs]
        reached = [s for s in reach if s is not None]
        aucs = [area_under_curve([h[0] for h in r["history"]], [h[-1] for h in r["history"]]) for r in runs]
        lines.append(
            f"| {name} | {speed_cells(runs)} | {_ci(finals, mean)} | {_ci(finals, iqm)} | {med(aucs):.2f} | "
            f"{_reached([s for s, _ in reached], len(runs), ',.0f')} ({len(reached)}/{len(runs)}) | "
            f"{_reached([t for _, t in reached], len(runs), '.1f')} |")
    ratio = wall_ratio_line(results)
    if ratio:
        lines += ["", ratio]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's cookbook commands are parsed with it in a test)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--game", default="MinAtar/Breakout-v1", help="any MinAtar/<Game>-v1 id")
    p.add_argument("--net", choices=sorted(NETS), default="mlp",
                   help="mlp: 128 hidden units on the flattened image; conv: the MinAtar paper's network")
    p.add_argument("--total-steps", type=int, default=500_000, help="env steps per run")
    p.add_argument("--eval-every", type=int, default=50_000, help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=32)
    p.add_argument("--threshold", type=float, default=8.0, help="return whose first evaluation is reported")
    return add_common_args(p)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for name, value in (("--total-steps", args.total_steps), ("--eval-every", args.eval_every),
                        ("--eval-episodes", args.eval_episodes)):
        if value <= 0:
            raise SystemExit(f"{name}={value} must be > 0")
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {"mtdqn": [], "sb3": []}
    for seed in args.seeds:  # alternate frameworks so machine noise hits both alike
        results["mtdqn"].append(run_ours(seed, args))
        print(f"seed {seed} mtdqn: {results['mtdqn'][-1]['wall']:.1f} s, final "
              f"{results['mtdqn'][-1]['history'][-1][-1]:.2f}", flush=True)
        if not args.skip_sb3:
            results["sb3"].append(run_sb3(seed, args))
            print(f"seed {seed} sb3: {results['sb3'][-1]['wall']:.1f} s, final "
                  f"{results['sb3'][-1]['history'][-1][-1]:.2f}", flush=True)
        write_record(args, results=results)
    finish(args, results, report(results, args), key="table")

if __name__ == "__main__":
    from mtdqn.overrides import script_main

    script_main(main, "bench_minatar.py")

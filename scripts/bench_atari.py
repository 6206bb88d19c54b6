#!/usr/bin/env python
"""Side-by-side Atari DQN throughput: mtdqn's `+experiment=atari_dqn` vs Stable-Baselines3's DQN (CnnPolicy).

The same game and preprocessing (ALE v5, sticky actions 0.25, gymnasium's AtariPreprocessing and a stack of 4
84x84 frames: each framework gets the very same env stack), the same Nature network, batch, learning rate, target
sync, replay size and updates per env step (8 envs, an update every 4 env steps), a fixed epsilon (both act with the
network on most steps), plain DQN targets (SB3 has no double-Q), no evaluation. The frameworks alternate seed by seed in one process; the script prints
medians over seeds of the training wall time, env steps/s and updates/s, the ratio ours / SB3 (median of per-seed
ratios), and what one stored transition costs in each replay buffer. Learning is not measured here: Atari DQN needs
millions of env steps (README "Atari").

    pip install -c constraints.txt -e '.[bench,atari]'
    python scripts/bench_atari.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence

import torch
from bench_common import (
    add_common_args,
    compose_train,
    finish,
    fit_ours,
    machine_line,
    speed_cells,
    wall_ratio_line,
    write_record,
)
from omegaconf import OmegaConf

from mtdqn.envs.gym_adapter import make_single

N_ENVS = 8


def ours_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    """The preset at the bench's size; everything else as shipped."""
    return [
        "+experiment=atari_dqn", f"task_set.tasks=[{args.game}]", f"seed={seed}", "logger=none", "callbacks=none",
        f"data.num_envs={N_ENVS}", f"data.total_env_steps={args.total_steps}",
        # ours updates from the round that reaches learning_starts, SB3 from the env step after it
        f"data.learning_starts={args.learning_starts + 1}", f"replay.capacity={args.capacity}",
        f"exploration.start={args.epsilon}", f"exploration.end={args.epsilon}",
        "model.double_q=false",  # SB3's DQN has no double-Q target (one more forward per update for ours)
    ]


def run_ours(seed: int, args: argparse.Namespace) -> dict:
    """Train through the normal composition root (trainer.fit), timed end to end."""
    result, _, data, _ = fit_ours(ours_overrides(args, seed), args.device)
    return result | dict(replay_bytes_per_transition=data.buffer.bytes_per_transition)


def run_sb3(seed: int, args: argparse.Namespace) -> dict:
    """SB3's DQN on the same env stack with the same settings (RL Zoo's Atari DQN, 8 envs)."""
    from stable_baselines3 import DQN
    from stable_baselines3.common.vec_env import DummyVecEnv

    cfg = compose_train([*ours_overrides(args, seed), f"paths.output_dir={tempfile.gettempdir()}"], args.device)
    env_kwargs = OmegaConf.to_container(cfg.task_set.env_kwargs, resolve=True)
    env = DummyVecEnv([lambda: make_single(args.game, env_kwargs) for _ in range(N_ENVS)])
    model = DQN(
        "CnnPolicy", env, seed=seed, device=args.device, verbose=0, learning_rate=float(cfg.optimizer.lr),
        buffer_size=args.capacity, learning_starts=args.learning_starts, batch_size=int(cfg.data.batch_size),
        gamma=float(cfg.gamma), train_freq=4, gradient_steps=int(4 * N_ENVS * float(cfg.data.replay_ratio)),
        target_update_interval=int(cfg.model.target_update_period), exploration_initial_eps=args.epsilon,
        exploration_final_eps=args.epsilon, max_grad_norm=float(cfg.model.max_grad_norm),
        policy_kwargs=dict(net_arch=list(cfg.net.hidden)[1:], features_extractor_kwargs=dict(features_dim=cfg.net.hidden[0])),
    )
    t0 = time.perf_counter()
    model.learn(total_timesteps=args.total_steps)
    wall = time.perf_counter() - t0
    rb = model.replay_buffer
    arrays = (rb.observations, rb.next_observations, rb.actions, rb.rewards, rb.dones, rb.timeouts)
    per = sum(a.nbytes for a in arrays if a is not None) / (rb.buffer_size * rb.n_envs)
    env.close()
    return dict(wall=wall, env_steps=model.num_timesteps, updates=model._n_updates, replay_bytes_per_transition=per)


def report(results: dict, args: argparse.Namespace) -> str:
    """Markdown table of medians over seeds plus the ratio."""
    med = statistics.median
    lines = [
        f"{args.game} DQN (Nature CNN), {args.total_steps:,} env steps ({args.learning_starts:,} before the first "
        f"update), {N_ENVS} envs, {machine_line(args)}",
        "",
        "| run | wall s | env steps/s | updates | updates/s | replay bytes per transition |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        if runs:
            lines.append(
                f"| {name} | {speed_cells(runs, '.1f')} | {med([r['replay_bytes_per_transition'] for r in runs]):,.0f} |")
    ratio = wall_ratio_line(results)
    if ratio:
        lines += ["", ratio]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's cookbook commands are parsed with it in a test)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--game", default="ALE/Pong-v5", help="any ALE/<Game>-v5 id")
    p.add_argument("--total-steps", type=int, default=6_144, help="env steps per run (a multiple of 256, the preset's "
                   "env steps per round, so both frameworks step alike)")
    p.add_argument("--learning-starts", type=int, default=1_024, help="env steps before the first update")
    p.add_argument("--capacity", type=int, default=100_000, help="replay size (both frameworks)")
    p.add_argument("--epsilon", type=float, default=0.05, help="fixed exploration rate (both frameworks)")
    return add_common_args(p)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.total_steps <= 0 or args.total_steps % 256:  # the preset's env steps per round: ours would run on to the
        raise SystemExit(f"bench_atari.py: error: --total-steps {args.total_steps}: give a positive multiple of 256 "
                         "(the env steps per round), so both frameworks take the same env steps")  # next round's end
    if not 0 <= args.learning_starts < args.total_steps:
        raise SystemExit(f"bench_atari.py: error: --learning-starts {args.learning_starts} must lie in [0, "
                         f"--total-steps {args.total_steps})")
    torch.set_num_threads(args.threads)  # build() + fit() do not apply torch_threads (train() does)
    results: dict[str, list[dict]] = {"mtdqn": [], "sb3": []}
    for seed in args.seeds:
        for name, run in (("mtdqn", run_ours), ("sb3", run_sb3)):
            if name == "sb3" and args.skip_sb3:
                continue
            r = run(seed, args)
            results[name].append(r)
            print(f"seed {seed} {name}: {r['wall']:.1f} s, {r['env_steps']} env steps, {r['updates']} updates", flush=True)
        write_record(args, results=results)
    finish(args, results, report(results, args))


if __name__ == "__main__":
    from mtdqn.overrides import script_main

    script_main(main, "bench_atari.py")

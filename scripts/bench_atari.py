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
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from mtdqn.envs.gym_adapter import make_single  # noqa: E402

N_ENVS = 8


def compose_ours(args: argparse.Namespace, seed: int, output_dir: str):
    """The preset at the bench's size; everything else as shipped."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=[
            "+experiment=atari_dqn", f"task_set.tasks=[{args.game}]", f"seed={seed}", "logger=none", "callbacks=none",
            f"data.num_envs={N_ENVS}", f"data.total_env_steps={args.total_steps}",
            # ours updates from the round that reaches learning_starts, SB3 from the env step after it
            f"data.learning_starts={args.learning_starts + 1}", f"replay.capacity={args.capacity}",
            f"exploration.start={args.epsilon}", f"exploration.end={args.epsilon}",
            "model.double_q=false",  # SB3's DQN has no double-Q target (one more forward per update for ours)
            f"paths.output_dir={output_dir}", "+trainer.enable_progress_bar=false",
            *(["trainer=gpu"] if args.device.startswith("cuda") else []),
        ])


def run_ours(seed: int, args: argparse.Namespace) -> dict:
    """Train through the normal composition root (trainer.fit), timed end to end."""
    from mtdqn.train import build

    with tempfile.TemporaryDirectory() as tmp:
        model, data, trainer = build(compose_ours(args, seed, tmp))
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=data)
        wall = time.perf_counter() - t0
    buf = data.buffer
    return dict(wall=wall, env_steps=data.current_env_steps(), updates=trainer.global_step,
                replay_bytes_per_transition=buf.bytes_per_transition)


def run_sb3(seed: int, args: argparse.Namespace) -> dict:
    """SB3's DQN on the same env stack with the same settings (RL Zoo's Atari DQN, 8 envs)."""
    from stable_baselines3 import DQN
    from stable_baselines3.common.vec_env import DummyVecEnv

    cfg = compose_ours(args, seed, tempfile.gettempdir())
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
        f"update), {N_ENVS} envs, seeds {args.seeds}, torch threads {args.threads}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, device {args.device}"
        f"{' (' + torch.cuda.get_device_name() + ')' if args.device.startswith('cuda') else ''}",
        "",
        "| run | wall s | env steps/s | updates | updates/s | replay bytes per transition |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        if runs:
            lines.append(
                f"| {name} | {med([r['wall'] for r in runs]):.1f} | "
                f"{med([r['env_steps'] / r['wall'] for r in runs]):,.0f} | {med([r['updates'] for r in runs]):,.0f} | "
                f"{med([r['updates'] / r['wall'] for r in runs]):.1f} | "
                f"{med([r['replay_bytes_per_transition'] for r in runs]):,.0f} |")
    ours, sb3 = results.get("mtdqn", []), results.get("sb3", [])
    if ours and sb3:
        ratio = [o["wall"] / s["wall"] for o, s in zip(ours, sb3, strict=True)]
        lines += ["", f"- wall-time ratio mtdqn / SB3 (same env steps and updates), median of per-seed ratios: "
                      f"{med(ratio):.3f} (per seed: {', '.join(f'{r:.3f}' for r in ratio)})"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's cookbook commands are parsed with it in a test)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--game", default="ALE/Pong-v5", help="any ALE/<Game>-v5 id")
    p.add_argument("--total-steps", type=int, default=6_144, help="env steps per run (a multiple of 256, the preset's "
                   "env steps per round, so both frameworks step alike)")
    p.add_argument("--learning-starts", type=int, default=1_024, help="env steps before the first update")
    p.add_argument("--capacity", type=int, default=100_000, help="replay size (both frameworks)")
    p.add_argument("--epsilon", type=float, default=0.05, help="fixed exploration rate (both frameworks)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every run")
    p.add_argument("--device", default="cpu", help="cpu or cuda: networks, replay and updates of both frameworks")
    p.add_argument("--skip-sb3", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="write raw results and the table as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)  # build() + fit() do not apply torch_threads (train() does)
    results: dict[str, list[dict]] = {"mtdqn": [], "sb3": []}
    for seed in args.seeds:
        for name, run in (("mtdqn", run_ours), ("sb3", run_sb3)):
            if name == "sb3" and args.skip_sb3:
                continue
            r = run(seed, args)
            results[name].append(r)
            print(f"seed {seed} {name}: {r['wall']:.1f} s, {r['env_steps']} env steps, {r['updates']} updates", flush=True)
    text = report(results, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results,
                                        "report": text}, indent=1))


if __name__ == "__main__":
    main()

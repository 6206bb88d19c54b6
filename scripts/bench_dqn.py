#!/usr/bin/env python
"""Side-by-side DQN benchmark on CartPole-v1: mtdqn vs Stable-Baselines3 vs a bare-torch compute floor.

Same hyperparameters (RL Zoo's CartPole-v1 DQN), same env steps, same number of gradient updates, the two
frameworks alternated seed by seed in one process. Evaluation (10 greedy episodes, fixed seeds, identical code for
both) runs after each round of updates and its time is excluded from every timing. Prints medians over seeds and
the ratios ours / SB3; `--out` also writes the raw numbers as JSON.

    pip install -c constraints.txt -e '.[bench]'
    python scripts/bench_dqn.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from bench_common import (
    add_common_args,
    finish,
    fit_ours,
    machine_line,
    sb3_eval_callback,
    wall_ratio_line,
    write_record,
)

from mtdqn.envs import GymVecEnv
from mtdqn.models.lean_step import clip_grads_

ZOO = dict(  # rl-baselines3-zoo hyperparams/dqn.yml, CartPole-v1
    learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
    exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]),
)
THRESHOLD = 475.0


def first_reach(history: list[tuple[int, float, float]]) -> tuple[float | None, float | None]:
    """(env steps, train seconds) of the first evaluation with mean return >= THRESHOLD."""
    for steps, seconds, ret in history:
        if ret >= THRESHOLD:
            return steps, seconds
    return None, None


def run_ours(seed: int, args: argparse.Namespace, overrides: list[str]) -> dict:
    """Train mtdqn through the normal composition root; timings exclude evaluation."""
    result, model, _, _ = fit_ours([
        *overrides, f"seed={seed}", f"data.total_env_steps={args.total_steps}", "logger=none",
        "callbacks.progress=null", "callbacks.checkpoint=null", f"callbacks.eval.every_env_steps={args.eval_every}",
        f"callbacks.eval.episodes={args.eval_episodes}",
    ], args.device)
    key = f"eval/{model.task.name}/return"
    history = [(s, t, float(m[key])) for s, t, m in result["history"]]
    return result | dict(history=history, final_return=history[-1][2])


def run_sb3(seed: int, args: argparse.Namespace) -> dict:
    """Train Stable-Baselines3's DQN with the same hyperparameters and the same evaluation."""
    from stable_baselines3 import DQN

    eval_env = GymVecEnv("CartPole-v1", num_envs=args.eval_episodes, device=args.device)
    torch.set_flush_denormal(args.sb3_flush_denormal)  # SB3 as shipped leaves denormal floats on
    model = DQN("MlpPolicy", "CartPole-v1", seed=seed, device=args.device, verbose=0, **ZOO)
    cb = sb3_eval_callback(eval_env, args.eval_every)
    t0 = time.perf_counter()
    model.learn(total_timesteps=args.total_steps, callback=cb)
    wall = time.perf_counter() - t0 - cb.eval_seconds
    eval_env.close()
    return dict(wall=wall, env_steps=model.num_timesteps, updates=model._n_updates, history=cb.history,
                final_return=cb.history[-1][2])


@torch.no_grad()
def explicit_grads(x: torch.Tensor, a: torch.Tensor, y: torch.Tensor, ps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Huber TD-loss gradients of the 2-hidden-layer ReLU MLP written out by hand (no autograd graph)."""
    h1 = torch.addmm(ps[1], x, ps[0].t()).clamp_(min=0.0)
    h2 = torch.addmm(ps[3], h1, ps[2].t()).clamp_(min=0.0)
    q = torch.addmm(ps[5], h2, ps[4].t())
    idx = a.unsqueeze(1)
    d = (q.gather(1, idx).squeeze(1) - y).clamp(-1.0, 1.0) / x.shape[0]
    g3 = torch.zeros_like(q).scatter_(1, idx, d.unsqueeze(1))
    g2 = g3.mm(ps[4]).mul_(h2 > 0)
    g1 = g2.mm(ps[2]).mul_(h1 > 0)
    return [g1.t().mm(x), g1.sum(0), g2.t().mm(h1), g2.sum(0), g3.t().mm(h2), g3.sum(0)]


def run_floor(n_updates: int, n_forwards: int, seed: int, device: str = "cpu") -> dict:
    """Bare torch, the fastest plain form we know: the same acting forwards and updates (functional forward,
    hand-written gradients, foreach clipping, functional fused Adam, one batched target forward per round), no
    env, no replay logic, no framework."""
    torch.manual_seed(seed)
    torch.set_flush_denormal(True)  # the fastest plain form: denormal Adam moments flushed to zero
    sizes = [(4, 256), (256, 256), (256, 2)]
    params = []
    for fan_in, fan_out in sizes:
        layer = torch.nn.Linear(fan_in, fan_out, device=device)
        params += [layer.weight.detach().requires_grad_(), layer.bias.detach().requires_grad_()]
    target = [p.detach().clone() for p in params]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), device=device) for _ in params]

    def forward(x: torch.Tensor, ps: list[torch.Tensor]) -> torch.Tensor:
        h = F.relu(F.linear(x, ps[0], ps[1]))
        return F.linear(F.relu(F.linear(h, ps[2], ps[3])), ps[4], ps[5])

    n = 50_000
    obs, next_obs = torch.randn(n, 4, device=device), torch.randn(n, 4, device=device)
    actions, rewards = torch.randint(0, 2, (n,), device=device), torch.randn(n, device=device)
    discounts = torch.full((n,), 0.99, device=device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(n_forwards):
            forward(obs[i % n : i % n + 1], params).argmax(-1).cpu()  # an action goes back to the env
    g_round = ZOO["gradient_steps"]
    for start in range(0, n_updates, g_round):  # rounds of updates with a frozen target, as in DQN with
        torch._foreach_copy_(target, [p.detach() for p in params])  # target syncs between rounds
        g = min(g_round, n_updates - start)
        idx = torch.randint(0, n, (g, ZOO["batch_size"]), device=device)
        with torch.no_grad():  # all target values of the round in one forward
            next_v = forward(next_obs[idx], target).amax(-1)
        for k in range(g):
            i = idx[k]
            y = rewards[i] + discounts[i] * next_v[k]
            grads = explicit_grads(obs[i], actions[i], y, params)
            clip_grads_(grads, 10.0)
            with torch.no_grad():  # the fused Adam kernel itself, as torch.optim.Adam(fused=True) calls it
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(params, grads, exp_avg, exp_avg_sq, [], steps, amsgrad=False, beta1=0.9,
                                   beta2=0.999, lr=ZOO["learning_rate"], weight_decay=0.0, eps=1e-8,
                                   maximize=False, grad_scale=None, found_inf=None)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return dict(wall=time.perf_counter() - t0, updates=n_updates, forwards=n_forwards)


def median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if len(vals) * 2 > len(xs) else None


def fmt(x: float | None, spec: str = ",.1f") -> str:
    return "not reached" if x is None else format(x, spec)


def report(results: dict, args: argparse.Namespace) -> str:
    """Markdown table of medians over seeds plus ratios."""
    lines = [
        f"CartPole-v1 DQN, {args.total_steps:,} env steps, {machine_line(args)}; denormal floats "
        f"flushed for mtdqn (its default) and the floor, {'also' if args.sb3_flush_denormal else 'not'} for SB3",
        "",
        "| run | wall s (train) | env steps/s | updates | updates/s | steps to 475 | seconds to 475 | final return |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        if name == "floor" or not runs:
            continue
        walls = [r["wall"] for r in runs]
        reach = [first_reach(r["history"]) for r in runs]
        lines.append(
            f"| {name} | {fmt(median(walls))} | {fmt(median([r['env_steps'] / r['wall'] for r in runs]), ',.0f')} | "
            f"{fmt(median([r['updates'] for r in runs]), ',.0f')} | "
            f"{fmt(median([r['updates'] / r['wall'] for r in runs]), ',.0f')} | "
            f"{fmt(median([s for s, _ in reach]), ',.0f')} ({sum(s is not None for s, _ in reach)}/{len(runs)}) | "
            f"{fmt(median([t for _, t in reach]))} | {fmt(median([r['final_return'] for r in runs]))} |"
        )
    if results.get("floor"):
        lines.append(f"| bare-torch floor | {fmt(median([r['wall'] for r in results['floor']]))} | - | "
                     f"{results['floor'][0]['updates']:,} | - | - | - | - |")
    lines.append("")
    ours, sb3 = results.get("mtdqn", []), results.get("sb3", [])
    if ours and sb3:
        lines.append(wall_ratio_line(results, "same work"))
    if ours and results.get("floor"):
        eff = [f["wall"] / o["wall"] for f, o in zip(results["floor"], ours, strict=True)]
        lines.append(f"- efficiency floor / mtdqn: {statistics.median(eff):.3f}")
    best = results.get("mtdqn-fast", [])
    if best and sb3:
        b = median([first_reach(r["history"])[1] for r in best])
        s = median([first_reach(r["history"])[1] for r in sb3])
        if b is not None and s is not None:
            lines.append(f"- time-to-475 ratio mtdqn-fast / SB3: {b / s:.3f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's cookbook commands are parsed with it in a test)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total-steps", type=int, default=50_000, help="env steps per run")
    p.add_argument("--eval-every", type=int, default=2_000, help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--skip-fast", action="store_true", help="skip mtdqn's throughput preset")
    p.add_argument("--fast-experiment", default="cartpole_fast", help="experiment preset for the throughput run")
    p.add_argument("--sb3-flush-denormal", action="store_true",
                   help="also flush denormal floats for SB3 (its default, like torch's, is not to)")
    return add_common_args(p)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {"mtdqn": [], "sb3": [], "floor": [], "mtdqn-fast": []}
    for seed in args.seeds:
        ours = run_ours(seed, args, ["+experiment=cartpole_dqn"])
        results["mtdqn"].append(ours)
        print(f"seed {seed} mtdqn: {ours['wall']:.1f} s, {ours['updates']} updates, final {ours['final_return']}", flush=True)
        if not args.skip_sb3:
            sb3 = run_sb3(seed, args)
            results["sb3"].append(sb3)
            print(f"seed {seed} sb3:   {sb3['wall']:.1f} s, {sb3['updates']} updates, final {sb3['final_return']}", flush=True)
        fl = run_floor(ours["updates"], ours["env_steps"] - 1000, seed, args.device)
        results["floor"].append(fl)
        print(f"seed {seed} floor: {fl['wall']:.1f} s", flush=True)
        if not args.skip_fast:
            fast = run_ours(seed, args, [f"+experiment={args.fast_experiment}"])
            results["mtdqn-fast"].append(fast)
            print(f"seed {seed} fast:  {fast['wall']:.1f} s, {fast['updates']} updates, final {fast['final_return']}", flush=True)
        write_record(args, results=results)
    finish(args, results, report(results, args))


if __name__ == "__main__":
    from mtdqn.overrides import script_main

    script_main(main, "bench_dqn.py")

"""Greedy evaluation episodes on a batched env: one full episode per env, all envs in parallel."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mtdqn.envs.base import TensorVecEnv


@torch.no_grad()
def run_episodes(
    policy: Callable[[Tensor], Tensor], env: TensorVecEnv, seed: int, max_steps: int = 100_000
) -> Tensor:
    """Return (N,) returns of the first episode of each of the env's N copies, seeded seed + i."""
    obs = env.reset(seed=seed)
    n = env.num_envs
    returns = torch.zeros(n, device=env.device)
    running = torch.ones(n, dtype=torch.bool, device=env.device)
    for _ in range(max_steps):
        res = env.step(policy(obs))
        returns += res.reward * running
        running &= ~(res.terminated | res.truncated)
        if not bool(running.any()):
            break
        obs = res.obs
    return returns

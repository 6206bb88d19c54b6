"""Collector: steps a TensorVecEnv with an epsilon-greedy policy and reports finished episodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from mtdqn.envs.base import TensorVecEnv
from mtdqn.types import Transition

Policy = Callable[[Tensor], Tensor]  # obs (N, obs_dim) -> greedy actions (N,)


class Episodes(NamedTuple):
    """Returns and lengths of the episodes that finished during a step (possibly empty)."""

    returns: Tensor  # (k,) float32
    lengths: Tensor  # (k,) int64


class Collector:
    """Epsilon-greedy interaction with N envs; `step` returns one Transition row (N,) and finished episodes.

    The environment autoresets in the same step (TensorVecEnv contract), so `Transition.next_obs` is always the
    true successor and a reset observation is never stored as `next_obs`.
    """

    def __init__(self, env: TensorVecEnv, policy: Policy, seed: int) -> None:
        self.env = env
        self.policy = policy
        self.seed = seed
        self.generator = torch.Generator(device=env.device)
        self.generator.manual_seed(seed)
        self.obs: Tensor | None = None
        self.ep_return = torch.zeros(env.num_envs, device=env.device)
        self.ep_length = torch.zeros(env.num_envs, dtype=torch.int64, device=env.device)

    def reset(self) -> None:
        """Reset all envs (env i gets seed + i) and the episode trackers."""
        self.obs = self.env.reset(seed=self.seed)
        self.ep_return.zero_()
        self.ep_length.zero_()

    def act(self, obs: Tensor, epsilon: float) -> Tensor:
        """Epsilon-greedy actions; the network is not called when every env explores."""
        n, dev = obs.shape[0], obs.device
        explore = torch.rand(n, generator=self.generator, device=dev) < epsilon
        n_explore = n if epsilon >= 1.0 else int(explore.sum())  # one host sync per step
        if n_explore == n:
            return torch.randint(0, self.env.n_actions, (n,), generator=self.generator, device=dev)
        with torch.no_grad():
            greedy = self.policy(obs)
        if epsilon <= 0.0 or n_explore == 0:
            return greedy
        random_actions = torch.randint(0, self.env.n_actions, (n,), generator=self.generator, device=dev)
        return torch.where(explore, random_actions, greedy)

    def step(self, epsilon: float) -> tuple[Transition, Episodes | None]:
        """Act in every env once; returns the transitions and the episodes that just finished (or None)."""
        if self.obs is None:
            self.reset()
        obs = self.obs
        actions = self.act(obs, epsilon)
        res = self.env.step(actions)
        self.ep_return += res.reward
        self.ep_length += 1
        done = res.terminated | res.truncated
        finished = None
        if bool(done.any()):
            finished = Episodes(self.ep_return[done].clone(), self.ep_length[done].clone())
            self.ep_return.masked_fill_(done, 0.0)
            self.ep_length.masked_fill_(done, 0)
        self.obs = res.obs
        return Transition(obs, actions, res.reward, res.next_obs, res.terminated, res.truncated), finished

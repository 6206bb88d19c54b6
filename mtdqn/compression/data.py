"""The states compression trains on: the teacher's replay buffers plus fresh epsilon-greedy teacher rollouts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.collect import Collector
from mtdqn.compression.policy import task_policy
from mtdqn.envs.base import TensorVecEnv
from mtdqn.replay.buffer import stored_observations

EnvFactory = Callable[..., TensorVecEnv]


class StatePool(NamedTuple):
    """Observations (N, obs_width), zero-padded to the widest task, with each one's task index (N,)."""

    obs: Tensor
    task_ids: Tensor

    def __len__(self) -> int:
        return int(self.task_ids.shape[0])


def replay_observations(replays: Sequence[dict], max_states: int | None = None, seed: int = 0) -> list[Tensor]:
    """Per task, the stored observations of a checkpoint's replay states (`MultiTaskDataModule.state_dict()
    ["replays"]`, i.e. `ReplayBuffer.state_dict()` per task) as float32, uint8 storage and frame stacks read back.
    With `max_states`, a uint8 (image) replay gives at most max_states / tasks of them, drawn uniformly, before they
    become floats (a full Atari replay would be 11 GB); float replays come whole (pool_from_observations draws)."""
    per_task = None if max_states is None else max(max_states // max(len(replays), 1), 1)
    g = torch.Generator().manual_seed(seed)
    return [stored_observations(r, per_task if r["obs"].dtype == torch.uint8 else None, g) for r in replays]


def pool_from_observations(
    observations: Sequence[Tensor], obs_width: int, max_states: int, generator: torch.Generator
) -> StatePool:
    """Flatten each task's observations, keep at most max_states / T per task (uniform without replacement)."""
    per_task = max(max_states // max(len(observations), 1), 1)
    obs, ids = [], []
    for t, o in enumerate(observations):
        flat = o.reshape(-1, o.shape[-1]).float().cpu()
        if flat.shape[0] > per_task:
            flat = flat[torch.randperm(flat.shape[0], generator=generator)[:per_task]]
        obs.append(F.pad(flat, (0, obs_width - flat.shape[-1])))
        ids.append(torch.full((flat.shape[0],), t, dtype=torch.int64))
    if not obs or sum(len(i) for i in ids) == 0:
        return StatePool(torch.zeros(0, obs_width), torch.zeros(0, dtype=torch.int64))
    return StatePool(torch.cat(obs), torch.cat(ids))


@torch.no_grad()
def rollout_pool(
    policy: nn.Module,
    env_factories: Sequence[EnvFactory],
    obs_width: int,
    steps_per_task: int,
    epsilon: float,
    num_envs: int,
    seed: int,
) -> StatePool:
    """States visited by epsilon-greedy rollouts of `policy` (env steps per task, summed over envs)."""
    obs, ids = [], []
    vec_steps = max(steps_per_task // num_envs, 0)
    for t, factory in enumerate(env_factories):
        if vec_steps == 0:
            break
        env = factory(num_envs=num_envs, device="cpu")
        collector = Collector(env, task_policy(policy, t, obs_width), seed=seed + 10_007 * t)
        for _ in range(vec_steps):
            transition, _ = collector.step(epsilon)
            obs.append(F.pad(transition.obs.float().cpu(), (0, obs_width - transition.obs.shape[-1])))
            ids.append(torch.full((transition.obs.shape[0],), t, dtype=torch.int64))
        env.close()
    if not obs:
        return StatePool(torch.zeros(0, obs_width), torch.zeros(0, dtype=torch.int64))
    return StatePool(torch.cat(obs), torch.cat(ids))


def concat_pools(*pools: StatePool) -> StatePool:
    """One pool holding every state of `pools`."""
    return StatePool(torch.cat([p.obs for p in pools]), torch.cat([p.task_ids for p in pools]))


@torch.no_grad()
def q_values(policy: nn.Module, pool: StatePool, chunk: int = 8192) -> Tensor:
    """Q-values of `policy` on every state of the pool, in chunks: (N, n_actions) float32."""
    outs = [policy(pool.obs[i : i + chunk], pool.task_ids[i : i + chunk]) for i in range(0, len(pool), chunk)]
    return torch.cat(outs) if outs else torch.zeros(0)


def fixed_batch(pool: StatePool, n: int, seed: int) -> StatePool:
    """A reproducible subset of `n` states (all of them when the pool is smaller)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(pool), generator=g)[:n]
    return StatePool(pool.obs[idx], pool.task_ids[idx])

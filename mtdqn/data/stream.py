"""The Lightning-facing experience stream: collection interleaved with replay sampling."""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset

from mtdqn.collect import Collector, LinearEpsilon
from mtdqn.replay import ReplayBuffer
from mtdqn.types import Round


class ExperienceStream(IterableDataset):
    """Each item is one round: collect `env_steps_per_round` env steps, then sample `updates_per_round` batches.

    Rounds before `learning_starts` env steps only collect. Iteration ends once `total_env_steps` is reached, so
    every DDP rank (same counts, different env seeds) stops after the same number of rounds.
    """

    def __init__(
        self,
        collector: Collector,
        buffer: ReplayBuffer,
        exploration: LinearEpsilon,
        total_env_steps: int,
        env_steps_per_round: int,
        updates_per_round: int,
        batch_size: int,
        learning_starts: int,
        start_env_steps: int = 0,
    ) -> None:
        super().__init__()
        self.collector, self.buffer, self.exploration = collector, buffer, exploration
        self.total_env_steps, self.batch_size, self.learning_starts = total_env_steps, batch_size, learning_starts
        self.vec_steps_per_round = max(env_steps_per_round // collector.env.num_envs, 1)
        self.updates_per_round = updates_per_round
        self.env_steps = start_env_steps

    def collect_round(self) -> tuple[float, torch.Tensor]:
        """Step all envs for one round, storing transitions; returns (last epsilon, finished returns)."""
        n, eps, finished = self.collector.env.num_envs, 1.0, []
        for _ in range(self.vec_steps_per_round):
            eps = self.exploration(self.env_steps)
            transition, episodes = self.collector.step(eps)
            self.buffer.add(transition)
            self.env_steps += n
            if episodes is not None:
                finished.append(episodes.returns)
        returns = torch.cat(finished) if finished else torch.zeros(0, device=self.buffer.device)
        return eps, returns

    def __iter__(self):
        while self.env_steps < self.total_env_steps:
            eps, returns = self.collect_round()
            if self.env_steps < self.learning_starts:
                continue
            yield Round(
                batch=self.buffer.sample(self.batch_size, self.updates_per_round),
                env_steps=self.env_steps,
                epsilon=eps,
                episode_returns=returns,
                episode_tasks=torch.full_like(returns, self.buffer.task_id, dtype=torch.int64),
            )


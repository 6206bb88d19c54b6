"""The single-task data module: the multi-task one with exactly one task, plus single-task accessors."""

from __future__ import annotations

from mtdqn.collect import Collector, LinearEpsilon
from mtdqn.data.multitask import EnvFactory, MultiTaskDataModule, ReplayFactory, check_positive
from mtdqn.envs.base import TensorVecEnv
from mtdqn.replay import ReplayBuffer
from mtdqn.types import TaskSpec

__all__ = ["EnvFactory", "RLDataModule", "ReplayFactory", "check_positive"]


class RLDataModule(MultiTaskDataModule):
    """Single-task experience: N envs -> collector -> replay -> rounds of stacked minibatches."""

    def __init__(
        self,
        env_factory: EnvFactory,
        replay: ReplayFactory,
        exploration: LinearEpsilon,
        task: TaskSpec,
        num_envs: int = 1,  # parallel envs for collection
        total_env_steps: int = 50_000,  # env steps (summed over envs)
        env_steps_per_round: int = 256,  # env steps collected between rounds of updates
        replay_ratio: float = 0.5,  # gradient updates per env step
        batch_size: int = 64,  # transitions per gradient update
        learning_starts: int = 1_000,  # env steps of random actions before the first update
        seed: int = 0,
        batch_composition: str = "uniform",  # one task: every composition gives the whole batch to it
        task_weights: list[float] | None = None,  # one weight (or null) for batch_composition=weighted
        collect_weights: list[float] | None = None,  # one share (or null): every env step is this task's
        collect_schedule: str = "fixed",  # one task: by_score has nothing to shift (validated all the same)
        collect_solved_score: float = 0.9,
        collect_solved_scale: float = 0.1,
        collect_unsolved_score: float | None = None,
        batch_solved_scale: float = 1.0,
        exploration_clock: str = "summed",  # one task: its own steps are the summed steps (validated all the same)
        reward_scale: float = 1.0,  # replay stores clip(reward_scale x r, -reward_clip, reward_clip)
        reward_clip: float | None = None,  # None: no clipping
        eval_env_factory: EnvFactory | None = None,  # evaluation env (default: env_factory)
        share_fraction: float = 0.0,  # multi-task data sharing; one task has no other task to share with
        batch_size_unit: str = "total",  # one task: total and per_task are the same (validated all the same)
    ) -> None:
        super().__init__([env_factory], replay, exploration, [task], num_envs, total_env_steps,
                         env_steps_per_round, replay_ratio, batch_size, learning_starts, seed,
                         batch_composition=batch_composition, task_weights=task_weights,
                         collect_weights=collect_weights, collect_schedule=collect_schedule,
                         collect_solved_score=collect_solved_score, collect_solved_scale=collect_solved_scale,
                         collect_unsolved_score=collect_unsolved_score, batch_solved_scale=batch_solved_scale,
                         exploration_clock=exploration_clock,
                         reward_scale=reward_scale, reward_clip=reward_clip,
                         eval_env_factories=None if eval_env_factory is None else [eval_env_factory],
                         share_fraction=share_fraction, batch_size_unit=batch_size_unit)
        self.task = task

    buffer: ReplayBuffer = property(lambda self: self.buffers[0])  # type: ignore[assignment]
    collector: Collector = property(lambda self: self.collectors[0])  # type: ignore[assignment]
    env: TensorVecEnv = property(lambda self: self.envs[0])  # type: ignore[assignment]

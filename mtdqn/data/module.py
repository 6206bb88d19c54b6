"""LightningDataModule owning envs, collector and replay; the policy comes from the trainer's module."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mtdqn.collect import Collector, LinearEpsilon
from mtdqn.data.stream import ExperienceStream
from mtdqn.envs.base import TensorVecEnv
from mtdqn.replay import ReplayBuffer
from mtdqn.types import TaskSpec

EnvFactory = Callable[..., TensorVecEnv]  # (num_envs=..., device=...) -> TensorVecEnv
ReplayFactory = Callable[..., ReplayBuffer]  # (num_envs=, obs_dim=, device=, seed=, task_id=) -> ReplayBuffer


def check_positive(**values: float) -> None:
    """Raise ValueError naming the first key whose value is not > 0."""
    for key, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{key}={value} must be > 0")


class RLDataModule(pl.LightningDataModule):
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
    ) -> None:
        super().__init__()
        check_positive(**{
            "data.num_envs": num_envs, "data.total_env_steps": total_env_steps,
            "data.env_steps_per_round": env_steps_per_round, "data.replay_ratio": replay_ratio,
            "data.batch_size": batch_size,
        })
        if env_steps_per_round < num_envs:
            raise ValueError(f"data.env_steps_per_round={env_steps_per_round} must be >= data.num_envs={num_envs}")
        if batch_size > learning_starts:
            raise ValueError(
                f"data.batch_size={batch_size} is larger than the warm-up data.learning_starts={learning_starts}: "
                "the first update would sample more transitions than replay holds"
            )
        if total_env_steps <= learning_starts:
            raise ValueError(
                f"data.total_env_steps={total_env_steps} must exceed data.learning_starts={learning_starts}"
            )
        self.updates_per_round = round(env_steps_per_round * replay_ratio)
        if self.updates_per_round < 1:
            raise ValueError(
                f"data.replay_ratio={replay_ratio} x data.env_steps_per_round={env_steps_per_round} "
                "gives < 1 update per round; raise one of them"
            )
        self.env_factory, self.replay_factory, self.exploration, self.task = env_factory, replay, exploration, task
        self.num_envs, self.total_env_steps, self.env_steps_per_round = num_envs, total_env_steps, env_steps_per_round
        self.batch_size, self.learning_starts, self.seed = batch_size, learning_starts, seed
        self.env_steps = 0
        self.stream: ExperienceStream | None = None

    @property
    def device(self) -> torch.device:
        """The training device (envs and replay live there)."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    @property
    def rank(self) -> int:
        """This process's global rank (0 without DDP)."""
        return self.trainer.global_rank if self.trainer is not None else 0

    def policy(self, obs: Tensor) -> Tensor:
        """Greedy actions of the trainer's current module."""
        return self.trainer.lightning_module.greedy_action(obs)

    def setup(self, stage: str | None = None) -> None:
        """Build envs, collector and replay on this rank's device with rank-distinct seeds."""
        if getattr(self, "buffer", None) is not None:
            return
        rank_seed = self.seed + 100_003 * self.rank
        self.env = self.env_factory(num_envs=self.num_envs, device=self.device)
        self.buffer = self.replay_factory(
            num_envs=self.num_envs, obs_dim=self.task.obs_dim, device=self.device, seed=rank_seed
        )
        self.collector = Collector(self.env, self.policy, seed=rank_seed)

    def make_eval_env(self, num_envs: int, task: int = 0) -> TensorVecEnv:
        """A separate env instance of task `task` for evaluation."""
        if task != 0:
            raise IndexError(f"RLDataModule has one task, asked for task {task}")
        return self.env_factory(num_envs=num_envs, device=self.device)

    def train_dataloader(self) -> DataLoader:
        """A DataLoader over the experience stream (no workers: the envs live in this process)."""
        self.collector.seed = self.collector.seed + self.env_steps  # fresh episodes after a resume
        self.stream = ExperienceStream(
            self.collector, self.buffer, self.exploration, self.total_env_steps, self.env_steps_per_round,
            self.updates_per_round, self.batch_size, self.learning_starts, start_env_steps=self.env_steps,
        )
        return DataLoader(self.stream, batch_size=None, num_workers=0)

    def current_env_steps(self) -> int:
        """Env steps collected so far on this rank."""
        return self.stream.env_steps if self.stream is not None else self.env_steps

    def state_dict(self) -> dict:
        """Counters, replay contents and collector RNG (all tensors or ints)."""
        return {
            "env_steps": self.current_env_steps(),
            "replay": self.buffer.state_dict(),
            "collector_rng": self.collector.generator.get_state(),
            "collector_seed": self.collector.seed,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore counters, replay and RNG saved by `state_dict`."""
        self.env_steps = int(state["env_steps"])
        self.buffer.load_state_dict(state["replay"])
        self.collector.generator.set_state(state["collector_rng"])
        self.collector.seed = int(state["collector_seed"])
        self.collector.obs = None
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])

    def teardown(self, stage: str | None = None) -> None:
        """Close the envs."""
        if getattr(self, "env", None) is not None:
            self.env.close()

"""Typed records that cross stage boundaries (envs -> collect -> replay -> data -> models)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor


def finite_number(value: Any) -> bool:
    """A real number from a config (int or float, not a bool) that is finite: what numeric config checks accept."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class StepResult(NamedTuple):
    """One step of a batched environment; every field has leading dim N (number of envs).

    `next_obs` is the true successor of the acted-on observation (the final observation where an episode ended),
    `obs` is what the agent acts on next (the reset observation where an episode ended).
    """

    next_obs: Tensor  # (N, obs_dim) float32
    reward: Tensor  # (N,) float32
    terminated: Tensor  # (N,) bool: episode ended in a terminal state; no bootstrapping
    truncated: Tensor  # (N,) bool: episode cut by a time limit; bootstrap from next_obs
    obs: Tensor  # (N, obs_dim) float32


class Transition(NamedTuple):
    """A batch of one-step transitions, one per env, as stored in replay."""

    obs: Tensor  # (N, obs_dim)
    action: Tensor  # (N,) int64
    reward: Tensor  # (N,) float32
    next_obs: Tensor  # (N, obs_dim)
    terminated: Tensor  # (N,) bool
    truncated: Tensor  # (N,) bool


class Batch(NamedTuple):
    """A training minibatch (possibly stacked: leading dim G of gradient steps, then B)."""

    obs: Tensor  # (..., B, obs_dim)
    actions: Tensor  # (..., B) int64
    rewards: Tensor  # (..., B) float32: n-step discounted sum of rewards
    next_obs: Tensor  # (..., B, obs_dim): observation to bootstrap from
    discounts: Tensor  # (..., B) float32: gamma**n_eff, 0 where the episode terminated
    weights: Tensor  # (..., B) float32: importance-sampling weights (1 for uniform replay)
    indices: Tensor  # (..., B) int64: flat replay indices (for priority updates)
    task_ids: Tensor  # (..., B) int64: task index of each sample (0 in single-task runs)


class Round(NamedTuple):
    """What the data stream hands to `training_step`: stacked minibatches plus collection facts to log."""

    batch: Batch  # fields stacked (G, B, ...): G gradient updates this round
    env_steps: int  # env steps collected so far (summed over envs and tasks), after this round's collection
    epsilon: float  # exploration epsilon at the end of collection
    episode_returns: Tensor  # (k,) returns of the episodes finished during this round's collection
    episode_tasks: Tensor  # (k,) int64 task index of each finished episode
    # (T, 1 + 2 D) float64 [count, sum, sum of squares] per task of the observations collected since the last
    # round (D = widest task's obs size); only when the Q-network normalizes observations (net.obs_norm), else None
    obs_stats: Tensor | None = None
    # not None: batch.obs / next_obs are uint8 as replay stored them, float observations = uint8 x obs_quantum
    # (mtdqn.replay.dequantize), turned into floats one minibatch at a time by training_step
    obs_quantum: float | None = None


@dataclass(frozen=True)
class TaskSpec:
    """What a model needs to know about one task: its name, observation size and action count."""

    name: str
    obs_dim: int
    n_actions: int
    reference_return: float | None = None  # scripted reference controller's mean return (normalized score = 1)
    random_return: float | None = None  # uniform random policy's mean return (normalized score = 0)
    obs_shape: tuple[int, ...] | None = None  # an image observation's shape before flattening (None: a vector);
    # what a convolutional encoder (net.conv) reshapes the flat observation to
    obs_quantum: float | None = None  # observations are integer multiples (0-255) of this: 1/255 for uint8 frames
    # (scaled to [0, 1]), 1 for boolean images; None: continuous. replay.obs_storage=auto stores such obs as uint8
    reward_threshold: float | None = None  # gymnasium's EnvSpec.reward_threshold: the mean return at which the task
    # counts as solved (CartPole-v1: 475); callbacks.eval.stop_at_return=reward_threshold stops there

    def net_kwargs(self) -> dict:
        """What a single-task network is built from: obs_dim, n_actions and obs_shape."""
        return {"obs_dim": self.obs_dim, "n_actions": self.n_actions, "obs_shape": self.obs_shape}

    def normalize(self, ret: float) -> float | None:
        """(R - R_random) / (R_reference - R_random), or None when the task has no reference scores."""
        if self.reference_return is None or self.random_return is None:
            return None
        return (ret - self.random_return) / (self.reference_return - self.random_return)


@dataclass(frozen=True)
class ShareRule:
    """How a transition collected on one task serves as a sample of another task with the same dynamics
    (multi-task data sharing, `data.share_fraction`).

    `obs_mask` multiplies the observation and its successor: 1 keeps a feature, 0 clears one the target task
    never observes (so it reads as absent there). `terminal_ok`: a transition that ends its episode is a valid
    sample of the target too; False where the source ends episodes for causes the target does not have (such
    samples get weight 0). Rewards carry over unchanged, so a rule is only valid where the two tasks' rewards
    agree on every non-terminal transition.
    """

    obs_mask: tuple[float, ...]
    terminal_ok: bool


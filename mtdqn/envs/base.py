"""The batched-environment protocol every stage after envs/ relies on."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from mtdqn.types import StepResult


@runtime_checkable
class TensorVecEnv(Protocol):
    """N environments advanced together with torch tensors in and out.

    Autoreset happens within the same step (gymnasium's SAME_STEP semantics): `step` returns both the true
    successor observation (`next_obs`, the final observation of a finished episode) and the observation to act
    on next (`obs`, the reset observation of a finished episode). Nothing else in the project sees gymnasium's
    autoreset mode.

    Optional attributes, read with getattr by the data module: `obs_quantum` (observations are integer multiples
    0-255 of it, so replay may store them as uint8) and `obs_frames` (observations are stacks of that many frames,
    so replay may store each frame once); absent or None means neither.
    """

    num_envs: int
    obs_dim: int
    n_actions: int
    device: torch.device

    def reset(self, seed: int | None = None) -> Tensor:
        """Reset all envs; env i is seeded with seed + i. Returns obs (N, obs_dim) float32."""
        ...

    def step(self, actions: Tensor) -> StepResult:
        """Advance all envs by one step with int64 actions of shape (N,)."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...

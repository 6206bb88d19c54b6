"""Small helpers for driving-simulator tests."""

import torch


def constant_actions(n: int, a: int) -> torch.Tensor:
    """The same discrete action `a` for each of `n` envs."""
    return torch.full((n,), a, dtype=torch.int64)

"""A vectorized sum tree over torch tensors for prioritized replay (no per-item Python loops)."""

from __future__ import annotations

import torch
from torch import Tensor


class SumTree:
    """Binary tree whose leaves hold priorities and whose inner nodes hold sums; float64 for stable sums."""

    def __init__(self, size: int, device: torch.device | str = "cpu") -> None:
        self.size = size
        self.capacity = 1 << max(size - 1, 1).bit_length()
        self.depth = self.capacity.bit_length() - 1
        self.tree = torch.zeros(2 * self.capacity, dtype=torch.float64, device=device)

    @property
    def total(self) -> Tensor:
        """Sum of all leaves (0-dim tensor)."""
        return self.tree[1]

    def leaves(self, idx: Tensor) -> Tensor:
        """Priorities stored at leaf indices `idx`."""
        return self.tree[idx + self.capacity]

    def update(self, idx: Tensor, values: Tensor) -> None:
        """Set leaves `idx` to `values` and recompute their ancestors level by level."""
        node = idx.to(torch.int64) + self.capacity
        self.tree[node] = values.to(torch.float64)
        for _ in range(self.depth):
            node = node // 2  # duplicates write identical sums, so no unique() is needed
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]

    def find(self, mass: Tensor) -> Tensor:
        """Leaf index for each prefix-sum value in `mass` (values in [0, total))."""
        mass = mass.to(torch.float64).clamp(max=float(self.total) * (1 - 1e-12))
        node = torch.ones_like(mass, dtype=torch.int64)
        for _ in range(self.depth):
            left = self.tree[2 * node]
            go_right = mass >= left
            mass = torch.where(go_right, mass - left, mass)
            node = 2 * node + go_right.to(torch.int64)
        return (node - self.capacity).clamp(max=self.size - 1)

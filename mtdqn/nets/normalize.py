"""Running observation normalization inside the Q-network (`net.obs_norm=true`).

The statistics are registered buffers of a module inside the Q-network, so they travel with every state_dict
(checkpoints, target-network copies, exports) and every caller of the network (collection, training, target,
evaluation, robustness sweeps) sees the same normalized input without knowing about it. They change only through
`update_from_sums` (never in `forward`): the training module merges the moments of the observations collected
during each round, so the target network, a deep copy refreshed by `polyak_update` (which copies buffers), keeps
the statistics of its last sync: a frozen snapshot of the online network, input normalization included.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def obs_sums(obs: Tensor) -> Tensor:
    """(1 + 2 D,) float64 sufficient statistics [count, sum, sum of squares] of obs (..., D)."""
    x = obs.detach().reshape(-1, obs.shape[-1]).double()
    count = torch.full((1,), float(x.shape[0]), dtype=torch.float64, device=x.device)
    return torch.cat([count, x.sum(0), x.square().sum(0)])


class RunningObsNorm(nn.Module):
    """Per-task running mean and variance of observations; forward = clip((obs - mean) / sqrt(var + eps)).

    Buffers: `count` (T,) int64, `mean` (T, D) and `var` (T, D) float32 (population variance). With no data yet
    (count 0) the mean is 0 and the variance 1, so the network sees the raw observation (clipped).
    Updates merge a batch's moments into the running ones (Chan et al. 1979, the parallel form of Welford's
    algorithm) in float64: the result equals the mean and variance of all observations seen, in any chunking.
    """

    def __init__(self, obs_dim: int, n_tasks: int = 1, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        if obs_dim <= 0 or n_tasks <= 0 or not clip > 0 or not eps > 0:
            raise ValueError(f"RunningObsNorm: obs_dim={obs_dim}, n_tasks={n_tasks}, clip={clip}, eps={eps} must be > 0")
        self.clip, self.eps = float(clip), float(eps)
        self.register_buffer("count", torch.zeros(n_tasks, dtype=torch.int64))
        self.register_buffer("mean", torch.zeros(n_tasks, obs_dim))
        self.register_buffer("var", torch.ones(n_tasks, obs_dim))

    def forward(self, obs: Tensor, task_ids: Tensor | None = None) -> Tensor:
        """Normalized observations (same shape); `task_ids` (...) picks each sample's task statistics."""
        if task_ids is None or self.mean.shape[0] == 1:
            mean, var = self.mean[0], self.var[0]
        else:
            mean, var = self.mean[task_ids], self.var[task_ids]
        return ((obs - mean) * torch.rsqrt(var + self.eps)).clamp(-self.clip, self.clip)

    @torch.no_grad()
    def update_from_sums(self, sums: Tensor) -> None:
        """Merge (T, 1 + 2 D) [count, sum, sum of squares] per task (rows with count 0 are left alone)."""
        d = self.mean.shape[1]
        sums = sums.to(self.mean.device, torch.float64).reshape(self.mean.shape[0], 1 + 2 * d)
        n_b, s_b, sq_b = sums[:, 0], sums[:, 1 : 1 + d], sums[:, 1 + d :]
        mean_b = s_b / n_b.clamp(min=1.0).unsqueeze(1)
        m2_b = (sq_b - n_b.unsqueeze(1) * mean_b.square()).clamp(min=0.0)
        self.merge(n_b, mean_b, m2_b)

    @torch.no_grad()
    def update(self, obs: Tensor, task: int = 0) -> None:
        """Merge a batch of raw observations (..., D) of task `task`."""
        sums = torch.zeros(self.mean.shape[0], 1 + 2 * self.mean.shape[1], dtype=torch.float64,
                           device=self.mean.device)  # fmt: skip
        sums[task] = obs_sums(obs.to(self.mean.device))
        self.update_from_sums(sums)

    def merge(self, n_b: Tensor, mean_b: Tensor, m2_b: Tensor) -> None:
        """Chan et al.'s pairwise update of (count, mean, M2) with a batch's (n_b, mean_b, M2_b), in float64."""
        n_a = self.count.double()
        mean_a = self.mean.double()
        m2_a = self.var.double() * n_a.unsqueeze(1)
        n = n_a + n_b
        safe = n.clamp(min=1.0).unsqueeze(1)
        delta = mean_b - mean_a
        mean = mean_a + delta * n_b.unsqueeze(1) / safe
        m2 = m2_a + m2_b + delta.square() * (n_a * n_b).unsqueeze(1) / safe
        seen = (n_b > 0).unsqueeze(1)
        self.mean.copy_(torch.where(seen, mean, mean_a).to(self.mean.dtype))
        self.var.copy_(torch.where(seen, m2 / safe, self.var.double()).to(self.var.dtype))
        self.count.copy_(n.round().long())

    def extra_repr(self) -> str:
        return f"tasks={self.mean.shape[0]}, obs_dim={self.mean.shape[1]}, clip={self.clip}"

"""PopArt: adaptive per-task target normalization that preserves the unnormalized outputs.

van Hasselt et al. 2016, "Learning values across many orders of magnitude"; multi-task form from Hessel et al.
2019, "Multi-task Deep Reinforcement Learning with PopArt": one (mu_t, sigma_t) per task, so every task's TD
targets reach the shared torso at a similar scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.nets.multitask import invalid_fill


class PopArtHead(nn.Module):
    """Per-task linear Q head whose outputs are normalized: Q_t(s, a) = sigma_t * head_t(features) + mu_t.

    Buffers mu (T,) and nu (T,) are running first and second moments of each task's targets (step size `beta`);
    sigma_t = sqrt(nu_t - mu_t^2) kept in [sigma_min, sigma_max]. Actions a task lacks get INVALID_Q.
    """

    def __init__(
        self,
        in_features: int,
        n_actions_per_task: Sequence[int] | int,
        beta: float = 3e-4,
        n_tasks: int | None = None,
        sigma_min: float = 1e-4,
        sigma_max: float = 1e6,
    ) -> None:
        super().__init__()
        if isinstance(n_actions_per_task, int):
            if n_tasks is None:
                raise ValueError("PopArtHead with an int n_actions_per_task needs n_tasks")
            n_actions_per_task = [n_actions_per_task] * n_tasks
        n_actions = [int(n) for n in n_actions_per_task]
        if not n_actions or min(n_actions) <= 0 or in_features <= 0:
            raise ValueError(
                f"PopArtHead needs in_features > 0 and positive action counts, got {in_features}, {n_actions}"
            )
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"popart.beta={beta} must be in (0, 1]")
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"PopArt needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.n_tasks, self.max_n_actions, self.in_features = len(n_actions), max(n_actions), in_features
        self.beta, self.sigma_min, self.sigma_max = beta, sigma_min, sigma_max
        self.weight = nn.Parameter(torch.empty(self.n_tasks, self.max_n_actions, in_features))
        self.bias = nn.Parameter(torch.empty(self.n_tasks, self.max_n_actions))
        self.reset_parameters()
        self.register_buffer("mu", torch.zeros(self.n_tasks))
        self.register_buffer("nu", torch.ones(self.n_tasks))
        valid = torch.arange(self.max_n_actions)[None, :] < torch.tensor(n_actions)[:, None]
        self.register_buffer("valid_actions", valid, persistent=False)  # (T, max_n_actions) bool

    def reset_parameters(self) -> None:
        """nn.Linear's default initialization, per task."""
        bound = 1.0 / math.sqrt(self.in_features)
        for t in range(self.n_tasks):
            nn.init.kaiming_uniform_(self.weight[t], a=math.sqrt(5))
        nn.init.uniform_(self.bias, -bound, bound)

    @property
    def sigma(self) -> Tensor:
        """Per-task scale sqrt(nu - mu^2), clamped to [sigma_min, sigma_max]: (T,)."""
        var = (self.nu - self.mu.square()).clamp(self.sigma_min**2, self.sigma_max**2)
        return var.sqrt()

    def forward(self, features: Tensor, task_ids: Tensor) -> Tensor:
        """Normalized Q-values (..., max_n_actions) of each sample's own task head."""
        lead = task_ids.shape
        flat = features.reshape(-1, self.in_features)
        ids = task_ids.reshape(-1)
        # every task's head in one matmul, then each sample's own: (B, T * A) -> (B, T, A) -> (B, A)
        out = F.linear(flat, self.weight.reshape(-1, self.in_features), self.bias.reshape(-1))
        out = out.view(-1, self.n_tasks, self.max_n_actions)
        q = out[torch.arange(out.shape[0], device=out.device), ids]
        q = q.masked_fill(~self.valid_actions[ids], invalid_fill(q.dtype))
        return q.reshape(*lead, self.max_n_actions)

    def unnormalize(self, q_norm: Tensor, task_ids: Tensor) -> Tensor:
        """sigma_t * q + mu_t for q of shape (...) or (..., max_n_actions); invalid actions stay INVALID_Q."""
        sigma, mu = self.sigma[task_ids], self.mu[task_ids]
        if q_norm.dim() == task_ids.dim():
            return q_norm * sigma + mu
        q = q_norm * sigma.unsqueeze(-1) + mu.unsqueeze(-1)
        if q.shape[-1] == self.max_n_actions:
            q = q.masked_fill(~self.valid_actions[task_ids], invalid_fill(q.dtype))
        return q

    def unnormalized_q(self, features: Tensor, task_ids: Tensor) -> Tensor:
        """Q-values in return units: unnormalize(forward(features, task_ids))."""
        return self.unnormalize(self(features, task_ids), task_ids)

    def normalize_targets(self, y: Tensor, task_ids: Tensor) -> Tensor:
        """(y - mu_t) / sigma_t: TD targets in the head's normalized units."""
        return (y - self.mu[task_ids]) / self.sigma[task_ids]

    def batch_moments(self, targets: Tensor, task_ids: Tensor) -> Tensor:
        """(3, T) per-task sums of the batch: sample count, sum of targets, sum of squared targets (all-reducible)."""
        y, ids = targets.reshape(-1).to(self.mu.dtype), task_ids.reshape(-1)
        sums = self.mu.new_zeros(3, self.n_tasks)
        sums[0].index_add_(0, ids, torch.ones_like(y))
        sums[1].index_add_(0, ids, y)
        sums[2].index_add_(0, ids, y.square())
        return sums

    @torch.no_grad()
    def update_stats(self, targets: Tensor, task_ids: Tensor, moments: Tensor | None = None) -> None:
        """ART then POP: move mu/nu of tasks present toward the batch moments, rescale their heads to keep outputs.

        `moments` (from `batch_moments`, e.g. summed over DDP ranks) replaces the moments of `targets` when given.
        """
        counts, sums, sq_sums = self.batch_moments(targets, task_ids) if moments is None else moments
        present = counts > 0
        mean, mean_sq = sums / counts.clamp_min(1.0), sq_sums / counts.clamp_min(1.0)
        # Adaptively Rescaling Targets: exponential moving moments (step size beta), tasks absent keep theirs
        self.set_stats(torch.lerp(self.mu, mean, self.beta), torch.lerp(self.nu, mean_sq, self.beta), present)

    @torch.no_grad()
    def set_stats(self, mu: Tensor, nu: Tensor, tasks: Tensor | None = None) -> None:
        """Set (mu, nu) of the tasks in the bool mask `tasks` (all when None), rescaling their heads so that the
        unnormalized outputs stay exactly what they were (Preserving Outputs Precisely)."""
        tasks = torch.ones_like(self.mu, dtype=torch.bool) if tasks is None else tasks
        mu_old, sigma_old = self.mu.clone(), self.sigma
        self.mu.copy_(torch.where(tasks, mu.to(self.mu.dtype), self.mu))
        self.nu.copy_(torch.where(tasks, nu.to(self.nu.dtype), self.nu))
        sigma_new = self.sigma
        # w' = w sigma_old / sigma_new, b' = (sigma_old b + mu_old - mu_new) / sigma_new
        ratio = torch.where(tasks, sigma_old / sigma_new, torch.ones_like(sigma_new))
        new_bias = (sigma_old[:, None] * self.bias + (mu_old - self.mu)[:, None]) / sigma_new[:, None]
        self.weight.mul_(ratio[:, None, None])
        self.bias.copy_(torch.where(tasks[:, None], new_bias, self.bias))

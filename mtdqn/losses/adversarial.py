"""FGSM observation attacks on a Q-network (Goodfellow et al. 2015; Huang et al. 2017 for deep RL policies)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

QFunction = Callable[[Tensor], Tensor]  # obs (B, D) -> Q-values (B, A)


def greedy_margin(q_values: Tensor, actions: Tensor) -> Tensor:
    """Q(s, a) - max_{b != a} Q(s, b) per sample: positive while `a` is the strict greedy action."""
    q_a = q_values.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    others = q_values.scatter(-1, actions.unsqueeze(-1), float("-inf"))
    return q_a - others.max(dim=-1).values


def fgsm_observation(q_fn: QFunction, obs: Tensor, epsilon: float, low: Tensor | None = None,
                     high: Tensor | None = None) -> Tensor:  # fmt: skip
    """One signed-gradient step of size `epsilon` (L-inf budget, observation units) that lowers the margin of
    the clean greedy action, i.e. pushes the agent away from what it would do: obs - epsilon x sign(grad margin).

    Optional `low` / `high` clip the result to the observation bounds (staying inside the budget). Parameter
    gradients are never touched (torch.autograd.grad w.r.t. the observation only).
    """
    if epsilon < 0:
        raise ValueError(f"FGSM epsilon={epsilon} must be >= 0")
    obs = obs.detach()
    if epsilon == 0:
        return obs
    with torch.enable_grad():
        x = obs.clone().requires_grad_(True)
        q = q_fn(x)
        if q.shape[-1] < 2:
            return obs
        margin = greedy_margin(q, q.argmax(dim=-1).detach())
        (grad,) = torch.autograd.grad(margin.sum(), x)
    adv = obs - epsilon * grad.sign()
    if low is not None or high is not None:
        adv = torch.clamp(adv, min=low, max=high)
    return adv.detach()

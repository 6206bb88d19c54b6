"""Temporal-difference math as small pure functions (tested on hand-made batches)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("huber", "mse")


def td_target(rewards: Tensor, discounts: Tensor, next_q_target: Tensor, next_q_online: Tensor | None) -> Tensor:
    """y = r + discount * Q_target(s', a*), a* = argmax of online Q (double Q) or of target Q (plain DQN).

    `discounts` already holds gamma**n and is 0 where the episode terminated (truncation still bootstraps).
    """
    if next_q_online is None:
        next_v = next_q_target.max(dim=-1).values
    else:
        best = next_q_online.argmax(dim=-1, keepdim=True)
        next_v = next_q_target.gather(-1, best).squeeze(-1)
    return rewards + discounts * next_v


def td_loss(q_taken: Tensor, target: Tensor, weights: Tensor | None = None, kind: str = "huber") -> tuple[Tensor, Tensor]:
    """Per-sample Huber (delta=1) or MSE loss, importance-weighted mean; returns (loss, |td error|)."""
    td_error = q_taken - target
    if kind == "huber":
        per_sample = F.smooth_l1_loss(q_taken, target, reduction="none")
    elif kind == "mse":
        per_sample = td_error.square()
    else:
        raise ValueError(f"model.loss={kind!r} is not one of {LOSSES}")
    loss = per_sample.mean() if weights is None else (per_sample * weights).mean()
    return loss, td_error.detach().abs()


@torch.no_grad()
def polyak_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- tau * online + (1 - tau) * target (tau=1 is a hard copy), buffers copied."""
    on_p, tg_p = list(online.parameters()), list(target.parameters())
    if tau >= 1.0:
        torch._foreach_copy_(tg_p, on_p)
    else:
        torch._foreach_lerp_(tg_p, on_p, tau)
    for b_on, b_tg in zip(online.buffers(), target.buffers(), strict=True):
        b_tg.copy_(b_on)

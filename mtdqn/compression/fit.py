"""Fit a network to a teacher's Q-values on a pool of states: the training loop of every compression method."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.compression.data import StatePool
from mtdqn.losses.distill import distill_kl
from mtdqn.nets.multitask import INVALID_Q

Masks = dict[str, Tensor]  # parameter name -> bool tensor of its shape (True = weight kept)


def fit_loss(student_q: Tensor, teacher_q: Tensor, loss: str, temperature: float) -> Tensor:
    """kl: distill_kl with both Q distributions softened by the temperature, KL(softmax(t/T) || softmax(s/T)): the
    student ranks actions like the teacher and its Q-differences stay on the teacher's scale;
    kl_rusu: the student's Q-values as unscaled logits (Rusu et al. 2015): same greedy policy, inflated gaps;
    mse: regression on the teacher's valid Q-values (keeps values, but small action gaps drown in value error)."""
    if loss == "kl":
        return distill_kl(student_q / temperature, teacher_q, temperature)
    if loss == "kl_rusu":
        return distill_kl(student_q, teacher_q, temperature)
    valid = teacher_q > INVALID_Q / 2  # actions a task lacks carry INVALID_Q in both nets
    return F.mse_loss(student_q[valid], teacher_q[valid])


def apply_masks(net: nn.Module, masks: Masks | None) -> None:
    """Zero every masked weight in place (pruned weights stay exactly zero)."""
    if not masks:
        return
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def fit_to_teacher(
    student: nn.Module,
    pool: StatePool,
    teacher_q: Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    loss: str = "kl",
    temperature: float = 0.01,
    masks: Masks | None = None,
    seed: int = 0,
    max_epochs: float | None = None,
) -> list[float]:
    """Adam (cosine-decayed lr) on fit_loss(student(s), teacher_q(s)) over minibatches of the pool, each state with
    its own task id. With `masks`, masked weights get zero gradient and are re-zeroed after every step.
    `max_epochs` caps the steps at that many passes over the pool (no point in fitting a small pool for long).
    Returns the loss every 100 steps (and the last)."""
    batch_size = min(batch_size, len(pool))
    if max_epochs is not None and batch_size > 0:
        steps = min(steps, math.ceil(max_epochs * len(pool) / batch_size))
    if steps <= 0 or len(pool) == 0:
        return []
    student.train()
    params = dict(student.named_parameters())
    opt = torch.optim.Adam(params.values(), lr=lr, fused=True)  # fused: ~30% less time per step on CPU
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, len(pool), (steps, batch_size), generator=g)
    curve: list[float] = []
    apply_masks(student, masks)
    for step in range(steps):
        opt.param_groups[0]["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        idx = indices[step]
        value = fit_loss(student(pool.obs[idx], pool.task_ids[idx]), teacher_q[idx], loss, temperature)
        opt.zero_grad(set_to_none=True)
        value.backward()
        if masks:
            for name, mask in masks.items():
                if params[name].grad is not None:
                    params[name].grad.mul_(mask)
        opt.step()
        apply_masks(student, masks)
        if step % 100 == 0 or step == steps - 1:
            curve.append(float(value.detach()))
    student.eval()
    return curve

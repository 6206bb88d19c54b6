"""Policy distillation losses (Rusu et al. 2015, "Policy Distillation"; Parisotto et al. 2016, Actor-Mimic)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def distill_kl(student_q: Tensor, teacher_q: Tensor, temperature: float = 0.01, reduction: str = "mean") -> Tensor:
    """KL(softmax(teacher_q / T) || softmax(student_q)) over the last (action) dim.

    The teacher's Q-values are sharpened by a small temperature T (Rusu et al. used 0.01) so the student matches
    the teacher's greedy action and its ranking of the others; the student's Q-values are used as logits
    unscaled. `reduction`: "mean" over the batch, "none" per sample.
    """
    if temperature <= 0:
        raise ValueError(f"distillation temperature={temperature} must be > 0")
    p_teacher = F.softmax(teacher_q / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_q / temperature, dim=-1)
    log_p_student = F.log_softmax(student_q, dim=-1)
    kl = (p_teacher * (log_p_teacher - log_p_student)).sum(dim=-1)
    if reduction == "mean":
        return kl.mean()
    if reduction == "none":
        return kl
    raise ValueError(f"reduction={reduction!r} is not one of ('mean', 'none')")

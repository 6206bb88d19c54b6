"""Offline policy distillation: a smaller student of the same architecture kind learns the teacher's policy.

Rusu et al. 2015 ("Policy Distillation"): KL between the temperature-softened teacher and student Q
distributions (mtdqn.losses.distill.distill_kl), on states from the teacher's replay plus fresh teacher rollouts.
By default both distributions are softened by the same temperature, so the student's Q-differences stay on the
teacher's scale (`loss=kl_rusu`: the student's Q-values as unscaled logits, as in the paper). Multi-task networks stay
multi-task: every state is distilled through its own task's head (the pool carries each state's task id).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtdqn.compression.config import DistillSettings
from mtdqn.compression.data import StatePool
from mtdqn.compression.fit import fit_to_teacher
from mtdqn.compression.policy import NetBuilder, QPolicy


def distill(
    teacher: QPolicy,
    teacher_q: Tensor,
    pool: StatePool,
    builder: NetBuilder,
    settings: DistillSettings,
    seed: int = 0,
    hidden: Sequence[int] | None = None,
    max_epochs: float | None = None,
) -> tuple[QPolicy, dict]:
    """Train a fresh `builder(hidden)` student on the teacher's Q-values `teacher_q` (N, A) over `pool`. A teacher
    that normalizes its observations (net.obs_norm) hands its frozen statistics to the student."""
    widths = [int(h) for h in (hidden if hidden is not None else settings.hidden)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = QPolicy(builder(widths), teacher.multitask)
    teacher_norm, student_norm = getattr(teacher.net, "obs_norm", None), getattr(student.net, "obs_norm", None)
    if teacher_norm is not None and student_norm is not None:
        student_norm.load_state_dict(teacher_norm.state_dict())
    curve = fit_to_teacher(student, pool, teacher_q, settings.steps, settings.batch_size, settings.lr,
                           loss=settings.loss, temperature=settings.temperature, seed=seed, max_epochs=max_epochs)
    return student, {"hidden": widths, "loss_curve": curve}

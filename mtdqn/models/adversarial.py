"""Adversarial training: a batch transform that swaps part of each minibatch's observations for FGSM ones."""

from __future__ import annotations

import torch

from mtdqn.losses.adversarial import fgsm_observation
from mtdqn.types import Batch


class AdversarialObs:
    """DQNModule batch transform (`module.batch_transforms`): the first `fraction` of each task's samples in each
    (uniformly sampled) minibatch has its observations replaced by FGSM-perturbed ones within an L-inf ball of
    radius `epsilon`, computed against the current online network and clipped to the observation bounds `low` /
    `high` where given (the driving observation's, as the robustness sweep's fgsm axis clips); actions, rewards and
    next observations are kept, so the network learns the clean TD target at the perturbed input. Per task: a
    multi-task minibatch is one block per task, and its first `fraction` was the first task's alone."""

    def __init__(self, module, epsilon: float, fraction: float = 0.5, low: torch.Tensor | None = None,
                 high: torch.Tensor | None = None) -> None:
        if not epsilon > 0:
            raise ValueError(f"adversarial.epsilon={epsilon} must be > 0 (0 disables adversarial training)")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"adversarial.fraction={fraction} must lie in (0, 1]")
        self.module, self.epsilon, self.fraction = module, float(epsilon), float(fraction)
        self.low, self.high = low, high

    def rows(self, task_ids: torch.Tensor) -> torch.Tensor:
        """The perturbed rows: the first max(1, round(fraction x count)) of each task's rows."""
        if len(getattr(self.module, "tasks", (None, None))) == 1:  # one task: a slice, no host sync per update
            return torch.arange(max(1, round(self.fraction * task_ids.numel())), device=task_ids.device)
        picked = []
        for t in torch.unique(task_ids).tolist():
            rows = (task_ids == t).nonzero().squeeze(-1)
            picked.append(rows[: max(1, round(self.fraction * rows.numel()))])
        return torch.cat(picked)

    def __call__(self, b: Batch) -> Batch:
        m, sel = self.module, self.rows(b.task_ids)
        ids = b.task_ids[sel]
        low, high = (None if v is None else v.to(b.obs.device) for v in (self.low, self.high))
        adv = fgsm_observation(lambda x: m.q_values(m.q_net, x, ids), b.obs[sel], self.epsilon, low, high)
        obs = b.obs.clone()
        obs[sel] = adv
        return b._replace(obs=obs)

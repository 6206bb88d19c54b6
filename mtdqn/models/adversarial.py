"""Adversarial training: a batch transform that swaps part of each minibatch's observations for FGSM ones."""

from __future__ import annotations

import torch

from mtdqn.losses.adversarial import fgsm_observation
from mtdqn.types import Batch


class AdversarialObs:
    """DQNModule batch transform (`module.batch_transforms`): the first `fraction` of each (uniformly sampled)
    minibatch has its observations replaced by FGSM-perturbed ones within an L-inf ball of radius `epsilon`,
    computed against the current online network; actions, rewards and next observations are kept, so the
    network learns the clean TD target at the perturbed input."""

    def __init__(self, module, epsilon: float, fraction: float = 0.5) -> None:
        if not epsilon > 0:
            raise ValueError(f"adversarial.epsilon={epsilon} must be > 0 (0 disables adversarial training)")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"adversarial.fraction={fraction} must lie in (0, 1]")
        self.module, self.epsilon, self.fraction = module, float(epsilon), float(fraction)

    def __call__(self, b: Batch) -> Batch:
        k = max(1, round(self.fraction * b.obs.shape[0]))
        m, ids = self.module, b.task_ids[:k]
        adv = fgsm_observation(lambda x: m.q_values(m.q_net, x, ids), b.obs[:k], self.epsilon)
        return b._replace(obs=torch.cat([adv, b.obs[k:]]))

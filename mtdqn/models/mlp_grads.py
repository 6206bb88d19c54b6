"""Explicit TD-loss gradients for a plain MLP Q-network: the hot loop's update without autograd.

For `QNetwork` with a (Linear -> ReLU)* torso and a linear head (no layer norm, dueling head or observation
normalizer), the forward pass, the Huber / MSE TD loss and its gradients with respect to every weight and bias are
a handful of `addmm` / `mm` calls written out by hand. Autograd records and replays ~40 small ops per update whose
Python and dispatch cost dominates at DQN's batch sizes on a CPU (the matrix products are about a fifth of an
update: `scripts/bench_dqn.py`); the explicit form does the same arithmetic with about half the ops and no graph.
Same math as `td_loss` + `torch.autograd.grad` (tested to float32 rounding in tests/unit/test_lean_step.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ExplicitMLPGrads:
    """Forward + TD loss + gradients of a plain ReLU MLP Q-network, parameters in `q_net.parameters()` order."""

    def __init__(self, q_net: nn.Module) -> None:
        if not self.supports(q_net):
            raise ValueError(f"ExplicitMLPGrads needs a plain ReLU MLP QNetwork, got {q_net}")
        self.linears: list[nn.Linear] = [m for m in q_net.torso if isinstance(m, nn.Linear)] + [q_net.head]

    @staticmethod
    def supports(q_net: nn.Module) -> bool:
        """True for QNetwork(torso = (Linear, ReLU)*, head = Linear, no observation normalizer)."""
        from mtdqn.nets.q import QNetwork

        if type(q_net) is not QNetwork or getattr(q_net, "obs_norm", None) is not None:
            return False
        layers = list(q_net.torso)
        pairs = len(layers) % 2 == 0 and all(
            isinstance(a, nn.Linear) and type(b) is nn.ReLU for a, b in zip(layers[::2], layers[1::2], strict=True))
        names = [n for n, _ in q_net.named_parameters()]
        expected = [f"torso.{2 * i}.{k}" for i in range(len(layers) // 2) for k in ("weight", "bias")]
        return pairs and type(q_net.head) is nn.Linear and names == [*expected, "head.weight", "head.bias"]

    @torch.no_grad()
    def loss_and_grads(
        self, obs: Tensor, actions: Tensor, target: Tensor, weights: Tensor | None, kind: str
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """(loss, |td error| per sample, mean Q of the taken actions, [dW1, db1, ..., dW_head, db_head])."""
        acts = [obs]
        h = obs
        for lin in self.linears[:-1]:
            h = torch.addmm(lin.bias, h, lin.weight.t()).clamp_(min=0.0)
            acts.append(h)
        head = self.linears[-1]
        q = torch.addmm(head.bias, h, head.weight.t())
        idx = actions.unsqueeze(1)
        q_taken = q.gather(1, idx).squeeze(1)
        diff = q_taken - target
        absd = diff.abs()
        n = diff.shape[0]
        if kind == "huber":
            per_sample = torch.where(absd < 1.0, 0.5 * diff * diff, absd - 0.5)
            dloss = diff.clamp(-1.0, 1.0)
        else:  # mse
            per_sample = diff * diff
            dloss = 2.0 * diff
        if weights is not None:
            per_sample = per_sample * weights
            dloss = dloss * weights
        loss = per_sample.mean()
        gq = torch.zeros_like(q).scatter_(1, idx, (dloss / n).unsqueeze(1))
        grads: list[Tensor] = []
        g = gq
        for layer in range(len(self.linears) - 1, -1, -1):
            lin, inp = self.linears[layer], acts[layer]
            grads.append(g.sum(0))  # bias
            grads.append(g.t().mm(inp))  # weight
            if layer > 0:
                g = g.mm(lin.weight).mul_(inp > 0)  # through the ReLU of the layer below
        grads.reverse()
        return loss, absd, q_taken.mean(), grads

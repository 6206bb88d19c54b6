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
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.models.lean_step import no_grad

# grad where the ReLU's output is > 0, else 0: one kernel instead of a comparison and a multiply
_relu_backward = torch.ops.aten.threshold_backward.default


class ExplicitMLPGrads:
    """Forward + TD loss + gradients of a plain ReLU MLP Q-network, parameters in `q_net.parameters()` order."""

    def __init__(self, q_net: nn.Module) -> None:
        if not self.supports(q_net):
            raise ValueError(f"ExplicitMLPGrads needs a plain ReLU MLP QNetwork, got {q_net}")
        self.linears: list[nn.Linear] = [m for m in q_net.torso if isinstance(m, nn.Linear)] + [q_net.head]
        self._weights: list[Tensor] = []
        self._wt: list[Tensor] = []

    def transposed(self) -> list[Tensor]:
        """W^T of every layer as cached views: they follow the in-place optimizer updates and checkpoint loads,
        and are rebuilt if a layer's weight Parameter was replaced."""
        if len(self._weights) != len(self.linears) or any(
                lin.weight is not w for lin, w in zip(self.linears, self._weights, strict=True)):
            self._weights = [lin.weight for lin in self.linears]
            self._wt = [w.t() for w in self._weights]
        return self._wt

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

    @no_grad
    def q_values(self, obs: Tensor) -> Tensor:
        """Q(obs, .) through the addmm chain that nn.Linear uses (bit-identical to `q_net(obs)`), without
        nn.Module call overhead."""
        wt = self.transposed()
        h = obs
        for lin, w in zip(self.linears[:-1], wt, strict=False):
            h = torch.addmm(lin.bias, h, w).clamp_(min=0.0)
        return torch.addmm(self.linears[-1].bias, h, wt[-1])

    def greedy(self, obs: Tensor) -> Tensor:
        """argmax_a Q(obs, a): the collector calls this once per env step."""
        return self.q_values(obs).argmax(dim=-1)

    @no_grad
    def loss_and_grads(
        self, obs: Tensor, actions: Tensor, target: Tensor, weights: Tensor | None, kind: str,
        need_td_abs: bool = True,
    ) -> tuple[Tensor, Tensor | None, Tensor, list[Tensor]]:
        """(loss, |td error| per sample or None when not `need_td_abs`, mean Q of the taken actions,
        [dW1, db1, ..., dW_head, db_head]). Each op here runs once per update, so the loss uses torch's fused
        loss kernels and the ReLU backward one `threshold_backward` call."""
        wt = self.transposed()
        acts = [obs]
        h = obs
        for lin, w in zip(self.linears[:-1], wt, strict=False):
            h = torch.addmm(lin.bias, h, w).clamp_(min=0.0)
            acts.append(h)
        q = torch.addmm(self.linears[-1].bias, h, wt[-1])
        idx = actions.unsqueeze(1)
        q_taken = q.gather(1, idx).squeeze(1)
        n = q_taken.shape[0]
        if kind == "huber":
            if weights is None:
                loss = F.huber_loss(q_taken, target)
            else:
                loss = F.huber_loss(q_taken, target, reduction="none").mul_(weights).mean()
        else:  # mse
            if weights is None:
                loss = F.mse_loss(q_taken, target)
            else:
                loss = F.mse_loss(q_taken, target, reduction="none").mul_(weights).mean()
        diff = q_taken - target
        td_abs = diff.abs() if need_td_abs else None
        if kind == "huber":
            dloss = diff.clamp_(-1.0, 1.0)  # d huber / d diff
        else:
            dloss = diff.mul_(2.0)  # d diff^2 / d diff
        if weights is not None:
            dloss.mul_(weights)
        gq = torch.zeros_like(q).scatter_(1, idx, dloss.div_(n).unsqueeze(1))
        grads: list[Tensor] = []
        g = gq
        for layer in range(len(self.linears) - 1, -1, -1):
            lin, inp = self.linears[layer], acts[layer]
            grads.append(g.sum(0))  # bias
            grads.append(torch.mm(g.t(), inp))  # weight
            if layer > 0:  # through the ReLU of the layer below: zero where its output was clamped
                g = _relu_backward(torch.mm(g, lin.weight), inp, 0.0)
        grads.reverse()
        return loss, td_abs, q_taken.mean(), grads

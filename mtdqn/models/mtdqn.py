"""MultiTaskDQNModule: one Q-network for several tasks, with loss balancing and gradient-conflict diagnostics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.losses import td_target
from mtdqn.losses.multitask import flat_grads, grad_cosine_matrix, pcgrad, split_flat, task_weighted_loss
from mtdqn.models.dqn import DQNModule, NetFactory
from mtdqn.models.lean_step import no_grad
from mtdqn.models.mlp_grads import ExplicitFiLMGrads, ExplicitMultiHeadGrads
from mtdqn.types import Batch, Round, TaskSpec

BALANCES = ("sum", "weighted", "pcgrad")
POPART_BETA = 3e-4  # step size of PopArt's running target moments (conf/model/mtdqn.yaml's default too)


def task_means(values: Tensor, task_ids: Tensor, n_tasks: int) -> Tensor:
    """Mean of `values` per task (0 for tasks absent from the batch), in float32 (fp16 Q-values under 16-mixed)."""
    sums = torch.zeros(n_tasks, device=values.device).index_add_(0, task_ids, values.float())
    return sums / torch.bincount(task_ids, minlength=n_tasks).clamp(min=1)


class MultiTaskDQNModule(DQNModule):
    """DQN over a mixed batch of tasks: each sample's TD error uses its own task's Q-values (head or conditioning).

    Loss balancing: `sum` of per-task mean losses, `weighted` by `task_weights`, or `pcgrad` (Yu et al. 2020:
    per-task gradients projected off each other's conflicting directions, then summed). Every
    `grad_diagnostics_every` rounds the cosine similarity between task gradients on the shared torso is logged
    (`train/grad_cos/<a>__<b>`): negative values are conflict, a direct view of negative transfer.

    `popart=True` (van Hasselt et al. 2016; Hessel et al. 2019): the network's per-task heads become one PopArtHead
    with running per-task mean/std (mu_t, sigma_t) of the TD targets. Each update forms the targets in return units,
    moves the online statistics toward them (step `popart_beta`) while rescaling the head so the online network's
    Q-values in return units are unchanged, and computes the TD loss between normalized predictions and
    (y - mu_t) / sigma_t: every task reaches the shared torso at the same scale. Actions, double-Q and the targets
    use Q in return units. The target network carries its own copy of the statistics, taken at every sync with the
    weights they belong to (a hard sync copies both; a Polyak sync first re-expresses the target's head in the
    online statistics, outputs unchanged, so averaging weights averages Q in return units). Priorities are
    normalized |TD errors|; Adam's moment estimates are not rescaled (as in the papers). The statistics are buffers,
    so they are saved in checkpoints.
    """

    def __init__(
        self,
        net: NetFactory,
        optimizer: Callable,
        task: Sequence[TaskSpec],
        loss_balance: str = "sum",
        task_weights: Sequence[float] | None = None,
        grad_diagnostics_every: int = 10,  # rounds between gradient-cosine diagnostics (0 = never)
        popart: bool = False,  # PopArt: TD loss on per-task normalized targets, output-preserving head rescaling
        popart_beta: float = POPART_BETA,  # step size of PopArt's running target moments, per gradient update
        **kwargs,
    ) -> None:
        if not popart and popart_beta != POPART_BETA:  # another value than the default would change nothing
            raise ValueError(f"model.popart_beta={popart_beta!r} is read only with model.popart=true; set "
                             "model.popart=true, or leave it out")
        if popart and not (isinstance(popart_beta, int | float) and not isinstance(popart_beta, bool)
                           and 0.0 < popart_beta <= 1.0):  # PopArtHead's own check named `popart.beta`
            raise ValueError(f"model.popart_beta={popart_beta!r} must be a number in (0, 1] (the step size of PopArt's "
                             "running target statistics, per gradient update)")
        super().__init__(partial(net, popart_beta=popart_beta) if popart else net, optimizer, task, **kwargs)
        self.use_popart = bool(popart)
        if loss_balance not in BALANCES:
            raise ValueError(f"model.loss_balance={loss_balance!r} is not one of {BALANCES}")
        weights = list(task_weights) if task_weights is not None else [1.0] * len(self.tasks)
        if len(weights) != len(self.tasks) or any(w < 0 for w in weights):
            raise ValueError(f"model.task_weights={weights} needs one weight >= 0 per task ({len(self.tasks)})")
        if loss_balance != "weighted" and len(set(map(float, weights))) > 1:
            raise ValueError(f"model.task_weights={weights} is read only with model.loss_balance=weighted (here "
                             f"{loss_balance!r}): set model.loss_balance=weighted, or drop model.task_weights")
        if loss_balance == "weighted" and not any(float(w) > 0 for w in weights):
            raise ValueError(f"model.task_weights={weights}: loss_balance=weighted needs a weight > 0 (all 0: no "
                             "gradient at all)")
        self.loss_balance, self.grad_diagnostics_every = loss_balance, grad_diagnostics_every
        self.register_buffer("task_weights", torch.tensor(weights, dtype=torch.float32))
        self.obs_width = max(t.obs_dim for t in self.tasks)
        self.rounds = 0  # rounds trained (gradient diagnostics cadence)
        self.cosines: Tensor | None = None

    def build_net(self, net: NetFactory) -> nn.Module:
        return net(tasks=self.tasks)

    def build_explicit(self) -> ExplicitMultiHeadGrads | ExplicitFiLMGrads | None:
        """Hand-written gradients on the lean path for a plain multi-head or FiLM-conditioned network (any loss
        balance; PCGrad from per-task hand-written gradients). PopArt needs autograd; subclasses with their own
        update keep it too."""
        plain = type(self).update is MultiTaskDQNModule.update and not self.use_popart
        if plain:
            for cls in (ExplicitMultiHeadGrads, ExplicitFiLMGrads):
                if cls.supports(self.q_net):
                    return cls(self.q_net)
        return None

    @no_grad
    def task_greedy_action(self, task_idx: int, obs: Tensor) -> Tensor:
        """Greedy actions of task `task_idx` (observations zero-padded to the widest task)."""
        if self._explicit is not None and obs.dim() == 2:  # only this task's adapter and head, no module call
            return self._explicit.greedy(obs, task_idx)
        if obs.shape[-1] < self.obs_width:
            obs = F.pad(obs, (0, self.obs_width - obs.shape[-1]))
        ids = torch.full(obs.shape[:-1], task_idx, dtype=torch.int64, device=obs.device)
        return self.q_net(obs, ids).argmax(dim=-1)

    def policy_for(self, task_idx: int) -> Callable[[Tensor], Tensor]:
        return partial(self.task_greedy_action, task_idx)

    def q_values(self, net: nn.Module, obs: Tensor, task_ids: Tensor) -> Tensor:
        return net(obs, task_ids)

    def popart_td_terms(self, b: Batch, next_q_target: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """PopArt: (normalized Q of the taken actions, normalized TD target, Q of the taken actions in return
        units). Updates the online statistics (ART) and rescales the head to preserve its outputs (POP) first."""
        head = self.q_net.popart
        with torch.no_grad():
            next_online = self.q_values(self.q_net, b.next_obs, b.task_ids) if self.double_q else None
            if next_q_target is None:
                next_q_target = self.q_values(self.target_net, b.next_obs, b.task_ids)
            target = td_target(b.rewards, b.discounts, next_q_target, next_online)
            moments = head.batch_moments(target, b.task_ids)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(moments)  # every rank moves the statistics (and rescales the head) identically
            head.update_stats(target, b.task_ids, moments)
            normalized_target = head.normalize_targets(target, b.task_ids)
        q_norm = self.q_net.normalized_q(b.obs, b.task_ids).gather(-1, b.actions.unsqueeze(-1)).squeeze(-1)
        return q_norm, normalized_target, head.unnormalize(q_norm.detach(), b.task_ids)

    def update_target(self, tau: float) -> None:
        """Polyak/hard target update; with PopArt the target's head is first re-expressed in the online
        statistics (its outputs unchanged), so averaging weights averages Q-values in return units."""
        if self.use_popart and tau < 1.0:
            self.target_net.popart.set_stats(self.q_net.popart.mu, self.q_net.popart.nu)
        super().update_target(tau)

    def diagnostics_due(self, index: int) -> bool:
        """True for the round's first update every `grad_diagnostics_every` rounds (gradient cosines logged)."""
        return index == 0 and self.grad_diagnostics_every > 0 and self.rounds % self.grad_diagnostics_every == 0

    def update(
        self, b: Batch, next_q_target: Tensor | None, index: int, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One update on a mixed-task minibatch; returns per-task (TD loss, mean Q in return units), each (T,).
        The lean path's hand-written gradients do it unless the gradient diagnostics (which need per-task
        autograd gradients) are due; `target` (precomputed TD targets) is only used there."""
        if self._explicit is not None and not self.diagnostics_due(index):
            return self.explicit_update(b, next_q_target, target)
        n_tasks = len(self.tasks)
        if self.use_popart:  # loss and priorities in normalized units, logged Q in return units
            q_taken, target, q_return = self.popart_td_terms(b, next_q_target)
        else:
            q_taken, target = self.td_terms(b, next_q_target)
            q_return = q_taken.detach()
        if self.loss_kind == "huber":
            per_sample = F.smooth_l1_loss(q_taken, target, reduction="none")
        else:
            per_sample = (q_taken - target).square()
        total, per_task = task_weighted_loss(per_sample * b.weights, b.task_ids, self.task_weights, n_tasks)
        if self.diagnostics_due(index):
            self.cosines = self.gradient_cosines(per_task)
        if self.loss_balance == "pcgrad":
            self.pcgrad_step(per_task)
        else:
            self.gradient_step((total if self.loss_balance == "weighted" else per_task.sum()) + self.regularization())
        if self.priority_sink is not None:
            self.priority_sink(b.indices, (q_taken - target).detach().abs(), b.task_ids)
        return per_task.detach(), task_means(q_return, b.task_ids, n_tasks)

    @torch.no_grad()
    def explicit_update(
        self, b: Batch, next_q_target: Tensor | None, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The lean path's update (ExplicitMultiHeadGrads / ExplicitFiLMGrads): TD target unless given, per-task loss
        and hand-written gradients (PCGrad: each task's, projected), clip + fused Adam; the same math as the autograd
        branch of `update`."""
        if target is None:
            next_online = self._explicit.q_values(b.next_obs, b.task_ids) if self.double_q else None
            if next_q_target is None:
                next_q_target = self._explicit_target.q_values(b.next_obs, b.task_ids)
            target = td_target(b.rewards, b.discounts, next_q_target, next_online)
        need_td_abs = self.priority_sink is not None
        if self.loss_balance == "pcgrad":  # each task's gradient by hand, projected as in pcgrad_step
            per_task, td_abs, q_means, task_grads = self._explicit.task_loss_and_grads(
                b.obs, b.actions, b.task_ids, target, b.weights, self.loss_kind, need_td_abs=need_td_abs)
            combined = pcgrad(task_grads)
            grads = split_flat(combined, self._trainable)
        else:
            weights = self.task_weights if self.loss_balance == "weighted" else None
            _, per_task, td_abs, q_means, grads = self._explicit.loss_and_grads(
                b.obs, b.actions, b.task_ids, target, b.weights, weights, self.loss_kind, need_td_abs=need_td_abs)
        self.apply_grads(grads)
        if self.priority_sink is not None:
            self.priority_sink(b.indices, td_abs, b.task_ids)
        return per_task, q_means

    def pcgrad_step(self, per_task: Tensor) -> None:
        """PCGrad over every trainable parameter, then the usual clip + optimizer step."""
        if self.trainer.world_size > 1:
            raise ValueError("model.loss_balance=pcgrad is not supported with DDP (trainer.devices > 1)")
        params = self._trainable
        losses = self.scale_loss(per_task)  # 16-mixed: times the loss scale, which the projection carries through
        grads = [flat_grads(losses[t], params, retain_graph=True) for t in range(len(self.tasks))]
        combined = pcgrad(grads)
        reg = self.regularization()
        if isinstance(reg, Tensor):  # shared regularizers (EWC, distillation) are added after the projection
            combined = combined + flat_grads(self.scale_loss(reg), params, retain_graph=True)
        self.apply_grads(split_flat(combined, params), scaled=True)

    def gradient_cosines(self, per_task: Tensor) -> Tensor | None:
        """(T, T) cosine similarity of the task gradients on the shared parameters; None where the tasks share none
        (per-task input adapters and heads around a single hidden layer: nothing to compare, nothing logged)."""
        shared = [p for p in self.q_net.shared_parameters() if p.requires_grad]
        if not shared:
            return None
        losses = self.scale_loss(per_task)  # 16-mixed: no fp16 underflow; cosines do not depend on the scale
        grads = [flat_grads(losses[t], shared, retain_graph=True) for t in range(len(self.tasks))]
        return grad_cosine_matrix(grads)

    def popart_metrics(self) -> dict[str, Tensor]:
        """`train/<task>/popart_mu` and `popart_sigma`: the online network's target statistics (PopArt only)."""
        if not self.use_popart:
            return {}
        mu, sigma = self.q_net.popart.mu.clone(), self.q_net.popart.sigma
        metrics = {}
        for i, task in enumerate(self.tasks):
            metrics[f"train/{task.name}/popart_mu"] = mu[i]
            metrics[f"train/{task.name}/popart_sigma"] = sigma[i]
        return metrics

    def log_round(self, round_: Round, td: Tensor, q: Tensor) -> None:
        """Per-task and summary training metrics (td, q: per-task round means)."""
        cosines, self.cosines = self.cosines, None
        self.rounds += 1
        metrics: dict[str, Tensor | float] = {
            "train/td_loss": td.sum(), "train/q_mean": q.mean(), "train/epsilon": float(round_.epsilon),
            "time/env_steps": float(round_.env_steps), "time/updates": float(self.global_step),
        }
        for i, task in enumerate(self.tasks):
            metrics[f"train/{task.name}/td_loss"] = td[i]
            metrics[f"train/{task.name}/q_mean"] = q[i]
            done = round_.episode_tasks == i
            if bool(done.any()):
                metrics[f"rollout/{task.name}/return"] = round_.episode_returns[done].mean()
        metrics.update(self.extra_metrics())
        metrics.update(self.popart_metrics())
        if cosines is not None:
            for i in range(len(self.tasks)):
                for j in range(i + 1, len(self.tasks)):
                    metrics[f"train/grad_cos/{self.tasks[i].name}__{self.tasks[j].name}"] = cosines[i, j]
        self.emit_round(metrics)

"""MultiTaskDQNModule: one Q-network for several tasks, with loss balancing and gradient-conflict diagnostics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.losses.multitask import flat_grads, grad_cosine_matrix, pcgrad, task_weighted_loss
from mtdqn.models.dqn import DQNModule, NetFactory
from mtdqn.types import Batch, Round, TaskSpec

BALANCES = ("sum", "weighted", "pcgrad")


def task_means(values: Tensor, task_ids: Tensor, n_tasks: int) -> Tensor:
    """Mean of `values` per task (0 for tasks absent from the batch)."""
    sums = torch.zeros(n_tasks, device=values.device).index_add_(0, task_ids, values)
    return sums / torch.bincount(task_ids, minlength=n_tasks).clamp(min=1)


class MultiTaskDQNModule(DQNModule):
    """DQN over a mixed batch of tasks: each sample's TD error uses its own task's Q-values (head or conditioning).

    Loss balancing: `sum` of per-task mean losses, `weighted` by `task_weights`, or `pcgrad` (Yu et al. 2020:
    per-task gradients projected off each other's conflicting directions, then summed). Every
    `grad_diagnostics_every` rounds the cosine similarity between task gradients on the shared torso is logged
    (`train/grad_cos/<a>__<b>`): negative values are conflict, a direct view of negative transfer.
    """

    def __init__(
        self,
        net: NetFactory,
        optimizer: Callable,
        task: Sequence[TaskSpec],
        loss_balance: str = "sum",
        task_weights: Sequence[float] | None = None,
        grad_diagnostics_every: int = 10,  # rounds between gradient-cosine diagnostics (0 = never)
        **kwargs,
    ) -> None:
        super().__init__(net, optimizer, task, **kwargs)
        if loss_balance not in BALANCES:
            raise ValueError(f"model.loss_balance={loss_balance!r} is not one of {BALANCES}")
        weights = list(task_weights) if task_weights is not None else [1.0] * len(self.tasks)
        if len(weights) != len(self.tasks) or any(w < 0 for w in weights):
            raise ValueError(f"model.task_weights={weights} needs one weight >= 0 per task ({len(self.tasks)})")
        self.loss_balance, self.grad_diagnostics_every = loss_balance, grad_diagnostics_every
        self.register_buffer("task_weights", torch.tensor(weights, dtype=torch.float32))
        self.obs_width = max(t.obs_dim for t in self.tasks)
        self.rounds = 0  # rounds trained (gradient diagnostics cadence)
        self.cosines: Tensor | None = None

    def build_net(self, net: NetFactory) -> nn.Module:
        return net(tasks=self.tasks)

    @torch.no_grad()
    def task_greedy_action(self, task_idx: int, obs: Tensor) -> Tensor:
        """Greedy actions of task `task_idx` (observations zero-padded to the widest task)."""
        if obs.shape[-1] < self.obs_width:
            obs = F.pad(obs, (0, self.obs_width - obs.shape[-1]))
        ids = torch.full(obs.shape[:-1], task_idx, dtype=torch.int64, device=obs.device)
        return self.q_net(obs, ids).argmax(dim=-1)

    def policy_for(self, task_idx: int) -> Callable[[Tensor], Tensor]:
        return partial(self.task_greedy_action, task_idx)

    def q_values(self, net: nn.Module, obs: Tensor, task_ids: Tensor) -> Tensor:
        return net(obs, task_ids)

    def update(self, b: Batch, next_q_target: Tensor | None, index: int) -> tuple[Tensor, Tensor]:
        """One update on a mixed-task minibatch; returns per-task (TD loss, mean Q), each (T,)."""
        n_tasks = len(self.tasks)
        q_taken, target = self.td_terms(b, next_q_target)
        if self.loss_kind == "huber":
            per_sample = F.smooth_l1_loss(q_taken, target, reduction="none")
        else:
            per_sample = (q_taken - target).square()
        total, per_task = task_weighted_loss(per_sample * b.weights, b.task_ids, self.task_weights, n_tasks)
        if index == 0 and self.grad_diagnostics_every > 0 and self.rounds % self.grad_diagnostics_every == 0:
            self.cosines = self.gradient_cosines(per_task)
        if self.loss_balance == "pcgrad":
            self.pcgrad_step(per_task)
        else:
            self.gradient_step((total if self.loss_balance == "weighted" else per_task.sum()) + self.regularization())
        if self.priority_sink is not None:
            self.priority_sink(b.indices, (q_taken - target).detach().abs(), b.task_ids)
        return per_task.detach(), task_means(q_taken.detach(), b.task_ids, n_tasks)

    def pcgrad_step(self, per_task: Tensor) -> None:
        """PCGrad over every trainable parameter, then the usual clip + optimizer step."""
        if self.trainer.world_size > 1:
            raise ValueError("model.loss_balance=pcgrad is not supported with DDP (trainer.devices > 1)")
        params = self._trainable
        grads = [flat_grads(per_task[t], params, retain_graph=True) for t in range(len(self.tasks))]
        combined = pcgrad(grads)
        reg = self.regularization()
        if isinstance(reg, Tensor):  # shared regularizers (EWC, distillation) are added after the projection
            combined = combined + flat_grads(reg, params, retain_graph=True)
        out, offset = [], 0
        for p in params:
            out.append(combined[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        self.apply_grads(out)

    def gradient_cosines(self, per_task: Tensor) -> Tensor:
        """(T, T) cosine similarity of the task gradients on the shared parameters."""
        shared = [p for p in self.q_net.shared_parameters() if p.requires_grad]
        grads = [flat_grads(per_task[t], shared, retain_graph=True) for t in range(len(self.tasks))]
        return grad_cosine_matrix(grads)

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
        if cosines is not None:
            for i in range(len(self.tasks)):
                for j in range(i + 1, len(self.tasks)):
                    metrics[f"train/grad_cos/{self.tasks[i].name}__{self.tasks[j].name}"] = cosines[i, j]
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

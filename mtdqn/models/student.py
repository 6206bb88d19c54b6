"""DistillStudentModule: one (multi-task) student distilled from frozen per-task teachers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.losses.distill import distill_kl
from mtdqn.losses.multitask import task_weighted_loss
from mtdqn.losses.td import td_target
from mtdqn.models.dqn import NetFactory
from mtdqn.models.mtdqn import MultiTaskDQNModule, task_means
from mtdqn.nets.multitask import invalid_fill, select_task
from mtdqn.types import Batch, TaskSpec

DATA_SOURCES = ("teacher", "student")


class DistillStudentModule(MultiTaskDQNModule):
    """Policy distillation (Rusu et al. 2015) into one student network, optionally with the TD loss (QDagger-like,
    Agarwal et al. 2022).

    Each sample's teacher is its task's teacher (`set_teachers`, one frozen network per task, possibly larger than
    the student). Per task t, loss_t = td_coef * TD_t + c * KL_t with KL_t the mean over t's samples of
    KL(softmax(teacher_q / temperature) || softmax(student_q)) (mtdqn.losses.distill_kl). The distillation
    coefficient c decays linearly in env steps: c = distill_coef * max(0, 1 - env_steps / distill_decay_env_steps)
    (constant when distill_decay_env_steps is None); with td_coef > 0 the TD loss takes over as c reaches 0.
    `data_source`: `teacher` collects with the teacher's epsilon-greedy policy (behavior_policy_for), `student`
    with the student's. Evaluation always uses the student (policy_for).
    """

    def __init__(
        self,
        net: NetFactory,
        optimizer: Callable,
        task: Sequence[TaskSpec],
        temperature: float = 0.01,  # teacher softmax temperature (Rusu et al.: 0.01)
        distill_coef: float = 1.0,  # initial weight of the distillation KL
        distill_decay_env_steps: int | None = None,  # env steps over which it decays linearly to 0 (None: constant)
        td_coef: float = 0.0,  # weight of the TD loss (0: pure policy distillation)
        data_source: str = "teacher",  # teacher | student: whose policy collects the experience
        **kwargs,
    ) -> None:
        if kwargs.get("popart"):
            raise ValueError("model=student does not support model.popart=true")
        super().__init__(net, optimizer, task, **kwargs)
        if temperature <= 0:  # each key named alone (one message covered all three)
            raise ValueError(f"model.temperature={temperature} must be > 0")
        for key, value in (("distill_coef", distill_coef), ("td_coef", td_coef)):
            if value < 0:
                raise ValueError(f"model.{key}={value} must be >= 0")
        if distill_decay_env_steps is not None and distill_decay_env_steps <= 0:
            raise ValueError(f"model.distill_decay_env_steps={distill_decay_env_steps} must be > 0 or null")
        if data_source not in DATA_SOURCES:
            raise ValueError(f"model.data_source={data_source!r} is not one of {list(DATA_SOURCES)}")
        self.temperature, self.distill_coef, self.td_coef = temperature, distill_coef, td_coef
        self.distill_decay_env_steps, self.data_source = distill_decay_env_steps, data_source
        n_actions = torch.tensor([t.n_actions for t in self.tasks])
        valid = torch.arange(int(n_actions.max()))[None, :] < n_actions[:, None]
        self.register_buffer("valid_actions", valid, persistent=False)  # (T, max_n_actions)
        self.teachers: list[nn.Module] = []  # a plain list: teachers are neither trained nor saved with the student
        self.env_steps_seen = 0
        self._kl_sum: Tensor | None = None
        self._kl_updates = 0

    def set_teachers(self, teachers: Sequence[nn.Module]) -> None:
        """One frozen teacher per task, in task order: obs (B, >= obs_dim_t) -> Q-values (B, n_actions_t)."""
        if len(teachers) != len(self.tasks):
            raise ValueError(f"model=student: {len(teachers)} teachers for {len(self.tasks)} tasks")
        self.teachers = [t.eval().requires_grad_(False) for t in teachers]

    def on_fit_start(self) -> None:
        if not self.teachers:
            raise ValueError("model=student has no teachers: use transfer=distill transfer.teachers=[...]")
        self.teachers = [t.to(self.device) for t in self.teachers]

    def distill_coefficient(self, env_steps: int) -> float:
        """distill_coef, decayed linearly to 0 over distill_decay_env_steps env steps."""
        if self.distill_decay_env_steps is None:
            return self.distill_coef
        return self.distill_coef * max(0.0, 1.0 - env_steps / self.distill_decay_env_steps)

    @torch.no_grad()
    def teacher_q_values(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        """Each sample's own teacher's Q-values (B, max_n_actions), actions a task lacks at INVALID_Q."""
        width = int(self.valid_actions.shape[1])
        outs = []
        for teacher in self.teachers:
            q = teacher(obs)
            outs.append(F.pad(q, (0, width - q.shape[-1]), value=invalid_fill(q.dtype)))
        q = select_task(torch.stack(outs, dim=1), task_ids)
        return q.masked_fill(~self.valid_actions[task_ids], invalid_fill(q.dtype))

    @torch.no_grad()
    def teacher_greedy_action(self, task_idx: int, obs: Tensor) -> Tensor:
        """The teacher of task `task_idx`: argmax of its Q-values on the task's own observations."""
        return self.teachers[task_idx](obs).argmax(dim=-1)

    def behavior_policy_for(self, task_idx: int) -> Callable[[Tensor], Tensor]:
        """The policy that collects experience for task `task_idx` (epsilon-greedy around it)."""
        if self.data_source == "teacher":
            return lambda obs: self.teacher_greedy_action(task_idx, obs)
        return self.policy_for(task_idx)

    def training_step(self, dataloader_iter: Iterator) -> None:
        """As MultiTaskDQNModule, remembering the round's env steps for the coefficient's decay."""
        def remember() -> Iterator:
            item = next(dataloader_iter)
            self.env_steps_seen = int(item[0].env_steps)
            yield item

        return super().training_step(remember())

    def update(
        self, b: Batch, next_q_target: Tensor | None, index: int, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One update: per task td_coef * TD + c * KL(teacher || student); returns per-task (TD loss, mean Q).
        `target` (round-level TD targets) is never passed: the student does not take the explicit lean path."""
        n = len(self.tasks)
        q_all = self.q_values(self.q_net, b.obs, b.task_ids)
        q_taken = q_all.gather(-1, b.actions.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            next_online = self.q_values(self.q_net, b.next_obs, b.task_ids) if self.double_q else None
            if next_q_target is None:
                next_q_target = self.q_values(self.target_net, b.next_obs, b.task_ids)
            target = td_target(b.rewards, b.discounts, next_q_target, next_online)
            teacher_q = self.teacher_q_values(b.obs, b.task_ids)
        if self.loss_kind == "huber":
            per_sample = F.smooth_l1_loss(q_taken, target, reduction="none")
        else:
            per_sample = (q_taken - target).square()
        _, td = task_weighted_loss(per_sample * b.weights, b.task_ids, None, n)
        kl = task_means(distill_kl(q_all, teacher_q, self.temperature, reduction="none"), b.task_ids, n)
        per_task = self.td_coef * td + self.distill_coefficient(self.env_steps_seen) * kl
        if index == 0 and self.grad_diagnostics_every > 0 and self.rounds % self.grad_diagnostics_every == 0:
            self.cosines = self.gradient_cosines(per_task)
        if self.loss_balance == "pcgrad":
            self.pcgrad_step(per_task)
        else:
            weights = self.task_weights if self.loss_balance == "weighted" else torch.ones_like(self.task_weights)
            self.gradient_step((weights * per_task).sum() + self.regularization())
        if self.priority_sink is not None:
            self.priority_sink(b.indices, (q_taken - target).detach().abs(), b.task_ids)
        self._kl_sum = kl.detach() if self._kl_sum is None else self._kl_sum + kl.detach()
        self._kl_updates += 1
        return td.detach(), task_means(q_taken.detach(), b.task_ids, n)

    def extra_metrics(self) -> dict[str, Tensor | float]:
        """Adds `train/distill_kl`, `train/<task>/distill_kl` (round means) and `train/distill_coef`."""
        metrics: dict[str, Tensor | float] = dict(super().extra_metrics())
        metrics["train/distill_coef"] = self.distill_coefficient(self.env_steps_seen)
        if self._kl_sum is not None:
            kl = self._kl_sum / max(self._kl_updates, 1)
            metrics["train/distill_kl"] = kl.sum()
            for i, task in enumerate(self.tasks):
                metrics[f"train/{task.name}/distill_kl"] = kl[i]
            self._kl_sum, self._kl_updates = None, 0
        return metrics

"""DQNModule: turns rounds of replay minibatches into gradient updates (no env code here)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.precision.amp import _optimizer_handles_unscaling
from omegaconf import OmegaConf
from torch import Tensor, nn

from mtdqn.losses import LOSSES, polyak_update, td_loss, td_target
from mtdqn.models.lean_step import LeanAdam, clip_grads_, no_grad
from mtdqn.models.mlp_grads import ExplicitMLPGrads
from mtdqn.models.schedule import LRSchedule
from mtdqn.replay.buffer import dequantize
from mtdqn.types import Batch, Round, TaskSpec

NetFactory = Callable[..., nn.Module]  # (obs_dim=, n_actions=, obs_shape=) -> nn.Module
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
TARGET_UNITS = ("env_steps", "updates")


def make_optimizer(factory: OptimizerFactory, params: Iterable) -> torch.optim.Optimizer:
    """factory(params), with the optimizer's refusal of its settings (torch's 'Invalid epsilon value: -1', a
    TypeError for `optimizer.eps=abc`, an IndexError for `optimizer.betas=[0.9]`) as one ValueError naming the
    optimizer group's settings (a Hydra partial's keywords) and the library's message."""
    try:
        return factory(params)
    except Exception as exc:
        target = getattr(factory, "func", factory)
        name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', target)}".lstrip(".")
        keywords = getattr(factory, "keywords", None) or {}
        given = ", ".join(f"optimizer.{k}={_plain(v)!r}" for k, v in keywords.items())
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "" if isinstance(exc, ValueError) else f" ({type(exc).__name__})"
        raise ValueError(f"the optimizer {name} refuses its settings ({given}): {reason}{kind}; see conf/optimizer/ "
                         "for each preset's keys and values") from exc


def _plain(value: object) -> object:
    """A config value as plain Python (a ListConfig betas as a list)."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


class DQNModule(pl.LightningModule):
    """DQN / double DQN with hard or Polyak target updates, several gradient updates per training_step.

    Manual optimization: one `training_step` receives a Round of G stacked minibatches and performs G updates,
    which amortizes Lightning's per-step cost. `trainer.global_step` therefore counts gradient updates.
    """

    def __init__(
        self,
        net: NetFactory,
        optimizer: OptimizerFactory,
        task: TaskSpec | Sequence[TaskSpec],
        double_q: bool = False,
        loss: str = "huber",
        max_grad_norm: float = 10.0,  # 0 disables clipping
        target_update_period: int = 10,  # in `target_update_unit`
        target_update_unit: str = "env_steps",
        tau: float = 1.0,  # 1 = hard copy, < 1 = Polyak averaging
        lean_step: bool = True,  # fused-Adam fast path on one fp32 process (same math as optimizer.step)
        scheduler: LRSchedule | None = None,  # learning rate over env-step progress
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"model.loss={loss!r} is not one of {LOSSES}")
        if target_update_unit not in TARGET_UNITS:
            raise ValueError(f"model.target_update_unit={target_update_unit!r} is not one of {TARGET_UNITS}")
        if target_update_period <= 0:
            raise ValueError(f"model.target_update_period={target_update_period} must be > 0")
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"model.tau={tau} must lie in (0, 1]")
        self.automatic_optimization = False
        self.tasks = list(task) if isinstance(task, (list, tuple)) else [task]  # callbacks see a list of tasks
        self.task = self.tasks[0]
        self.q_net = self.build_net(net)
        self.target_net = copy.deepcopy(self.q_net).requires_grad_(False)
        self.optimizer_factory = optimizer
        self.double_q, self.loss_kind, self.max_grad_norm = double_q, loss, max_grad_norm
        self.target_update_period, self.target_update_unit, self.tau = target_update_period, target_update_unit, tau
        self.register_buffer("last_target_env_steps", torch.zeros((), dtype=torch.int64))
        self.lean_step = lean_step
        self._lean: LeanAdam | None = None
        self._explicit: ExplicitMLPGrads | None = None  # hand-written MLP gradients on the lean path
        self._explicit_target: ExplicitMLPGrads | None = None  # the same forward for the target network
        self.priority_sink: Callable[[Tensor, Tensor, Tensor], None] | None = None  # (indices, |td|, task ids)
        self._grad_norms: list[Tensor] = []  # this round's gradient norms before clipping (train/grad_norm)
        self.scheduler = scheduler
        # Extension points used by transfer (mtdqn.transfer) and stabilizers; empty = plain DQN:
        self.lr_scale: dict[str, float] = {}  # parameter-name prefix -> learning-rate multiplier (own param group)
        self.regularizers: list[Callable[[], Tensor]] = []  # extra loss terms added to every update's loss
        self.batch_transforms: list[Callable[[Batch], Batch]] = []  # applied to each minibatch before its update
        self.before_update: list[Callable[[int], None]] = []  # called with global_step before each update

    def build_net(self, net: NetFactory) -> nn.Module:
        """The online Q-network for the single task."""
        if len(self.tasks) != 1:
            raise ValueError(f"DQNModule trains one task, got {[t.name for t in self.tasks]}: use model=mtdqn")
        return net(**self.task.net_kwargs())

    def param_groups(self) -> list[dict]:
        """The online network's parameters in optimizer groups: one per `lr_scale` prefix (first match wins,
        lr multiplied), the rest in a default group."""
        groups: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in self.lr_scale}
        rest: list[nn.Parameter] = []
        for name, p in self.q_net.named_parameters():
            prefix = next((k for k in self.lr_scale if name.startswith(k)), None)
            (groups[prefix] if prefix is not None else rest).append(p)
        out = [{"params": rest, "lr_scale": 1.0}] if rest else []
        out += [{"params": ps, "lr_scale": self.lr_scale[k]} for k, ps in groups.items() if ps]
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = self.param_groups()
        opt = make_optimizer(self.optimizer_factory, groups[0]["params"] if len(groups) == 1 else groups)
        for g, spec in zip(opt.param_groups, groups, strict=True):
            g["lr"] = g["lr"] * spec["lr_scale"]
        self._base_lrs = [g["lr"] for g in opt.param_groups]  # before any checkpoint restore
        self._group_scales = [float(spec["lr_scale"]) for spec in groups]
        return opt

    def apply_lr_schedule(self, env_steps: int) -> None:
        """Set every group's lr to base x schedule factor at this env-step progress."""
        if self.scheduler is None or self.trainer is None:
            return
        total = getattr(self.trainer.datamodule, "total_env_steps", None)
        if not total:
            return
        factor = self.scheduler.factor(env_steps / total)
        for g, base in zip(self.optimizers().optimizer.param_groups, self._base_lrs, strict=True):
            g["lr"] = base * factor

    @no_grad
    def greedy_action(self, obs: Tensor) -> Tensor:
        """argmax_a Q(obs, a) for a batch of observations."""
        if self._explicit is not None:  # plain MLP on the lean path: same addmm chain, no module-call overhead
            return self._explicit.greedy(obs)
        return self.q_net(obs).argmax(dim=-1)

    def policy_for(self, task_idx: int) -> Callable[[Tensor], Tensor]:
        """The greedy policy for task `task_idx` (single-task: always the one network)."""
        if task_idx != 0:
            raise IndexError(f"DQNModule has one task, asked for task {task_idx}")
        return self.greedy_action

    def forward(self, obs: Tensor) -> Tensor:
        return self.q_net(obs)

    def q_values(self, net: nn.Module, obs: Tensor, task_ids: Tensor) -> Tensor:
        """Q-values of `net` for a batch (single task: the task ids are not needed)."""
        return net(obs)

    def td_terms(self, b: Batch, next_q_target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(Q of the taken actions, TD target); `next_q_target` may be passed in when computed ahead."""
        q_taken = self.q_values(self.q_net, b.obs, b.task_ids).gather(-1, b.actions.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            next_online = self.q_values(self.q_net, b.next_obs, b.task_ids) if self.double_q else None
            if next_q_target is None:
                next_q_target = self.q_values(self.target_net, b.next_obs, b.task_ids)
            target = td_target(b.rewards, b.discounts, next_q_target, next_online)
        return q_taken, target

    def compute_loss(self, b: Batch, next_q_target: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """TD loss of one minibatch; returns (loss, |td error| per sample, mean Q of taken actions)."""
        q_taken, target = self.td_terms(b, next_q_target)
        loss, td_abs = td_loss(q_taken, target, b.weights, self.loss_kind)
        return loss, td_abs, q_taken.detach().mean()

    @torch.no_grad()
    def round_target_values(self, batch: Batch, obs_quantum: float | None = None) -> Tensor | None:
        """Q_target(s', .) for all G minibatches of a round in few batched forwards, when the target network is
        frozen during the round (updates in env steps happen between rounds): the same values as G small
        forwards, at a fraction of the cost. None when the target moves during the round. Large observations
        (images) go in chunks of ~4M values, dequantized chunk by chunk (`obs_quantum`, Round.obs_quantum):
        one forward over a round of Atari frames is 1.7x slower than chunks that stay in cache."""
        if self.target_update_unit != "env_steps":
            return None
        next_obs, ids = batch.next_obs, batch.task_ids
        if self._explicit_target is not None:  # the lean path's addmm chain, in cache-sized chunks
            return self._explicit_target.batched_q_values(dequantize(next_obs, obs_quantum), ids)
        g, b, width = next_obs.shape
        step = max(1, (1 << 22) // (b * width))  # minibatches per chunk
        if step >= g:
            return self.q_values(self.target_net, dequantize(next_obs, obs_quantum), ids)
        return torch.cat([self.q_values(self.target_net, dequantize(next_obs[i : i + step], obs_quantum),
                                        ids[i : i + step]) for i in range(0, g, step)])

    def sync_target(self, env_steps: int) -> None:
        """Env-step unit: apply the updates due since the last sync (k Polyak steps = one of 1-(1-tau)^k)."""
        k = env_steps // self.target_update_period - int(self.last_target_env_steps) // self.target_update_period
        if k > 0:
            self.update_target(1.0 - (1.0 - self.tau) ** k)
            self.last_target_env_steps.fill_(env_steps)

    def update_target(self, tau: float) -> None:
        """target <- tau * online + (1 - tau) * target (tau=1: hard copy), buffers copied."""
        polyak_update(self.q_net, self.target_net, tau)

    def training_step(self, dataloader_iter: Iterator) -> None:
        """Pull one Round (taking `dataloader_iter` stops Lightning from prefetching, so every round is
        collected with the policy that results from the previous round's updates) and do its G updates."""
        round_, _, _ = next(dataloader_iter)
        self.update_obs_norm(round_.obs_stats)
        if self.target_update_unit == "env_steps":
            self.sync_target(round_.env_steps)
        self.apply_lr_schedule(round_.env_steps)
        per_update = list(zip(*(field.unbind(0) for field in round_.batch), strict=True))
        quantum = round_.obs_quantum  # not None: uint8 observations, made floats one minibatch at a time
        next_q_targets = self.round_target_values(round_.batch, quantum)
        # lean path without double Q: every TD target of the round depends only on the frozen target network, so
        # compute them in one batched op (bit-identical to G per-update calls)
        round_targets = None
        if self._explicit is not None and not self.double_q and next_q_targets is not None and not self.batch_transforms:
            round_targets = td_target(round_.batch.rewards, round_.batch.discounts, next_q_targets, None)
        losses, q_means = [], []
        for g, fields in enumerate(per_update):
            for hook in self.before_update:
                hook(self.global_step)
            batch = Batch(*fields)
            if quantum is not None:
                batch = batch._replace(obs=dequantize(batch.obs, quantum), next_obs=dequantize(batch.next_obs, quantum))
            for transform in self.batch_transforms:
                batch = transform(batch)
            next_q = None if next_q_targets is None else next_q_targets[g]
            if round_targets is not None:
                loss_stat, q_stat = self.update(batch, next_q, g, target=round_targets[g])
            else:
                loss_stat, q_stat = self.update(batch, next_q, g)
            if self.target_update_unit == "updates" and self.global_step % self.target_update_period == 0:
                self.update_target(self.tau)
            losses.append(loss_stat)
            q_means.append(q_stat)
        self.log_round(round_, torch.stack(losses).mean(0), torch.stack(q_means).mean(0))

    @property
    def wants_obs_stats(self) -> bool:
        """True when the Q-network normalizes observations (net.obs_norm): the data stream then sends the
        moments of the observations it collects with every round."""
        return getattr(self.q_net, "obs_norm", None) is not None

    @torch.no_grad()
    def update_obs_norm(self, obs_stats: Tensor | None) -> None:
        """Merge a round's collected-observation moments into the online network's normalizer (summed over DDP
        ranks first, so every rank keeps identical statistics). The target network keeps the statistics of its
        last sync (polyak_update copies buffers)."""
        if obs_stats is None or not self.wants_obs_stats:
            return
        if self._trainer is not None and self._trainer.world_size > 1:
            obs_stats = self.all_gather(obs_stats).sum(0)
        self.q_net.obs_norm.update_from_sums(obs_stats)

    def update(
        self, batch: Batch, next_q_target: Tensor | None, index: int, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One gradient update (the `index`-th of the round); returns (TD loss, mean Q) to average over the round.
        `target`: the TD targets when computed ahead for the whole round (lean path only)."""
        if self._explicit is not None:
            return self.explicit_update(batch, next_q_target, target)
        loss, td_abs, q_mean = self.compute_loss(batch, next_q_target)
        self.gradient_step(loss + self.regularization())
        if self.priority_sink is not None:
            self.priority_sink(batch.indices, td_abs, batch.task_ids)
        return loss.detach(), q_mean

    @torch.no_grad()
    def explicit_update(self, b: Batch, next_q_target: Tensor | None, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The lean path's update for a plain MLP: TD target (unless given), loss and hand-written gradients
        (ExplicitMLPGrads), then clip + fused Adam; the same math as `compute_loss` + autograd + `gradient_step`."""
        if target is None:
            next_online = self._explicit.q_values(b.next_obs) if self.double_q else None
            if next_q_target is None:
                next_q_target = self._explicit_target.q_values(b.next_obs)
            target = td_target(b.rewards, b.discounts, next_q_target, next_online)
        loss, td_abs, q_mean, grads = self._explicit.loss_and_grads(
            b.obs, b.actions, target, b.weights, self.loss_kind, need_td_abs=self.priority_sink is not None)
        self.apply_grads(grads)
        if self.priority_sink is not None:
            self.priority_sink(b.indices, td_abs, b.task_ids)
        return loss, q_mean

    def regularization(self) -> Tensor | float:
        """Sum of the extra loss terms (EWC, ...); 0 when there are none. The last one is logged with the round
        (`train/regularization`)."""
        total = sum((r() for r in self.regularizers), 0.0)
        if isinstance(total, Tensor):
            self._last_regularization = total.detach()
        return total

    def gradient_step(self, loss: Tensor) -> None:
        """Backward, clip, step. One fp32 process with a fused Adam takes the lean path (LeanAdam: same math,
        ~30% less time per update, measured in scripts/bench_dqn.py); otherwise the standard path, through
        manual_backward under DDP or mixed precision so gradients are all-reduced / scaled, clipped inside
        `opt.step()` by `on_before_optimizer_step`."""
        if self._lean is not None:
            self.apply_grads(list(torch.autograd.grad(loss, self._trainable)))
            return
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()

    def loss_scaler(self) -> torch.amp.GradScaler | None:
        """The precision plugin's GradScaler (precision=16-mixed); None for every other precision."""
        if self._trainer is None:
            return None
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def scale_loss(self, loss: Tensor) -> Tensor:
        """`loss` times the loss scale under 16-mixed (what manual_backward differentiates), else `loss` itself.
        Explicit gradients (PCGrad) are taken of it so fp16's small gradients do not underflow, and go to
        `apply_grads(..., scaled=True)`."""
        scaler = self.loss_scaler()
        return loss if scaler is None else scaler.scale(loss)

    def apply_grads(self, grads: list[Tensor], scaled: bool = False) -> None:
        """Clip and apply explicit gradients (one per trainable parameter) with the optimizer.

        The lean path clips and steps them here. The standard path hands them to `opt.step()` as `p.grad`, where
        the precision plugin unscales them and `on_before_optimizer_step` clips them, as after manual_backward: under
        16-mixed they must then carry the loss scale, or the unscale divided true gradients by it (65536). `scaled`:
        they are gradients of `scale_loss(...)` already; otherwise they are true gradients and are scaled here (a
        power-of-two scale: the unscale gives them back exactly)."""
        opt = self.optimizers()
        if self._lean is not None:
            if self.max_grad_norm > 0:
                self._grad_norms.append(clip_grads_(grads, self.max_grad_norm))
            opt._on_before_step()  # LightningOptimizer's own bookkeeping: global_step counts updates
            self._lean.step(grads)
            opt._on_after_step()
            return
        scaler = self.loss_scaler()
        if scaler is not None and not scaled:
            grads = scaler.scale(grads)
        opt.zero_grad(set_to_none=True)
        for p, g in zip(self._trainable, grads, strict=True):
            p.grad = g
        opt.step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the standard path's gradients to `max_grad_norm` (the lean path clips in `apply_grads`).

        Lightning calls this hook inside `opt.step()`, where every precision plugin has true gradients: after
        DDP's all-reduce, and under 16-mixed after its `scaler.unscale_`. Clipping right after manual_backward
        clipped gradients still multiplied by the loss scale (65536), shrinking every 16-mixed update ~10^4x.
        Lightning leaves an optimizer that unscales inside its own step (fused Adam) scaled here: it is unscaled
        first, and the scaler's step then passes it no scale (torch's documented unscale_ + clip + step)."""
        if self.max_grad_norm <= 0:
            return
        scaler = self.loss_scaler()
        if scaler is not None and _optimizer_handles_unscaling(optimizer):
            scaler.unscale_(optimizer)
        self._grad_norms.append(torch.nn.utils.clip_grad_norm_(self._trainable, self.max_grad_norm, foreach=True))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint whose tensors have other shapes than this module's, naming them (a checkpoint without
        its run's config.yaml beside it escapes train.check_resume; Lightning's error was a size-mismatch traceback)."""
        mine = self.state_dict()
        bad = [f"{k} {tuple(v.shape)} there, {tuple(mine[k].shape)} here"
               for k, v in checkpoint.get("state_dict", {}).items() if k in mine and v.shape != mine[k].shape]
        if bad:
            more = f" (and {len(bad) - 4} more)" if len(bad) > 4 else ""
            raise ValueError(f"ckpt_path: the checkpoint's network does not fit this config's: {'; '.join(bad[:4])}"
                             f"{more}. Resume with the +experiment= and overrides of the run that wrote it (net, "
                             "task_set, model)")

    def on_train_start(self) -> None:
        self._trainable = [p for p in self.q_net.parameters() if p.requires_grad]
        raw = self.optimizers().optimizer
        single = self.trainer.world_size == 1 and str(self.trainer.precision) in ("32-true", "32")
        group = raw.param_groups[0]["params"]
        same = len(group) == len(self._trainable) and all(a is b for a, b in zip(group, self._trainable, strict=True))
        usable = single and LeanAdam.supports(raw) and same
        self._lean = LeanAdam(raw) if usable and self.lean_step else None
        plain = self._lean is not None and not (self.regularizers or self.before_update)
        self._explicit = self.build_explicit() if plain else None
        self._explicit_target = type(self._explicit)(self.target_net) if self._explicit is not None else None

    def build_explicit(self) -> ExplicitMLPGrads | None:
        """Hand-written gradients for the lean path when this module's update is plain DQN on a plain MLP."""
        if type(self).update is DQNModule.update and ExplicitMLPGrads.supports(self.q_net):
            return ExplicitMLPGrads(self.q_net)
        return None

    def extra_metrics(self) -> dict[str, float | Tensor]:
        """Metrics every module logs each round: the gradient norm before clipping (mean and max over the round's
        updates; with model.max_grad_norm > 0, where clipping computes it: how often and how far it clips); the
        learning rate when a schedule or lr_scale is active; the extra loss terms (EWC's penalty) at the round's last
        update when there are any."""
        metrics: dict[str, float | Tensor] = {}
        norms, self._grad_norms = self._grad_norms, []
        if norms:  # clipping on: the norm it computes anyway, before clipping (no extra pass, no extra sync)
            stacked = torch.stack(norms).float()  # 0-d norms of one dtype: one stack (35 us for 128 updates)
            metrics["train/grad_norm"], metrics["train/grad_norm_max"] = stacked.mean(), stacked.amax()
        if self.scheduler is not None or self.lr_scale:
            lrs = [float(g["lr"]) for g in self.optimizers().optimizer.param_groups]
            scales = getattr(self, "_group_scales", [1.0] * len(lrs))
            base = [lr for lr, s in zip(lrs, scales, strict=True) if s == 1.0]
            scaled = sorted({lr for lr, s in zip(lrs, scales, strict=True) if s != 1.0})
            if base:
                metrics["train/lr"] = base[0]
            for i, lr in enumerate(scaled):  # lr_scale's groups (transfer.torso_lr_scale: the loaded torso)
                metrics["train/lr_scaled" if len(scaled) == 1 else f"train/lr_scaled_{i}"] = lr
        last = getattr(self, "_last_regularization", None)
        if self.regularizers and last is not None:
            metrics["train/regularization"] = last
        return metrics

    def log_round(self, round_: Round, td_loss_mean: Tensor, q_mean: Tensor) -> None:
        """Per-round training metrics (names listed in the README)."""
        metrics = {
            "train/td_loss": td_loss_mean,
            "train/q_mean": q_mean,
            "train/epsilon": float(round_.epsilon),
            "time/env_steps": float(round_.env_steps),
            "time/updates": float(self.global_step),
        }
        if round_.episode_returns.numel() > 0:
            metrics[f"rollout/{self.task.name}/return"] = round_.episode_returns.mean()
        metrics.update(self.extra_metrics())
        self.emit_round(metrics)

    def emit_round(self, metrics: dict[str, Tensor | float]) -> None:
        """One row per round to every logger, with only this round's metrics. Through Lightning's log_dict a metric
        logged in some rounds only (a task's rollout return, the gradient cosines every few rounds) was repeated,
        stale, in every later row (its result collection keeps a key's last value for the whole epoch). The TD
        loss and mean Q still go through log_dict, without loggers, for the callbacks (DivergenceGuard)."""
        self.log_dict({k: metrics[k] for k in ("train/td_loss", "train/q_mean")}, on_step=True, on_epoch=False,
                      prog_bar=False, logger=False, batch_size=1)
        if self._trainer is None or not self.trainer.is_global_zero or not self.trainer.loggers:
            return
        tensors = [k for k, v in metrics.items() if isinstance(v, Tensor)]
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in tensors]).tolist() \
            if tensors else []  # one host sync for the round
        row = {k: float(v) for k, v in metrics.items() if not isinstance(v, Tensor)}
        row |= dict(zip(tensors, values, strict=True))
        for logger in self.trainer.loggers:
            logger.log_metrics(row, step=self.global_step)

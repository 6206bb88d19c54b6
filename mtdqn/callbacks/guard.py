"""Stop a diverging run before it overwrites the last good checkpoint."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from mtdqn.callbacks.checkpoint import EnvStepCheckpoint

TD_LOSS, Q_MEAN = "train/td_loss", "train/q_mean"
def advice(module: object) -> str:
    """What to try: a lower learning rate, a larger target period, and clipping or the Huber loss where the run
    has them off (they are on by default: suggesting them there helps nobody)."""
    tries = ["a lower learning rate (optimizer.lr)"]
    if not getattr(module, "max_grad_norm", 1.0):
        tries.append("gradient clipping (model.max_grad_norm, e.g. 10)")
    if getattr(module, "loss_kind", "huber") != "huber":
        tries.append("the Huber loss (model.loss=huber)")
    tau = getattr(module, "tau", 1.0)
    tries.append(f"a smaller model.tau (now {tau:g})" if tau is not None and tau < 1.0
                 else "a larger model.target_update_period")  # Polyak targets move by tau, not by the period
    return "Try " + ", ".join(tries[:-1]) + f" or {tries[-1]}."


class DivergenceError(ValueError):  # like bad input, a one-line error (train.py); the run's summary says failed
    """Training diverged (non-finite or exploding values); the last good checkpoint was kept."""


class DivergenceGuard(pl.Callback):
    """After every round, stop training if the TD loss, |mean Q| or the Q-network's parameters diverge."""

    def __init__(self, max_abs_q: float = 1e6, check_params_every: int = 1, max_td_loss: float | None = None) -> None:
        if not max_abs_q > 0:
            raise ValueError(f"callbacks.guard.max_abs_q={max_abs_q} must be > 0")
        if check_params_every <= 0:
            raise ValueError(f"callbacks.guard.check_params_every={check_params_every} must be > 0")
        if max_td_loss is not None and not max_td_loss > 0:
            raise ValueError(f"callbacks.guard.max_td_loss={max_td_loss} must be > 0 (or null: no bound)")
        self.max_abs_q, self.check_params_every = float(max_abs_q), check_params_every
        # a bound on the round's mean TD loss: a run whose loss explodes (2e9) while |Q| stays under max_abs_q was
        # stopped only later, or not at all; no default, as the scale of a TD loss is the task's (its rewards, gamma)
        self.max_td_loss = None if max_td_loss is None else float(max_td_loss)
        self.rounds = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Run before every EnvStepCheckpoint and EvalCallback, whatever the config order: a diverged round is never
        saved, nor evaluated (an evaluation of the diverged network was logged as the run's last, and scored by
        compare.py --failed last as its last evaluation before it failed)."""
        from mtdqn.callbacks.evaluation import EvalCallback

        callbacks = trainer.callbacks
        first = next((i for i, cb in enumerate(callbacks) if isinstance(cb, EnvStepCheckpoint | EvalCallback)), None)
        if first is not None and callbacks.index(self) > first:
            # moving an earlier-visited element forward skips or repeats no callback of this hook loop
            callbacks.remove(self)
            callbacks.insert(first, self)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.rounds += 1
        check_params = self.rounds % self.check_params_every == 0
        problem = self.find_problem(trainer.callback_metrics, pl_module.q_net, check_params)
        # every rank stops together (a collective per round under DDP, a no-op on one process)
        if trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            trainer.mtdqn_diverged = True  # EnvStepCheckpoint writes nothing from now on
            raise DivergenceError(self.message(trainer, problem or "another process reported divergence"))

    def find_problem(self, metrics: dict[str, Any], q_net: nn.Module, check_params: bool) -> str | None:
        """What diverged, or None: one host sync for the metrics and the fused parameter check."""
        params = list(q_net.parameters())
        device = params[0].device if params else torch.device("cpu")
        names = [k for k in (TD_LOSS, Q_MEAN) if k in metrics]
        flags = [torch.as_tensor(metrics[k]).detach().to(device, torch.float32).reshape(()) for k in names]
        if check_params and params:
            flags.append(torch.stack([p.isfinite().all() for p in params]).all().float())
        if not flags:
            return None
        values = torch.stack(flags).tolist()
        for name, value in zip(names, values, strict=False):
            if not math.isfinite(value):
                return f"{name}={value}"
            if name == Q_MEAN and abs(value) > self.max_abs_q:
                return f"|{name}|={abs(value):.4g} > max_abs_q={self.max_abs_q:g}"
            if name == TD_LOSS and self.max_td_loss is not None and value > self.max_td_loss:
                return f"{name}={value:.4g} > max_td_loss={self.max_td_loss:g}"
        if check_params and params and values[-1] < 1.0:
            return self.bad_parameter(q_net)
        return None

    @staticmethod
    def bad_parameter(q_net: nn.Module) -> str:
        """Name, count and a sample value of the first parameter with non-finite entries (slow path)."""
        for name, p in q_net.named_parameters():
            bad = ~p.detach().isfinite()
            if bad.any():
                sample = p.detach()[bad].reshape(-1)[0].item()
                return f"parameter q_net.{name} has {int(bad.sum())}/{p.numel()} non-finite entries (e.g. {sample})"
        return "a q_net parameter is non-finite"

    def message(self, trainer: pl.Trainer, problem: str) -> str:
        """Error text: what diverged, when, the checkpoint that was kept, and what to try."""
        env_steps = trainer.datamodule.current_env_steps() if trainer.datamodule is not None else "?"
        ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, EnvStepCheckpoint)), None)
        if ckpt is None:
            kept = "No EnvStepCheckpoint callback is configured, so no checkpoint was written."
        elif ckpt.path.is_file():
            kept = (f"The last checkpoint before it was detected, {ckpt.path}, was left intact (nothing is saved after "
                    "divergence; a run can drift for a while before the guard fires: check train/td_loss and "
                    "train/q_mean up to its env step before resuming from it).")
        else:
            kept = f"No checkpoint had been written yet; {ckpt.path} will not be written from the diverged state."
        tries = advice(getattr(trainer, "lightning_module", None))
        return f"Training diverged: {problem} at env step {env_steps}, update {trainer.global_step}. {kept} {tries}"


"""Periodic greedy evaluation on separate env instances, logged as eval/<task>/return."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl

from mtdqn.evaluation.episodes import run_episodes


def log_to_loggers(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Send metrics straight to every logger (independent of Lightning's log_every_n_steps cadence)."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


class EvalCallback(pl.Callback):
    """Every `every_env_steps` env steps (and at the end) run `episodes` greedy episodes with fixed seeds."""

    def __init__(self, every_env_steps: int = 5_000, episodes: int = 10, seed: int = 10_000) -> None:
        if every_env_steps <= 0 or episodes <= 0:
            raise ValueError(f"callbacks.eval: every_env_steps={every_env_steps} and episodes={episodes} must be > 0")
        self.every, self.episodes, self.seed = every_env_steps, episodes, seed
        self.last_eval_steps = 0
        self.history: list[dict[str, float]] = []
        self.eval_seconds = 0.0
        self.started = time.perf_counter()

    @property
    def latest(self) -> dict[str, float]:
        """The most recent evaluation's metrics (empty before the first)."""
        return self.history[-1] if self.history else {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.env = trainer.datamodule.make_eval_env(self.episodes)
        self.last_eval_steps = trainer.datamodule.current_env_steps()
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        steps = trainer.datamodule.current_env_steps()
        if steps // self.every > self.last_eval_steps // self.every:
            self.evaluate(trainer, pl_module, steps)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.datamodule.current_env_steps()
        if not self.history or self.history[-1]["time/env_steps"] != steps:
            self.evaluate(trainer, pl_module, steps)
        self.env.close()

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int) -> dict[str, float]:
        """Run the episodes, log and remember the metrics."""
        t0 = time.perf_counter()
        returns = run_episodes(pl_module.greedy_action, self.env, seed=self.seed)
        self.eval_seconds += time.perf_counter() - t0
        task = pl_module.task
        mean = float(returns.mean())
        train_seconds = max(time.perf_counter() - self.started - self.eval_seconds, 1e-9)
        metrics = {
            f"eval/{task.name}/return": mean,
            f"eval/{task.name}/return_std": float(returns.std(unbiased=False)),
            "time/env_steps": float(steps),
            "time/updates": float(trainer.global_step),
            "time/sps": steps / train_seconds,
            "time/train_seconds": train_seconds,
        }
        normalized = task.normalize(mean)
        if normalized is not None:
            metrics[f"eval/{task.name}/normalized"] = normalized
            metrics["eval/mean_normalized"] = normalized
        self.last_eval_steps = steps
        self.history.append(metrics)
        log_to_loggers(trainer, metrics)
        return metrics

"""Periodic greedy evaluation on separate env instances, logged as eval/<task>/return."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from mtdqn.evaluation.episodes import record_episode, run_episodes, save_gif

VIDEO_MODES = ("none", "final", "every")


def log_to_loggers(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Send metrics straight to every logger (independent of Lightning's log_every_n_steps cadence)."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


class EvalCallback(pl.Callback):
    """Every `every_env_steps` env steps (and at the end) run `episodes` greedy episodes with fixed seeds."""

    def __init__(
        self,
        every_env_steps: int = 5_000,
        episodes: int = 10,
        seed: int = 10_000,
        video: str = "none",  # none | final | every: record one greedy episode (envs that can render)
        video_dir: str = "videos",
    ) -> None:
        if every_env_steps <= 0 or episodes <= 0:
            raise ValueError(f"callbacks.eval: every_env_steps={every_env_steps} and episodes={episodes} must be > 0")
        if video not in VIDEO_MODES:
            raise ValueError(f"callbacks.eval.video={video!r} is not one of {VIDEO_MODES}")
        self.video, self.video_dir = video, Path(video_dir)
        self.every, self.episodes, self.seed = every_env_steps, episodes, seed
        self.last_eval_steps = self.start_steps = 0
        self.history: list[dict[str, float]] = []
        self.eval_seconds = 0.0
        self.started = time.perf_counter()

    @property
    def latest(self) -> dict[str, float]:
        """The most recent evaluation's metrics (empty before the first)."""
        return self.history[-1] if self.history else {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        self.envs = [dm.make_eval_env(self.episodes, task=i) for i in range(len(pl_module.tasks))]
        self.last_eval_steps = self.start_steps = trainer.datamodule.current_env_steps()
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        steps = trainer.datamodule.current_env_steps()
        if steps // self.every > self.last_eval_steps // self.every:
            self.evaluate(trainer, pl_module, steps)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.datamodule.current_env_steps()
        if not self.history or self.history[-1]["time/env_steps"] != steps:
            self.evaluate(trainer, pl_module, steps)
        if self.video == "final":
            self.record(trainer, pl_module, steps)
        for env in self.envs:
            env.close()

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int) -> dict[str, float]:
        """Run the episodes of every task, log and remember the metrics."""
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        normalized = []
        for i, (task, env) in enumerate(zip(pl_module.tasks, self.envs, strict=True)):
            returns = run_episodes(pl_module.policy_for(i), env, seed=self.seed)
            mean = float(returns.mean())
            metrics[f"eval/{task.name}/return"] = mean
            metrics[f"eval/{task.name}/return_std"] = float(returns.std(unbiased=False))
            score = task.normalize(mean)
            if score is not None:
                metrics[f"eval/{task.name}/normalized"] = score
                normalized.append(score)
        if normalized:
            metrics["eval/mean_normalized"] = sum(normalized) / len(normalized)
            metrics["eval/min_normalized"] = min(normalized)
        self.eval_seconds += time.perf_counter() - t0
        train_seconds = max(time.perf_counter() - self.started - self.eval_seconds, 1e-9)
        metrics.update({
            "time/env_steps": float(steps),
            "time/updates": float(trainer.global_step),
            "time/sps": (steps - self.start_steps) / train_seconds,  # this run's env steps (not those resumed)
            "time/train_seconds": train_seconds,
        })
        self.last_eval_steps = steps
        self.history.append(metrics)
        log_to_loggers(trainer, metrics)
        if self.video == "every":
            self.record(trainer, pl_module, steps)
        return metrics

    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int) -> list[Path]:
        """Record eval episode 0 of each task as a GIF in the run folder and, with a W&B logger, a W&B video."""
        if not trainer.is_global_zero:
            return []
        t0 = time.perf_counter()
        paths = []
        for i, (task, env) in enumerate(zip(pl_module.tasks, self.envs, strict=True)):
            if not hasattr(env, "render"):
                continue
            frames = record_episode(pl_module.policy_for(i), env, seed=self.seed)
            self.video_dir.mkdir(parents=True, exist_ok=True)
            path = self.video_dir / f"{task.name}_{steps}.gif"
            save_gif(frames, path)
            paths.append(path)
            for logger in trainer.loggers:
                if type(logger).__name__ == "WandbLogger":
                    import wandb

                    logger.experiment.log({f"video/{task.name}": wandb.Video(str(path), format="gif")})
        self.eval_seconds += time.perf_counter() - t0
        return paths

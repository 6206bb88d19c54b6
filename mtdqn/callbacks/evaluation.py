"""Periodic greedy evaluation on separate env instances, logged as eval/<task>/return.

Beside the return: eval/<task>/episode_length, completion_rate (share of episodes that reach the time limit) and,
where the env reports why episodes end (the driving simulator), eval/<task>/{offroad,collision,red_light}_rate:
a normalized return near 1 can hide a policy that drives fast and crashes often.

Source tasks (transfer): `source_tasks` are evaluated too, with the model's own policy, logged as
`eval/source/<task>/return` and `.../normalized` (plus `eval/source/mean_normalized`), so a run on a target task
draws the forgetting curve of the tasks it was transferred from. The policy for a source task is the model's
policy for the task of the same name when the model trains it (a multi-task model keeps that task's head), else
the single-task model's one policy (the driving tasks share observation and action spaces); a multi-task model
without a task of that name, or mismatched spaces, is refused at train start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import Tensor

from mtdqn.console import say, to_log_file
from mtdqn.envs import check_render, env_factory, task_spec
from mtdqn.evaluation.episodes import epsilon_greedy, record_episode, run_episode_stats, save_gif
from mtdqn.types import TaskSpec, finite_number

VIDEO_MODES = ("none", "final", "every")
REWARD_THRESHOLD = "reward_threshold"  # callbacks.eval.stop_at_return: each task's registered gymnasium threshold


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
        video: str = "none",  # none | final | every: record evaluation episode 0 per task as a GIF
        video_dir: str = "videos",
        at_start: bool = False,  # also evaluate once before the first update (fresh runs: env step 0)
        source_tasks: Sequence[str] | None = None,  # extra tasks evaluated with the model's policy (eval/source/...)
        task_kind: str = "driving",  # task_set.kind of the source tasks
        env_kwargs: Mapping[str, Any] | None = None,  # env knobs of the source tasks (the target's task_set's)
        perturb: Mapping[str, Any] | None = None,  # fixed perturbations of the source tasks (the run's `perturb`)
        epsilon: float = 0.0,  # evaluation actions: uniformly random with this probability (Mnih et al. 2015: 0.05)
        stop_at_normalized: float | None = None,  # stop training at the first evaluation where every task scores >= it
        stop_at_return: float | Sequence[float] | str | None = None,  # the same on mean eval return: one, one per
        # task, or "reward_threshold" (each task's registered gymnasium threshold; resolved by check_tasks)
    ) -> None:
        if every_env_steps <= 0 or episodes <= 0:
            raise ValueError(f"callbacks.eval: every_env_steps={every_env_steps} and episodes={episodes} must be > 0")
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"callbacks.eval.epsilon={epsilon} must lie in [0, 1] (0 = greedy)")
        self.epsilon = float(epsilon)
        if stop_at_normalized is not None and not finite_number(stop_at_normalized):
            raise ValueError(f"callbacks.eval.stop_at_normalized={stop_at_normalized!r} must be a finite number "
                             "(a normalized score: 1 = the task's reference return) or null (train the whole budget)")
        self.stop_at = None if stop_at_normalized is None else float(stop_at_normalized)
        returns = stop_at_return if isinstance(stop_at_return, Sequence) and not isinstance(stop_at_return, str) \
            else [stop_at_return]
        self.stop_at_threshold = stop_at_return == REWARD_THRESHOLD  # each task's gymnasium reward_threshold
        if stop_at_return is not None and not self.stop_at_threshold and (
                not returns or not all(finite_number(v) for v in returns)):
            raise ValueError(f"callbacks.eval.stop_at_return={stop_at_return!r} must be a finite mean eval return, a "
                             f"list of one per task, {REWARD_THRESHOLD!r} (each gymnasium task's registered one) or "
                             "null (train the whole budget)")
        self.stop_returns = None if stop_at_return is None or self.stop_at_threshold else [float(v) for v in returns]
        if video not in VIDEO_MODES:
            raise ValueError(f"callbacks.eval.video={video!r} is not one of {VIDEO_MODES}")
        self.video, self.video_dir = video, Path(video_dir)
        self.every, self.episodes, self.seed = every_env_steps, episodes, seed
        self.last_eval_steps = self.start_steps = 0
        self.history: list[dict[str, float]] = []
        self.eval_seconds = 0.0  # this attempt's seconds spent evaluating (and recording videos)
        self.started = time.perf_counter()
        self.earlier_seconds = 0.0  # training seconds of the attempts before a resume, up to its checkpoint
        self.at_start = at_start
        kwargs = dict(env_kwargs or {})
        self.task_kind, self.env_kwargs = task_kind, kwargs
        self.source_specs: list[TaskSpec] = []
        source_ids = [str(name) for name in source_tasks or []]  # as configured: a spec's name is no gymnasium id
        for name in source_ids:
            try:
                self.source_specs.append(task_spec(task_kind, str(name), kwargs))
            except ValueError as exc:
                raise ValueError(f"transfer.eval_source_tasks: {str(exc).removeprefix('task_set.tasks: ')}") from None
        perturb = dict(perturb or {}) or None
        self.source_factories = [env_factory(task_kind, t, kwargs, perturb) for t in source_ids]
        self.source_envs: list = []
        self.source_policy: list[int] = []
        self.stopped_solved = False  # this run (or the checkpoint it resumed) ended at the stop_at_* bars
        self.loaded: dict[str, Any] = {}  # the state of a resumed checkpoint (load_state_dict)

    def check_tasks(self, tasks: Sequence[TaskSpec], task_ids: Sequence[str] | None = None) -> None:
        """At build time, before any env step (the composition root calls it): refuse stop_at_normalized for a task
        without reference scores (its normalized score is never logged), resolve stop_at_return=reward_threshold to
        each task's registered threshold (refused where one has none), check a per-task list's length, and with a
        video asked for, refuse tasks (`task_ids`, as configured) that cannot draw frames."""
        if self.video != "none":
            for task in task_ids or ():
                try:
                    check_render(self.task_kind, str(task), self.env_kwargs)
                except ValueError as exc:
                    raise ValueError(f"callbacks.eval.video={self.video}: {exc}; set callbacks.eval.video=none to "
                                     "train without videos") from None
        missing = [t.name for t in tasks if t.normalize(0.0) is None]
        if self.stop_at is not None and missing:
            raise ValueError(f"callbacks.eval.stop_at_normalized={self.stop_at:g} needs a normalized score for every "
                             f"task, and {missing} have no reference return (the driving tasks have one); use "
                             "callbacks.eval.stop_at_return, or leave it null to train the whole budget")
        if self.stop_at_threshold:
            missing = [t.name for t in tasks if t.reward_threshold is None]
            if missing:
                raise ValueError(f"callbacks.eval.stop_at_return={REWARD_THRESHOLD} needs gymnasium's reward_threshold "
                                 f"for every task, and {missing} have none registered; give the returns instead "
                                 "(one for all or one per task), or leave it null to train the whole budget")
            self.stop_returns = [float(t.reward_threshold) for t in tasks]
        if self.stop_returns is not None and len(self.stop_returns) not in (1, len(tasks)):
            raise ValueError(f"callbacks.eval.stop_at_return has {len(self.stop_returns)} values for "
                             f"{len(tasks)} tasks {[t.name for t in tasks]}: give one for all or one per task")

    def stop_bars(self) -> list:
        """The stop rule as configured (normalized bar, resolved return bars): a checkpoint that stopped solved
        under other bars does not count as solved under these."""
        return [self.stop_at, self.stop_returns]

    def state_dict(self) -> dict[str, Any]:
        """Beside the stop rule: the training seconds so far (a resumed run's time/train_seconds goes on from them,
        as the training does) and the last evaluation, which metrics.jsonl keeps (its rows up to the checkpoint
        stay): a run resumed at the env steps it was last evaluated at (killed in its end-of-run compression, or
        resumed at or past its budget) does not evaluate and log the same env steps again, and its summary and
        progress line have that evaluation's metrics."""
        return {"stopped_solved": self.stopped_solved, "stop_bars": self.stop_bars(),
                "train_seconds": self.train_seconds(), "latest": dict(self.latest)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = dict(state_dict)

    def train_seconds(self) -> float:
        """Seconds spent training, evaluation excluded: this attempt's and, after a resume, the earlier attempts'
        up to the checkpoint it resumed (the work after it, done again, counts once)."""
        return self.earlier_seconds + max(time.perf_counter() - self.started - self.eval_seconds, 0.0)

    @property
    def latest(self) -> dict[str, float]:
        """The most recent evaluation's metrics (empty before the first)."""
        return self.history[-1] if self.history else {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        self.envs = [dm.make_eval_env(self.episodes, task=i) for i in range(len(pl_module.tasks))]
        self.source_policy = [source_policy_index(pl_module.tasks, s) for s in self.source_specs]
        self.source_envs = [f(num_envs=self.episodes, device=dm.device) for f in self.source_factories]
        self.last_eval_steps = self.start_steps = trainer.datamodule.current_env_steps()
        self.started, self.eval_seconds = time.perf_counter(), 0.0
        # a resumed run goes on from its checkpoint's clock and last evaluation (a checkpoint from before they were
        # saved: the clock from 0, and an evaluation at its env steps again at the end)
        self.earlier_seconds = float(self.loaded.get("train_seconds", 0.0))
        if self.loaded.get("latest"):
            self.history = [dict(self.loaded["latest"])]
        if self.loaded.get("stopped_solved") and self.loaded.get("stop_bars") == self.stop_bars() and (
                self.stop_at is not None or self.stop_returns is not None):
            # the resumed run already ended at these bars (a relaunched sweep, say): nothing to train, the
            # weights stay as they were; the summary has the evaluation it stopped at (evaluated again at the end
            # only where the checkpoint predates the saved evaluation)
            self.stopped_solved = trainer.should_stop = True
            if trainer.is_global_zero:
                say(f"mtdqn: the checkpoint's run already stopped solved at {self.start_steps:,} env steps "
                    "(callbacks.eval.stop_at_normalized / stop_at_return); nothing to train. Set them to null "
                    "to train on.")
            return
        if self.at_start and self.start_steps == 0:
            self.evaluate(trainer, pl_module, 0)

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
        for env in [*self.envs, *self.source_envs]:
            env.close()

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int) -> dict[str, float]:
        """Run the episodes of every task, log and remember the metrics."""
        t0 = time.perf_counter()
        entries = [(task, env, i) for i, (task, env) in enumerate(zip(pl_module.tasks, self.envs, strict=True))]
        metrics = self.episode_metrics("eval/", entries, pl_module)
        metrics.update(self.evaluate_sources(pl_module))
        observe = getattr(trainer.datamodule, "observe_scores", None)
        if observe is not None:  # the data module may shift collection between tasks (data.collect_schedule)
            metrics.update(observe([metrics.get(f"eval/{t.name}/normalized") for t in pl_module.tasks]))
        task_steps = getattr(trainer.datamodule, "current_task_env_steps", lambda: None)()
        if task_steps is not None and len(task_steps) > 1:  # each task's own env steps (multi-task runs)
            metrics.update({f"time/{t.name}/env_steps": float(v)
                            for t, v in zip(pl_module.tasks, task_steps, strict=True)})
        self.eval_seconds += time.perf_counter() - t0
        train_seconds = self.train_seconds()
        metrics.update({
            "time/env_steps": float(steps),
            "time/updates": float(trainer.global_step),
            # this attempt's rate: its env steps (not those resumed) over its own training seconds
            "time/sps": (steps - self.start_steps) / max(train_seconds - self.earlier_seconds, 1e-9),
            "time/train_seconds": train_seconds,
        })
        if self.stop_at is not None or self.stop_returns is not None:
            tasks = pl_module.tasks
            solved = self.stop_at is None or all(metrics.get(f"eval/{t.name}/normalized", -math.inf) >= self.stop_at
                                                for t in tasks)
            if self.stop_returns is not None:
                bars = self.stop_returns * len(tasks) if len(self.stop_returns) == 1 else self.stop_returns
                solved = solved and all(metrics[f"eval/{t.name}/return"] >= b for t, b in zip(tasks, bars, strict=True))
            # every process stops together (a collective at each evaluation under DDP, a no-op on one process)
            if trainer.strategy.reduce_boolean_decision(solved, all=True) or self.stopped_solved:
                self.stopped_solved = trainer.should_stop = True
                metrics["time/stopped_solved"] = 1.0  # the run ended here: every task reached the stop_at_* bars
                # the budget it would have had: comparisons of runs with different budgets need it
                metrics["time/budget_env_steps"] = float(trainer.datamodule.total_env_steps)
        self.last_eval_steps = steps
        self.history.append(metrics)
        log_to_loggers(trainer, metrics)
        if trainer.is_global_zero:  # the log file's line per evaluation (the console's is in the progress bar)
            to_log_file(eval_line(metrics, [t.name for t in pl_module.tasks]))
        if self.video == "every":
            self.record(trainer, pl_module, steps)
        return metrics

    def evaluate_sources(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """eval/source/<task>/return, return_std, normalized and eval/source/mean_normalized (min_normalized)."""
        entries = list(zip(self.source_specs, self.source_envs, self.source_policy, strict=True))
        return self.episode_metrics("eval/source/", entries, pl_module)

    def episode_metrics(self, prefix: str, entries: list, pl_module: pl.LightningModule) -> dict[str, float]:
        """For each (task spec, env, policy index): greedy returns on the fixed seeds as <prefix><task>/return,
        return_std and normalized, the episodes' mean length, completion rate (time limit reached) and, for envs
        that report why episodes end (driving: offroad, collision, red_light), <prefix><task>/<cause>_rate; plus
        <prefix>mean_normalized and min_normalized over the tasks."""
        metrics: dict[str, float] = {}
        normalized = []
        for spec, env, index in entries:
            stats = run_episode_stats(self.eval_policy(pl_module.policy_for(index), spec.n_actions, index), env,
                                      seed=self.seed)
            returns = stats.returns
            mean = float(returns.mean())
            metrics[f"{prefix}{spec.name}/return"] = mean
            metrics[f"{prefix}{spec.name}/return_std"] = float(returns.std(unbiased=False))
            metrics.update({f"{prefix}{spec.name}/{k}": v for k, v in stats.rates().items()})
            score = spec.normalize(mean)
            if score is not None:
                metrics[f"{prefix}{spec.name}/normalized"] = score
                normalized.append(score)
        if normalized:
            metrics[f"{prefix}mean_normalized"] = sum(normalized) / len(normalized)
            metrics[f"{prefix}min_normalized"] = min(normalized)
        return metrics

    def eval_policy(self, greedy: Callable[[Tensor], Tensor], n_actions: int, index: int,
                    draws: int | None = None) -> Callable[[Tensor], Tensor]:
        """The policy evaluated: greedy, or epsilon-greedy (callbacks.eval.epsilon) with a generator seeded anew at
        every evaluation, so evaluations of one policy repeat exactly (Atari's evaluation protocol: a greedy policy
        that never presses FIRE would stall Breakout until the 27k-step time limit). `draws` (default: the batch
        size) random numbers are drawn per step and the first ones used: a 1-env recording that draws as many as
        the evaluation's `episodes` envs plays exactly the evaluation's episode 0, exploration included."""
        return epsilon_greedy(greedy, n_actions, self.epsilon, self.seed, index, draws)

    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int) -> list[Path]:
        """Record eval episode 0 of each task (its seed and, with callbacks.eval.epsilon > 0, its exploration draws,
        on an env that draws frames) as a GIF in the run folder and, with a W&B logger, a W&B video."""
        if not trainer.is_global_zero:
            return []
        t0 = time.perf_counter()
        paths = []
        dm = trainer.datamodule
        for i, task in enumerate(pl_module.tasks):
            env = dm.make_eval_env(1, task=i, render=True)  # env 0 of an evaluation: the same seed, one episode
            try:
                policy = self.eval_policy(pl_module.policy_for(i), task.n_actions, i, draws=self.episodes)
                frames = record_episode(policy, env, seed=self.seed)
            finally:
                env.close()
            self.video_dir.mkdir(parents=True, exist_ok=True)
            path = self.video_dir / f"{task.name}_{steps}.gif"
            save_gif(frames, path, fps=getattr(env, "render_fps", 10))
            paths.append(path)
            for logger in trainer.loggers:
                if type(logger).__name__ == "WandbLogger":
                    import wandb

                    logger.experiment.log({f"video/{task.name}": wandb.Video(str(path), format="gif")})
        self.eval_seconds += time.perf_counter() - t0
        return paths


def source_policy_index(tasks: Sequence[TaskSpec], source: TaskSpec) -> int:
    """Which of the model's task policies plays source task `source`: the task of the same name, else the only
    one; its observation and action spaces must fit."""
    names = [t.name for t in tasks]
    if source.name in names:
        return names.index(source.name)
    if len(tasks) != 1:
        raise ValueError(f"transfer.eval_source_tasks: {source.name!r} is not a task of the {len(tasks)}-task model "
                         f"({names}); a multi-task model is evaluated on the source tasks it trains, a single-task "
                         "model with its one policy")
    own = tasks[0]
    if (own.obs_dim, own.n_actions) != (source.obs_dim, source.n_actions):
        raise ValueError(f"transfer.eval_source_tasks: {source.name!r} has obs_dim/n_actions "
                         f"{(source.obs_dim, source.n_actions)}, the model's task {own.name!r} "
                         f"{(own.obs_dim, own.n_actions)}: its policy cannot play it")
    return 0


def eval_line(metrics: Mapping[str, float], tasks: Sequence[str]) -> str:
    """One evaluation as a line of the run's log file: env steps, updates, training time, each task's mean return
    (and normalized score where the task has one)."""
    parts = []
    for name in tasks:
        part = f"{name} {metrics[f'eval/{name}/return']:.4g}"
        if f"eval/{name}/normalized" in metrics:
            part += f" ({metrics[f'eval/{name}/normalized']:.3f} normalized)"
        parts.append(part)
    return (f"eval at {int(metrics['time/env_steps']):,} env steps, {int(metrics['time/updates']):,} updates, "
            f"{metrics['time/train_seconds']:.1f} s training: " + "; ".join(parts)
            + ("; stopped: solved" if metrics.get("time/stopped_solved") else ""))

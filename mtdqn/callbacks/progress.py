"""A progress bar in env steps with env steps/s and the latest eval return, plus a final summary line."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar
from tqdm.auto import tqdm

from mtdqn.console import say


class EnvStepProgressBar(ProgressBar):
    """tqdm bar over env steps (replaces Lightning's batch-based bar)."""

    def __init__(self, refresh_seconds: float = 0.5) -> None:
        super().__init__()
        self.refresh_seconds = refresh_seconds
        self._enabled = True
        self.bar: tqdm | None = None
        self.summary = ""

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @staticmethod
    def _latest_eval(trainer: pl.Trainer) -> dict:
        """The evaluation callback's most recent metrics (empty before the first evaluation)."""
        return next((cb.latest for cb in trainer.callbacks if getattr(cb, "latest", None)), {})

    def _eval_return(self, trainer: pl.Trainer) -> str:
        return self.eval_text(self._latest_eval(trainer))

    @staticmethod
    def eval_text(latest: dict) -> str:
        """`task=return` per evaluated task: `eval/<task>/return` as `<task>`, a transfer run's source tasks
        (`eval/source/<task>/return`) as `source/<task>`."""
        keys = [k for k in latest if k.startswith("eval/") and k.endswith("/return")]
        return ", ".join(f"{k[len('eval/'):-len('/return')]}={latest[k]:.1f}" for k in keys) or "-"

    @staticmethod
    def advance(bar: tqdm, steps: int) -> None:
        """Move the bar to `steps`; the last round may end past the budget (whole rounds of whole vector steps), so
        the total grows with it rather than tqdm dropping the total ('672step' instead of 672/672)."""
        if steps > bar.total:
            bar.total = steps
        bar.update(steps - bar.n)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        self.start_steps, self.t0, self.last_refresh = dm.current_env_steps(), time.perf_counter(), 0.0
        if self._enabled and trainer.is_global_zero:
            # a resumed run may start at or past its budget (total grows, as in advance)
            self.bar = tqdm(total=max(dm.total_env_steps, self.start_steps), initial=self.start_steps, unit="step",
                            dynamic_ncols=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        now = time.perf_counter()
        if self.bar is None or now - self.last_refresh < self.refresh_seconds:
            return
        self.last_refresh = now
        steps = trainer.datamodule.current_env_steps()
        self.advance(self.bar, steps)
        sps = (steps - self.start_steps) / max(now - self.t0, 1e-9)
        self.bar.set_postfix_str(f"sps={sps:,.0f} updates={trainer.global_step} eval: {self._eval_return(trainer)}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.datamodule.current_env_steps()
        seconds = time.perf_counter() - self.t0
        if self.bar is not None:
            self.advance(self.bar, steps)
            self.bar.close()
        done = steps - self.start_steps
        self.summary = (
            f"mtdqn: {steps:,} env steps ({done:,} this run) and {trainer.global_step:,} updates in {seconds:.1f} s "
            f"({done / max(seconds, 1e-9):,.0f} env steps/s); last eval: {self._eval_return(trainer)}"
        )
        if done == 0 and steps >= trainer.datamodule.total_env_steps:
            # a resume at the budget: an end-of-run interrupted (the compression killed) finished, or a budget at or
            # below the checkpoint's env steps; "raise it" alone read as if the resume had been a mistake
            self.summary += (f"; the checkpoint was already at the budget, data.total_env_steps="
                             f"{trainer.datamodule.total_env_steps:,}: nothing to train, only the end of the run "
                             "(its final evaluation where not yet done, checkpoint, compression); a larger budget "
                             "trains on")
        if self._latest_eval(trainer).get("time/stopped_solved"):
            self.summary += "; stopped once solved (callbacks.eval.stop_at_normalized / stop_at_return)"
        if trainer.is_global_zero:
            say(self.summary)

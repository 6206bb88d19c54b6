"""Stops the Trainer when the env-step budget is spent (the composition root always adds it)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


class EnvStepBudget(pl.Callback):
    """Sets `trainer.should_stop` once the data module has collected `total_env_steps` (also on resume)."""

    def _check(self, trainer: pl.Trainer) -> None:
        dm = trainer.datamodule
        if dm.current_env_steps() >= dm.total_env_steps:
            trainer.should_stop = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._check(trainer)

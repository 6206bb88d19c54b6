"""A plain JSON-lines metrics file in the run directory: one object per logging call; W&B charts over env steps."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only


class JsonlLogger(Logger):
    """Writes `metrics.jsonl` lines {"env_steps", "step" (gradient updates), "time" (s), <metric>: value}.

    `time` counts wall seconds from this attempt's start and, in a resumed run, goes on from the time its checkpoint
    was saved at (LoggerClock keeps it in the checkpoint): a resumed curve does not restart at 0."""

    def __init__(self, save_dir: str = ".", filename: str = "metrics.jsonl") -> None:
        super().__init__()
        self._save_dir = Path(save_dir)
        self.path = self._save_dir / filename
        self._start = time.time()
        self.earlier_seconds = 0.0  # the resumed checkpoint's `time` (LoggerClock)
        self._file = None

    def elapsed(self) -> float:
        """The `time` of a row logged now."""
        return self.earlier_seconds + time.time() - self._start

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return "0"

    @property
    def save_dir(self) -> str:
        return str(self._save_dir)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._file is None:
            self._save_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - kept open for the run
        return self._file

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters live in config.yaml beside the metrics file."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row: dict[str, Any] = {
            "env_steps": int(metrics.get("time/env_steps", -1)),
            "step": int(metrics.get("time/updates", step if step is not None else -1)),
            "time": round(self.elapsed(), 4),
        }
        row.update({k: float(v) for k, v in metrics.items()})
        self.experiment.write(json.dumps(row) + "\n")

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LoggerClock(pl.Callback):
    """Keeps the JsonlLogger's clock in the checkpoint: a resumed run's `time` column goes on from the time the
    checkpoint was saved at (it restarted at 0 on every resume, and a curve over time showed the run's last attempt
    alone). The work after the checkpoint, which the resumed run does again, counts once. A resume from a checkpoint
    into another folder goes on from it too: it is the same training. The composition root always adds it."""

    def __init__(self) -> None:
        self.loggers: list[JsonlLogger] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.loggers = [lg for lg in trainer.loggers if isinstance(lg, JsonlLogger)]

    def state_dict(self) -> dict[str, Any]:
        return {"jsonl_seconds": self.loggers[0].elapsed()} if self.loggers else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.earlier_seconds = float(state_dict.get("jsonl_seconds", 0.0))


ENV_STEP_AXIS = "time/env_steps"
WANDB_ID_FILE = "wandb_run_id"  # in the run folder: the W&B run a resumed attempt continues


def continue_wandb_run(loggers: list[Logger], out_dir: Path) -> str | None:
    """A resume in the run's own folder continues its W&B run: an online WandbLogger gets the id the earlier
    attempt recorded (`<run>/wandb_run_id`; Lightning passes resume="allow"), so the curve goes on in one W&B run
    instead of a second run of the same name. W&B cannot resume offline runs (each attempt is its own offline run,
    synced as such), and an id given in the config (logger.wandb.id) wins. Returns what it did, for the run's log."""
    from pytorch_lightning.loggers import WandbLogger

    recorded = out_dir / WANDB_ID_FILE
    for logger in loggers:
        if not isinstance(logger, WandbLogger) or logger._experiment is not None or not recorded.is_file():
            continue
        run_id = recorded.read_text().strip()
        if logger._wandb_init.get("id") or not run_id:
            continue
        if logger._offline:
            return f"W&B is offline: this attempt is a new offline run (W&B cannot resume offline run {run_id})"
        logger._wandb_init["id"] = logger._id = run_id
        return f"W&B run {run_id} continues"
    return None


class WandbEnvStepAxis(pl.Callback):
    """W&B charts against env steps: `time/env_steps` becomes the x-axis of every metric (Lightning's WandbLogger
    sets `trainer/global_step`, i.e. gradient updates, which differ between agents with other replay ratios, and
    a multi-task agent's updates against single-task agents' say nothing). Every training, rollout and evaluation
    row carries time/env_steps; W&B fills it into the others (step_sync). trainer/global_step stays logged, so
    the W&B UI can still switch to updates. No-op without a WandbLogger."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pytorch_lightning.loggers import WandbLogger

        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and callable(getattr(logger.experiment, "define_metric", None)):
                logger.experiment.define_metric(ENV_STEP_AXIS)
                logger.experiment.define_metric("*", step_metric=ENV_STEP_AXIS, step_sync=True)
                self.record_run_id(logger)

    @staticmethod
    def record_run_id(logger: Any) -> None:
        """`<run>/wandb_run_id`: the W&B run's id, which a resumed attempt continues (continue_wandb_run); not
        for a disabled run (WANDB_MODE=disabled), which W&B never keeps."""
        run = logger.experiment
        if not logger.save_dir or getattr(run, "disabled", False) or type(run).__name__ == "RunDisabled":
            return
        run_id = getattr(run, "id", None)
        if isinstance(run_id, str) and run_id:
            path = Path(logger.save_dir) / WANDB_ID_FILE
            tmp = path.with_name(path.name + ".tmp")  # whole or not at all, as the run folder's other files
            tmp.write_text(run_id + "\n")
            tmp.replace(path)

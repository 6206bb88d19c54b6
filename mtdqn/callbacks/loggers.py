"""A plain JSON-lines metrics file in the run directory: one object per logging call."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only


class JsonlLogger(Logger):
    """Writes `metrics.jsonl` lines {"env_steps", "step" (gradient updates), "time" (s), <metric>: value}."""

    def __init__(self, save_dir: str = ".", filename: str = "metrics.jsonl") -> None:
        super().__init__()
        self._save_dir = Path(save_dir)
        self.path = self._save_dir / filename
        self._start = time.time()
        self._file = None

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
            "time": round(time.time() - self._start, 4),
        }
        row.update({k: float(v) for k, v in metrics.items()})
        self.experiment.write(json.dumps(row) + "\n")

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

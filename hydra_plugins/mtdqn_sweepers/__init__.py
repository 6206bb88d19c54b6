"""Hydra's Optuna sweeper, ending a study whose every trial failed with one line (`hparams_search=` presets).

Optuna's sweeper asks the study for its best trial after the last one; with no completed trial that raises
Optuna's "No trials are completed yet." inside Hydra, a traceback that names neither the trials nor where their
errors are, before Hydra's multirun-end callbacks (mtdqn.sweep.SweepOutcome's tally) run. This subclass turns it into
`mtdqn: every trial of the study failed (N of N); <sweep dir>: ...` with exit status 1. Needs the optional extra
`.[optuna]` (hydra-optuna-sweeper), as the presets that name it do; without it this module defines nothing.

Hydra takes sweepers only from the `hydra_plugins` namespace package and imports every module in it when it
starts, so this one must import without the extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper
except ImportError:  # the optional extra is not installed: nothing to define
    _OptunaSweeper = None


if _OptunaSweeper is not None:
    class OptunaSweeper(_OptunaSweeper):
        def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
            self.sweep_dir = Path(str(config.hydra.sweep.dir))
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

        def sweep(self, arguments: list[str]) -> None:
            try:
                return super().sweep(arguments)
            except ValueError as exc:
                if "No trials are completed" not in str(exc):
                    raise
            from mtdqn.sweep import job_statuses

            statuses = job_statuses(self.sweep_dir) if self.sweep_dir.is_dir() else {}
            failed = sum(status == "failed" for status in statuses.values())
            sys.exit(f"mtdqn: every trial of the study failed ({failed} of {len(statuses)}); {self.sweep_dir}: "
                     "each trial's trial.json has its error (no optimization_results.yaml: there is no best trial)")

"""Hydra's Optuna sweeper, ending a study whose every trial failed with one line (`hparams_search=` presets).

Optuna's sweeper asks the study for its best trial after the last one; with no completed trial that raises
Optuna's "No trials are completed yet." inside Hydra, a traceback that names neither the trials nor where their
errors are, before Hydra's multirun-end callbacks (mtdqn.sweep.SweepOutcome's tally) run. This subclass turns it into
`mtdqn: every trial of the study failed (N of N); <sweep dir>: ...` with exit status 1. Needs the optional extra
`.[optuna]` (hydra-optuna-sweeper), as the presets that name it do; without it this module defines nothing.

Hydra takes sweepers only from the `hydra_plugins` namespace package and imports every module in it when it
starts, so this one must import without the extra.

A study continued in its sweep folder (a persistent `hydra.sweeper.storage`, e.g.
`sqlite:///${hydra.sweep.dir}/optuna.db`, relaunched with the same `hydra.sweep.dir`): Hydra's sweeper numbered the
trial folders from 0 on every launch, so the new trials were refused in, or mixed into, the earlier trials' folders.
Here a launch numbers its folders after the study's trials (folder name = Optuna's trial number). A sweep folder
holding trial folders the study does not have (an in-memory study, which keeps nothing between launches, or another
study's) is refused in one line before any trial is launched, as is a `hparams_search.metric` the runs' summary.json
will not have (mtdqn.sweep.check_metric).
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
            from mtdqn.sweep import check_metric

            try:  # a hparams_search.metric the runs will not have: one line before any trial trains
                check_metric(self.sweeper.config)
            except ValueError as exc:
                sys.exit(f"mtdqn: error: {exc}")
            self.sweeper.job_idx = self.first_trial()  # the launcher numbers the trial folders from there
            try:
                return super().sweep(arguments)
            except ValueError as exc:
                if "No trials are completed" not in str(exc):
                    raise
            from mtdqn.sweep import job_statuses

            statuses = job_statuses(self.sweep_dir) if self.sweep_dir.is_dir() else {}
            failed = sum(status in ("failed", "refused") for status in statuses.values())  # refused: refused.json
            sys.exit(f"mtdqn: every trial of the study failed ({failed} of {len(statuses)}); {self.sweep_dir}: "
                     "each trial's trial.json has its error (no optimization_results.yaml: there is no best trial)")

        def first_trial(self) -> int:
            """The number of this launch's first trial: how many the study already has (0 for a new study); exits
            with one line where the sweep folder holds trial folders from there on (they are not this study's)."""
            import optuna

            storage, name = self.sweeper.storage, self.sweeper.study_name
            existing = 0
            if storage is not None:
                self.sweep_dir.mkdir(parents=True, exist_ok=True)  # a sqlite file in the sweep folder needs it
                if name is not None:  # (no name: Optuna makes a new study, with a new name, on every launch)
                    try:
                        existing = len(optuna.load_study(study_name=str(name), storage=storage).trials)
                    except KeyError:  # no such study yet
                        existing = 0
            taken = sorted(int(p.name) for p in (self.sweep_dir.iterdir() if self.sweep_dir.is_dir() else ())
                           if p.is_dir() and p.name.isdigit() and int(p.name) >= existing and any(p.iterdir()))
            if not taken:
                return existing
            folders = ", ".join(map(str, taken[:5])) + (" ..." if len(taken) > 5 else "")
            if storage is None:
                sys.exit(f"mtdqn: error: {self.sweep_dir} holds the trial folders of an earlier study ({folders}): "
                         "an in-memory study (hydra.sweeper.storage=null) keeps nothing between launches and cannot "
                         "be continued there; give another hydra.sweep.dir (a study stored from its first launch "
                         "on, hydra.sweeper.storage=sqlite:///${hydra.sweep.dir}/optuna.db, can be continued in its "
                         "folder)")
            sys.exit(f"mtdqn: error: {self.sweep_dir} holds trial folders ({folders}) that study {name!r} in {storage} "
                     f"({existing} trials) does not have: give another hydra.sweep.dir, or the storage and "
                     "study_name of the study that wrote them")

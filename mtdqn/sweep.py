"""One hyperparameter-search trial (`hparams_search=<preset>`): several seeds trained in turn, one objective.

The Optuna sweeper calls the Hydra task function once per trial; `run_trial` trains `hparams_search.seeds_per_trial`
seeds one after the other, each in its own folder `<trial>/seed_<s>/` (config.yaml, metrics.jsonl, summary.json,
checkpoints: an ordinary run that scripts/compare.py reads), and returns the mean of their final
`hparams_search.metric`. A failed seed fails the trial: the remaining seeds are skipped and the objective is None,
which the sweeper records as a failed trial without stopping the study. `trial.json` in the trial folder records
the outcome (not `summary.json`, so compare tools do not count the trial folder as one more run).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, open_dict

from mtdqn.train import train

log = logging.getLogger("mtdqn")
TRIAL_FILE = "trial.json"


def seed_config(cfg: DictConfig, seed: int, output_dir: Path) -> DictConfig:
    """A copy of `cfg` that trains `seed` into `output_dir`."""
    run = cfg.copy()
    with open_dict(run):
        run.seed = seed
        run.paths.output_dir = str(output_dir)
    return run


def final_metric(summary: dict, metric: str) -> float:
    """The run's final value of `metric`; ValueError (with what is there) when it is missing or not finite."""
    value = summary.get(metric)
    if value is None:
        have = sorted(k for k in summary if k.startswith("eval/"))
        raise ValueError(f"hparams_search.metric={metric!r} is not in the run's summary; it has {have}")
    if not math.isfinite(float(value)):
        raise ValueError(f"hparams_search.metric={metric!r} is {value}")
    return float(value)


def run_trial(cfg: DictConfig, train_fn: Callable[[DictConfig], dict] = train) -> float | None:
    """Train seeds `seed .. seed + seeds_per_trial - 1` in turn; the mean final metric, or None if a seed failed."""
    spec = cfg.hparams_search
    n_seeds, metric = int(spec.get("seeds_per_trial", 1)), str(spec.metric)
    if n_seeds <= 0:
        raise ValueError(f"hparams_search.seeds_per_trial={n_seeds} must be a positive integer")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(int(cfg.seed), int(cfg.seed) + n_seeds))
    record: dict = {"status": "completed", "metric": metric, "seeds": seeds, "values": {}}
    for seed in seeds:
        try:
            record["values"][str(seed)] = final_metric(train_fn(seed_config(cfg, seed, out / f"seed_{seed}")), metric)
        except Exception as exc:
            record.update(status="failed", error=f"seed {seed}: {type(exc).__name__}: {exc}")
            log.error("trial %s failed, the study continues: %s", out.name, record["error"])
            if not isinstance(exc, ValueError):  # a bug, not bad input: where it happened
                traceback.print_exc(file=sys.stderr)
            break
    values = list(record["values"].values())
    record["objective"] = sum(values) / len(values) if record["status"] == "completed" else None
    (out / TRIAL_FILE).write_text(json.dumps(record, indent=2))
    return record["objective"]

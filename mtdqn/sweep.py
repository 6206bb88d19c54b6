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

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from mtdqn.train import REFUSED_FILE, mark_refused, train

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


PER_TASK = ("return", "return_std", "episode_length", "completion_rate")  # eval/<task>/<name> of every task


def summary_eval_keys(cfg: DictConfig) -> list[str] | None:
    """The eval/ keys a run of `cfg` writes in its summary.json (mtdqn.callbacks.evaluation: per task its return,
    return_std, episode_length, completion_rate, the driving tasks' termination cause rates, normalized where the
    task has reference scores, then mean_normalized and min_normalized over those; eval/source/... for the source
    tasks evaluated); None where the config does not say (no task set)."""
    ts = cfg.get("task_set")
    if ts is None or ts.get("tasks") is None:
        return None
    evaluation = (cfg.get("callbacks") or {}).get("eval")
    if evaluation is None:  # callbacks.eval=null: no evaluation, no eval/ key
        return []
    from mtdqn.envs import task_spec, task_specs

    kwargs = OmegaConf.to_container(ts.env_kwargs, resolve=True) if ts.get("env_kwargs") else {}
    per = PER_TASK
    if ts.kind == "driving":
        from mtdqn.envs.driving.sim import TERMINATION_CAUSES

        per += tuple(f"{cause}_rate" for cause in TERMINATION_CAUSES)
    keys: list[str] = []
    sources = [task_spec(ts.kind, str(t), kwargs) for t in evaluation.get("source_tasks") or []]
    for prefix, specs in (("eval/", task_specs(ts.kind, list(ts.tasks), kwargs)), ("eval/source/", sources)):
        normalized = [s.name for s in specs if s.normalize(0.0) is not None]
        keys += [f"{prefix}mean_normalized", f"{prefix}min_normalized"] if normalized else []
        for spec in specs:
            keys += [f"{prefix}{spec.name}/{k}" for k in per]
            keys += [f"{prefix}{spec.name}/normalized"] if spec.name in normalized else []
    return keys


def check_metric(cfg: DictConfig) -> None:
    """A `hparams_search.metric` under eval/ that the runs' summary.json will not have is refused before training
    (it was found after each trial had trained a seed), in one line naming those it will have. Other keys (time/,
    compression/, ...) are looked up after the run."""
    metric = str(cfg.hparams_search.metric)
    if not metric.startswith("eval/"):
        return
    keys = summary_eval_keys(cfg)
    if keys is None or metric in keys:
        return
    if not keys:
        raise ValueError(f"hparams_search.metric={metric!r}: with callbacks.eval=null a run is not evaluated and its "
                         "summary.json has no eval/ key")
    main = [k for k in keys if not any(k.endswith(f"/{n}") for n in PER_TASK[1:]) and not k.endswith("_rate")]
    rest = [n for n in keys if n not in main]
    more = sorted({k.rsplit("/", 1)[1] for k in rest})
    raise ValueError(f"hparams_search.metric={metric!r} is not a key of the runs' summary.json; for "
                     f"task_set.tasks={[str(t) for t in cfg.task_set.tasks]} it has {', '.join(main)}"
                     + (f" (and per task {', '.join(more)})" if more else ""))


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
    try:
        check_metric(cfg)  # before any seed trains
    except ValueError as exc:
        record.update(status="failed", error=f"ValueError: {exc}", objective=None)
        log.error("trial %s failed, the study continues: %s", out.name, record["error"])
        (out / REFUSED_FILE).unlink(missing_ok=True)
        (out / TRIAL_FILE).write_text(json.dumps(record, indent=2))
        return None
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
    if record["status"] == "failed" and not record["values"] and _left_as_it_was(out, seeds[0]):
        # refused before it trained (a relaunched study whose sampler drew other values for this trial's folder):
        # the folder's completed trial stays on record, its seeds' runs untouched
        log.error("trial %s: %s holds a completed trial this attempt did not change; its %s is left as it was",
                  out.name, out, TRIAL_FILE)
        mark_refused(out, record["error"])  # the study's tally counts it (its trial.json says completed)
        return None
    (out / REFUSED_FILE).unlink(missing_ok=True)
    (out / TRIAL_FILE).write_text(json.dumps(record, indent=2))
    return record["objective"]


def _left_as_it_was(out: Path, first_seed: int) -> bool:
    """The trial folder holds a completed trial whose first seed's run is still completed (an attempt refused
    before training leaves a run folder as it was)."""
    try:
        earlier = json.loads((out / TRIAL_FILE).read_text())
        run = json.loads((out / f"seed_{first_seed}" / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return earlier.get("status") == "completed" and run.get("status") == "completed"


def job_statuses(sweep_dir: Path) -> dict[str, str]:
    """{job folder: status} of a multirun's jobs: a trial's trial.json (hparams_search; not its seeds' own
    summaries), else summary.json; "running" where a job left neither; "refused" where an attempt was refused in
    the folder and left it as an earlier attempt left it (refused.json: SweepOutcome removes those of earlier
    multiruns when one starts)."""
    out: dict[str, str] = {}
    for trial in sorted(sweep_dir.rglob(TRIAL_FILE)):
        out[str(trial.parent)] = str(json.loads(trial.read_text()).get("status", "running"))
    trials = list(out)
    for name in ("summary.json", REFUSED_FILE):
        for record in sorted(sweep_dir.rglob(name)):
            job = record.parent
            if any(str(job).startswith(t + "/") for t in trials) or "wandb" in job.parts:
                continue
            if name == REFUSED_FILE:
                out[str(job)] = "refused"
                continue
            try:
                out[str(job)] = str(json.loads(record.read_text()).get("status", "running"))
            except (OSError, json.JSONDecodeError):
                out[str(job)] = "running"
    return out


def refused_markers(sweep_dir: Path) -> list[Path]:
    """The refused.json files under `sweep_dir`: attempts refused in a job or trial folder."""
    return sorted(sweep_dir.rglob(REFUSED_FILE)) if sweep_dir.is_dir() else []


class SweepOutcome(Callback):
    """After a multirun (hydra.callbacks in conf/hydra/default.yaml): how many jobs failed, in one line, and exit
    status 1 when every job failed. Each failed job is recorded and the sweep goes on (a diverged seed of a
    stability sweep is a result), so the sweep's own exit status was 0 even when no job trained at all: a script or
    SLURM pipeline running the sweep could not tell."""

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        # a refusal an earlier multirun recorded in this sweep folder is not this multirun's (the folder's
        # summary.json is the record of its run)
        for marker in refused_markers(Path(str(config.hydra.sweep.dir))):
            marker.unlink(missing_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        outcome = tally(sweep_dir)
        if outcome is None:
            return
        line, all_failed = outcome
        if all_failed:
            sys.exit(line)
        print(line, file=sys.stderr, flush=True)


def tally(sweep_dir: Path) -> tuple[str, bool] | None:
    """The end-of-multirun line, how many jobs failed or were refused (a relaunch into a folder that holds a run of
    other settings), and whether every job did; None when none did."""
    statuses = job_statuses(sweep_dir) if sweep_dir.is_dir() else {}
    failed = sorted((job for job, status in statuses.items() if status in ("failed", "refused")), key=_job_order)
    if not failed:
        return None
    refused = sum(statuses[job] == "refused" for job in failed)
    where = f"{sweep_dir}: each failed job's summary.json (trial.json) has its error"
    if refused:
        where += f", each refused job's {REFUSED_FILE} (its folder is left as the earlier attempt left it)"
    counts = f"{len(failed)} of {len(statuses)}" + (f", {refused} refused" if refused else "")
    if len(failed) == len(statuses):
        what = "failed or was refused" if refused else "failed"
        return f"mtdqn: every job of the sweep {what} ({counts}); {where}", True
    names = ", ".join(Path(job).name for job in failed[:10]) + (" ..." if len(failed) > 10 else "")
    what = "failed or were refused" if refused else "failed"
    names += f"; {refused} refused" if refused else ""
    return f"mtdqn: {len(failed)} of {len(statuses)} jobs {what} (jobs {names}); {where}", False


def _job_order(job: str) -> tuple[int, str]:
    name = Path(job).name
    return (int(name), name) if name.isdigit() else (1 << 30, name)

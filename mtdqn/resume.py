"""`ckpt_path=auto`: a run that resumes from its own folder's last checkpoint when it has one.

A job that SLURM requeued (`hydra.launcher.max_num_timeout`, preemption), or a crashed run or sweep relaunched into
its folder (`hydra.run.dir=<run>`, `hydra.sweep.dir=<sweep>`), continues where its last checkpoint left it; a
folder without one trains from scratch, and a folder whose run already completed is not trained again. The rows of
`metrics.jsonl` logged after that checkpoint are dropped first: the resumed run logs those env steps again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

AUTO = "auto"
# what decides whether a completed run would train on: its budget and its stop rule
STOP_KEYS = ("data.total_env_steps", "callbacks.eval.stop_at_normalized", "callbacks.eval.stop_at_return")


@dataclass(frozen=True)
class AutoResume:
    """What `ckpt_path=auto` found in the run folder."""

    checkpoint: Path
    env_steps: int  # the checkpoint's env steps (summed over tasks)
    done: dict[str, Any] | None  # the completed run's summary when there is nothing left to train, else None


def checkpoint_path(cfg: DictConfig) -> Path:
    """Where this run's checkpoint callback writes (callbacks.checkpoint); refused where it writes none."""
    ck = (cfg.get("callbacks") or {}).get("checkpoint")
    if not ck or "_target_" not in ck:
        raise ValueError("ckpt_path=auto resumes from the run's own checkpoint, and callbacks.checkpoint is off "
                         "(nothing is saved to resume from); keep callbacks.checkpoint, or give ckpt_path=<a "
                         "checkpoint> or null")
    return Path(ck.dirpath) / str(ck.get("filename", "last.ckpt"))


def state_env_steps(checkpoint: dict) -> int | None:
    """The env steps a loaded training checkpoint was saved at (its data module's state), None if it does not say."""
    for value in checkpoint.values():
        if isinstance(value, dict) and "env_steps" in value and "replays" in value:  # the data module's state
            return int(value["env_steps"])
    return None


def checkpoint_env_steps(path: Path) -> int:
    """The env steps a checkpoint was saved at, read memory-mapped (its replay is not loaded)."""
    from mtdqn.callbacks.checkpoint import check_checkpoint_file

    check_checkpoint_file(path, "ckpt_path")  # memory-mapping a file torch.save did not write: a RuntimeError
    steps = state_env_steps(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    if steps is not None:
        return steps
    raise ValueError(f"ckpt_path=auto: {path} holds no data module state (env steps, replay): not an mtdqn run's "
                     "checkpoint")


def resolve(cfg: DictConfig) -> AutoResume | None:
    """With ckpt_path=auto, set cfg.ckpt_path to the run folder's checkpoint (or null where there is none) and say
    what was found; None for any other ckpt_path. Reads nothing but the checkpoint's counters, the folder's
    summary.json and its config.yaml (the previous attempt's, not yet overwritten)."""
    if cfg.get("ckpt_path") != AUTO:
        return None
    path = checkpoint_path(cfg)
    if not path.is_file():
        cfg.ckpt_path = None
        return None
    cfg.ckpt_path = str(path)
    env_steps = checkpoint_env_steps(path)
    out_dir = Path(cfg.paths.output_dir)
    summary_path, saved_path = out_dir / "summary.json", out_dir / "config.yaml"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    done = None
    if summary.get("status") == "completed" and summary.get("time/env_steps") == env_steps and saved_path.is_file():
        saved = OmegaConf.load(saved_path)
        same_rule = all(OmegaConf.select(cfg, k, default=None) == OmegaConf.select(saved, k, default=None)
                        for k in STOP_KEYS)
        if same_rule and (env_steps >= int(cfg.data.total_env_steps) or summary.get("time/stopped_solved")):
            changed = settings_changed(cfg, saved)
            if changed:  # its summary would be reported as this config's result (a relaunched Optuna study)
                raise ValueError(f"ckpt_path=auto: {out_dir} holds a completed run of other settings ("
                                 f"{'; '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}); its result is not "
                                 "this config's: relaunch with that run's settings, or into a fresh folder")
            done = summary
    return AutoResume(path, env_steps, done)


# keys that do not change what a run trains: a relaunch (of a completed or an interrupted run) may differ in them and
# still be the same run: outputs, logging, the budget and stop rules; where it runs (trainer: another machine, a GPU;
# torch_threads and flush_denormal, speed settings); what its callbacks do around the training (evaluation, checkpoint
# period and folder: a moved run folder's paths); its end-of-run compression; its name (experiment_name: folders,
# W&B group)
NEUTRAL = ("ckpt_path", "print_config", "torch_threads", "logger", "paths", "tags", "local", "hydra", *STOP_KEYS,
           "trainer", "callbacks", "compression", "flush_denormal", "experiment_name")


def flat_leaves(value: object, prefix: str = "") -> dict[str, object]:
    """{dotted key: leaf} of a nested dict (`prefix` names `value` itself)."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items()
                for k, v in flat_leaves(sub, f"{prefix}.{key}" if prefix else str(key)).items()}
    return {prefix: value}


def settings_changed(cfg: DictConfig, saved: DictConfig) -> list[str]:
    """`key: <there> there, <here> here` for every setting of `cfg` that differs from the `saved` config, but for the
    NEUTRAL ones (outputs, logging, budget, trainer, callbacks, ...). A key one side lacks counts only where
    the other sets it (a run from before an option existed, whose default is off, is the same run)."""
    def leaves(c: DictConfig) -> dict[str, object]:
        try:
            return flat_leaves(OmegaConf.to_container(c, resolve=True))
        except Exception:  # an interpolation that does not resolve: compare as written
            return flat_leaves(OmegaConf.to_container(c, resolve=False))

    mine, theirs = leaves(cfg), leaves(saved)
    keys = sorted(k for k in set(mine) | set(theirs)
                  if not any(k == n or k.startswith(f"{n}.") for n in NEUTRAL) and mine.get(k) != theirs.get(k)
                  and (k in mine and k in theirs or mine.get(k, theirs.get(k)) not in (None, False)))
    return [f"{k}: {theirs.get(k, 'absent')!r} there, {mine.get(k, 'absent')!r} here" for k in keys]


def run_dir_key() -> str:
    """The override that names this run's folder: hydra.sweep.dir in a multirun (a job's folder is under it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # no Hydra job config (tests, a script calling train())
        multirun = False
    return "hydra.sweep.dir" if multirun else "hydra.run.dir"


def check_same_run(cfg: DictConfig, saved_path: Path, ckpt: str) -> None:
    """A resume into the run's own folder (ckpt_path=auto, or a checkpoint in it) continues that run, so it must
    train with that run's settings (`saved_path`, its config.yaml, before this attempt rewrites it): a resume with
    another seed, gamma or learning rate went ahead silently and rewrote config.yaml, leaving one curve of two
    settings recorded as the second's. The budget, stop rules, logging, outputs, trainer and callbacks may change."""
    if not saved_path.is_file():
        return
    changed = settings_changed(cfg, OmegaConf.load(saved_path))
    if changed:
        raise ValueError(f"ckpt_path={ckpt}: {saved_path.parent} holds a run of other settings ("
                         f"{'; '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}): a resume there continues "
                         "that run, with its settings (data.total_env_steps, stop rules, logging, trainer and "
                         "callbacks may change). To train on with other settings, start from its checkpoint in "
                         f"another folder: {run_dir_key()}=<new folder> ckpt_path=<its checkpoints/last.ckpt>")


def _logged_by(line: str, env_steps: int) -> bool:
    """A row logged at or before `env_steps`; a line cut short by a kill mid-write is not a row."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and row.get("env_steps", 0) <= env_steps


def logged_rows(path: Path) -> int:
    """How many non-empty lines a metrics.jsonl holds (0 where there is none)."""
    if not path.is_file():
        return 0
    with path.open() as f:
        return sum(1 for line in f if line.strip())


def drop_rows_after(path: Path, env_steps: int) -> int:
    """Drop the rows of a metrics.jsonl logged after `env_steps`, and a last line a kill cut short (the resumed run
    appends to the file), atomically: written beside, then renamed; returns how many lines were dropped. Rows at
    `env_steps` stay: they were logged before the checkpoint was saved."""
    if not path.is_file():
        return 0
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.strip()]
    kept = [line for line in rows if _logged_by(line, env_steps)]
    if len(kept) == len(rows) and (not text or text.endswith("\n")):
        return 0
    write_atomically(path, "".join(f"{line}\n" for line in kept))
    return len(rows) - len(kept)


def write_atomically(path: Path, text: str) -> None:
    """Written beside, then renamed: a kill mid-write leaves the previous file whole (the run folder's
    summary.json, config.yaml and metrics.jsonl, which a later attempt reads)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

"""Write synthetic run directories in the exact format the training code produces.

A run directory holds `metrics.jsonl` (one JSON object per line with `env_steps`, `step`, `time` and metric
names), `config.yaml` (the resolved config) and, once finished, `summary.json` (`"status": "completed"` plus
final metrics, or `"status": "failed"` with `"error"`). A sweep holds one run directory per numbered job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

EVAL_STEPS = (0, 1000, 2000, 3000, 4000)
RAMP = (0.0, 0.25, 0.5, 0.75, 1.0)  # fraction of the final score reached at each eval


def base_config(**overrides: Any) -> dict[str, Any]:
    """A small resolved run config; keyword overrides replace top-level keys."""
    cfg: dict[str, Any] = {
        "experiment_name": "lane_keep_mtl",
        "seed": 0,
        "optimizer": {"name": "adam", "lr": 0.001},
        "transfer": {"mode": "none"},
        "tasks": ["lane_keep", "merge"],
    }
    cfg.update(overrides)
    return cfg


def write_run(
    path: str | Path,
    config: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]] | None,
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """Write config.yaml, metrics.jsonl (skipped when rows is None) and summary.json (if given)."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    if rows is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(dict(summary), indent=2))
    return d


def ramp_rows(
    finals: Mapping[str, float],
    steps: Sequence[int] = EVAL_STEPS,
    fractions: Sequence[float] = RAMP,
    normalized: bool = True,
) -> list[dict[str, Any]]:
    """Train rows and eval rows whose per-task score at eval i is finals[task] * fractions[i]."""
    kind = "normalized" if normalized else "return"
    rows: list[dict[str, Any]] = []
    for i, (env_steps, frac) in enumerate(zip(steps, fractions, strict=True)):
        grad_steps = env_steps // 4
        if env_steps:
            rows.append(
                {"env_steps": env_steps - 10, "step": grad_steps - 2, "time": float(i), "train/td_loss": 0.5}
            )
            for task in finals:
                rows.append(
                    {
                        "env_steps": env_steps - 5,
                        "step": grad_steps - 1,
                        "time": i + 0.1,
                        f"rollout/{task}/return": 1.0,
                    }
                )
        row: dict[str, Any] = {"env_steps": env_steps, "step": grad_steps, "time": i + 0.5}
        for task, final in finals.items():
            row[f"eval/{task}/{kind}"] = final * frac
            row[f"eval/{task}/return"] = 100.0 * final * frac
        if normalized and finals:
            row["eval/mean_normalized"] = sum(finals.values()) / len(finals) * frac
        rows.append(row)
    return rows


def completed_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """summary.json of a completed run: the last value of every metric plus status."""
    final: dict[str, Any] = {}
    for row in rows:
        final.update(row)
    return {**final, "status": "completed"}


def write_ramp_run(
    path: str | Path, config: Mapping[str, Any], finals: Mapping[str, float], **kw: Any
) -> Path:
    """A completed run whose eval scores ramp linearly up to `finals`."""
    rows = ramp_rows(finals, **kw)
    return write_run(path, config, rows, completed_summary(rows))


def write_failed_run(
    path: str | Path, config: Mapping[str, Any], error: str, with_metrics: bool = True
) -> Path:
    """A failed run: a few rows (or no metrics.jsonl at all) and a summary with status failed."""
    rows = ramp_rows({"lane_keep": 5.0, "merge": 5.0})[:3] if with_metrics else None
    return write_run(path, config, rows, {"status": "failed", "error": error})


# The 2 x 3 sweep: final normalized scores per group (optimizer.name) -> task -> one value per seed.
SWEEP_FINALS: dict[str, dict[str, list[float]]] = {
    "adam": {"lane_keep": [0.2, 0.5, 0.9], "merge": [0.4, 0.6, 1.3]},
    "sgd": {"lane_keep": [0.1, 0.3, 0.35], "merge": [0.0, 0.2, 0.25]},
}


def write_sweep(root: str | Path, finals: Mapping[str, Mapping[str, Sequence[float]]] = SWEEP_FINALS) -> Path:
    """A Hydra-multirun-like sweep: jobs 0..N-1 = groups (optimizer.name) x seeds; returns the sweep dir."""
    sweep = Path(root) / "multirun" / "2026-11-28" / "15-00-00"
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "multirun.yaml").write_text("hydra: {mode: MULTIRUN}\n")
    job = 0
    for name, per_task in finals.items():
        n_seeds = len(next(iter(per_task.values())))
        for seed in range(n_seeds):
            cfg = base_config(seed=seed, optimizer={"name": name, "lr": 0.001}, experiment_name=f"mtl_{name}")
            run = write_ramp_run(sweep / str(job), cfg, {t: v[seed] for t, v in per_task.items()})
            (run / ".hydra").mkdir(exist_ok=True)
            (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
            job += 1
    return sweep

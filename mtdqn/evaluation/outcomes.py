"""How trained policies' episodes end: return and normalized score beside completion, collision, red-light and
offroad rates, per run and task, with group means and bootstrap CIs over runs.

A normalized return near 1 does not mean a safe driver: on the driving tasks a policy that drives faster than the
reference and crashes in a fraction of its episodes can score as high as one that never crashes. This report puts
the two side by side. Runs are rebuilt from `config.yaml` + a weights-only checkpoint (`robustness.load_trained`);
every run and task plays the same `episodes` seeds (seed + i), greedily, in parallel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtdqn.envs import check_render, env_factory, task_spec
from mtdqn.envs.gym_adapter import task_name
from mtdqn.evaluation import stats
from mtdqn.evaluation.compare import (
    check_group_keys,
    config_group_labels,
    find_run_dirs,
    run_labels,
    saved_config,
)
from mtdqn.evaluation.episodes import record_episode, run_episode_stats, save_gif
from mtdqn.evaluation.robustness import CKPT, TrainedRun, load_trained, unfinished

RATE_ORDER = ("completion_rate", "collision_rate", "red_light_rate", "offroad_rate")


def policy_tasks(run: TrainedRun, tasks: Sequence[str]) -> list[tuple[str, int]]:
    """(task to evaluate, index of the run's policy that plays it): the run's own tasks, or `tasks`; a task the
    run did not train is played by its only policy (single-task runs on tasks with the same spaces)."""
    own = run.task_ids
    if not tasks:
        return [(name, i) for i, name in enumerate(own)]
    out = []
    for name in tasks:
        if name in own:
            out.append((name, own.index(name)))
        elif len(own) == 1:
            out.append((name, 0))
        else:
            raise ValueError(f"{run.path}: --tasks {name!r} is not one of the multi-task run's tasks {own}")
    return out


def evaluate_outcomes(run: TrainedRun, tasks: Sequence[str] = (), episodes: int = 128,
                      seed: int = 30_000) -> list[dict[str, Any]]:  # fmt: skip
    """One row per evaluated task: return, return_std, normalized (if the task has reference scores) and the
    EpisodeStats rates (episode_length, completion_rate and, where the env reports them, <cause>_rate)."""
    rows = []
    for name, index in policy_tasks(run, tasks):
        spec = task_spec(run.kind, name, run.env_kwargs)
        own = run.specs[index]
        if (spec.obs_dim, spec.n_actions) != (own.obs_dim, own.n_actions):
            raise ValueError(f"{run.path}: task {name!r} has obs/actions ({spec.obs_dim}, {spec.n_actions}), the "
                             f"policy of {own.name!r} ({own.obs_dim}, {own.n_actions})")
        env = env_factory(run.kind, name, run.env_kwargs, run.perturb or None)(num_envs=episodes, device="cpu")
        q = run.q_function(index)
        try:
            st = run_episode_stats(lambda obs, q=q: q(obs).argmax(dim=-1), env, seed=seed)
        finally:
            env.close()
        ret = float(st.returns.mean())
        rows.append({"run": str(run.path), "task": name, "policy": own.name, "return": ret,
                     "return_std": float(st.returns.std(unbiased=False)), "normalized": spec.normalize(ret),
                     **st.rates()})  # fmt: skip
    return rows


def record_videos(run: TrainedRun, out_dir: str | Path, tasks: Sequence[str] = (), seed: int = 30_000) -> list[Path]:
    """One greedy episode per task (the report's episode 0: seed `seed`) as `<out_dir>/<task>.gif` ('/' in a
    gymnasium id becomes '-', a `module:` prefix is dropped); the same tasks and policies as `evaluate_outcomes`."""
    out_dir = Path(out_dir)
    paths = []
    for name, index in policy_tasks(run, tasks):
        env = env_factory(run.kind, name, run.env_kwargs, run.perturb or None)(
            num_envs=1, device="cpu", render_mode="rgb_array")
        q = run.q_function(index)
        try:
            frames = record_episode(lambda obs, q=q: q(obs).argmax(dim=-1), env, seed=seed)
        finally:
            env.close()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{task_name(name)}.gif"
        save_gif(frames, path, fps=getattr(env, "render_fps", 10))
        paths.append(path)
    return paths


def outcome_report(paths: Sequence[str | Path], tasks: Sequence[str] = (), by: Sequence[str] = (),
                   episodes: int = 128, seed: int = 30_000, ckpt: str | Path = CKPT, n_boot: int = 2000,
                   ci: float = 0.95, video_dir: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate every run directory at or below `paths` that has config.yaml and `ckpt`; group by the dotted
    config keys `by` (default: one group per run, labelled parent/name, with more of the path where two runs would
    share that) and summarize each metric per group and
    task as the mean over runs with a percentile-bootstrap CI. With `video_dir`, also record each run's episode 0
    of every task as `<video_dir>/<run parent>/<run>/<task>.gif` (the run's label as path) (every task checked to draw frames before any
    episode is played)."""
    if episodes < 1:
        raise ValueError(f"--episodes={episodes} must be >= 1")
    dirs = [d for d in find_run_dirs(paths) if (d / "config.yaml").is_file()]
    usable = [d for d in dirs if (d / ckpt).is_file()]
    if not usable:
        raise ValueError(f"no run directory with config.yaml and {ckpt} below {[str(p) for p in paths]}")
    check_group_keys([saved_config(d) for d in usable], by)  # a typo in --by, before any episode
    runs = [load_trained(d, ckpt) for d in usable]
    if video_dir is not None:
        for run in runs:
            for name, _ in policy_tasks(run, tasks):
                check_render(run.kind, name, run.env_kwargs)
    rows, videos = [], []
    names = run_labels(usable, min_parts=2)  # parent/name, longer where two runs would share it
    by_labels = config_group_labels([run.config for run in runs], by) if by else []
    for i, (d, run) in enumerate(zip(usable, runs, strict=True)):
        label = by_labels[i] if by else names[d]
        rows += [{"group": label, **r} for r in evaluate_outcomes(run, tasks, episodes, seed)]
        if video_dir is not None:
            videos += [str(v) for v in record_videos(run, Path(video_dir) / names[d], tasks, seed)]
    groups: dict[str, dict[str, Any]] = {}
    for (label, task) in dict.fromkeys((r["group"], r["task"]) for r in rows):
        members = [r for r in rows if r["group"] == label and r["task"] == task]
        summary: dict[str, Any] = {"n_runs": len(members)}
        for key in ("normalized", "return", "episode_length", *metric_keys(members)):
            values = np.array([m[key] for m in members if m.get(key) is not None], dtype=float)
            if values.size:
                lo, hi = stats.bootstrap_ci(values, stats.mean, n_boot=n_boot, ci=ci, seed=0)
                summary[key] = {"mean": float(values.mean()), "ci": [lo, hi], "values": values.tolist()}
        groups.setdefault(label, {})[task] = summary
    return {"inputs": [str(p) for p in paths], "episodes": episodes, "seed": seed, "checkpoint": str(ckpt),
            "group_by": list(by), "ci": ci, "rows": rows, "groups": groups,
            "skipped": [str(d) for d in dirs if d not in usable], "unfinished": unfinished(usable),
            "videos": videos}  # fmt: skip


def metric_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The rate columns present in `rows`, completion and the known causes first."""
    present = {k for r in rows for k in r if k.endswith("_rate")}
    return [k for k in RATE_ORDER if k in present] + sorted(present - set(RATE_ORDER))


def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def render_markdown(report: dict[str, Any]) -> str:
    """Group table (mean [CI] over runs) and the per-run rows."""
    rates = metric_keys(report["rows"])
    cols = ["normalized", "episode_length", *rates]
    lines = [f"# Episode outcomes ({report['episodes']} episodes per run and task, seeds {report['seed']}+i, "
             f"checkpoint {report['checkpoint']})", "",
             "| group | task | runs | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
    for label, by_task in report["groups"].items():
        for task, s in by_task.items():
            cells = []
            for c in cols:
                m = s.get(c)
                digits = 0 if c == "episode_length" else 3 if c == "normalized" else 2
                cells.append("-" if m is None else f"{_f(m['mean'], digits)} [{_f(m['ci'][0], digits)}, "
                                                  f"{_f(m['ci'][1], digits)}]")
            lines.append(f"| {label} | {task} | {s['n_runs']} | " + " | ".join(cells) + " |")
    lines += ["", "| run | task | policy | return | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 4)]
    for r in report["rows"]:
        cells = [_f(r.get(c), 0 if c == "episode_length" else 3) for c in cols]
        head = f"| {r['run']} | {r['task']} | {r['policy']} | {_f(r['return'], 1)} | "
        lines.append(head + " | ".join(cells) + " |")
    if report["skipped"]:
        lines += ["", f"Skipped (no checkpoint): {', '.join(report['skipped'])}"]
    if report.get("unfinished"):
        lines += ["", f"Not completed (evaluated at their last checkpoint): {', '.join(report['unfinished'])}"]
    return "\n".join(lines) + "\n"

"""Robustness sweeps: a trained Q-network's score as one perturbation grows (one curve per axis), and its area.

A run directory holds `config.yaml` (the resolved run config) and `checkpoints/last.ckpt`. The network is rebuilt
from the config's `net` node (mtdqn.nets classes only) and loaded weights-only; every level of every axis runs
`episodes` greedy episodes in parallel with the same seeds (common random numbers), so differences between levels
come from the perturbation, not from different roads. Axes:

- driving knobs (DrivingConfig): `obs_noise`, `steer_delay`, `slip`, `curvature_range` (above the training
  default 0.015: unseen, sharper roads), `pedestrian_rate`, `light_cycle`;
- any task (mtdqn.envs.wrappers): `obs_noise` on gymnasium tasks (observation units), `sticky_actions`;
- `fgsm`: an FGSM attack on every observation within an L-inf ball of radius `level` (observation units),
  pushing the network away from its own greedy action (mtdqn.losses.adversarial).

The score of a level is the normalized score (R - R_random) / (R_reference - R_random) for tasks with reference
scores (driving; references from the default config, so a harder level shows as a lower score), else the mean
return. A curve's area is the trapezoid over the levels divided by the level span: the mean score over the range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from mtdqn.callbacks.checkpoint import load_checkpoint
from mtdqn.envs import env_factory
from mtdqn.evaluation import stats
from mtdqn.evaluation.compare import (
    check_group_keys,
    config_group_labels,
    find_run_dirs,
    run_labels,
    run_status,
    saved_config,
)
from mtdqn.evaluation.episodes import run_episodes
from mtdqn.losses.adversarial import fgsm_observation
from mtdqn.nets.multitask import MultiTaskQNetwork
from mtdqn.types import TaskSpec

CKPT = Path("checkpoints") / "last.ckpt"
FAILED = ("exclude", "include")  # what a failed run (summary.json status failed) is in a report
DRIVING_KNOBS = ("obs_noise", "steer_delay", "slip", "curvature_range", "pedestrian_rate", "light_cycle")
WRAPPER_KNOBS = ("obs_noise", "sticky_actions")  # obs_noise is a wrapper knob on gymnasium tasks only
AXES = (*DRIVING_KNOBS, "sticky_actions", "fgsm")
DEFAULT_LEVELS: dict[str, list[float]] = {
    "obs_noise": [0.0, 0.05, 0.1, 0.2, 0.3],
    "steer_delay": [0, 1, 2, 3, 4],
    "slip": [0.0, 0.1, 0.2, 0.3, 0.5],
    "curvature_range": [0.015, 0.02, 0.025, 0.03],
    "pedestrian_rate": [1.0, 2.0, 3.0, 4.0, 5.0],
    "light_cycle": [20.0, 15.0, 10.0, 8.0, 6.0],
    "sticky_actions": [0.0, 0.1, 0.25, 0.5],
    "fgsm": [0.0, 0.01, 0.02, 0.05, 0.1],
}
GYM_OBS_NOISE_LEVELS = [0.0, 0.01, 0.02, 0.05, 0.1]


def default_axes(kind: str, tasks: Sequence[str] = ()) -> list[str]:
    """The axes swept when none are given: the simulator's knobs for driving tasks, else the wrapper's."""
    if kind != "driving":
        return ["obs_noise", "sticky_actions", "fgsm"]
    axes = ["obs_noise", "steer_delay", "slip", "curvature_range"]
    if any(t in ("pedestrian", "urban") for t in tasks):
        axes.append("pedestrian_rate")
    return [*axes, "fgsm"]


def default_levels(axis: str, kind: str) -> list[float]:
    """Default levels of `axis` (gymnasium observation noise is in raw observation units, so smaller)."""
    return list(GYM_OBS_NOISE_LEVELS if (axis == "obs_noise" and kind != "driving") else DEFAULT_LEVELS[axis])


def check_axis(axis: str, kind: str, levels: Sequence[float]) -> list[float]:
    """Validate an axis for a task kind and its levels (>= 2 distinct numbers); returns them as floats."""
    if axis not in AXES:
        raise ValueError(f"robustness axis {axis!r} is not one of {list(AXES)}")
    if kind != "driving" and axis in DRIVING_KNOBS and axis != "obs_noise":
        raise ValueError(f"robustness axis {axis!r} is a driving-simulator knob; {kind} tasks support "
                         f"{['obs_noise', 'sticky_actions', 'fgsm']}")  # fmt: skip
    out = [float(x) for x in levels]
    if len(out) < 2 or len(set(out)) < 2 or not all(math.isfinite(x) for x in out):
        raise ValueError(f"robustness axis {axis!r}: levels {list(levels)} must be >= 2 distinct finite numbers")
    if axis == "steer_delay" and any(x != int(x) for x in out):
        raise ValueError(f"robustness axis 'steer_delay': levels {list(levels)} must be integers (steps)")
    if axis == "fgsm" and any(x < 0 for x in out):
        raise ValueError(f"robustness axis 'fgsm': levels {list(levels)} must be >= 0 (L-inf budgets)")
    return out


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class TrainedRun:
    """A finished run: its config, task specs and Q-network (eval mode, on CPU)."""

    path: Path
    config: dict[str, Any]
    specs: list[TaskSpec]
    net: nn.Module
    multitask: bool

    @property
    def kind(self) -> str:
        return str(self.config["task_set"]["kind"])

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return dict(self.config["task_set"].get("env_kwargs") or {})

    @property
    def task_ids(self) -> list[str]:
        """The tasks as the run configured them (what env_factory takes; a gymnasium id like
        'MinAtar/Breakout-v1' differs from its spec name 'MinAtar-Breakout-v1', and 'mypkg.envs:MyEnv-v0', whose
        module registers the env, from 'MyEnv-v0'), in `specs` order."""
        return [str(t) for t in self.config["task_set"]["tasks"]]

    @property
    def perturb(self) -> dict[str, Any]:
        return dict(self.config.get("perturb") or {})

    def q_function(self, task: int) -> Callable[[Tensor], Tensor]:
        """obs (B, obs_dim of the task) -> Q-values (B, n_actions of the task)."""
        spec = self.specs[task]
        if not self.multitask:
            return self.net
        width = self.net.max_obs_dim

        def q(obs: Tensor) -> Tensor:
            padded = F.pad(obs, (0, width - obs.shape[-1])) if obs.shape[-1] < width else obs
            ids = torch.full(obs.shape[:-1], task, dtype=torch.int64, device=obs.device)
            return self.net(padded, ids)[..., : spec.n_actions]

        return q


def unfinished(dirs: Sequence[Path]) -> list[str]:
    """`<run> (<status>)` for every run folder whose summary.json does not say completed (a run still going, killed,
    interrupted or failed): its checkpoint is where it stopped, not a finished run's policy, and a report that
    pooled it with finished runs said nothing of it."""
    out = []
    for d in dirs:
        status = run_status(d)
        if status != "completed":
            out.append(f"{d} ({status or 'no summary.json status'})")
    return out


def load_trained(run_dir: str | Path, ckpt: str | Path = CKPT) -> TrainedRun:
    """Rebuild a run's Q-network from config.yaml's `net` node and load `q_net.*` from its checkpoint
    (weights-only, observation-normalizer statistics included)."""
    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.yaml", run_dir / ckpt
    if not cfg_path.is_file() or not ckpt_path.is_file():
        raise ValueError(f"{run_dir}: a run directory needs config.yaml and {ckpt} (missing: "
                         f"{[str(p) for p in (cfg_path, ckpt_path) if not p.is_file()]})")  # fmt: skip
    config = yaml.safe_load(cfg_path.read_text())
    from mtdqn.transfer.loading import (
        build_net,  # the network as transfer rebuilds a source's (PopArt head too)
    )

    net, specs = build_net(config, str(cfg_path))
    multitask = isinstance(net, MultiTaskQNetwork)
    state = load_checkpoint(ckpt_path)["state_dict"]
    weights = {k.removeprefix("q_net."): v for k, v in state.items() if k.startswith("q_net.")}
    if not weights:
        raise ValueError(f"{ckpt_path}: no q_net.* weights in the checkpoint (keys start with "
                         f"{sorted({k.split('.')[0] for k in state})})")  # fmt: skip
    net.load_state_dict(weights)
    return TrainedRun(run_dir, config, specs, net.float().eval(), multitask)


# ---------------------------------------------------------------------------------------------- sweeping
def level_env(run: TrainedRun, task: str, axis: str, level: float, episodes: int):
    """The evaluation env of `task` with the run's own settings and `axis` set to `level` (fgsm: nominal)."""
    env_kwargs, perturb = run.env_kwargs, run.perturb
    if run.kind == "driving" and axis in DRIVING_KNOBS:
        env_kwargs[axis] = int(level) if axis == "steer_delay" else float(level)
    elif axis in WRAPPER_KNOBS:
        perturb[axis] = float(level)
    return env_factory(run.kind, task, env_kwargs, perturb)(num_envs=episodes, device="cpu")


def obs_bounds(kind: str) -> tuple[Tensor | None, Tensor | None]:
    """Observation bounds an FGSM attack is clipped to (the driving observation's declared bounds)."""
    if kind != "driving":
        return None, None
    from mtdqn.envs.driving.sim import OBS_HIGH, OBS_LOW

    return torch.as_tensor(OBS_LOW), torch.as_tensor(OBS_HIGH)


def policy_at(run: TrainedRun, task: int, axis: str, level: float) -> Callable[[Tensor], Tensor]:
    """Greedy policy of task `task`; under the fgsm axis it acts on FGSM-perturbed observations."""
    q = run.q_function(task)
    if axis != "fgsm" or level == 0:
        return lambda obs: q(obs).argmax(dim=-1)
    low, high = obs_bounds(run.kind)
    return lambda obs: q(fgsm_observation(q, obs, level, low, high)).argmax(dim=-1)


def sweep_axis(run: TrainedRun, axis: str, levels: Sequence[float], episodes: int = 32,
               seed: int = 20_000) -> dict[str, dict[str, Any]]:  # fmt: skip
    """{task: {levels, return, return_std, score, area}} of one run along one axis."""
    out: dict[str, dict[str, Any]] = {}
    for t, spec in enumerate(run.specs):
        returns, stds, scores = [], [], []
        for level in levels:
            env = level_env(run, run.task_ids[t], axis, level, episodes)
            try:
                r = run_episodes(policy_at(run, t, axis, level), env, seed=seed)
            finally:
                env.close()
            mean = float(r.mean())
            normalized = spec.normalize(mean)
            returns.append(mean)
            stds.append(float(r.std(unbiased=False)))
            scores.append(mean if normalized is None else normalized)
        out[spec.name] = {
            "levels": list(levels), "return": returns, "return_std": stds, "score": scores,
            "normalized": spec.reference_return is not None, "area": stats.area_under_curve(levels, scores),
        }  # fmt: skip
    return out


@dataclass
class RunReport:
    """One run's robustness curves: {axis: {task: curve}} and its area per axis (mean over tasks)."""

    path: str
    group: str
    curves: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def area(self, axis: str) -> float:
        return float(np.mean([c["area"] for c in self.curves[axis].values()]))

    def mean_curve(self, axis: str) -> list[float]:
        return np.mean([c["score"] for c in self.curves[axis].values()], axis=0).tolist()


def evaluate_run(run: TrainedRun, axes: Mapping[str, Sequence[float]], episodes: int = 32, seed: int = 20_000,
                 group: str = "") -> RunReport:  # fmt: skip
    """Sweep every axis for one run."""
    levels = {axis: check_axis(axis, run.kind, lv) for axis, lv in axes.items()}
    report = RunReport(str(run.path), group or run.path.name)
    for axis, lv in levels.items():
        report.curves[axis] = sweep_axis(run, axis, lv, episodes, seed)
    return report


def pick_baseline(labels: Sequence[str], baseline: str | None) -> str:
    """The group the others are compared with: the one labelled `baseline`, else the one whose label contains it
    (exactly one must: `adversarial.epsilon=0.0` is its own group's label, though also a part of
    `adversarial.epsilon=0.05`), or the first group when `baseline` is None."""
    if baseline is None:
        return labels[0]
    if baseline in labels:
        return baseline
    hits = [label for label in labels if baseline in label]
    if len(hits) != 1:
        raise ValueError(f"--baseline {baseline!r} must match exactly one group, matched {len(hits)}: {hits or list(labels)}")
    return hits[0]


def group_summary(reports: Sequence[RunReport], axes: Sequence[str], n_boot: int = 2000, ci: float = 0.95,
                  seed: int = 0, baseline: str | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per group and axis: mean area over runs with a percentile-bootstrap CI, std / min / max over runs, the
    mean curve, and (groups other than the baseline) the area difference to the baseline group with a
    two-sample bootstrap CI (`pick_baseline`)."""
    groups: dict[str, list[RunReport]] = {}
    for r in reports:
        groups.setdefault(r.group, []).append(r)
    base = pick_baseline(list(groups), baseline)
    out: dict[str, dict[str, Any]] = {}
    for label, members in groups.items():
        out[label] = {"n_runs": len(members), "runs": [m.path for m in members], "axes": {}}
        for axis in axes:
            areas = np.array([m.area(axis) for m in members])
            curves = np.array([m.mean_curve(axis) for m in members])
            out[label]["axes"][axis] = {
                "levels": next(iter(members[0].curves[axis].values()))["levels"],
                "areas": areas.tolist(), "area_mean": float(areas.mean()),
                "area_ci": list(stats.bootstrap_ci(areas, stats.mean, n_boot=n_boot, ci=ci, seed=seed)),
                "area_std": float(areas.std(ddof=1)) if areas.size > 1 else 0.0,
                "area_min": float(areas.min()), "area_max": float(areas.max()),
                "curve_mean": curves.mean(0).tolist(), "curve_min": curves.min(0).tolist(),
                "curve_max": curves.max(0).tolist(),
            }  # fmt: skip
    for label, g in out.items():
        g["baseline"] = label == base
        if label == base:
            continue
        for axis in axes:
            a, b = g["axes"][axis]["areas"], out[base]["axes"][axis]["areas"]
            g["axes"][axis]["diff_vs_baseline"] = float(np.mean(a) - np.mean(b))
            g["axes"][axis]["diff_ci"] = list(stats.bootstrap_diff_ci(a, b, stats.mean, n_boot=n_boot, ci=ci,
                                                                      seed=seed))  # fmt: skip
    return out


def robustness_report(paths: Sequence[str | Path], axes: Mapping[str, Sequence[float]] | Sequence[str] | None = None,
                      by: Sequence[str] = (), episodes: int = 32, seed: int = 20_000, ckpt: str | Path = CKPT,
                      n_boot: int = 2000, ci: float = 0.95, baseline: str | None = None,
                      failed: str = "exclude") -> dict[str, Any]:  # fmt: skip
    """Evaluate every run directory at or below `paths` (those with config.yaml and a checkpoint) along `axes`
    ({axis: levels}, a list of axes with default levels, or None for the task kind's defaults), grouped by the
    dotted config keys `by` (default: one group per run); areas are also compared with the `baseline` group.
    Runs whose summary.json says failed (diverged, crashed) are left out and counted beside their group
    (`failed="exclude"`, as compare.py does) or evaluated at their last checkpoint (`failed="include"`)."""
    if failed not in FAILED:
        raise ValueError(f"failed={failed!r} is not one of {FAILED}")
    dirs = [d for d in find_run_dirs(paths) if (d / "config.yaml").is_file()]
    usable = [d for d in dirs if (d / ckpt).is_file()]
    skipped = [str(d) for d in dirs if d not in usable]
    left_out = [d for d in usable if failed == "exclude" and run_status(d) == "failed"]
    if left_out and len(left_out) == len(usable):
        raise ValueError(f"every run with {ckpt} below {[str(p) for p in paths]} failed ({len(left_out)}); "
                         "--failed include evaluates them at their last checkpoint")
    if not usable:
        raise ValueError(f"no run directory with config.yaml and {ckpt} below {[str(p) for p in paths]}")
    check_group_keys([saved_config(d) for d in usable], by)  # a typo in --by, before any episode
    all_labels = (dict(zip(usable, config_group_labels([saved_config(d) for d in usable], by), strict=True)) if by
                  else run_labels(usable))
    failed_by_group: dict[str, list[str]] = {}
    for d in left_out:
        failed_by_group.setdefault(all_labels[d], []).append(str(d))
    usable = [d for d in usable if d not in left_out]
    reports, settings_axes = [], None
    labels = all_labels
    for d in usable:
        run = load_trained(d, ckpt)
        if axes is None or not isinstance(axes, Mapping):
            names = list(axes) if axes else default_axes(run.kind, [s.name for s in run.specs])
            chosen = {a: default_levels(a, run.kind) for a in names}
        else:
            chosen = dict(axes)
        scale = "normalized scores" if all(s.reference_return is not None for s in run.specs) else "returns"
        if settings_axes is None:
            settings_axes, first_scale = chosen, scale
        if list(chosen) != list(settings_axes):
            raise ValueError(f"{d}: its default axes {list(chosen)} differ from the first run's "
                             f"{list(settings_axes)}; pass the axes explicitly")  # fmt: skip
        for a in chosen:
            if list(chosen[a]) != list(settings_axes[a]):
                raise ValueError(f"{d}: its default {a} levels {list(chosen[a])} differ from the first run's "
                                 f"{list(settings_axes[a])} (another task kind); pass --axis {a} --levels ...")
        if scale != first_scale:  # a return and a normalized score on one curve, area and difference
            raise ValueError(f"{d}: it is scored in {scale}, the first run ({usable[0]}) in {first_scale}; "
                             f"report them separately")  # fmt: skip
        reports.append(evaluate_run(run, chosen, episodes, seed, labels[d]))
    names = list(settings_axes)
    return {
        "inputs": [str(p) for p in paths], "group_by": list(by), "episodes": episodes, "seed": seed,
        "checkpoint": str(ckpt), "ci": ci, "n_boot": n_boot,
        "axes": {a: [float(x) for x in settings_axes[a]] for a in names},
        "runs": [{"path": r.path, "group": r.group, "areas": {a: r.area(a) for a in names}, "curves": r.curves}
                 for r in reports],
        "groups": group_summary(reports, names, n_boot=n_boot, ci=ci, baseline=baseline),
        "failed_runs": failed, "failed": failed_by_group,
        "skipped": skipped,
        "unfinished": unfinished(usable),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- reporting
def _f(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """robustness.md: one table per axis (area with CI, spread over runs, mean score per level)."""
    pct = round(100 * report["ci"])
    lines = [
        "# Robustness report", "",
        f"{len(report['runs'])} run(s) from {', '.join(f'`{p}`' for p in report['inputs'])}; {report['episodes']} "
        f"greedy episodes per level (seeds {report['seed']} + i, the same at every level). Score = normalized score "
        "(R - R_random) / (R_reference - R_random) where the task has reference scores, else the mean return. "
        "Area = trapezoid over the levels / level span (the mean score over the range), averaged over tasks; "
        f"[{pct}% percentile-bootstrap CI over runs]; spread = std [min, max] over runs; vs baseline = area minus "
        f"the baseline group's, [{pct}% two-sample bootstrap CI] (a CI above 0: larger area).", "",
    ]  # fmt: skip
    single = [label for label, g in report["groups"].items() if g["n_runs"] < 2]
    if single:  # a CI over one run is the run's value: no uncertainty measured, not a certain result
        lines += [f"**One run in {', '.join(f'`{x}`' for x in single)}: its CIs (and differences) are that run's "
                  "values, not intervals; train several seeds per group to measure the spread.**", ""]
    for axis, levels in report["axes"].items():
        head = ["group", "runs", f"area [{pct}% CI]", "vs baseline", "spread", *(f"@{x:g}" for x in levels)]
        lines += [f"## `{axis}`", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, g in report["groups"].items():
            a = g["axes"][axis]
            ci_text = f"{_f(a['area_mean'])} [{_f(a['area_ci'][0])}, {_f(a['area_ci'][1])}]"
            diff = (f"{a['diff_vs_baseline']:+.3f} [{a['diff_ci'][0]:+.3f}, {a['diff_ci'][1]:+.3f}]"
                    if "diff_vs_baseline" in a else ("baseline" if g.get("baseline") else "-"))  # fmt: skip
            spread = f"{_f(a['area_std'])} [{_f(a['area_min'])}, {_f(a['area_max'])}]"
            runs = str(g["n_runs"]) + (f" (+{len(report['failed'][label])} failed)"
                                       if report.get("failed", {}).get(label) else "")
            lines.append("| " + " | ".join([label.replace("|", "\\|"), runs, ci_text, diff, spread,
                                             *(_f(v) for v in a["curve_mean"])]) + " |")  # fmt: skip
        lines.append("")
    if report.get("plot"):
        lines += ["## Plot", "", f"![robustness]({report['plot']})", ""]
    if report.get("skipped"):
        lines += ["## Skipped (no checkpoint)", "", *(f"- `{p}`" for p in report["skipped"]), ""]
    if report.get("failed"):
        lines += ["## Failed, left out (diverged or crashed; `--failed include` evaluates them at their last "
                  "checkpoint)", "", *(f"- `{p}`" for paths in report["failed"].values() for p in paths), ""]
    if report.get("unfinished"):
        lines += ["## Not completed (evaluated at their last checkpoint)", "",
                  *(f"- `{p}`" for p in report["unfinished"]), ""]
    return "\n".join(lines)


def plot(report: Mapping[str, Any], path: str | Path) -> Path:
    """PNG: one panel per axis, the mean curve of each group with the min-max band over its runs."""
    from matplotlib.figure import Figure

    axes = list(report["axes"])
    cols = min(3, len(axes))
    rows = math.ceil(len(axes) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    panels = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, axis in zip(panels, axes, strict=False):
        for i, (label, g) in enumerate(report["groups"].items()):
            a, color = g["axes"][axis], f"C{i % 10}"
            short = label if len(label) <= 90 else label[:87] + "..."
            ax.plot(a["levels"], a["curve_mean"], marker="o", color=color, label=f"{short} (n={g['n_runs']})")
            if g["n_runs"] > 1:
                ax.fill_between(a["levels"], a["curve_min"], a["curve_max"], color=color, alpha=0.2, linewidth=0)
        ax.set(title=axis, xlabel="level", ylabel="score")
        ax.grid(alpha=0.3)
    for ax in panels[len(axes) :]:
        ax.set_visible(False)
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize="small")
    fig.savefig(path, dpi=110)
    return Path(path)


def write_report(report: dict[str, Any], out_dir: str | Path, plots: bool = True) -> list[Path]:
    """robustness.json, robustness.md and (with matplotlib) robustness.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    report["plot"] = None
    if plots:
        try:
            written.append(plot(report, out / "robustness.png"))
            report["plot"] = "robustness.png"
        except ImportError as exc:
            report["plot_skipped"] = f"matplotlib is not installed ({exc})"
    (out / "robustness.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "robustness.md").write_text(render_markdown(report))
    return [*written, out / "robustness.md", out / "robustness.json"]


__all__ = [
    "AXES", "DEFAULT_LEVELS", "RunReport", "TrainedRun", "check_axis", "default_axes", "evaluate_run",
    "group_summary", "load_trained", "render_markdown", "robustness_report", "sweep_axis", "write_report",
]  # fmt: skip

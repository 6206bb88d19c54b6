"""Build task specs and env factories from the task_set config (validated before any env step)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from mtdqn.envs.base import TensorVecEnv
from mtdqn.envs.gym_adapter import GymVecEnv, check_gym_id
from mtdqn.envs.gym_adapter import check_render as check_gym_render
from mtdqn.envs.gym_adapter import task_name as gym_task_name
from mtdqn.envs.wrappers import PerturbedVecEnv, check_perturb, check_ranges
from mtdqn.types import ShareRule, TaskSpec

KINDS = ("gym", "driving")
EnvFactory = Callable[..., TensorVecEnv]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"task_set.kind={kind!r} is not one of {KINDS}")


def task_spec(kind: str, task: str, env_kwargs: dict | None = None) -> TaskSpec:
    """Validate one task and return its spec (obs size, action count, reference scores)."""
    _check_kind(kind)
    if kind == "gym":
        return check_gym_id(task, env_kwargs)
    from mtdqn.envs import driving

    if task not in driving.TASKS:
        raise ValueError(f"task_set.tasks: {task!r} is not a driving task; choose from {list(driving.TASKS)}")
    if "wrappers" in (env_kwargs or {}):
        raise ValueError("task_set.env_kwargs.wrappers: gymnasium wrappers apply to task_set.kind='gym' tasks; the "
                         "driving simulator is configured by its own knobs (docs/driving.md)")
    return driving.task_spec(task, driving_config(env_kwargs))


def driving_config(env_kwargs: Mapping[str, Any] | None) -> Any:
    """DrivingConfig(**env_kwargs) with task_set.env_kwargs' key in its errors: an unknown knob with the nearest
    names (a TypeError traceback), a bad value as `task_set.env_kwargs.<knob>` (DrivingConfig.<knob>)."""
    import dataclasses
    import difflib

    from mtdqn.envs import driving

    knobs = [f.name for f in dataclasses.fields(driving.DrivingConfig)]
    for key in env_kwargs or {}:
        if key not in knobs:
            close = difflib.get_close_matches(key, knobs, n=2)
            hint = f"did you mean {' or '.join(close)}?" if close else f"the knobs are {knobs}"
            raise ValueError(f"task_set.env_kwargs.{key}: the driving simulator has no knob {key!r}; {hint}")
    try:
        return driving.DrivingConfig(**(env_kwargs or {}))  # validates the knobs' values
    except ValueError as exc:
        raise ValueError(str(exc).replace("DrivingConfig.", "task_set.env_kwargs.")) from None


def check_render(kind: str, task: str, env_kwargs: dict | None = None) -> None:
    """Refuse a task that cannot draw rgb_array frames (videos), before training: driving tasks always can; a
    gymnasium id needs the 'rgb_array' render mode and its renderer (see gym_adapter.check_render)."""
    _check_kind(kind)
    if kind == "gym":
        check_gym_render(task, env_kwargs)


def task_specs(kind: str, tasks: Sequence[str], env_kwargs: dict | None = None) -> list[TaskSpec]:
    """Specs for every task of a task set; an empty list, or one naming a task twice (their metrics would share
    keys), is refused."""
    if not tasks:
        raise ValueError("task_set.tasks is empty; list at least one task or gymnasium id")
    _check_kind(kind)
    names = [gym_task_name(str(t)) if kind == "gym" else str(t) for t in tasks]
    twice = sorted({t for t, n in zip(tasks, names, strict=True) if names.count(n) > 1}, key=str)
    if twice:
        raise ValueError(f"task_set.tasks={[str(t) for t in tasks]} names the same task more than once ({twice}); "
                         "each task is logged and evaluated under its own name (eval/<task>/...): list it once")
    return [task_spec(kind, t, env_kwargs) for t in tasks]


def share_rules(kind: str, tasks: Sequence[str], env_kwargs: Mapping[str, Any] | None = None,
                randomize: Mapping[str, Sequence[float]] | None = None) -> list[list[ShareRule | None]]:  # fmt: skip
    """rules[source][target]: how a transition of task `source` serves as a sample of task `target`
    (`data.share_fraction`; None on the diagonal). Only tasks on one simulator have such rules (driving), and only
    with noise-free observations (noise on a feature the target never observes would be cleared to an exact 0
    that the target's own data never shows)."""
    _check_kind(kind)
    if kind != "driving":
        raise ValueError(f"data.share_fraction > 0 reuses transitions across tasks with the same dynamics, which "
                         f"task_set.kind={kind!r} does not declare; use it with task_set.kind='driving' or set "
                         "data.share_fraction=0")
    noise = float((env_kwargs or {}).get("obs_noise", 0.0) or 0.0)
    if noise > 0 or "obs_noise" in (randomize or {}):
        raise ValueError(f"data.share_fraction > 0 needs noise-free driving observations; got "
                         f"task_set.env_kwargs.obs_noise={noise}"
                         + (" and domain_randomization.obs_noise" if "obs_noise" in (randomize or {}) else ""))
    from mtdqn.envs.driving import share_rule

    stop = bool((env_kwargs or {}).get("stop_feature", False))
    return [[None if i == j else share_rule(a, b, stop) for j, b in enumerate(tasks)] for i, a in enumerate(tasks)]


def split_randomization(kind: str, ranges: Mapping[str, Sequence[float]] | None) -> tuple[dict, dict]:
    """Validate domain-randomization ranges and split them into (simulator knobs, wrapper knobs).

    Driving tasks randomize DrivingConfig knobs inside the batched simulator (per env tensors) and only
    `sticky_actions` in the wrapper; gymnasium tasks randomize the wrapper's `obs_noise` and `sticky_actions`.
    """
    _check_kind(kind)
    ranges = dict(ranges or {})
    if kind == "gym":
        return {}, check_ranges(ranges)
    from mtdqn.envs.driving.config import RANDOMIZABLE, check_randomization

    allowed = [*RANDOMIZABLE, "sticky_actions"]
    unknown = sorted(set(ranges) - set(allowed))
    if unknown:
        raise ValueError(f"domain_randomization: {unknown} cannot be randomized for driving tasks; choose from {allowed}")
    wrapper = {k: v for k, v in ranges.items() if k == "sticky_actions"}
    sim = {k: v for k, v in ranges.items() if k != "sticky_actions"}
    return check_randomization(sim), check_ranges(wrapper)


def check_env_options(kind: str, perturb: Mapping[str, Any] | None, randomize: Mapping | None) -> None:
    """Validate `perturb` and `domain_randomization` for a task-set kind before any env is built."""
    perturb = check_perturb(perturb)
    if kind == "driving" and "obs_noise" in perturb:
        raise ValueError("perturb.obs_noise: driving tasks have their own observation noise; use "
                         "+task_set.env_kwargs.obs_noise=<std> (noise on the normalized observation, clipped to its bounds)")
    split_randomization(kind, randomize)


def make_perturbed(base: EnvFactory, perturb: dict[str, float], randomize: dict, **kwargs: Any) -> TensorVecEnv:
    """base(**kwargs) wrapped in PerturbedVecEnv (a module-level function, so factories pickle)."""
    return PerturbedVecEnv(base(**kwargs), randomize=randomize, **perturb)


def env_factory(kind: str, task: str, env_kwargs: dict | None = None, perturb: Mapping[str, Any] | None = None,
                randomize: Mapping[str, Sequence[float]] | None = None) -> EnvFactory:  # fmt: skip
    """A callable (num_envs=, device=[, render_mode='rgb_array']) -> TensorVecEnv for one task.

    `perturb` ({obs_noise, sticky_actions}) and `randomize` ({knob: [lo, hi]}, domain randomization per episode per
    env) are optional; without them the factory builds exactly the plain env.
    """
    _check_kind(kind)
    check_env_options(kind, perturb, randomize)
    kwargs = dict(env_kwargs or {})
    fixed = check_perturb(perturb)
    sim_ranges, wrapper_ranges = split_randomization(kind, randomize)
    if kind == "gym":
        base = partial(GymVecEnv, task, env_kwargs=kwargs)
    else:
        from mtdqn.envs import driving

        base = partial(driving.DrivingVecEnv, task, config=driving_config(kwargs),
                       **({"randomize": sim_ranges} if sim_ranges else {}))  # fmt: skip
    if not fixed and not wrapper_ranges:
        return base
    return partial(make_perturbed, base, fixed, wrapper_ranges)

"""Build task specs and env factories from the task_set config (validated before any env step)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from mtdqn.envs.base import TensorVecEnv
from mtdqn.envs.gym_adapter import GymVecEnv, check_gym_id
from mtdqn.types import TaskSpec

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
    driving.DrivingConfig(**(env_kwargs or {}))  # validates the knobs
    return driving.task_spec(task)


def task_specs(kind: str, tasks: Sequence[str], env_kwargs: dict | None = None) -> list[TaskSpec]:
    """Specs for every task of a task set; an empty list is refused."""
    if not tasks:
        raise ValueError("task_set.tasks is empty; list at least one task or gymnasium id")
    return [task_spec(kind, t, env_kwargs) for t in tasks]


def env_factory(kind: str, task: str, env_kwargs: dict | None = None) -> EnvFactory:
    """A callable (num_envs=, device=) -> TensorVecEnv for one task."""
    _check_kind(kind)
    kwargs = dict(env_kwargs or {})
    if kind == "gym":
        return partial(GymVecEnv, task, env_kwargs=kwargs)
    from mtdqn.envs import driving

    return partial(driving.DrivingVecEnv, task, config=driving.DrivingConfig(**kwargs))

"""Environment stage: the TensorVecEnv protocol, the gymnasium adapter and the driving suite."""

from mtdqn.envs.base import TensorVecEnv
from mtdqn.envs.factory import (
    KINDS,
    check_env_options,
    check_render,
    env_factory,
    share_rules,
    task_spec,
    task_specs,
)
from mtdqn.envs.gym_adapter import GymVecEnv, check_gym_id
from mtdqn.envs.wrappers import PerturbedVecEnv

__all__ = [
    "KINDS", "GymVecEnv", "PerturbedVecEnv", "TensorVecEnv", "check_env_options", "check_gym_id", "check_render",
    "env_factory", "share_rules", "task_spec", "task_specs",
]  # fmt: skip

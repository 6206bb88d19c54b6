"""Environment stage: the TensorVecEnv protocol, the gymnasium adapter and the driving suite."""

from mtdqn.envs.base import TensorVecEnv
from mtdqn.envs.factory import KINDS, env_factory, task_spec, task_specs
from mtdqn.envs.gym_adapter import GymVecEnv, check_gym_id

__all__ = ["KINDS", "GymVecEnv", "TensorVecEnv", "check_gym_id", "env_factory", "task_spec", "task_specs"]

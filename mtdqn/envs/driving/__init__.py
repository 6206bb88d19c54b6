"""Batched autonomous-driving tasks sharing one road simulator, observation layout and action set."""

from mtdqn.envs.driving.config import TASKS, DrivingConfig
from mtdqn.envs.driving.controllers import REFERENCE_SCORES, evaluate_policy, reference_policy, task_spec
from mtdqn.envs.driving.gym_env import DrivingEnv, DrivingGymVectorEnv, register_envs
from mtdqn.envs.driving.sharing import share_rule
from mtdqn.envs.driving.sim import DrivingVecEnv

register_envs()

__all__ = [
    "DrivingVecEnv", "DrivingConfig", "TASKS", "task_spec", "REFERENCE_SCORES", "register_envs",
    "DrivingEnv", "DrivingGymVectorEnv", "evaluate_policy", "reference_policy", "share_rule",
]  # fmt: skip

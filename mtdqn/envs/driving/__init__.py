"""Batched autonomous-driving tasks sharing one road simulator, observation layout and action set."""

from mtdqn.envs.driving.config import TASKS, DrivingConfig
from mtdqn.envs.driving.sim import DrivingVecEnv

__all__ = ["DrivingVecEnv", "DrivingConfig", "TASKS"]

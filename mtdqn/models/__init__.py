"""LightningModules."""

from mtdqn.models.dqn import DQNModule
from mtdqn.models.mtdqn import MultiTaskDQNModule

__all__ = ["DQNModule", "MultiTaskDQNModule"]

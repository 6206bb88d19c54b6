"""LightningModules."""

from mtdqn.models.dqn import DQNModule

__all__ = ["DQNModule"]

"""Data stage: the Lightning-facing experience stream and data module."""

from mtdqn.data.module import RLDataModule
from mtdqn.data.stream import ExperienceStream

__all__ = ["ExperienceStream", "RLDataModule"]

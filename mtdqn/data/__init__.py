"""Data stage: the Lightning-facing experience streams and data modules."""

from mtdqn.data.module import RLDataModule
from mtdqn.data.multitask import MultiTaskDataModule, MultiTaskStream

__all__ = ["MultiTaskDataModule", "MultiTaskStream", "RLDataModule"]

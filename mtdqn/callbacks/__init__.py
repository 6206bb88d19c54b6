"""Callbacks: evaluation, checkpoints, progress, metrics file."""

from mtdqn.callbacks.budget import EnvStepBudget
from mtdqn.callbacks.checkpoint import (
    AtomicCheckpointIO,
    EnvStepCheckpoint,
    atomic_torch_save,
    load_checkpoint,
)
from mtdqn.callbacks.compression import CompressionCallback
from mtdqn.callbacks.evaluation import EvalCallback
from mtdqn.callbacks.guard import DivergenceError, DivergenceGuard
from mtdqn.callbacks.loggers import JsonlLogger, LoggerClock, WandbEnvStepAxis
from mtdqn.callbacks.progress import EnvStepProgressBar

__all__ = [
    "AtomicCheckpointIO",
    "CompressionCallback",
    "EnvStepBudget",
    "EnvStepCheckpoint",
    "DivergenceError",
    "DivergenceGuard",
    "EnvStepProgressBar",
    "EvalCallback",
    "JsonlLogger",
    "LoggerClock",
    "WandbEnvStepAxis",
    "atomic_torch_save",
    "load_checkpoint",
]

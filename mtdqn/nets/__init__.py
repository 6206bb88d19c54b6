"""Plain nn.Modules: torsos and Q heads."""

from mtdqn.nets.normalize import RunningObsNorm
from mtdqn.nets.q import DuelingHead, QNetwork, mlp

__all__ = ["DuelingHead", "QNetwork", "RunningObsNorm", "mlp"]

"""Replay stage: device-resident ring buffers, uniform and prioritized, with n-step returns."""

from mtdqn.replay.buffer import PrioritizedReplayBuffer, ReplayBuffer
from mtdqn.replay.sumtree import SumTree

__all__ = ["PrioritizedReplayBuffer", "ReplayBuffer", "SumTree"]

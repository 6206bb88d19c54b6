"""Collection stage: exploration schedules and the Collector."""

from mtdqn.collect.collector import Collector, Episodes
from mtdqn.collect.epsilon import LinearEpsilon

__all__ = ["Collector", "Episodes", "LinearEpsilon"]

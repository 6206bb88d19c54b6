"""Exploration schedules: pure functions of the env-step counter."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinearEpsilon:
    """Epsilon decays linearly from `start` to `end` over `duration` env steps, then stays at `end`.

    Before `warmup` env steps (replay warm-up) actions are uniformly random (epsilon = 1), as in SB3's
    `learning_starts`; the decay is counted from env step 0, like SB3's `exploration_fraction`.
    """

    start: float = 1.0
    end: float = 0.05
    duration: int = 10_000  # env steps
    warmup: int = 0  # env steps of uniformly random actions

    def __post_init__(self) -> None:
        for key in ("start", "end"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"exploration.{key}={v} must lie in [0, 1]")
        for key in ("duration", "warmup"):  # each named alone (`warmup=-5` was reported with duration=8000)
            if getattr(self, key) < 0:
                raise ValueError(f"exploration.{key}={getattr(self, key)} must be >= 0 (env steps)")

    def __call__(self, env_steps: int) -> float:
        """Epsilon after `env_steps` environment steps."""
        if env_steps < self.warmup:
            return 1.0
        return self.decay(env_steps)

    def decay(self, env_steps: int) -> float:
        """The linear schedule alone, without the warm-up (a multi-task run with data.exploration_clock=task
        checks the warm-up on the summed env steps and decays each task on its own)."""
        if self.duration == 0 or env_steps >= self.duration:
            return self.end
        return self.start + (self.end - self.start) * env_steps / self.duration

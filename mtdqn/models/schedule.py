"""Learning-rate schedules over training progress (env steps / data.total_env_steps), as in SB3's
`progress_remaining`: RL runs are budgeted in env steps, not in optimizer steps."""

from __future__ import annotations

import math

KINDS = ("none", "linear", "cosine")


class LRSchedule:
    """lr = base_lr x factor(progress): constant (`none`), `linear` or `cosine` decay from 1 to `final_fraction`,
    after an optional linear warm-up over the first `warmup_fraction` of training."""

    def __init__(self, kind: str = "none", final_fraction: float = 0.1, warmup_fraction: float = 0.0) -> None:
        if kind not in KINDS:
            raise ValueError(f"scheduler.kind={kind!r} is not one of {KINDS}")
        if not 0.0 <= final_fraction <= 1.0:
            raise ValueError(f"scheduler.final_fraction={final_fraction} must lie in [0, 1]")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"scheduler.warmup_fraction={warmup_fraction} must lie in [0, 1)")
        self.kind, self.final_fraction, self.warmup_fraction = kind, final_fraction, warmup_fraction

    def factor(self, progress: float) -> float:
        """Multiplier of the base learning rate at `progress` in [0, 1]."""
        p = min(max(progress, 0.0), 1.0)
        warm = min(p / self.warmup_fraction, 1.0) if self.warmup_fraction > 0 else 1.0
        if self.kind == "none":
            return warm
        q = (p - self.warmup_fraction) / (1.0 - self.warmup_fraction) if p > self.warmup_fraction else 0.0
        if self.kind == "linear":
            decay = 1.0 - (1.0 - self.final_fraction) * q
        else:
            decay = self.final_fraction + (1.0 - self.final_fraction) * 0.5 * (1.0 + math.cos(math.pi * q))
        return warm * decay

    def __repr__(self) -> str:
        return f"LRSchedule({self.kind}, final_fraction={self.final_fraction}, warmup_fraction={self.warmup_fraction})"

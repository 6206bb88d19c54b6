"""Tasks, physical constants and the perturbation knobs (`DrivingConfig`) of the driving simulator."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

TASKS: tuple[str, ...] = ("lane_keep", "pedestrian", "traffic_light", "urban")

# task -> (has pedestrians, has traffic lights, default episode length in steps)
TASK_FEATURES: dict[str, tuple[bool, bool, int]] = {
    "lane_keep": (False, False, 400),
    "pedestrian": (True, False, 400),
    "traffic_light": (False, True, 500),
    "urban": (True, True, 1000),
}

DT = 0.1  # s per step
V_MAX = 25.0  # m/s, hard speed cap of the car
ACCEL = (-6.0, -0.5, 2.5)  # m/s^2 for brake / coast / throttle
STEER_CURVATURE = 0.05  # 1/m, path curvature commanded by "left" (minus for "right")
SPEED_LIMIT_RANGE = (8.0, 16.0)  # m/s, drawn per episode
LANE_WIDTH_RANGE = (3.0, 4.0)  # m, drawn per episode
OFFROAD_MARGIN = 0.5  # m beyond the lane edge at which the car's centre has left the road
CURB_OFFSET = 1.0  # m beyond the lane edge where pedestrians wait
CAR_HALF_LENGTH, CAR_HALF_WIDTH, PED_RADIUS = 2.25, 0.9, 0.3  # m
PED_SLOTS = 2
PED_SPAWN_AHEAD = 60.0  # m ahead of the ego where a pedestrian (re)spawns, plus an Exp(200/rate) gap
PED_SPEED_RANGE = (1.0, 1.8)  # m/s walking speed
PED_TRIGGER_RANGE = (20.0, 55.0)  # m: a pedestrian starts crossing when the ego is this close
LIGHT_GAP_RANGE = (120.0, 250.0)  # m between consecutive traffic lights
LIGHT_FIRST = -60.0  # the first light is at LIGHT_FIRST + LIGHT_GAP
AMBER_TIME = 3.0  # s
PREVIEW_DISTANCES = (0.0, 10.0, 20.0, 35.0, 50.0)  # m ahead for the curvature preview
PED_RANGE, LIGHT_RANGE = 60.0, 100.0  # m sensor ranges
HEADING_LIMIT = math.pi / 2  # rad: |heading error| beyond this counts as leaving the road

# reward weights (see docs/driving.md)
W_LATERAL, W_SPEEDING = 0.5, 2.0
PENALTY_OFFROAD, PENALTY_COLLISION, PENALTY_RED = 10.0, 20.0, 20.0


def _check(name: str, value, lo: float, hi: float, kind: type) -> None:
    """Raise ValueError unless lo <= value <= hi and value has the right kind."""
    ok_kind = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok_kind = isinstance(value, int) and not isinstance(value, bool)
    if not ok_kind or not (lo <= value <= hi) or value != value:
        raise ValueError(
            f"DrivingConfig.{name}={value!r} is invalid: expected {kind.__name__} in [{lo}, {hi}]"
        )


@dataclass(frozen=True)
class DrivingConfig:
    """Difficulty / perturbation knobs (every one changes the dynamics) and the observation options `stop_feature`
    and `stop_only` (see docs/driving.md)."""

    obs_noise: float = 0.0  # std of Gaussian noise added to the normalized observation
    steer_delay: int = 0  # steps between a steering command and its effect
    slip: float = 0.0  # per-step probability that the steering command has no effect (wheel slip)
    curvature_range: float = 0.015  # max |road curvature| in 1/m
    pedestrian_rate: float = 1.0  # pedestrian spawn intensity (0 = none); see docs
    light_cycle: float = 20.0  # s for a full green-amber-red traffic-light cycle
    max_episode_steps: int | None = None  # None: the task's default length
    collision_penalty: float = PENALTY_COLLISION  # reward lost when hitting a pedestrian (the episode ends)
    red_light_penalty: float = PENALTY_RED  # reward lost when crossing a stop line on red (the episode ends)
    stop_feature: bool = False  # append [stop_present, stop_distance] to the observation (hazards.py)
    stop_only: bool = False  # with stop_feature: the pedestrian and light slots read 0, the stop point alone shows them

    _RANGES = {
        "obs_noise": (0.0, 1.0, float),
        "steer_delay": (0, 10, int),
        "slip": (0.0, 1.0, float),
        "curvature_range": (0.0, 0.03, float),
        "pedestrian_rate": (0.0, 5.0, float),
        "light_cycle": (6.0, 120.0, float),
        "max_episode_steps": (1, 1_000_000, int),
        "collision_penalty": (0.0, 10_000.0, float),
        "red_light_penalty": (0.0, 10_000.0, float),
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("stop_feature", "stop_only"):
                if not isinstance(value, bool):
                    raise ValueError(f"DrivingConfig.{f.name}={value!r} is invalid: expected true or false")
                continue
            if f.name == "max_episode_steps" and value is None:
                continue
            lo, hi, kind = self._RANGES[f.name]
            _check(f.name, value, lo, hi, kind)

        if self.stop_only and not self.stop_feature:
            raise ValueError("DrivingConfig.stop_only=true hides the pedestrian and light slots behind the stop point, "
                             "which needs stop_feature=true (in a config: +task_set.env_kwargs.stop_feature=true)")

    def episode_steps(self, task: str) -> int:
        """Episode length (time limit) in steps for `task` under this config."""
        return self.max_episode_steps if self.max_episode_steps is not None else TASK_FEATURES[task][2]


# knobs that domain randomization can draw per episode per env (light_cycle and the time limit cannot)
RANDOMIZABLE: tuple[str, ...] = ("obs_noise", "slip", "steer_delay", "curvature_range", "pedestrian_rate")


def check_randomization(
    ranges: Mapping[str, Sequence[float]] | None, key: str = "domain_randomization"
) -> dict[str, tuple[float, float]]:
    """Validate {knob: [lo, hi]} ranges for domain randomization; returns {knob: (lo, hi)} in RANDOMIZABLE order.

    Every bound must itself be a valid DrivingConfig value and lo <= hi (lo == hi pins the knob).
    """
    ranges = dict(ranges or {})
    unknown = sorted(set(ranges) - set(RANDOMIZABLE))
    if unknown:
        raise ValueError(f"{key}: {unknown} cannot be randomized in the driving simulator; choose from "
                         f"{list(RANDOMIZABLE)}")
    out: dict[str, tuple[float, float]] = {}
    for name in RANDOMIZABLE:
        if name not in ranges:
            continue
        value = ranges[name]
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
            raise ValueError(f"{key}.{name}={value!r} is invalid: expected a range [lo, hi]")
        lo, hi = value
        for bound in (lo, hi):
            try:
                DrivingConfig(**{name: bound})
            except ValueError as exc:
                raise ValueError(f"{key}.{name}={list(value)} is invalid: {exc}") from None
        if lo > hi:
            raise ValueError(f"{key}.{name}={list(value)} is invalid: expected lo <= hi")
        out[name] = (lo, hi)
    return out

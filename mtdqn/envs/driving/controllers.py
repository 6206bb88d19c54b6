"""Scripted reference controllers, a uniform random policy, batched evaluation and reference scores.

The reference controller reads only the observation vector (no privileged state): a PD lane keeper on lateral
offset / heading error with curvature feed-forward for steering, and a target-speed rule for throttle / brake
(speed limit, a braking profile to stop before crossing pedestrians and red / amber lights).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from mtdqn.envs.driving import config as C
from mtdqn.envs.driving import hazards
from mtdqn.envs.driving.config import TASKS, DrivingConfig
from mtdqn.envs.driving.sim import KAPPA_SCALE, N_ACTIONS, OBS_DIM, DrivingVecEnv
from mtdqn.types import TaskSpec

Policy = Callable[[Tensor], Tensor]

# (reference_return, random_return) per task: mean undiscounted return over 100 episodes, seed 12345, default
# DrivingConfig; produced by `python scripts/driving_reference_scores.py` (which can --check them).
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "lane_keep": (380.9, -24.47),
    "pedestrian": (321.09, -24.47),
    "traffic_light": (395.37, -35.5),
    "urban": (669.36, -79.21),
}
SOLVED_NORMALIZED_SCORE = 0.9
COMFORT_DECEL = 3.5  # m/s^2 the reference plans its stops with (the car can brake at 6)


def task_spec(task: str, config: DrivingConfig | None = None) -> TaskSpec:
    """The TaskSpec (obs_dim, n_actions, reference / random returns) of a driving task under `config` (its
    observation has len(hazards.STOP_NAMES) more features with `stop_feature`)."""
    if task not in TASKS:
        raise ValueError(f"unknown driving task {task!r}; valid tasks: {', '.join(TASKS)}")
    ref, rnd = REFERENCE_SCORES[task]
    obs_dim = OBS_DIM + (len(hazards.STOP_NAMES) if config is not None and config.stop_feature else 0)
    return TaskSpec(name=task, obs_dim=obs_dim, n_actions=N_ACTIONS, reference_return=ref, random_return=rnd)


def _steer_command(obs: Tensor) -> Tensor:
    """Steering index (0 left, 1 straight, 2 right) from a PD law on offset / heading + curvature feed-forward."""
    v = (obs[:, 0] * C.V_MAX).clamp(min=3.0)
    d = obs[:, 2] * obs[:, 3] * 2.5  # (d / half_width) * half_width
    psi = obs[:, 4] * C.HEADING_LIMIT
    kappa_ff = obs[:, 5] * KAPPA_SCALE
    omega = 2.0  # rad/s closed-loop lateral bandwidth
    kappa = kappa_ff - (2 * 1.0 * omega) * psi / v - omega**2 * d / v**2
    thr = 0.25 * C.STEER_CURVATURE
    return torch.where(kappa > thr, 0, torch.where(kappa < -thr, 2, 1))


def _stop_speed(dist: Tensor) -> Tensor:
    """Highest speed (m/s) from which the car stops within `dist` metres at the comfort deceleration."""
    return torch.sqrt(2 * COMFORT_DECEL * dist.clamp(min=0.0))


def _pedestrian_speed_cap(obs: Tensor) -> Tensor:
    """Speed cap (m/s) from the pedestrian slots: stop before a crossing or in-lane pedestrian."""
    cap = torch.full_like(obs[:, 0], C.V_MAX)
    slots = hazards.pedestrians(obs)
    for k in range(C.PED_SLOTS):
        present, ds, dy, vy = (x[:, k] for x in slots)
        danger, walking = hazards.pedestrian_danger(present, ds, dy, vy)
        waiting = present & (ds > hazards.PED_AHEAD) & ~walking & ~danger & (ds < 40.0)
        cap = torch.where(danger, torch.minimum(cap, _stop_speed(ds - 4.5)), cap)
        cap = torch.where(waiting, torch.minimum(cap, torch.full_like(cap, 7.0)), cap)
    return cap


def _light_speed_cap(obs: Tensor) -> Tensor:
    """Speed cap (m/s) from the next light: stop for red, and for amber when a comfortable stop is possible."""
    v = obs[:, 0] * C.V_MAX
    present, dist, red, amber = hazards.light(obs)
    can_stop = v**2 / (2 * 5.0) < dist - 1.0
    stop = present & (red | (amber & can_stop))
    return torch.where(stop, _stop_speed(dist - 3.0), torch.full_like(v, C.V_MAX))


def reference_policy(task: str) -> Policy:
    """The scripted reference controller of `task`: obs (N, obs_dim) -> actions (N,) int64."""
    if task not in TASKS:
        raise ValueError(f"unknown driving task {task!r}; valid tasks: {', '.join(TASKS)}")

    def policy(obs: Tensor) -> Tensor:
        v, limit = obs[:, 0] * C.V_MAX, obs[:, 1] * C.V_MAX
        target = torch.minimum(0.97 * limit, torch.minimum(_pedestrian_speed_cap(obs), _light_speed_cap(obs)))
        lon = torch.where(v < target - 0.2, 2, torch.where(v > target + 0.4, 0, 1))
        return (_steer_command(obs) * 3 + lon).long()

    return policy


def random_policy(seed: int = 0, n_actions: int = N_ACTIONS) -> Policy:
    """A uniform random policy with its own seeded generator."""
    gen = torch.Generator().manual_seed(seed)

    def policy(obs: Tensor) -> Tensor:
        return torch.randint(0, n_actions, (obs.shape[0],), generator=gen).to(obs.device)

    return policy


@torch.no_grad()
def evaluate_policy(task: str, policy: Policy, episodes: int, seed: int, config: DrivingConfig | None = None,
                    device: str | torch.device = "cpu") -> float:  # fmt: skip
    """Mean undiscounted return of `policy` over `episodes` envs run in parallel, one episode each."""
    env = DrivingVecEnv(task, episodes, device=device, config=config)
    obs = env.reset(seed)
    ret = torch.zeros(episodes, device=env.device)
    alive = torch.ones(episodes, dtype=torch.bool, device=env.device)
    for _ in range(env.max_episode_steps):
        res = env.step(policy(obs))
        ret += res.reward * alive
        alive &= ~(res.terminated | res.truncated)
        obs = res.obs
        if not bool(alive.any()):
            break
    return float(ret.mean())


def normalized_score(task: str, ret: float) -> float:
    """(R - R_random) / (R_reference - R_random); a task counts as solved at >= SOLVED_NORMALIZED_SCORE."""
    ref, rnd = REFERENCE_SCORES[task]
    return (ret - rnd) / (ref - rnd) if not math.isclose(ref, rnd) else float("nan")

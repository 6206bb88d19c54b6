"""Where the car must stop, read from the observation: the pedestrians and lights that call for a stop.

Shared by the scripted reference controller (its braking rules) and by the simulator's optional stop-point
observation (`DrivingConfig.stop_feature`): two extra features, `stop_present` and `stop_distance`, that put the
nearest place the car must stop before (a pedestrian crossing or standing in its path, a red or amber light's
stop line) in one slot, whichever hazard it comes from. The pedestrian and traffic-light tasks observe their
hazards in separate slots, so a shared network cannot reuse what it learned about stopping for one when it meets
the other; in the shared slot it can (docs/multitask.md measures whether that pays).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtdqn.envs.driving import config as C

PED0 = 10  # first pedestrian column of the observation (OBS_NAMES in sim.py), 5 per slot
LIGHT0 = PED0 + 5 * C.PED_SLOTS  # first light column: present, distance, red, amber, green, time to change
STOP_NAMES: tuple[str, ...] = ("stop_present", "stop_distance")
STOP_SCALE = 1 / C.LIGHT_RANGE  # stop_distance = metres * STOP_SCALE
STOP_LOW, STOP_HIGH = (0.0, -0.1), (1.0, 1.0)
PED_AHEAD = -C.CAR_HALF_LENGTH - 1.0  # m: a pedestrian further behind the car's centre no longer matters


def pedestrians(obs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The pedestrian slots of normalized observations (N, >= 26), each (N, PED_SLOTS): (present, ds (m), dy (m),
    lateral speed (m/s))."""
    f = obs[:, PED0 : PED0 + 5 * C.PED_SLOTS].unflatten(1, (C.PED_SLOTS, 5))
    return f[..., 0] > 0.5, f[..., 1] * C.PED_RANGE, f[..., 2] * 5.0, f[..., 4] * 2.0


def pedestrian_danger(present: Tensor, ds: Tensor, dy: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
    """(danger, walking) masks: a pedestrian ahead that walks and has not yet cleared the car's path, or stands
    in it."""
    ahead = present & (ds > PED_AHEAD)
    walking = vy.abs() > 1e-3
    not_cleared = dy * torch.sign(vy) < C.CAR_HALF_WIDTH + 1.0  # still to cross (or in) our path
    return ahead & ((walking & not_cleared) | (dy.abs() < C.CAR_HALF_WIDTH + 0.8)), walking


def light(obs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The next light of normalized observations: (present, distance (m), red, amber)."""
    return (obs[:, LIGHT0] > 0.5, obs[:, LIGHT0 + 1] * C.LIGHT_RANGE, obs[:, LIGHT0 + 2] > 0.5,
            obs[:, LIGHT0 + 3] > 0.5)  # fmt: skip


def stop_point(obs: Tensor, out: Tensor | None = None) -> Tensor:
    """(N, 2) [stop_present, stop_distance] of normalized observations (N, >= 26): the distance (m * STOP_SCALE)
    to the nearest dangerous pedestrian or red / amber light ahead; both 0 where there is none (the simulator's
    convention for absent objects). Written into `out` (N, 2) when given."""
    present, ds, dy, vy = pedestrians(obs)
    danger, _ = pedestrian_danger(present, ds, dy, vy)
    dist = torch.where(danger, ds, math.inf).amin(1)
    lit, ldist, red, amber = light(obs)
    dist = torch.where(lit & (red | amber), torch.minimum(dist, ldist), dist)
    found = dist < math.inf
    if out is None:
        out = torch.empty(obs.shape[0], len(STOP_NAMES), dtype=obs.dtype, device=obs.device)
    out[:, 0].copy_(found)
    out[:, 1].copy_(dist.mul_(STOP_SCALE).clamp_(STOP_LOW[1], STOP_HIGH[1]).masked_fill_(~found, 0.0))
    return out

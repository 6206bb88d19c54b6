"""Perturbations for any TensorVecEnv: observation noise and sticky actions, fixed or randomized per episode.

Used for training (`perturb.*`, `domain_randomization.*` in the config) and for robustness evaluation
(`mtdqn.evaluation.robustness`). The driving simulator has its own knobs (DrivingConfig) for everything but sticky
actions; this wrapper serves gymnasium tasks and sticky actions everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtdqn.envs.base import TensorVecEnv
from mtdqn.types import StepResult, finite_number

# knob -> (lowest, highest) allowed value
PERTURB_KNOBS: dict[str, tuple[float, float]] = {"obs_noise": (0.0, math.inf), "sticky_actions": (0.0, 1.0)}
_SEED_OFFSET = 0x5DEECE66D  # decorrelates the wrapper's generator from the env's own seeding


def check_knob(key: str, value: Any, name: str) -> float:
    """`value` as a float within PERTURB_KNOBS[name]; ValueError naming `key` otherwise."""
    lo, hi = PERTURB_KNOBS[name]
    if not (finite_number(value) and lo <= value <= hi):
        raise ValueError(f"{key}={value!r} is invalid: expected a number in [{lo}, {hi}]")
    return float(value)


def check_perturb(perturb: Mapping[str, Any] | None, key: str = "perturb") -> dict[str, float]:
    """Validate {knob: value}; returns the non-zero knobs."""
    perturb = dict(perturb or {})
    unknown = sorted(set(perturb) - set(PERTURB_KNOBS))
    if unknown:
        raise ValueError(f"{key}: unknown knob(s) {unknown}; choose from {list(PERTURB_KNOBS)}")
    values = {k: check_knob(f"{key}.{k}", v, k) for k, v in perturb.items() if v is not None}
    return {k: v for k, v in values.items() if v != 0.0}


def check_ranges(ranges: Mapping[str, Sequence[float]] | None, key: str = "domain_randomization") -> dict:
    """Validate {knob: [lo, hi]} for the wrapper's knobs; returns {knob: (lo, hi)}."""
    out: dict[str, tuple[float, float]] = {}
    for name, value in dict(ranges or {}).items():
        if name not in PERTURB_KNOBS:
            raise ValueError(f"{key}: unknown knob {name!r}; choose from {list(PERTURB_KNOBS)}")
        if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
            raise ValueError(f"{key}.{name}={value!r} is invalid: expected a range [lo, hi]")
        lo, hi = (check_knob(f"{key}.{name}", v, name) for v in value)
        if lo > hi:
            raise ValueError(f"{key}.{name}={list(value)} is invalid: expected lo <= hi")
        out[name] = (lo, hi)
    return out


class PerturbedVecEnv:
    """Wraps a TensorVecEnv with per-env observation noise and sticky actions.

    - `obs_noise`: std of Gaussian noise added to every observation component (observation units). The noisy
      observation an agent acts on at t + 1 is the one reported as `next_obs` at t (one draw per observation).
    - `sticky_actions`: per step, with this probability the env repeats the previously executed action instead
      of the new one (Machado et al. 2018); the first step of an episode always takes the new action.
    - `randomize`: {knob: (lo, hi)} redraws that knob per env at every episode start, uniformly in [lo, hi]
      (domain randomization); it overrides the fixed value.
    Draws come from the wrapper's own torch.Generator, seeded by `reset(seed)`.
    """

    def __init__(self, env: TensorVecEnv, obs_noise: float = 0.0, sticky_actions: float = 0.0,
                 randomize: Mapping[str, Sequence[float]] | None = None) -> None:  # fmt: skip
        fixed = check_perturb({"obs_noise": obs_noise, "sticky_actions": sticky_actions})
        self.env, self.randomize = env, check_ranges(randomize)
        self.num_envs, self.obs_dim, self.n_actions, self.device = env.num_envs, env.obs_dim, env.n_actions, env.device
        noisy = "obs_noise" in fixed or "obs_noise" in self.randomize  # noise takes observations off their grid
        self.obs_quantum = None if noisy else getattr(env, "obs_quantum", None)
        self.obs_frames = None if noisy else getattr(env, "obs_frames", None)  # noisy frames no longer repeat
        n, dev = self.num_envs, self.device
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        self.knobs = {k: torch.full((n,), fixed.get(k, 0.0), device=dev) for k in PERTURB_KNOBS}  # (N,) each
        self.prev_action = torch.zeros(n, dtype=torch.int64, device=dev)
        self.has_prev = torch.zeros(n, dtype=torch.bool, device=dev)

    def __getattr__(self, name: str) -> Any:  # render, max_episode_steps, ... of the wrapped env
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def _redraw(self, rows: Tensor) -> None:
        """New per-episode knob values for envs `rows` (bool (N,))."""
        for name, (lo, hi) in self.randomize.items():
            u = torch.rand(self.num_envs, generator=self.generator, device=self.device)
            self.knobs[name] = torch.where(rows, lo + (hi - lo) * u, self.knobs[name])

    def _noisy(self, obs: Tensor, std: Tensor) -> Tensor:
        if not (self.randomize.get("obs_noise") or bool((std > 0).any())):
            return obs
        noise = torch.randn(obs.shape, generator=self.generator, device=obs.device, dtype=obs.dtype)
        return obs + noise * std.unsqueeze(1).to(obs.dtype)

    def reset(self, seed: int | None = None) -> Tensor:
        """Reset the wrapped env (env i seeded seed + i) and the wrapper's generator."""
        if seed is not None:
            self.generator.manual_seed(int(seed) + _SEED_OFFSET)
        obs = self.env.reset(seed=seed)
        self.has_prev.zero_()
        self._redraw(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        return self._noisy(obs, self.knobs["obs_noise"])

    def step(self, actions: Tensor) -> StepResult:
        """Step with sticky actions, then add observation noise; finished envs redraw randomized knobs."""
        actions = torch.as_tensor(actions, device=self.device).long()
        p = self.knobs["sticky_actions"]
        if "sticky_actions" in self.randomize or bool((p > 0).any()):
            u = torch.rand(self.num_envs, generator=self.generator, device=self.device)
            actions = torch.where((u < p) & self.has_prev, self.prev_action, actions)
        self.prev_action, self.has_prev = actions, torch.ones_like(self.has_prev)
        res = self.env.step(actions)
        done = res.terminated | res.truncated
        next_obs = self._noisy(res.next_obs, self.knobs["obs_noise"])
        self.has_prev &= ~done
        if bool(done.any()):
            self._redraw(done)
            obs = torch.where(done.unsqueeze(1), self._noisy(res.obs, self.knobs["obs_noise"]), next_obs)
        else:
            obs = next_obs
        return StepResult(next_obs, res.reward, res.terminated, res.truncated, obs)

    def close(self) -> None:
        """Close the wrapped env."""
        self.env.close()

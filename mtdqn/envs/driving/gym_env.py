"""Gymnasium front-ends of the driving simulator: a single `Env` and a native SAME_STEP `VectorEnv`."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.spaces import Box, Discrete
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from mtdqn.envs.driving.config import TASKS, DrivingConfig
from mtdqn.envs.driving.render import render_env
from mtdqn.envs.driving.sim import N_ACTIONS, TERMINATION_CAUSES, DrivingVecEnv

ENV_IDS: dict[str, str] = {
    "mtdqn/LaneKeep-v0": "lane_keep",
    "mtdqn/Pedestrian-v0": "pedestrian",
    "mtdqn/TrafficLight-v0": "traffic_light",
    "mtdqn/Urban-v0": "urban",
}


def _make_config(config: DrivingConfig | None, knobs: dict[str, Any]) -> DrivingConfig:
    """A DrivingConfig from an explicit config or keyword knobs (not both)."""
    if config is not None and knobs:
        raise ValueError("pass either config=DrivingConfig(...) or keyword knobs, not both")
    return config if config is not None else DrivingConfig(**knobs)


class DrivingEnv(gym.Env):
    """One driving env with numpy I/O (wraps DrivingVecEnv with num_envs=1)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: str = "lane_keep", config: DrivingConfig | None = None,
                 render_mode: str | None = None, **knobs: Any) -> None:  # fmt: skip
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.task, self.render_mode = task, render_mode
        self.vec = DrivingVecEnv(task, 1, config=_make_config(config, knobs))
        self.vec.set_track_causes(True)  # info["termination_cause"] of a terminated step
        self.observation_space = Box(self.vec.observation_low, self.vec.observation_high, dtype=np.float32)
        self.action_space = Discrete(N_ACTIONS)
        self._pending: np.ndarray | None = None  # the autoreset observation after an episode ended

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode (seed: reseed; None: the next episode of the current seed)."""
        super().reset(seed=seed)
        if seed is None and not self.vec._seeded:
            seed = int(self.np_random.integers(0, 2**62))
        if seed is not None:
            obs = self.vec.reset(seed)[0].numpy()
        elif self._pending is not None:
            obs = self._pending  # the simulator already started the next episode
        else:
            obs = self.vec.reset(None)[0].numpy()
        self._pending = None
        return obs, {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Advance one step (0.1 s); a terminated step's info names why: {"termination_cause": "offroad" |
        "collision" | "red_light"}."""
        res = self.vec.step(torch.tensor([int(action)], dtype=torch.int64))
        terminated, truncated = bool(res.terminated[0]), bool(res.truncated[0])
        self._pending = res.obs[0].numpy() if (terminated or truncated) else None
        info = {}
        if terminated:
            info["termination_cause"] = TERMINATION_CAUSES[int(self.vec.last_termination_cause[0]) - 1]
        return res.next_obs[0].numpy(), float(res.reward[0]), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """A top-down uint8 RGB picture (after an episode end it shows the already started next episode)."""
        return render_env(self.vec, 0) if self.render_mode == "rgb_array" else None


class DrivingGymVectorEnv(gym.vector.VectorEnv):
    """Native gymnasium VectorEnv (numpy I/O, SAME_STEP autoreset with `final_obs` in infos)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: str = "lane_keep", num_envs: int = 1, config: DrivingConfig | None = None,
                 device: str = "cpu", render_mode: str | None = None, **knobs: Any) -> None:  # fmt: skip
        self.vec = DrivingVecEnv(task, num_envs, device=device, config=_make_config(config, knobs))
        self.num_envs, self.task, self.render_mode = num_envs, task, render_mode
        self.single_observation_space = Box(self.vec.observation_low, self.vec.observation_high, dtype=np.float32)
        self.single_action_space = Discrete(N_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Reset all envs; env i gets seed + i (a list of seeds must be consecutive integers)."""
        if isinstance(seed, (list, tuple)):
            if list(seed) != list(range(seed[0], seed[0] + self.num_envs)):
                raise ValueError("DrivingGymVectorEnv seeds env i with seed + i; pass an int or consecutive seeds")
            seed = seed[0]
        if seed is not None:
            self._np_random, _ = gym.utils.seeding.np_random(seed)
        return self.vec.reset(seed).cpu().numpy(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Advance all envs; finished envs restart in the same step (their last obs is infos['final_obs'])."""
        res = self.vec.step(torch.as_tensor(np.asarray(actions), dtype=torch.int64, device=self.vec.device))
        term, trunc = res.terminated.cpu().numpy(), res.truncated.cpu().numpy()
        done = term | trunc
        infos: dict[str, Any] = {}
        if done.any():
            final = np.full(self.num_envs, None, dtype=object)
            next_obs = res.next_obs.cpu().numpy()
            for i in np.flatnonzero(done):
                final[i] = next_obs[i]
            infos = {"final_obs": final, "_final_obs": done.copy(), "final_info": {}, "_final_info": done.copy()}
        return res.obs.cpu().numpy(), res.reward.cpu().numpy(), term, trunc, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One top-down picture per env (render_mode='rgb_array')."""
        if self.render_mode != "rgb_array":
            return None
        return tuple(render_env(self.vec, i) for i in range(self.num_envs))

    def close_extras(self, **kwargs: Any) -> None:
        """Release the simulator."""
        self.vec.close()


def register_envs() -> None:
    """Register the four driving ids with gymnasium (idempotent)."""
    for env_id, task in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="mtdqn.envs.driving.gym_env:DrivingEnv",
            vector_entry_point="mtdqn.envs.driving.gym_env:DrivingGymVectorEnv",
            kwargs={"task": task},
        )


assert set(ENV_IDS.values()) == set(TASKS)

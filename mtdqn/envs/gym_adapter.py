"""Adapter from any gymnasium environment id (Box obs, Discrete actions) to the TensorVecEnv protocol."""

from __future__ import annotations

import importlib

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import Tensor

from mtdqn.types import StepResult, TaskSpec

# Packages whose import registers extra gymnasium ids (optional extras).
_REGISTERING_MODULES = {"MinAtar/": "minatar", "highway": "highway_env"}


def _import_registrations(env_id: str) -> None:
    for prefix, module in _REGISTERING_MODULES.items():
        if env_id.startswith(prefix) or prefix in env_id:
            try:
                mod = importlib.import_module(module)
            except ImportError as exc:
                raise ValueError(
                    f"task_set.tasks: {env_id!r} needs the optional package {module!r} "
                    f"(pip install -c constraints.txt -e '.[{module.split('_')[0]}]')"
                ) from exc
            if hasattr(mod, "gym") and hasattr(mod.gym, "register_envs"):
                mod.gym.register_envs()


def check_gym_id(env_id: str, env_kwargs: dict | None = None) -> TaskSpec:
    """Validate a gymnasium id (registered, Box observation, Discrete actions); return its TaskSpec."""
    _import_registrations(env_id)
    if env_id not in gym.registry:
        close = [k for k in gym.registry if k.split("-")[0].lower() == env_id.split("-")[0].lower()]
        hint = f" (did you mean {close[:3]}?)" if close else ""
        raise ValueError(f"task_set.tasks: {env_id!r} is not a registered gymnasium id{hint}")
    env = gym.make(env_id, **(env_kwargs or {}))
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ValueError(
            f"task_set.tasks: {env_id!r} has action space {act_space}; DQN needs a Discrete action space"
        )
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(f"task_set.tasks: {env_id!r} has observation space {obs_space}; mtdqn needs a Box")
    return TaskSpec(name=env_id.replace("/", "-"), obs_dim=int(np.prod(obs_space.shape)), n_actions=int(act_space.n))


class GymVecEnv:
    """N copies of a gymnasium env in a SyncVectorEnv (or AsyncVectorEnv) with same-step autoreset."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        device: str | torch.device = "cpu",
        env_kwargs: dict | None = None,
        asynchronous: bool = False,
    ) -> None:
        spec = check_gym_id(env_id, env_kwargs)
        self.env_id, self.num_envs, self.obs_dim, self.n_actions = env_id, num_envs, spec.obs_dim, spec.n_actions
        self.device = torch.device(device)
        self.env = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="async" if asynchronous else "sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            **(env_kwargs or {}),
        )

    def _tensor(self, x: np.ndarray) -> Tensor:
        return torch.as_tensor(x.reshape(self.num_envs, -1), dtype=torch.float32, device=self.device)

    def reset(self, seed: int | None = None) -> Tensor:
        """Reset all envs; env i is seeded with seed + i."""
        obs, _ = self.env.reset(seed=seed)
        return self._tensor(obs)

    def step(self, actions: Tensor) -> StepResult:
        """Step all envs; finished envs report their final observation as next_obs."""
        obs, reward, terminated, truncated, info = self.env.step(actions.cpu().numpy())
        next_obs = obs
        if "_final_obs" in info:
            next_obs = obs.copy()
            for i in np.flatnonzero(info["_final_obs"]):
                next_obs[i] = info["final_obs"][i]
        dev = self.device
        return StepResult(
            next_obs=self._tensor(next_obs),
            reward=torch.as_tensor(reward, dtype=torch.float32, device=dev),
            terminated=torch.as_tensor(terminated, dtype=torch.bool, device=dev),
            truncated=torch.as_tensor(truncated, dtype=torch.bool, device=dev),
            obs=self._tensor(obs),
        )

    def close(self) -> None:
        """Close the underlying vector env."""
        self.env.close()

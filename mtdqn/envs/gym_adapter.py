"""Adapter from any gymnasium environment id (Box obs, Discrete actions) to the TensorVecEnv protocol."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from mtdqn.types import StepResult, TaskSpec

# Optional packages whose import registers extra gymnasium ids: (module, extra that installs it).
_REGISTERING_MODULES = (("highway_env", "highway"), ("minatar", "minatar"), ("ale_py", "atari"))
WRAPPERS_KEY = "wrappers"  # task_set.env_kwargs.wrappers: mtdqn's own key, never passed to gymnasium.make


def _import_registrations(env_id: str) -> None:
    """Import optional env packages (quietly) until `env_id` is registered."""
    for module, _extra in _REGISTERING_MODULES:
        if env_id in gym.registry:
            return
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        try:  # MinAtar keeps its gymnasium registration in a submodule that `import minatar` does not load
            mod = importlib.import_module(f"{module}.gym")
        except ImportError:
            pass
        register = getattr(mod, "register_envs", None)
        if callable(register):
            register()


def split_env_kwargs(env_kwargs: Mapping[str, Any] | None) -> tuple[dict, list[tuple[Callable, dict]]]:
    """(kwargs for gymnasium.make, [(wrapper class, its kwargs), ...]) from task_set.env_kwargs.

    `env_kwargs.wrappers` is a list of {wrapper: <import path of a gymnasium wrapper>, kwargs: {...}}, applied in
    order to every env (training, evaluation, reports), e.g. AtariPreprocessing then FrameStackObservation. (Not
    Hydra's `_target_`: configs that interpolate env_kwargs would have Hydra build the wrappers without an env.)
    """
    kwargs = dict(env_kwargs or {})
    raw = kwargs.pop(WRAPPERS_KEY, None) or []
    key = f"task_set.env_kwargs.{WRAPPERS_KEY}"
    usage = "{wrapper: <import path, e.g. gymnasium.wrappers.FrameStackObservation>, kwargs: {...}}"
    if isinstance(raw, str | bytes | Mapping) or not isinstance(raw, Sequence):
        raise ValueError(f"{key}={raw!r} is invalid: expected a list of {usage}")
    wrappers = []
    for i, item in enumerate(raw):
        target = item.get("wrapper") if isinstance(item, Mapping) else None
        extra = sorted(set(item) - {"wrapper", "kwargs"}) if isinstance(item, Mapping) else []
        wrapper_kwargs = item.get("kwargs") or {} if isinstance(item, Mapping) else None
        if not isinstance(target, str) or "." not in target or extra or not isinstance(wrapper_kwargs, Mapping):
            raise ValueError(f"{key}[{i}]={item!r} is invalid: expected {usage}")
        module, _, name = target.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{key}[{i}].wrapper={target!r} cannot be imported: {exc}") from None
        if not callable(cls):
            raise ValueError(f"{key}[{i}].wrapper={target!r} is not callable")
        wrappers.append((cls, dict(wrapper_kwargs)))
    return kwargs, wrappers


def _quantization(space: gym.Space) -> tuple[float | None, float | None]:
    """(scale the adapter multiplies observations by, grid they then lie on) for a Box observation space:
    uint8 images are scaled to [0, 1] on a 1/255 grid (as SB3 and CleanRL feed Atari frames to their CNNs), boolean
    ones (MinAtar) stay 0/1; anything else is continuous (None, None). Replay stores gridded observations as uint8
    (`replay.obs_storage=auto`)."""
    if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8:
        return 1.0 / 255.0, 1.0 / 255.0
    if isinstance(space, gym.spaces.Box) and space.dtype == np.bool_:
        return None, 1.0
    return None, None


def _frame_stack(env: gym.Env) -> int | None:
    """k when the env's observations are k-frame stacks laid out frame after frame (FrameStackObservation as the
    last wrapper, padding an episode's start with its first frame), else None: replay can then store each frame
    once (`replay.frame_stack=auto`)."""
    if isinstance(env, gym.wrappers.FrameStackObservation) and isinstance(env.padding_type, str) \
            and env.padding_type == "reset":  # fmt: skip
        return int(env.stack_size)
    return None


def check_gym_id(env_id: str, env_kwargs: dict | None = None) -> TaskSpec:
    """Validate a gymnasium id (registered, Box observation, Discrete actions) with its wrappers; return its
    TaskSpec."""
    _import_registrations(env_id)
    if env_id not in gym.registry:
        close = [k for k in gym.registry if k.split("-")[0].lower() == env_id.split("-")[0].lower()]
        hint = f" (did you mean {close[:3]}?)" if close else ""
        extras = ", ".join(f"'.[{extra}]' for {module}" for module, extra in _REGISTERING_MODULES)
        raise ValueError(
            f"task_set.tasks: {env_id!r} is not a registered gymnasium id{hint}; ids from optional packages need "
            f"their extra installed ({extras})"
        )
    env = make_single(env_id, env_kwargs, flatten=False)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ValueError(
            f"task_set.tasks: {env_id!r} has action space {act_space}; DQN needs a Discrete action space"
        )
    if not _flattenable(obs_space):
        raise ValueError(
            f"task_set.tasks: {env_id!r} has observation space {obs_space}; mtdqn needs a Box "
            "(or a Dict/Tuple of Boxes, which it flattens)"
        )
    obs_dim = int(gym.spaces.flatdim(obs_space))
    image = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) in (2, 3)  # (H, W) or with channels
    return TaskSpec(name=env_id.replace("/", "-"), obs_dim=obs_dim, n_actions=int(act_space.n),
                    obs_shape=tuple(int(d) for d in obs_space.shape) if image else None,
                    obs_quantum=_quantization(obs_space)[1], reward_threshold=_reward_threshold(env_id))


def _reward_threshold(env_id: str) -> float | None:
    """The registered EnvSpec.reward_threshold (None where gymnasium names none)."""
    threshold = gym.spec(env_id).reward_threshold
    return None if threshold is None else float(threshold)


def _flattenable(space: gym.Space) -> bool:
    """A Box, or a Dict / Tuple whose leaves are all Boxes."""
    if isinstance(space, gym.spaces.Box):
        return True
    if isinstance(space, gym.spaces.Dict):
        return all(_flattenable(s) for s in space.spaces.values())
    if isinstance(space, gym.spaces.Tuple):
        return all(_flattenable(s) for s in space.spaces)
    return False


def make_single(env_id: str, env_kwargs: dict | None = None, flatten: bool = True) -> gym.Env:
    """gymnasium.make with task_set.env_kwargs, then its `wrappers` in order, then (`flatten`) Dict / Tuple
    observations flattened into one vector."""
    kwargs, wrappers = split_env_kwargs(env_kwargs)
    env = gym.make(env_id, **kwargs)
    for i, (cls, wrapper_kwargs) in enumerate(wrappers):
        try:
            env = cls(env, **wrapper_kwargs)
        except Exception as exc:  # the wrapper's own complaint, with the config key it came from
            env.close()
            raise ValueError(f"task_set.env_kwargs.{WRAPPERS_KEY}[{i}] ({cls.__name__}{wrapper_kwargs}) on "
                             f"{env_id!r}: {exc}") from exc
    if flatten and not isinstance(env.observation_space, gym.spaces.Box):
        env = gym.wrappers.FlattenObservation(env)
    return env


class GymVecEnv:
    """N gymnasium envs stepped in a plain loop with same-step autoreset, writing into preallocated arrays.

    Lighter than gymnasium's SyncVectorEnv (no info merging, no deep copies): for CartPole this is the difference
    between ~70 us and ~250 us per vector step. Env i is seeded with seed + i at `reset`; later episodes continue
    each env's own RNG, exactly as gymnasium's vector envs do. uint8 observations (Atari frames) come out as
    float32 in [0, 1] (x / 255); `obs_quantum` says which grid observations lie on (None: continuous), and
    `obs_frames` how many frames each observation stacks (None: not a frame stack).
    """

    def __init__(
        self, env_id: str, num_envs: int, device: str | torch.device = "cpu", env_kwargs: dict | None = None
    ) -> None:
        spec = check_gym_id(env_id, env_kwargs)
        self.env_id, self.num_envs, self.obs_dim, self.n_actions = env_id, num_envs, spec.obs_dim, spec.n_actions
        self.device = torch.device(device)
        self.envs = [make_single(env_id, env_kwargs) for _ in range(num_envs)]
        self.obs_scale, self.obs_quantum = _quantization(self.envs[0].observation_space)
        self.obs_frames = _frame_stack(self.envs[0])
        self._next_obs = np.zeros((num_envs, self.obs_dim), dtype=np.float32)
        self._obs = np.zeros((num_envs, self.obs_dim), dtype=np.float32)
        self._reward = np.zeros(num_envs, dtype=np.float32)
        self._terminated = np.zeros(num_envs, dtype=bool)
        self._truncated = np.zeros(num_envs, dtype=bool)

    def _tensor(self, x: np.ndarray) -> Tensor:
        return torch.from_numpy(x.copy()).to(self.device)

    def reset(self, seed: int | None = None) -> Tensor:
        """Reset all envs; env i is seeded with seed + i."""
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=None if seed is None else seed + i)
            self._obs[i] = np.asarray(obs, dtype=np.float32).reshape(-1)
        if self.obs_scale is not None:
            self._obs *= self.obs_scale
        return self._tensor(self._obs)

    def step(self, actions: Tensor) -> StepResult:
        """Step all envs; a finished env reports its final observation as next_obs and is reset at once."""
        for i, (env, action) in enumerate(zip(self.envs, actions.tolist(), strict=True)):
            obs, reward, terminated, truncated, _ = env.step(action)
            self._next_obs[i] = np.asarray(obs, dtype=np.float32).reshape(-1)
            self._reward[i], self._terminated[i], self._truncated[i] = reward, terminated, truncated
            if terminated or truncated:
                obs, _ = env.reset()
            self._obs[i] = np.asarray(obs, dtype=np.float32).reshape(-1)
        if self.obs_scale is not None:
            self._next_obs *= self.obs_scale
            self._obs *= self.obs_scale
        return StepResult(
            next_obs=self._tensor(self._next_obs),
            reward=self._tensor(self._reward),
            terminated=self._tensor(self._terminated),
            truncated=self._tensor(self._truncated),
            obs=self._tensor(self._obs),
        )

    def close(self) -> None:
        """Close every env."""
        for env in self.envs:
            env.close()

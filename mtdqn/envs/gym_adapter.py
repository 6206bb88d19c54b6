"""Adapter from any gymnasium environment id (Box obs, Discrete actions) to the TensorVecEnv protocol."""

from __future__ import annotations

import difflib
import importlib
import os
import warnings
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


_REGISTERED: set[str] = set()  # modules whose register_envs() already ran (again, it re-registers every id noisily)


def _import_registrations(env_id: str) -> None:
    """Import optional env packages (quietly) until `env_id` is registered; each package's registration runs once."""
    for module, _extra in _REGISTERING_MODULES:
        if env_id in gym.registry:
            return
        if module in _REGISTERED:
            continue
        _REGISTERED.add(module)
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


def split_module(env_id: str) -> tuple[str | None, str]:
    """(module, id) of gymnasium's `module:EnvId` syntax (gymnasium.make imports `module` first, which registers
    `EnvId`); (None, env_id) for a plain id."""
    module, sep, name = env_id.partition(":")
    return (module, name) if sep else (None, env_id)


def task_name(env_id: str) -> str:
    """A task's name in metrics, reports and file names: the gymnasium id without its `module:` prefix and with '/'
    as '-' ('MinAtar/Breakout-v1' -> 'MinAtar-Breakout-v1', 'mypkg.envs:MyEnv-v0' -> 'MyEnv-v0')."""
    return split_module(env_id)[1].replace("/", "-")


def _import_module_of(env_id: str) -> str:
    """Import the module of a `module:EnvId` id (the user's own environments register themselves on import, as
    gymnasium.make expects); return the bare id."""
    module, name = split_module(env_id)
    if module is None:
        return name
    if not module or not name or ":" in name:
        raise ValueError(f"task_set.tasks: {env_id!r} is not a gymnasium id; expected <id> or <module>:<id> "
                         "(e.g. mypkg.envs:MyEnv-v0)")
    try:
        importlib.import_module(module)
    except Exception as exc:  # not found, or the module's own import failing
        raise ValueError(f"task_set.tasks: {env_id!r}: module {module!r} cannot be imported ({type(exc).__name__}: "
                         f"{exc}); it must be importable (installed, or on PYTHONPATH) and call "
                         f"gymnasium.register(id={name!r}, ...)") from None
    return name


def _close_ids(env_id: str) -> list[str]:
    """Registered ids near `env_id`: the same name in other versions first, then similar spellings."""
    ids = sorted(gym.registry)
    same = [k for k in ids if k.split("-")[0].lower() == env_id.split("-")[0].lower()]
    lowered = {k.lower(): k for k in ids}
    similar = [lowered[k] for k in difflib.get_close_matches(env_id.lower(), list(lowered), n=3, cutoff=0.75)]
    return list(dict.fromkeys([*same, *similar]))[:3]


def check_gym_id(env_id: str, env_kwargs: dict | None = None) -> TaskSpec:
    """Validate a gymnasium id (registered, Box observation, Discrete actions) with its wrappers; return its
    TaskSpec. `module:EnvId` imports `module` first (gymnasium's syntax for an env the module registers)."""
    module = split_module(env_id)[0]
    name = _import_module_of(env_id)
    _import_registrations(name)
    if name not in gym.registry:
        close = _close_ids(name)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        if module is not None:
            raise ValueError(f"task_set.tasks: {env_id!r}: module {module!r} was imported but {name!r} is not a "
                             f"registered gymnasium id{hint}; the module must call gymnasium.register(id={name!r}, "
                             "...) when imported")
        extras = ", ".join(f"'.[{extra}]' for {module}" for module, extra in _REGISTERING_MODULES)
        raise ValueError(
            f"task_set.tasks: {env_id!r} is not a registered gymnasium id{hint}; ids from optional packages need "
            f"their extra installed ({extras}), your own environments the module that registers them "
            "(<module>:<id>, e.g. mypkg.envs:MyEnv-v0)"
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
    return TaskSpec(name=task_name(env_id), obs_dim=obs_dim, n_actions=int(act_space.n),
                    obs_shape=tuple(int(d) for d in obs_space.shape) if image else None,
                    obs_quantum=_quantization(obs_space)[1], reward_threshold=_reward_threshold(name))


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


def make_single(env_id: str, env_kwargs: dict | None = None, flatten: bool = True,
                render_mode: str | None = None) -> gym.Env:
    """gymnasium.make with task_set.env_kwargs (and `render_mode` where given), then its `wrappers` in order, then
    (`flatten`) Dict / Tuple observations flattened into one vector."""
    kwargs, wrappers = split_env_kwargs(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws rgb_array frames off-screen: no display
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as exc:  # the env's own package (Box2D, MuJoCo, pygame) is missing
        raise ValueError(f"task_set.tasks: {env_id!r} needs a package that is not installed: {exc}") from exc
    except Exception as exc:  # e.g. a keyword the env does not take: name the key it came from
        given = {k: v for k, v in kwargs.items() if k != "render_mode"}
        if not given:
            mode = f", render_mode={render_mode!r}" if render_mode else ""
            raise ValueError(f"task_set.tasks: gymnasium.make({env_id!r}{mode}) failed: {type(exc).__name__}: "
                             f"{exc}") from exc
        raise ValueError(f"task_set.env_kwargs={given}: gymnasium.make({env_id!r}, ...) failed: "
                         f"{type(exc).__name__}: {exc}") from exc
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


RENDER_MODES = (None, "rgb_array")
MIN_FRAME_SIDE = 160  # smaller frames (MinAtar's 10 x 10) are enlarged by whole pixels to at least this


def rgb_frame(frame: Any) -> np.ndarray:
    """An env's rgb_array frame as uint8 (H, W, 3): floats in [0, 1] (MinAtar) scaled to 0-255, gray images
    repeated into three channels, and small images enlarged by a whole factor (nearest neighbour) so that the
    shorter side is at least MIN_FRAME_SIDE pixels."""
    a = np.asarray(frame)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"an rgb_array frame must be (H, W, 3), (H, W, 4) or (H, W); got shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        a = np.clip(a * 255.0 if a.size and a.max() <= 1.0 else a, 0.0, 255.0).round().astype(np.uint8)
    k = -(-MIN_FRAME_SIDE // max(min(a.shape[:2]), 1))
    if k > 1:
        a = a.repeat(k, axis=0).repeat(k, axis=1)
    return np.ascontiguousarray(a)


# gymnasium's passive env checker on an env's first render, about what rgb_frame and video_fps already handle
# (MinAtar draws float frames and declares no render_fps): not the user's concern, so not printed
_RENDER_NOTES = (".*RGB-array rendering should return a numpy array with dtype uint8", ".*No render fps was declared")


def rendered(env: gym.Env) -> np.ndarray:
    """`env.render()` as a uint8 (H, W, 3) frame (`rgb_frame`), without the passive checker's notes above."""
    with warnings.catch_warnings():
        for note in _RENDER_NOTES:
            warnings.filterwarnings("ignore", message=note)
        return rgb_frame(env.render())


def check_render(env_id: str, env_kwargs: dict | None = None) -> None:
    """Refuse, before training, a gymnasium task that cannot draw rgb_array frames (no such render mode, or its
    renderer missing: classic control needs pygame, the optional extra '.[render]'); builds one env, resets it
    and draws its first frame."""
    check_gym_id(env_id, env_kwargs)  # registered (optional packages imported), usable spaces
    env = make_single(env_id, env_kwargs)
    modes = list(env.metadata.get("render_modes") or [])
    env.close()
    if "rgb_array" not in modes:
        raise ValueError(f"{env_id!r} cannot draw frames: its render modes are {modes}, and a video needs "
                         "'rgb_array'")
    try:
        env = make_single(env_id, env_kwargs, render_mode="rgb_array")
    except Exception as exc:  # the env's own complaint, e.g. a missing renderer package
        raise ValueError(f"{env_id!r} cannot draw frames: {type(exc).__name__}: {exc}") from exc
    try:
        env.reset(seed=0)
        rendered(env)
    except Exception as exc:
        hint = " (mtdqn's optional extra installs it: pip install -c constraints.txt -e '.[render]')" \
            if "pygame" in str(exc) else ""
        raise ValueError(f"{env_id!r} cannot draw frames: {type(exc).__name__}: {exc}{hint}") from exc
    finally:
        env.close()


def _steps_per_second(env: gym.Env) -> int:
    """Env steps per second of game time, for a video with one frame per step: the env's render_fps over the
    frames each step skips (AtariPreprocessing's frame_skip, ALE's own frameskip), at most 50 (GIF players hold a
    frame at least 20 ms); 10 where the env declares no fps (MinAtar)."""
    fps = env.metadata.get("render_fps")
    if not fps:
        return 10
    skip, layer = 1, env
    while layer is not None:
        own = vars(layer)  # this layer's attributes only (a wrapper's getattr would repeat an inner one's)
        for name in ("frame_skip", "_frameskip"):
            if isinstance(own.get(name), int) and own[name] > 1:
                skip *= own[name]
        layer = own.get("env")
    return max(1, min(50, round(float(fps) / skip)))


class GymVecEnv:
    """N gymnasium envs stepped in a plain loop with same-step autoreset, writing into preallocated arrays.

    Lighter than gymnasium's SyncVectorEnv (no info merging, no deep copies): for CartPole this is the difference
    between ~70 us and ~250 us per vector step. Env i is seeded with seed + i at `reset`; later episodes continue
    each env's own RNG, exactly as gymnasium's vector envs do. Actions are 0..n-1 (a Discrete(n, start=s) env gets
    each one plus s). uint8 observations (Atari frames) come out as
    float32 in [0, 1] (x / 255); `obs_quantum` says which grid observations lie on (None: continuous), and
    `obs_frames` how many frames each observation stacks (None: not a frame stack). With
    `render_mode="rgb_array"`, `render(i)` draws env i (evaluation videos).
    """

    def __init__(
        self, env_id: str, num_envs: int, device: str | torch.device = "cpu", env_kwargs: dict | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode={render_mode!r} is not one of {RENDER_MODES}")
        spec = check_gym_id(env_id, env_kwargs)
        self.env_id, self.num_envs, self.obs_dim, self.n_actions = env_id, num_envs, spec.obs_dim, spec.n_actions
        self.device, self.render_mode = torch.device(device), render_mode
        self.envs = [make_single(env_id, env_kwargs, render_mode=render_mode) for _ in range(num_envs)]
        self.render_fps = _steps_per_second(self.envs[0])
        self.obs_scale, self.obs_quantum = _quantization(self.envs[0].observation_space)
        self.obs_frames = _frame_stack(self.envs[0])
        # the agent's actions are 0..n-1; a Discrete(n, start=s) env takes s..s+n-1
        self.action_start = int(self.envs[0].action_space.start)
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
            obs, reward, terminated, truncated, _ = env.step(action + self.action_start)
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

    def render(self, i: int = 0) -> np.ndarray:
        """env i's current frame, uint8 (H, W, 3) (see `rgb_frame`); needs render_mode='rgb_array'."""
        if self.render_mode is None:
            raise ValueError(f"GymVecEnv({self.env_id!r}) was built without render_mode='rgb_array': it cannot "
                             "draw frames")
        return rendered(self.envs[i])

    def close(self) -> None:
        """Close every env."""
        for env in self.envs:
            env.close()

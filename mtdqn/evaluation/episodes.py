"""Greedy evaluation episodes on a batched env: one full episode per env, all envs in parallel."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mtdqn.envs.base import TensorVecEnv


@torch.no_grad()
def run_episodes(
    policy: Callable[[Tensor], Tensor], env: TensorVecEnv, seed: int, max_steps: int = 100_000
) -> Tensor:
    """Return (N,) returns of the first episode of each of the env's N copies, seeded seed + i."""
    obs = env.reset(seed=seed)
    n = env.num_envs
    returns = torch.zeros(n, device=env.device)
    running = torch.ones(n, dtype=torch.bool, device=env.device)
    for _ in range(max_steps):
        res = env.step(policy(obs))
        returns += res.reward * running
        running &= ~(res.terminated | res.truncated)
        if not bool(running.any()):
            break
        obs = res.obs
    return returns


@torch.no_grad()
def record_episode(policy: Callable[[Tensor], Tensor], env: TensorVecEnv, seed: int, max_steps: int = 100_000) -> list:
    """Frames (uint8 HxWx3 arrays) of env 0's first episode; the env must offer `render(i)`."""
    obs = env.reset(seed=seed)
    frames = [env.render(0)]
    for _ in range(max_steps):
        res = env.step(policy(obs))
        if bool(res.terminated[0] | res.truncated[0]):
            break
        obs = res.obs
        frames.append(env.render(0))
    return frames


def save_gif(frames: list, path, fps: int = 10) -> None:
    """Write frames as an animated GIF (Pillow)."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)

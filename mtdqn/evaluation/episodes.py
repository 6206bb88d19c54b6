"""Greedy evaluation episodes on a batched env: one full episode per env, all envs in parallel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtdqn.envs.base import TensorVecEnv


@dataclass(frozen=True)
class EpisodeStats:
    """The first episode of each of N env copies: returns (N,), lengths (N,) in steps, `completed` (N,) bool
    (reached the time limit or the step cap instead of terminating), and, for envs that report why episodes end
    (`termination_causes`, e.g. the driving simulator), `causes` {cause: (N,) bool} (empty otherwise)."""

    returns: Tensor
    lengths: Tensor
    completed: Tensor
    causes: dict[str, Tensor] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        """{"episode_length": mean length, "completion_rate": share completed, "<cause>_rate": share ended by it}."""
        out = {"episode_length": float(self.lengths.float().mean()),
               "completion_rate": float(self.completed.float().mean())}
        out.update({f"{name}_rate": float(mask.float().mean()) for name, mask in self.causes.items()})
        return out


@torch.no_grad()
def run_episode_stats(
    policy: Callable[[Tensor], Tensor], env: TensorVecEnv, seed: int, max_steps: int = 100_000
) -> EpisodeStats:
    """Run the first episode of each of the env's N copies (seeded seed + i) with `policy`; see EpisodeStats."""
    names = tuple(getattr(env, "termination_causes", ()) or ())
    if names:
        env.set_track_causes(True)
    try:
        obs = env.reset(seed=seed)
        n, dev = env.num_envs, env.device
        returns = torch.zeros(n, device=dev)
        lengths = torch.zeros(n, dtype=torch.int64, device=dev)
        running = torch.ones(n, dtype=torch.bool, device=dev)
        terminated = torch.zeros(n, dtype=torch.bool, device=dev)
        cause = torch.zeros(n, dtype=torch.int64, device=dev)
        for _ in range(max_steps):
            res = env.step(policy(obs))
            returns += res.reward * running
            lengths += running
            ended = running & res.terminated
            terminated |= ended
            if names:
                cause = torch.where(ended, env.last_termination_cause, cause)
            running &= ~(res.terminated | res.truncated)
            if not bool(running.any()):
                break
            obs = res.obs
    finally:
        if names:
            env.set_track_causes(False)
    causes = {name: cause == k for k, name in enumerate(names, start=1)}
    return EpisodeStats(returns, lengths, ~terminated, causes)


def run_episodes(
    policy: Callable[[Tensor], Tensor], env: TensorVecEnv, seed: int, max_steps: int = 100_000
) -> Tensor:
    """Return (N,) returns of the first episode of each of the env's N copies, seeded seed + i."""
    return run_episode_stats(policy, env, seed, max_steps).returns


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


def epsilon_greedy(greedy: Callable[[Tensor], Tensor], n_actions: int, epsilon: float, seed: int, index: int = 0,
                   draws: int | None = None) -> Callable[[Tensor], Tensor]:
    """`greedy` itself at epsilon 0, else epsilon-greedy with a generator seeded from `seed` and the task's `index`
    at its first call (a new policy per evaluation: evaluations of one policy repeat exactly). `draws` (default: the batch size) random
    numbers are drawn per step and the first ones used, so a 1-env recording that draws as many as an evaluation's
    envs plays exactly its episode 0."""
    if epsilon == 0.0:
        return greedy
    gen: torch.Generator | None = None

    def act(obs: Tensor) -> Tensor:
        nonlocal gen
        if gen is None or gen.device != obs.device:
            gen = torch.Generator(device=obs.device)
            gen.manual_seed(seed + 7_919 * index)
        n = obs.shape[0]
        size = max(n, draws or 0)
        actions = greedy(obs)
        explore = torch.rand(size, generator=gen, device=obs.device)[:n] < epsilon
        random = torch.randint(0, n_actions, (size,), generator=gen, device=obs.device)[:n]
        return torch.where(explore, random, actions)

    return act

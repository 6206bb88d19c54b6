"""A user's own gymnasium environment, registered when this module is imported (as `module:EnvId` expects):
`task_set.tasks=[tests.helpers.custom_envs:OffsetActions-v0]`. Its actions are Discrete(3, start=1), i.e. 1, 2, 3:
an adapter that sent the agent's 0..2 unshifted fails the env's own assertion."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

ENV_ID = "OffsetActions-v0"
GOOD_ACTION = 2  # the env's action worth reward 1 (the agent's action 1)


class OffsetActionsEnv(gym.Env):
    """Two observations (the step count, a constant), actions 1..3, reward 1 for action 2, 5 steps an episode."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(3, start=1)
        self.render_mode, self.t = render_mode, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, 1.0], dtype=np.float32), {}

    def step(self, action):
        assert self.action_space.contains(action), action
        self.t += 1
        reward = 1.0 if int(action) == GOOD_ACTION else 0.0
        return np.array([self.t, 1.0], dtype=np.float32), reward, self.t >= 5, False, {}

    def render(self):
        frame = np.zeros((16, 16, 3), dtype=np.uint8)
        frame[:, : self.t * 3] = 255
        return frame


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=OffsetActionsEnv, max_episode_steps=50)

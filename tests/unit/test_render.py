"""Frames of gymnasium tasks for videos: GymVecEnv.render, the rgb_frame conversion, and check_render refusing
tasks that cannot draw (before training)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from mtdqn.envs import GymVecEnv, check_render, env_factory
from mtdqn.envs.gym_adapter import MIN_FRAME_SIDE, rgb_frame

pytestmark = pytest.mark.filterwarnings("ignore:.*RGB-array rendering should return.*")  # the toy env's gray floats


class _ToyEnv(gym.Env):
    """Box obs, 2 actions, 5-step episodes; `render` draws an 8 x 8 gray float image whose brightness is t / 5."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode, self.t = render_mode, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, dtype=np.float32), 1.0, self.t >= 5, False, {}

    def render(self):
        return np.full((8, 8), self.t / 5.0)


class _NoRenderEnv(_ToyEnv):
    metadata = {"render_modes": []}


class _MissingRendererEnv(_ToyEnv):
    def render(self):
        raise gym.error.DependencyNotInstalled('pygame is not installed, run `pip install "gymnasium[classic-control]"`')


class FrameSkip(gym.Wrapper):
    """Stands in for AtariPreprocessing: each step covers `frame_skip` frames of the game."""

    def __init__(self, env, frame_skip):
        super().__init__(env)
        self.frame_skip = frame_skip


for _name, _cls in (("Toy", _ToyEnv), ("NoRender", _NoRenderEnv), ("MissingRenderer", _MissingRendererEnv)):
    if f"mtdqn-test/{_name}-v0" not in gym.registry:
        gym.register(f"mtdqn-test/{_name}-v0", entry_point=_cls)


def test_rgb_frame_scales_floats_repeats_gray_and_enlarges_small_images():
    gray = np.array([[0.0, 1.0], [0.5, 0.25]])
    f = rgb_frame(gray)
    assert f.dtype == np.uint8 and f.shape == (MIN_FRAME_SIDE, MIN_FRAME_SIDE, 3)
    k = MIN_FRAME_SIDE // 2
    assert f[0, 0].tolist() == [0, 0, 0] and f[0, k].tolist() == [255, 255, 255] and f[k, 0].tolist() == [128] * 3
    big = np.random.default_rng(0).integers(0, 256, (200, 300, 4), dtype=np.uint8)
    assert np.array_equal(rgb_frame(big), big[..., :3])  # uint8 RGB(A) large enough: only the alpha dropped
    with pytest.raises(ValueError, match="rgb_array frame"):
        rgb_frame(np.zeros((4, 4, 2)))


def test_a_gym_env_built_to_render_draws_every_copy_and_one_built_without_says_so():
    env = env_factory("gym", "mtdqn-test/Toy-v0")(num_envs=2, device="cpu", render_mode="rgb_array")
    env.reset(seed=0)
    env.step(torch.zeros(2, dtype=torch.int64))
    frame = env.render(1)
    assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8 and int(frame[0, 0, 0]) == round(255 / 5)
    assert env.render_fps == 4  # the env's render_fps: one frame per step
    skipping = {"wrappers": [{"wrapper": "tests.unit.test_render.FrameSkip", "kwargs": {"frame_skip": 2}}]}
    assert GymVecEnv("mtdqn-test/Toy-v0", 1, env_kwargs=skipping).render_fps == 2  # a step = 2 frames: half
    with pytest.raises(ValueError, match="without render_mode='rgb_array'"):
        GymVecEnv("mtdqn-test/Toy-v0", num_envs=1).render(0)
    with pytest.raises(ValueError, match="render_mode='human' is not one of"):
        GymVecEnv("mtdqn-test/Toy-v0", num_envs=1, render_mode="human")


def test_check_render_refuses_tasks_that_cannot_draw_with_the_reason():
    check_render("gym", "mtdqn-test/Toy-v0")
    check_render("driving", "urban")  # the simulator always draws
    with pytest.raises(ValueError, match=r"'mtdqn-test/NoRender-v0' cannot draw frames: its render modes are \[\]"):
        check_render("gym", "mtdqn-test/NoRender-v0")
    with pytest.raises(ValueError, match=r"DependencyNotInstalled: pygame is not installed.*'\.\[render\]'"):
        check_render("gym", "mtdqn-test/MissingRenderer-v0")
    with pytest.raises(ValueError, match="not a registered gymnasium id"):
        check_render("gym", "NoSuchEnv-v0")


def test_classic_control_frames_with_pygame():
    pytest.importorskip("pygame", reason="classic-control frames need pygame (the optional extra .[render])")
    env = GymVecEnv("CartPole-v1", num_envs=1, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render(0)
    assert frame.shape == (400, 600, 3) and frame.dtype == np.uint8 and len(np.unique(frame.reshape(-1, 3), axis=0)) > 2


def test_minatar_frames_and_unknown_ids_print_no_gymnasium_notes():
    """MinAtar's float frames and missing render_fps are handled (rgb_frame, video fps), so the passive checker's
    notes on them are not printed; looking up an unknown id registers MinAtar's ids once, not again per lookup."""
    import warnings

    pytest.importorskip("minatar", reason="MinAtar ids need .[minatar]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = GymVecEnv("MinAtar/Breakout-v1", num_envs=1, render_mode="rgb_array")
        env.reset(seed=0)
        frame = env.render(0)
        for _ in range(2):
            with pytest.raises(ValueError, match="not a registered gymnasium id"):
                check_render("gym", "NoSuchEnv-v0")
    assert frame.dtype == np.uint8 and frame.ndim == 3
    assert [str(w.message) for w in caught if "WARN" in str(w.message)] == []

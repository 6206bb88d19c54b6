"""The driving simulator's optional stop-point observation (`DrivingConfig.stop_feature`, hazards.py)."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from mtdqn.envs import env_factory, task_spec
from mtdqn.envs.driving import TASKS, DrivingConfig, DrivingVecEnv
from mtdqn.envs.driving import config as C
from mtdqn.envs.driving.hazards import STOP_NAMES
from mtdqn.envs.driving.sim import OBS_DIM, obs_bounds
from tests.helpers.driving import constant_actions

STOP = DrivingConfig(curvature_range=0.0, stop_feature=True)
RED = 0.5 * (20.0 - C.AMBER_TIME) + C.AMBER_TIME + 1.0  # s into the default cycle: red
STRAIGHT_COAST = 4


def _stop(env: DrivingVecEnv, **state) -> list[float]:
    """[stop_present, stop_distance] after setting `state` (pedestrian / light fields relative to the ego's s)."""
    s = env.get_state()["s"]
    fields = {k: (v(s) if callable(v) else v) for k, v in state.items()}
    obs = env.set_state(d=0.0, psi=0.0, v=8.0, **fields)
    assert obs.shape == (env.num_envs, OBS_DIM + len(STOP_NAMES))
    return [round(float(x), 4) for x in obs[0, OBS_DIM:]]


def test_stop_point_is_the_nearest_pedestrian_in_the_path_or_red_or_amber_light():
    ped = DrivingVecEnv("pedestrian", 1, config=STOP)
    ped.reset(3)
    far = lambda s: s + 500.0  # noqa: E731 - a pedestrian out of sensor range
    assert _stop(ped, ps=lambda s: torch.stack([s + 20.0, s + 500.0]), py=0.0, pphase=0.0) == [1.0, 0.2]  # in lane
    assert _stop(ped, ps=lambda s: torch.stack([s + 30.0, s + 500.0]), py=-2.9, pvel=1.4, pphase=1.0) == [1.0, 0.3]  # walking in
    assert _stop(ped, ps=lambda s: torch.stack([s + 30.0, s + 500.0]), py=-2.9, pphase=0.0) == [0.0, 0.0]  # waiting
    assert _stop(ped, ps=lambda s: torch.stack([s + 30.0, s + 500.0]), py=2.9, pphase=2.0) == [0.0, 0.0]  # across
    assert _stop(ped, ps=far, pphase=0.0) == [0.0, 0.0]
    light = DrivingVecEnv("traffic_light", 1, config=STOP)
    light.reset(5)
    assert _stop(light, t=0, loff=RED, ls=lambda s: s + 50.0) == [1.0, 0.5]
    assert _stop(light, t=0, loff=0.5 * (20.0 - C.AMBER_TIME) + 1.0, ls=lambda s: s + 40.0) == [1.0, 0.4]  # amber
    assert _stop(light, t=0, loff=1.0, ls=lambda s: s + 50.0) == [0.0, 0.0]  # green
    assert _stop(light, t=0, loff=RED, ls=lambda s: s + 150.0) == [0.0, 0.0]  # beyond the sensor's 100 m
    urban = DrivingVecEnv("urban", 1, config=STOP)
    urban.reset(7)
    both = {"t": 0, "loff": RED, "ps": lambda s: torch.stack([s + 35.0, s + 500.0]), "py": 0.0, "pphase": 0.0}
    assert _stop(urban, ls=lambda s: s + 50.0, **both) == [1.0, 0.35]  # the nearer of the two
    assert _stop(urban, ls=lambda s: s + 25.0, **both) == [1.0, 0.25]


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_the_option_only_appends_and_stays_within_its_declared_bounds(noise):
    """Same seed, same actions: the first 26 features are the plain env's, the stop point stays in its bounds and
    shows up in the hazard tasks only."""
    low, high = (torch.as_tensor(b) for b in obs_bounds(DrivingConfig(stop_feature=True)))
    for task in TASKS:
        plain = DrivingVecEnv(task, 16, config=DrivingConfig(obs_noise=noise))
        with_stop = DrivingVecEnv(task, 16, config=DrivingConfig(obs_noise=noise, stop_feature=True))
        plain.reset(9), with_stop.reset(9)
        seen = 0.0
        gen = torch.Generator().manual_seed(0)
        for _ in range(150):
            act = torch.randint(0, 9, (16,), generator=gen)
            ra, rb = plain.step(act), with_stop.step(act)
            for x, y in ((ra.next_obs, rb.next_obs), (ra.obs, rb.obs)):
                assert torch.equal(x, y[:, :OBS_DIM]) and ((y >= low) & (y <= high)).all(), task
            assert torch.equal(ra.reward, rb.reward)
            seen += float(rb.obs[:, OBS_DIM].sum())
        assert (seen > 0) == (task != "lane_keep"), task


def test_task_specs_gym_spaces_and_validation_follow_the_option():
    assert task_spec("driving", "pedestrian", {"stop_feature": True}).obs_dim == OBS_DIM + 2
    assert task_spec("driving", "pedestrian", {}).obs_dim == OBS_DIM
    env = env_factory("driving", "traffic_light", {"stop_feature": True})(num_envs=3, device="cpu")
    assert env.obs_dim == OBS_DIM + 2 and env.reset(0).shape == (3, OBS_DIM + 2)
    assert env.obs_names[-2:] == STOP_NAMES
    single = gym.make("mtdqn/Urban-v0", stop_feature=True)
    check_env(single.unwrapped)
    obs, _ = single.reset(seed=1)
    assert obs.shape == (OBS_DIM + 2,) and single.observation_space.contains(obs)
    obs, *_ = single.step(STRAIGHT_COAST)
    assert single.observation_space.contains(obs)
    with pytest.raises(ValueError, match=r"task_set.env_kwargs.stop_feature='yes' is invalid: expected true or false"):
        task_spec("driving", "urban", {"stop_feature": "yes"})
    vec = DrivingVecEnv("urban", 2, config=STOP)
    vec.reset(0)
    assert vec.step(constant_actions(2, STRAIGHT_COAST)).obs.shape == (2, OBS_DIM + 2)


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_stop_only_hides_the_hazard_slots_and_changes_nothing_else(noise):
    """Same seed, same actions: with stop_only the pedestrian and light slots read 0 and every other feature, the
    stop point (computed before the slots are cleared), rewards and terminations are those of stop_feature alone."""
    from mtdqn.envs.driving.hazards import PED0

    for task in ("pedestrian", "traffic_light", "urban"):
        shown = DrivingVecEnv(task, 16, config=DrivingConfig(obs_noise=noise, stop_feature=True))
        hidden = DrivingVecEnv(task, 16, config=DrivingConfig(obs_noise=noise, stop_feature=True, stop_only=True))
        shown.reset(9), hidden.reset(9)
        gen = torch.Generator().manual_seed(0)
        stops = 0.0
        for _ in range(150):
            act = torch.randint(0, 9, (16,), generator=gen)
            ra, rb = shown.step(act), hidden.step(act)
            for x, y in ((ra.next_obs, rb.next_obs), (ra.obs, rb.obs)):
                assert (y[:, PED0:OBS_DIM] == 0).all(), task
                assert torch.equal(x[:, :PED0], y[:, :PED0]) and torch.equal(x[:, OBS_DIM:], y[:, OBS_DIM:]), task
            assert torch.equal(ra.reward, rb.reward) and torch.equal(ra.terminated, rb.terminated)
            stops += float(rb.obs[:, OBS_DIM].sum())
        assert stops > 0, task  # the hazards still show, through the stop point
    with pytest.raises(ValueError, match=r"stop_only=true .* needs stop_feature=true"):
        task_spec("driving", "urban", {"stop_only": True})
    with pytest.raises(ValueError, match=r"task_set.env_kwargs.stop_only=1 is invalid: expected true or false"):
        task_spec("driving", "urban", {"stop_feature": True, "stop_only": 1})

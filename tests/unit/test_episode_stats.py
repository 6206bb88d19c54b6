"""Why episodes end: the driving simulator's termination causes and the evaluation's episode statistics."""

from __future__ import annotations

import torch

from mtdqn.envs.driving import DrivingConfig, DrivingVecEnv
from mtdqn.envs.driving import config as C
from mtdqn.envs.driving.controllers import random_policy, reference_policy
from mtdqn.envs.driving.sim import TERMINATION_CAUSES
from mtdqn.envs.wrappers import PerturbedVecEnv
from mtdqn.evaluation.episodes import run_episode_stats, run_episodes
from tests.helpers.driving import constant_actions

STRAIGHT = DrivingConfig(curvature_range=0.0)
STRAIGHT_COAST, STRAIGHT_THROTTLE = 4, 5
CODE = {name: k for k, name in enumerate(TERMINATION_CAUSES, start=1)}


def _tracked(task: str) -> DrivingVecEnv:
    env = DrivingVecEnv(task, 1, config=STRAIGHT)
    env.set_track_causes(True)
    env.reset(4)
    return env


def test_offroad_collision_and_red_light_report_their_cause() -> None:
    env = _tracked("lane_keep")
    env.set_state(d=float(env.get_state()["half_w"][0]) + C.OFFROAD_MARGIN - 0.05, psi=0.3, v=10.0)
    assert env.step(constant_actions(1, STRAIGHT_COAST)).terminated[0]
    assert int(env.last_termination_cause[0]) == CODE["offroad"]

    env = _tracked("urban")
    s = env.get_state()["s"]
    env.set_state(d=0.0, psi=0.0, v=8.0, ps=torch.stack([s + 2.5, s + 500.0]), py=0.0, pphase=1.0, ls=s + 300.0)
    assert env.step(constant_actions(1, STRAIGHT_COAST)).terminated[0]
    assert int(env.last_termination_cause[0]) == CODE["collision"]

    env = _tracked("urban")
    s = env.get_state()["s"]
    red_time = 0.5 * (20.0 - C.AMBER_TIME) + C.AMBER_TIME + 1.0
    env.set_state(d=0.0, psi=0.0, v=10.0, t=0, loff=red_time - C.DT, ls=s + 0.5, ps=s + 500.0)
    assert env.step(constant_actions(1, STRAIGHT_COAST)).terminated[0]
    assert int(env.last_termination_cause[0]) == CODE["red_light"]

    env.set_state(d=0.0, psi=0.0, v=5.0, ls=s + 300.0, ps=s + 500.0)
    assert not env.step(constant_actions(1, STRAIGHT_COAST)).terminated[0]
    assert int(env.last_termination_cause[0]) == 0


def test_tracking_causes_changes_no_trajectory_and_codes_exactly_the_terminations() -> None:
    plain, tracked = DrivingVecEnv("urban", 64), DrivingVecEnv("urban", 64)
    tracked.set_track_causes(True)
    pol_a, pol_b = random_policy(3), random_policy(3)
    oa, ob = plain.reset(11), tracked.reset(11)
    n_term = 0
    for _ in range(300):
        ra, rb = plain.step(pol_a(oa)), tracked.step(pol_b(ob))
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward)
        cause = tracked.last_termination_cause
        assert torch.equal(cause > 0, rb.terminated)  # a cause exactly where an episode terminated
        n_term += int(rb.terminated.sum())
        oa, ob = ra.obs, rb.obs
    assert n_term > 20
    assert plain.last_termination_cause is None  # off by default: the training path computes nothing extra


def test_episode_stats_split_every_episode_into_completed_or_one_cause() -> None:
    n = 48
    env = PerturbedVecEnv(DrivingVecEnv("urban", n))  # causes are read through wrappers
    ref = run_episode_stats(reference_policy("urban"), env, seed=5)
    assert ref.rates()["completion_rate"] == 1.0 and ref.rates()["collision_rate"] == 0.0
    assert torch.equal(ref.lengths, torch.full((n,), 1000))
    reckless = run_episode_stats(lambda obs: constant_actions(obs.shape[0], STRAIGHT_THROTTLE), env, seed=5)
    rates = reckless.rates()
    assert rates["completion_rate"] == 0.0
    per_episode = sum(reckless.causes[c].long() for c in TERMINATION_CAUSES) + reckless.completed.long()
    assert torch.equal(per_episode, torch.ones(n, dtype=torch.int64))  # every episode: completed or one cause
    assert rates["offroad_rate"] > 0.0  # full throttle straight on: off the road in the bends, or earlier ...
    assert rates["collision_rate"] + rates["red_light_rate"] > 0.0  # ... into a pedestrian or through a red light
    assert torch.equal(run_episodes(reference_policy("urban"), env, seed=5), ref.returns)
    assert env.env.track_causes is False  # switched off again after the evaluation


def test_episode_stats_of_an_env_without_causes() -> None:
    from mtdqn.envs.gym_adapter import GymVecEnv

    env = GymVecEnv("CartPole-v1", 4)
    try:
        stats = run_episode_stats(lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64), env, seed=0)
    finally:
        env.close()
    assert stats.causes == {} and set(stats.rates()) == {"episode_length", "completion_rate"}
    assert stats.rates()["completion_rate"] == 0.0 and 5 < stats.rates()["episode_length"] < 20
    assert torch.equal(stats.returns, stats.lengths.float())  # CartPole: reward 1 per step


def test_gymnasium_env_names_the_termination_cause() -> None:
    from mtdqn.envs.driving import DrivingEnv

    env = DrivingEnv("lane_keep", curvature_range=0.0)
    env.reset(seed=3)
    for _ in range(400):
        _, _, terminated, truncated, info = env.step(1)  # steer left and coast: off the road
        if terminated or truncated:
            break
    assert terminated and info == {"termination_cause": "offroad"}
    env.reset()
    _, _, terminated, _, info = env.step(4)
    assert not terminated and info == {}

"""Tests of the batched driving simulator (mtdqn.envs.driving)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from mtdqn.envs.base import TensorVecEnv
from mtdqn.envs.driving import REFERENCE_SCORES, TASKS, DrivingConfig, DrivingVecEnv, task_spec
from mtdqn.envs.driving import config as C
from mtdqn.envs.driving.controllers import evaluate_policy, random_policy, reference_policy
from mtdqn.envs.driving.gym_env import ENV_IDS, DrivingGymVectorEnv
from mtdqn.envs.driving.render import SIZE, render_env
from mtdqn.envs.driving.sim import OBS_DIM, OBS_HIGH, OBS_LOW, OBS_NAMES
from tests.helpers.driving import constant_actions

LEFT_COAST, STRAIGHT_BRAKE, STRAIGHT_COAST, STRAIGHT_THROTTLE = 1, 3, 4, 5
STRAIGHT = DrivingConfig(curvature_range=0.0)


def _rollout(env: DrivingVecEnv, actions: torch.Tensor, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """Reset with `seed`, apply actions (T, N); returns per-step (next_obs, reward, term, trunc, obs)."""
    out = [(env.reset(seed),)]
    for a in actions:
        out.append(tuple(env.step(a)))
    return out


# ---------------------------------------------------------------- construction / config
def test_protocol_and_unknown_task() -> None:
    env = DrivingVecEnv("urban", 3)
    assert isinstance(env, TensorVecEnv)
    assert (env.obs_dim, env.n_actions, env.num_envs) == (OBS_DIM, 9, 3) == (len(OBS_NAMES), 9, 3)
    with pytest.raises(ValueError, match="lane_keep"):
        DrivingVecEnv("highway", 2)


@pytest.mark.parametrize(
    ("field", "value"),
    [("obs_noise", -0.1), ("steer_delay", 11), ("steer_delay", 1.5), ("slip", 1.5), ("curvature_range", 0.05),
     ("pedestrian_rate", -1.0), ("light_cycle", 2.0), ("max_episode_steps", 0)],
)  # fmt: skip
def test_config_validation_names_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"DrivingConfig\.{field}="):
        DrivingConfig(**{field: value})


def test_task_spec_and_reference_scores() -> None:
    for task in TASKS:
        spec = task_spec(task)
        ref, rnd = REFERENCE_SCORES[task]
        assert (spec.obs_dim, spec.n_actions) == (OBS_DIM, 9)
        assert spec.reference_return == ref > rnd == spec.random_return
        assert spec.normalize(ref) == pytest.approx(1.0)


# ---------------------------------------------------------------- physics
def test_straight_road_no_steering_keeps_heading() -> None:
    env = DrivingVecEnv("lane_keep", 4, config=STRAIGHT)
    env.reset(0)
    psi0 = env.get_state()["psi"]
    for _ in range(50):
        env.step(constant_actions(4, STRAIGHT_COAST))
    st = env.get_state()
    assert torch.equal(st["psi"], psi0)
    assert torch.allclose(st["d"] - env.get_state()["d"], torch.zeros(4))


def test_braking_lowers_speed_and_speed_never_negative() -> None:
    env = DrivingVecEnv("lane_keep", 8, config=STRAIGHT)
    env.reset(1)
    env.set_state(v=10.0, psi=0.0, d=0.0)
    v_prev = env.get_state()["v"]
    for _ in range(40):
        env.step(constant_actions(8, STRAIGHT_BRAKE))
        v = env.get_state()["v"]
        assert (v >= 0).all()
        assert ((v < v_prev) | (v_prev == 0)).all()
        v_prev = v
    assert (v == 0).all()


def test_throttle_raises_speed_and_steering_left_turns_left() -> None:
    env = DrivingVecEnv("lane_keep", 2, config=STRAIGHT)
    env.reset(2)
    env.set_state(v=5.0, psi=0.0, d=0.0)
    env.step(torch.tensor([STRAIGHT_THROTTLE, LEFT_COAST]))
    st = env.get_state()
    assert st["v"][0] > 5.0 and st["psi"][0] == 0.0
    assert st["psi"][1] > 0.0  # positive heading error = towards the left (positive d)


# ---------------------------------------------------------------- rewards and terminations
def test_leaving_the_road_terminates_with_penalty() -> None:
    env = DrivingVecEnv("lane_keep", 1, config=STRAIGHT)
    env.reset(3)
    hw = float(env.get_state()["half_w"][0])
    env.set_state(d=hw + C.OFFROAD_MARGIN - 0.05, psi=0.3, v=10.0)
    res = env.step(constant_actions(1, STRAIGHT_COAST))
    assert res.terminated[0] and not res.truncated[0]
    assert res.reward[0] < -C.PENALTY_OFFROAD + 1.0
    assert res.next_obs[0, 2] > 1.0 and res.obs[0, 0] != res.next_obs[0, 0]  # final obs vs reset obs


def test_hitting_a_pedestrian_terminates_with_penalty() -> None:
    env = DrivingVecEnv("pedestrian", 1, config=STRAIGHT)
    env.reset(4)
    s = env.get_state()["s"]
    env.set_state(d=0.0, psi=0.0, v=8.0, ps=torch.stack([s + 2.5, s + 500.0]), py=0.0, pphase=1.0)
    res = env.step(constant_actions(1, STRAIGHT_COAST))
    assert res.terminated[0]
    assert res.reward[0] < -C.PENALTY_COLLISION + 1.0


@pytest.mark.parametrize("penalty", [0.0, 100.0])
def test_collision_and_red_light_penalties_are_knobs(penalty: float) -> None:
    cfg = DrivingConfig(curvature_range=0.0, collision_penalty=penalty, red_light_penalty=penalty)
    env = DrivingVecEnv("urban", 1, config=cfg)
    env.reset(4)
    s = env.get_state()["s"]
    env.set_state(d=0.0, psi=0.0, v=8.0, ps=torch.stack([s + 2.5, s + 500.0]), py=0.0, pphase=1.0, ls=s + 300.0)
    hit = env.step(constant_actions(1, STRAIGHT_COAST))
    assert hit.terminated[0] and -penalty < hit.reward[0] < -penalty + 1.0  # progress term in [0, 1)
    red_time = 0.5 * (20.0 - C.AMBER_TIME) + C.AMBER_TIME + 1.0
    s = env.get_state()["s"]
    env.set_state(d=0.0, psi=0.0, v=10.0, t=0, loff=red_time - C.DT, ls=s + 0.5, ps=s + 500.0)
    red = env.step(constant_actions(1, STRAIGHT_COAST))
    assert red.terminated[0] and -penalty < red.reward[0] < -penalty + 1.5


def test_pedestrian_far_to_the_side_is_not_a_collision() -> None:
    env = DrivingVecEnv("pedestrian", 1, config=STRAIGHT)
    env.reset(4)
    s = env.get_state()["s"]
    env.set_state(d=0.0, psi=0.0, v=8.0, ps=torch.stack([s + 2.5, s + 500.0]), py=-3.0, pphase=2.0)
    res = env.step(constant_actions(1, STRAIGHT_COAST))
    assert not res.terminated[0] and res.reward[0] > 0


def _light_env(phase_time: float, v: float, gap: float) -> DrivingVecEnv:
    """A traffic-light env whose next light is `gap` m ahead and `phase_time` s into its cycle after one step."""
    env = DrivingVecEnv("traffic_light", 1, config=STRAIGHT)
    env.reset(5)
    s = env.get_state()["s"]
    env.set_state(d=0.0, psi=0.0, v=v, t=0, loff=phase_time - C.DT, ls=s + gap)
    return env


def test_running_a_red_light_terminates_with_penalty() -> None:
    red_time = 0.5 * (20.0 - C.AMBER_TIME) + C.AMBER_TIME + 1.0
    env = _light_env(red_time, v=10.0, gap=0.5)
    assert env.observe()[0, OBS_NAMES.index("light_red")] == 1.0
    res = env.step(constant_actions(1, STRAIGHT_COAST))
    assert res.terminated[0] and res.reward[0] < -C.PENALTY_RED + 1.5


def test_crossing_on_green_is_fine() -> None:
    env = _light_env(1.0, v=10.0, gap=0.5)
    res = env.step(constant_actions(1, STRAIGHT_COAST))
    assert not res.terminated[0] and res.reward[0] > 0
    assert env.get_state()["ls"][0] > env.get_state()["s"][0] + 100  # the next light was spawned


def test_stopping_at_red_is_not_penalized() -> None:
    red_time = 0.5 * (20.0 - C.AMBER_TIME) + C.AMBER_TIME + 0.5
    env = _light_env(red_time, v=0.0, gap=3.0)
    rewards = [env.step(constant_actions(1, STRAIGHT_BRAKE)) for _ in range(40)]
    assert not any(bool(r.terminated[0] or r.truncated[0]) for r in rewards)
    assert all(abs(float(r.reward[0])) < 1e-6 for r in rewards)  # centred and standing: exactly zero


def test_time_limit_truncates() -> None:
    env = DrivingVecEnv("lane_keep", 2, config=DrivingConfig(max_episode_steps=7, curvature_range=0.0))
    env.reset(6)
    env.set_state(d=0.0, psi=0.0)
    flags = [env.step(constant_actions(2, STRAIGHT_COAST)) for _ in range(7)]
    assert not any(bool(f.truncated.any()) for f in flags[:6])
    assert flags[6].truncated.all() and not flags[6].terminated.any()
    assert (env.get_state()["t"] == 0).all() and (env.get_state()["episode"] == 1).all()


def test_an_episode_ending_at_the_time_limit_by_a_crash_is_terminated_not_truncated() -> None:
    """Terminated and truncated exclude each other: a crash on the last allowed step must not bootstrap (a
    truncated flag there would make replay treat the crash as a cut-off episode)."""
    env = DrivingVecEnv("lane_keep", 2, config=DrivingConfig(max_episode_steps=1, curvature_range=0.0))
    env.reset(3)
    hw = float(env.get_state()["half_w"][0])
    env.set_state(d=torch.tensor([hw + C.OFFROAD_MARGIN - 0.05, 0.0]), psi=torch.tensor([0.3, 0.0]), v=10.0)
    res = env.step(constant_actions(2, STRAIGHT_COAST))
    assert res.terminated.tolist() == [True, False]
    assert res.truncated.tolist() == [False, True]


# ---------------------------------------------------------------- determinism / batching
def _actions(n: int, steps: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # biased towards throttle and steering so episodes end by leaving the road as well as by the time limit
    return torch.multinomial(torch.tensor([3.0, 1, 3, 1, 1, 4, 3, 1, 3]), n * steps, True, generator=g).view(steps, n)


@pytest.mark.parametrize("task", TASKS)
def test_seeded_episodes_are_deterministic(task: str) -> None:
    cfg = DrivingConfig(max_episode_steps=80, obs_noise=0.05, slip=0.1, steer_delay=2)
    acts = _actions(4, 200, 0)
    a = _rollout(DrivingVecEnv(task, 4, config=cfg), acts, 11)
    b = _rollout(DrivingVecEnv(task, 4, config=cfg), acts, 11)
    c = _rollout(DrivingVecEnv(task, 4, config=cfg), acts, 12)
    assert all(torch.equal(x, y) for sa, sb in zip(a, b, strict=True) for x, y in zip(sa, sb, strict=True))
    assert not torch.equal(a[0][0], c[0][0])


@pytest.mark.parametrize("task", TASKS)
def test_batched_equals_single_env_runs(task: str) -> None:
    cfg = DrivingConfig(max_episode_steps=60, obs_noise=0.02, slip=0.05, steer_delay=1, pedestrian_rate=3.0)
    n, steps, seed = 8, 250, 100
    acts = _actions(n, steps, 1)
    batched = _rollout(DrivingVecEnv(task, n, config=cfg), acts, seed)
    n_done = sum(int((s[2] | s[3]).sum()) for s in batched[1:])
    assert n_done >= n * 3  # several autoresets happened
    for i in range(n):
        single = _rollout(DrivingVecEnv(task, 1, config=cfg), acts[:, i : i + 1], seed + i)
        for sb, ss in zip(batched, single, strict=True):
            for xb, xs in zip(sb, ss, strict=True):
                assert torch.equal(xb[i : i + 1], xs), (task, i)


def test_masked_and_subset_autoreset_agree() -> None:
    cfg = DrivingConfig(max_episode_steps=50, pedestrian_rate=3.0)
    acts = _actions(16, 150, 2)
    a = _rollout(DrivingVecEnv("urban", 16, config=cfg, reset_mode="subset"), acts, 3)
    b = _rollout(DrivingVecEnv("urban", 16, config=cfg, reset_mode="masked"), acts, 3)
    assert all(torch.equal(x, y) for sa, sb in zip(a, b, strict=True) for x, y in zip(sa, sb, strict=True))


@pytest.mark.parametrize("task", TASKS)
def test_cached_curvature_and_in_place_state_match_a_fresh_computation(task: str) -> None:
    """The step reuses the curvature of the last observation and updates state views in place; the same
    rollout without the cache, and after set_state / get_state round trips, is bit for bit identical."""
    cfg = DrivingConfig(max_episode_steps=60, pedestrian_rate=3.0)
    acts = _actions(32, 120, 4)
    cached = DrivingVecEnv(task, 32, config=cfg)
    plain = DrivingVecEnv(task, 32, config=cfg)
    plain._cache_kappa = False
    a, b = _rollout(cached, acts, 7), _rollout(plain, acts, 7)
    assert all(torch.equal(x, y) for sa, sb in zip(a, b, strict=True) for x, y in zip(sa, sb, strict=True))
    st = cached.get_state()
    assert cached.set_state(**st).equal(plain.observe())  # writing the state back changes nothing
    for a_t in acts[:30]:
        ra, rb = cached.step(a_t), plain.step(a_t)
        assert all(torch.equal(x, y) for x, y in zip(ra, rb, strict=True))
    st = cached.get_state()
    st["s"].add_(1.0)  # get_state hands out copies
    assert not torch.equal(cached.get_state()["s"], st["s"])


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_observations_within_declared_bounds(noise: float) -> None:
    low, high = torch.as_tensor(OBS_LOW), torch.as_tensor(OBS_HIGH)
    for task in TASKS:
        env = DrivingVecEnv(task, 32, config=DrivingConfig(obs_noise=noise, curvature_range=0.03, pedestrian_rate=5.0))
        obs = env.reset(7)
        for a in _actions(32, 200, 3):
            res = env.step(a)
            for o in (res.next_obs, res.obs):
                assert o.dtype == torch.float32 and o.shape == (32, OBS_DIM)
                assert ((o >= low) & (o <= high)).all(), task
            obs = res.obs
        assert obs.is_contiguous()


# ---------------------------------------------------------------- perturbation knobs
def test_obs_noise_changes_obs_but_not_state() -> None:
    clean = DrivingVecEnv("urban", 4)
    noisy = DrivingVecEnv("urban", 4, config=DrivingConfig(obs_noise=0.1))
    oc, on = clean.reset(9), noisy.reset(9)
    assert not torch.equal(oc, on)
    flag = OBS_NAMES.index("light_present")
    assert torch.equal(oc[:, flag], on[:, flag])  # presence flags stay clean
    for a in _actions(4, 30, 4):
        clean.step(a), noisy.step(a)
    sc, sn = clean.get_state(), noisy.get_state()
    assert all(torch.equal(sc[k], sn[k]) for k in sc)


@pytest.mark.parametrize("delay", [0, 1, 3])
def test_steer_delay_delays_heading_response(delay: int) -> None:
    env = DrivingVecEnv("lane_keep", 1, config=DrivingConfig(curvature_range=0.0, steer_delay=delay))
    env.reset(10)
    env.set_state(psi=0.0, d=0.0, v=10.0)
    headings = []
    for _ in range(delay + 2):
        env.step(constant_actions(1, LEFT_COAST))
        headings.append(float(env.get_state()["psi"][0]))
    assert all(h == 0.0 for h in headings[:delay])
    assert headings[delay] > 0.0


def test_slip_reduces_steering_effect() -> None:
    def heading_after(slip: float) -> float:
        env = DrivingVecEnv("lane_keep", 256, config=DrivingConfig(curvature_range=0.0, slip=slip))
        env.reset(11)
        env.set_state(psi=0.0, d=0.0, v=10.0)
        for _ in range(5):
            env.step(constant_actions(256, LEFT_COAST))
        return float(env.get_state()["psi"].mean())

    full, half, none = heading_after(0.0), heading_after(0.5), heading_after(1.0)
    assert none == 0.0 < half < full
    assert half / full == pytest.approx(0.5, abs=0.08)


def test_curvature_range_bounds_the_road() -> None:
    s = torch.linspace(0, 2000, 500).unsqueeze(1)
    for rng in (0.0, 0.005, 0.03):
        env = DrivingVecEnv("lane_keep", 64, config=DrivingConfig(curvature_range=rng))
        env.reset(12)
        k = env.curvature(s.expand(500, 64))
        assert k.abs().max() <= rng + 1e-7
        assert rng == 0 or k.abs().max() > 0.5 * rng


def _pedestrians_met(rate: float) -> int:
    env = DrivingVecEnv("pedestrian", 64, config=DrivingConfig(pedestrian_rate=rate))
    obs, pol, met = env.reset(13), reference_policy("pedestrian"), 0
    prev = env.get_state()["ps"]
    for _ in range(300):
        obs = env.step(pol(obs)).obs
        ps = env.get_state()["ps"]
        met += int((ps != prev).sum())
        prev = ps
    return met


def test_pedestrian_rate_controls_pedestrian_count() -> None:
    assert _pedestrians_met(0.0) == 0
    low, high = _pedestrians_met(0.5), _pedestrians_met(4.0)
    assert high > 1.5 * low > 0


@pytest.mark.parametrize("randomize", [None, {"pedestrian_rate": (0.0, 0.0)}])
def test_pedestrian_rate_zero_spawns_none_at_all(randomize) -> None:
    """Rate 0 (also drawn by domain randomization) set a 1e6 m mean gap, but a spawn at 60 - 1e6 log(u) m still
    landed within reach now and then: 279 of 100,000 envs had one within 1.5 km at reset."""
    env = DrivingVecEnv("urban", 20000, config=DrivingConfig(pedestrian_rate=0.0), randomize=randomize)
    env.reset(seed=0)
    for _ in range(30):  # respawns after episode ends too
        env.step(torch.randint(0, 5, (20000,), generator=torch.Generator().manual_seed(1)))
        assert env.get_state()["ps"].amin() >= 1.0e5


def test_light_cycle_changes_light_timing() -> None:
    def red_fraction(cycle: float) -> tuple[float, int]:
        env = DrivingVecEnv("traffic_light", 128, config=DrivingConfig(light_cycle=cycle))
        env.reset(14)
        reds, changes, prev = [], 0, env.light_phase()[1]
        for _ in range(200):
            env.step(constant_actions(128, STRAIGHT_BRAKE))
            red = env.light_phase()[1]
            reds.append(red.float().mean())
            changes += int((red != prev).sum())
            prev = red
        return float(torch.stack(reds).mean()), changes

    (frac_short, ch_short), (frac_long, ch_long) = red_fraction(8.0), red_fraction(60.0)
    assert ch_short > 3 * ch_long
    assert frac_long > frac_short  # amber is a fixed 3 s, so longer cycles are red a larger fraction


# ---------------------------------------------------------------- gymnasium front-ends
@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_check_env_passes(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=5)
    assert env.observation_space.contains(obs)
    env.close()


def test_gym_env_matches_vec_env_and_autoresets() -> None:
    env = gym.make("mtdqn/LaneKeep-v0", max_episode_steps=None, config=DrivingConfig(max_episode_steps=20))
    vec = DrivingVecEnv("lane_keep", 1, config=DrivingConfig(max_episode_steps=20))
    obs, _ = env.reset(seed=21)
    np.testing.assert_array_equal(obs, vec.reset(21)[0].numpy())
    for t in range(45):
        obs, rew, term, trunc, _ = env.step(STRAIGHT_COAST)
        res = vec.step(constant_actions(1, STRAIGHT_COAST))
        np.testing.assert_array_equal(obs, res.next_obs[0].numpy())
        if term or trunc:
            assert t in (19, 39)
            obs, _ = env.reset()
            np.testing.assert_array_equal(obs, res.obs[0].numpy())


def test_vector_env_same_step_autoreset_and_final_obs() -> None:
    venv = gym.make_vec("mtdqn/Urban-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        config=DrivingConfig(max_episode_steps=5))  # fmt: skip
    assert isinstance(venv.unwrapped, DrivingGymVectorEnv)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (3, OBS_DIM) and obs.dtype == np.float32
    for _ in range(4):
        obs, _, term, trunc, infos = venv.step(np.full(3, STRAIGHT_COAST))
        assert "final_obs" not in infos
    obs, rew, term, trunc, infos = venv.step(np.full(3, STRAIGHT_COAST))
    assert trunc.all() and infos["_final_obs"].all()
    assert all(not np.array_equal(f, o) for f, o in zip(infos["final_obs"], obs, strict=True))
    venv.close()


def test_register_envs_is_idempotent() -> None:
    from mtdqn.envs.driving import register_envs

    register_envs()
    register_envs()
    assert all(i in gym.registry for i in ENV_IDS)


# ---------------------------------------------------------------- rendering
@pytest.mark.parametrize("task", ["lane_keep", "urban"])
def test_render_shape_and_changes_when_moving(task: str) -> None:
    env = DrivingVecEnv(task, 2, config=DrivingConfig(curvature_range=0.03))
    obs = env.reset(15)
    img0 = render_env(env, 1)
    pol = reference_policy(task)
    for _ in range(20):
        obs = env.step(pol(obs)).obs
    img1 = render_env(env, 1)
    assert img0.shape == img1.shape == (SIZE, SIZE, 3) and img0.dtype == np.uint8
    assert (img0 != img1).any(axis=-1).sum() > 50


def test_render_paints_the_road_without_holes_between_its_edges() -> None:
    """At 6 px per metre the painted road points are under a pixel apart: every row between the edge lines is road
    (no grass showing through)."""
    from mtdqn.envs.driving.render import EDGE, GRASS, PX_PER_M

    env = DrivingVecEnv("lane_keep", 1, config=DrivingConfig(curvature_range=0.0))
    env.reset(4)
    img = render_env(env, 0)
    assert PX_PER_M == 6.0
    for row in range(0, SIZE, 7):
        edge = np.flatnonzero((img[row] == EDGE).all(-1))
        assert len(edge) >= 2, row
        between = img[row, edge.min() : edge.max() + 1]
        assert not (between == GRASS).all(-1).any(), row


# ---------------------------------------------------------------- controllers
@pytest.mark.parametrize("task", TASKS)
def test_reference_beats_random(task: str) -> None:
    cfg = DrivingConfig(max_episode_steps=300)
    ref = evaluate_policy(task, reference_policy(task), 32, seed=2024, config=cfg)
    rnd = evaluate_policy(task, random_policy(0), 32, seed=2024, config=cfg)
    assert ref > rnd + 100.0
    assert math.isfinite(ref) and math.isfinite(rnd)


@pytest.mark.parametrize("task", TASKS)
def test_normalization_anchors_never_collide_or_run_red(task: str) -> None:
    """The reference and random returns (normalized 1 and 0) do not depend on the collision / red-light
    penalties: neither policy ever pays them (100 episodes, the seed of the reference scores). The reference
    finishes every episode."""
    from mtdqn.evaluation.episodes import run_episode_stats

    harsh = DrivingConfig(collision_penalty=500.0, red_light_penalty=500.0)
    reference = run_episode_stats(reference_policy(task), DrivingVecEnv(task, 100), seed=12345)
    assert reference.rates()["completion_rate"] == 1.0
    random = run_episode_stats(random_policy(0), DrivingVecEnv(task, 100), seed=12345)
    assert random.rates()["collision_rate"] == random.rates()["red_light_rate"] == 0.0
    harsh_env = DrivingVecEnv(task, 100, config=harsh)
    assert torch.equal(run_episode_stats(reference_policy(task), harsh_env, 12345).returns, reference.returns)

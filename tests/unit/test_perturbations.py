"""Perturbation knobs of the driving simulator, per-env domain randomization, and the generic perturbation wrapper."""

from __future__ import annotations

import pytest
import torch

from mtdqn.envs import PerturbedVecEnv, env_factory
from mtdqn.envs.driving import TASKS, DrivingConfig, DrivingVecEnv
from mtdqn.envs.driving.config import RANDOMIZABLE
from mtdqn.envs.driving.sim import NOISE_MASK, OBS_HIGH, OBS_LOW, OBS_NAMES
from mtdqn.envs.factory import check_env_options
from mtdqn.types import StepResult
from tests.helpers.driving import constant_actions

LEFT_COAST, STRAIGHT_COAST = 1, 4
KNOBS = DrivingConfig(steer_delay=2, slip=0.2, obs_noise=0.1, pedestrian_rate=2.0, curvature_range=0.025)


def _rollout_sums(env: DrivingVecEnv, steps: int = 420) -> list[float]:
    """Reset(123), uniform random actions (seed 0): sums of next_obs, reward, terminated, truncated, obs."""
    env.reset(123)
    acts = torch.randint(0, 9, (steps, env.num_envs), generator=torch.Generator().manual_seed(0))
    sums = torch.zeros(5, dtype=torch.float64)
    for a in acts:
        r = env.step(a)
        sums += torch.stack([r.next_obs.double().sum(), r.reward.double().sum(), r.terminated.double().sum(),
                             r.truncated.double().sum(), r.obs.double().sum()])  # fmt: skip
    return sums.tolist()


# Recorded with the simulator as it was before per-env domain randomization was added (8 envs, 420 steps):
# the fixed-knob path must give the same trajectories. Float sums with a tight tolerance (transcendental
# functions may differ in the last bit between CPU instruction sets), termination counts exactly.
GOLDEN = {
    ("lane_keep", False): [4661.982651, -503.951834, 2.0, 7.0, 4662.970468],
    ("pedestrian", False): [5992.721256, -503.951834, 2.0, 7.0, 5986.950813],
    ("traffic_light", False): [10697.72037, -588.158699, 2.0, 0.0, 10692.949416],
    ("urban", False): [12088.618881, -588.158699, 2.0, 0.0, 12083.847927],
    ("lane_keep", True): [4008.863441, -400.707289, 8.0, 5.0, 4011.120292],
    ("pedestrian", True): [6675.87094, -400.707289, 8.0, 5.0, 6663.427254],
    ("traffic_light", True): [9146.679092, -446.405674, 8.0, 0.0, 9133.306165],
    ("urban", True): [11999.983381, -446.405674, 8.0, 0.0, 11981.550838],
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("knobs", [False, True])
def test_fixed_knob_path_is_unchanged_by_domain_randomization_support(task: str, knobs: bool) -> None:
    got = _rollout_sums(DrivingVecEnv(task, 8, config=KNOBS if knobs else DrivingConfig()))
    want = GOLDEN[task, knobs]
    assert got[2:4] == want[2:4]
    assert got == pytest.approx(want, rel=1e-6, abs=1e-4)


# ---------------------------------------------------------------- the knobs themselves
def test_obs_noise_has_the_configured_std_on_measurements_only() -> None:
    clean = DrivingVecEnv("urban", 256)
    noisy = DrivingVecEnv("urban", 256, config=DrivingConfig(obs_noise=0.05))
    diffs, inside = [], []
    oc, on = clean.reset(3), noisy.reset(3)
    for _ in range(20):
        diffs.append(on - oc)
        inside.append((oc > torch.as_tensor(OBS_LOW) + 0.3) & (oc < torch.as_tensor(OBS_HIGH) - 0.3))
        a = constant_actions(256, STRAIGHT_COAST)
        oc, on = clean.step(a).obs, noisy.step(a).obs
    diff, inside = torch.cat(diffs), torch.cat(inside)
    mask = torch.as_tensor(NOISE_MASK).bool()
    assert (diff[:, ~mask] == 0).all()  # presence flags and light one-hots are never noisy
    measured = diff[:, mask][inside[:, mask]]  # away from the clipping bounds
    assert measured.numel() > 20_000
    assert measured.std().item() == pytest.approx(0.05, rel=0.03)
    assert measured.mean().item() == pytest.approx(0.0, abs=0.002)


@pytest.mark.parametrize("slip", [0.0, 0.3, 1.0])
def test_slip_cancels_steering_with_the_given_probability(slip: float) -> None:
    env = DrivingVecEnv("lane_keep", 512, config=DrivingConfig(curvature_range=0.0, slip=slip))
    env.reset(21)
    env.set_state(psi=0.0, d=0.0, v=10.0)
    ineffective = []
    for _ in range(20):
        before = env.get_state()["psi"]
        env.step(constant_actions(512, LEFT_COAST))
        ineffective.append(env.get_state()["psi"] == before)  # straight road: psi moves only by steering
    frac = torch.stack(ineffective).float().mean().item()
    assert frac == pytest.approx(slip, abs=0.02)


def test_pedestrian_rate_scales_the_spawn_gap() -> None:
    def mean_gap(rate: float) -> float:
        env = DrivingVecEnv("pedestrian", 4096, config=DrivingConfig(pedestrian_rate=rate))
        env.reset(5)
        return float((env.get_state()["ps"] - 60.0).mean())  # spawn at 60 m + Exp(200 / rate)

    assert mean_gap(1.0) == pytest.approx(200.0, rel=0.05)
    assert mean_gap(4.0) == pytest.approx(50.0, rel=0.05)


@pytest.mark.parametrize("reset_mode", ["subset", "masked"])
def test_respawned_pedestrians_follow_each_envs_randomized_rate(reset_mode: str) -> None:
    """Pedestrians that respawn mid-episode (5 m behind the car) are spaced by the env's own randomized rate, not
    the config's: a rate pinned at 4 respawns them exactly as a fixed rate of 4 does (mean gap 50 m, not 200)."""
    def respawned(**kwargs) -> torch.Tensor:
        env = DrivingVecEnv("pedestrian", 4096, reset_mode=reset_mode, **kwargs)
        env.reset(5)
        env.set_state(d=0.0, psi=0.0, ps=env.get_state()["s"] - 10.0)  # both slots passed: respawn on this step
        env.step(constant_actions(4096, STRAIGHT_COAST))
        return env.get_state()["ps"] - env.get_state()["s"]

    fixed = respawned(config=DrivingConfig(pedestrian_rate=4.0))
    pinned = respawned(randomize={"pedestrian_rate": (4.0, 4.0)})
    assert torch.equal(fixed, pinned)
    assert float((pinned - 60.0).mean()) == pytest.approx(50.0, rel=0.05)  # spawn at 60 m + Exp(200 / rate)


# ---------------------------------------------------------------- domain randomization in the simulator
DR = {"obs_noise": (0.0, 0.2), "slip": (0.1, 0.3), "steer_delay": (0, 3), "curvature_range": (0.005, 0.025),
      "pedestrian_rate": (0.5, 3.0)}  # fmt: skip


def test_domain_randomization_draws_per_env_values_within_the_ranges() -> None:
    env = DrivingVecEnv("urban", 1024, randomize=DR)
    env.reset(7)
    first = env.knob_values()
    for name, (lo, hi) in DR.items():
        v = first[name]
        assert (v >= lo).all() and (v <= hi).all(), name
        assert v.unique().numel() > (3 if name == "steer_delay" else 500), name  # differs across envs
    assert set(first["steer_delay"].tolist()) == {0, 1, 2, 3}
    for name in set(RANDOMIZABLE) - set(DR):
        assert (first[name] == getattr(DrivingConfig(), name)).all()
    # redrawn at every new episode of an env, and env i's draws do not depend on the envs beside it
    env.reset(None)
    assert not torch.equal(env.knob_values()["slip"], first["slip"])
    single = DrivingVecEnv("urban", 1, randomize=DR)
    single.reset(7 + 10)
    assert all(torch.equal(single.knob_values()[k], first[k][10:11]) for k in DR)


def test_pinned_ranges_equal_the_fixed_knobs_bit_for_bit() -> None:
    pinned = {k: (getattr(KNOBS, k), getattr(KNOBS, k)) for k in RANDOMIZABLE}
    for task in ("lane_keep", "urban"):
        fixed, randomized = DrivingVecEnv(task, 8, config=KNOBS), DrivingVecEnv(task, 8, randomize=pinned)
        a, b = fixed.reset(4), randomized.reset(4)
        assert torch.equal(a, b)
        acts = torch.randint(0, 9, (450, 8), generator=torch.Generator().manual_seed(1))
        for act in acts:
            ra, rb = fixed.step(act), randomized.step(act)
            assert all(torch.equal(x, y) for x, y in zip(ra, rb, strict=True)), task


@pytest.mark.parametrize("reset_mode", ["subset", "masked"])
def test_each_env_feels_its_own_steering_delay(reset_mode: str) -> None:
    env = DrivingVecEnv("lane_keep", 64, config=DrivingConfig(curvature_range=0.0), reset_mode=reset_mode,
                        randomize={"steer_delay": (0, 3)})  # fmt: skip
    env.reset(8)
    delay = env.knob_values()["steer_delay"]
    env.set_state(psi=0.0, d=0.0, v=10.0)
    first_turn = torch.full((64,), -1)
    for t in range(5):
        env.step(constant_actions(64, LEFT_COAST))
        turned = (env.get_state()["psi"] > 0) & (first_turn < 0)
        first_turn[turned] = t
    assert torch.equal(first_turn, delay)  # a delay of k steps: heading moves at the (k+1)-th step


def test_randomization_ranges_are_validated() -> None:
    for bad, match in [({"light_cycle": (10, 20)}, "cannot be randomized"), ({"slip": (0.5, 0.2)}, "lo <= hi"),
                       ({"slip": (0.0, 1.5)}, r"slip=\[0.0, 1.5\]"), ({"steer_delay": (0, 1.5)}, "steer_delay"),
                       ({"obs_noise": 0.1}, "expected a range")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            DrivingVecEnv("lane_keep", 2, randomize=bad)
    with pytest.raises(ValueError, match="perturb.obs_noise"):
        check_env_options("driving", {"obs_noise": 0.1}, None)
    with pytest.raises(ValueError, match="steer_delay"):
        check_env_options("gym", None, {"steer_delay": [0, 2]})


# ---------------------------------------------------------------- the generic wrapper
class Recorder:
    """A TensorVecEnv whose observation is the step counter; records the actions it executes."""

    def __init__(self, num_envs: int, episode: int = 1000) -> None:
        self.num_envs, self.obs_dim, self.n_actions, self.device = num_envs, 3, 4, torch.device("cpu")
        self.episode, self.t, self.executed = episode, torch.zeros(num_envs), []

    def reset(self, seed: int | None = None) -> torch.Tensor:
        self.t.zero_()
        return self.t.unsqueeze(1).repeat(1, 3)

    def step(self, actions: torch.Tensor) -> StepResult:
        self.executed.append(actions.clone())
        self.t += 1
        done = self.t >= self.episode
        next_obs = self.t.unsqueeze(1).repeat(1, 3)
        self.t[done] = 0
        obs = self.t.unsqueeze(1).repeat(1, 3)
        return StepResult(next_obs, torch.zeros(self.num_envs), torch.zeros_like(done), done, obs)

    def close(self) -> None:
        self.executed = []


@pytest.mark.parametrize("p", [0.0, 0.25, 0.6])
def test_sticky_actions_repeat_the_previous_action_with_the_given_probability(p: float) -> None:
    inner = Recorder(2000, episode=10)
    env = PerturbedVecEnv(inner, sticky_actions=p)
    env.reset(0)
    for t in range(30):
        env.step(torch.full((2000,), t))  # a new action every step
    executed = torch.stack(inner.executed)  # (30, N)
    requested = torch.arange(30).unsqueeze(1).expand_as(executed)
    first_of_episode = torch.arange(30) % 10 == 0
    assert (executed[first_of_episode] == requested[first_of_episode]).all()  # never sticky on a fresh episode
    sticky = executed != requested
    assert torch.equal(executed[1:][sticky[1:]], executed[:-1][sticky[1:]])  # sticky = the previous action
    assert sticky[~first_of_episode].float().mean().item() == pytest.approx(p, abs=0.01)


def test_wrapper_obs_noise_std_and_one_draw_per_observation() -> None:
    env = PerturbedVecEnv(Recorder(4000, episode=5), obs_noise=0.3)
    obs = env.reset(1)
    noise, consistent = [obs - 0.0], []
    for _ in range(7):
        res = env.step(torch.zeros(4000, dtype=torch.int64))
        clean = env.env.t.unsqueeze(1)  # the inner env's current (post-reset) observation
        noise.append(res.obs - clean)
        done = res.truncated
        consistent.append(torch.equal(res.obs[~done], res.next_obs[~done]))  # same draw for both
        if bool(done.any()):  # the final observation and the reset one are different draws
            assert not torch.equal(res.obs[done], res.next_obs[done])
    assert all(consistent) and len(consistent) == 7
    assert torch.cat(noise).std().item() == pytest.approx(0.3, rel=0.02)


def test_wrapper_randomization_redraws_per_episode_within_ranges() -> None:
    env = PerturbedVecEnv(Recorder(500, episode=3), randomize={"obs_noise": [0.1, 0.2], "sticky_actions": [0.0, 0.5]})
    env.reset(2)
    first = {k: v.clone() for k, v in env.knobs.items()}
    for name, (lo, hi) in (("obs_noise", (0.1, 0.2)), ("sticky_actions", (0.0, 0.5))):
        assert (first[name] >= lo).all() and (first[name] <= hi).all() and first[name].unique().numel() > 400
    for _ in range(3):
        env.step(torch.zeros(500, dtype=torch.int64))
    assert not torch.equal(env.knobs["obs_noise"], first["obs_noise"])  # every env started a new episode


def test_wrapper_redraws_only_the_finished_envs_knobs() -> None:
    """An env keeps its randomized knobs for its whole episode: when env 0 finishes, only its knobs are redrawn
    (redrawing every env's would change the others' noise and stickiness mid-episode)."""
    inner = Recorder(4)
    inner.episode = torch.tensor([2.0, 1000.0, 1000.0, 1000.0])  # env 0 ends its episodes after 2 steps
    env = PerturbedVecEnv(inner, randomize={"obs_noise": [0.1, 0.2], "sticky_actions": [0.0, 0.5]})
    env.reset(2)
    first = {k: v.clone() for k, v in env.knobs.items()}
    for _ in range(2):
        env.step(torch.zeros(4, dtype=torch.int64))
    for name, value in env.knobs.items():
        assert value[0] != first[name][0], name  # env 0 started a new episode
        assert torch.equal(value[1:], first[name][1:]), name  # the others are still in their first


def test_wrapper_reset_seed_reseeds_its_draws() -> None:
    """reset(seed) reseeds the wrapper's generator: two wrappers built at different global RNG states (each seeds
    itself from it) make the same sticky-action, noise and knob draws after reset(5)."""
    def run() -> tuple[torch.Tensor, ...]:
        inner = Recorder(64, episode=4)
        env = PerturbedVecEnv(inner, sticky_actions=0.5, randomize={"obs_noise": [0.1, 0.2]})
        obs = [env.reset(5)] + [env.step(torch.full((64,), t)).obs for t in range(10)]
        return torch.stack(inner.executed), torch.stack(obs), env.knobs["obs_noise"]

    first = run()
    torch.rand(3)
    assert all(torch.equal(a, b) for a, b in zip(first, run(), strict=True))


def test_env_factory_wraps_only_when_asked() -> None:
    plain = env_factory("gym", "CartPole-v1")(num_envs=2)
    wrapped = env_factory("gym", "CartPole-v1", perturb={"sticky_actions": 0.1},
                          randomize={"obs_noise": [0.0, 0.1]})(num_envs=2)  # fmt: skip
    assert not isinstance(plain, PerturbedVecEnv) and isinstance(wrapped, PerturbedVecEnv)
    driving = env_factory("driving", "lane_keep", randomize={"slip": [0.0, 0.2], "sticky_actions": [0.0, 0.1]})(
        num_envs=3)
    assert isinstance(driving, PerturbedVecEnv) and driving.env.randomize == {"slip": (0.0, 0.2)}
    assert OBS_NAMES[0] == "speed" and driving.reset(0).shape == (3, 26)

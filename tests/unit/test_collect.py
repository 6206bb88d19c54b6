import gymnasium as gym
import numpy as np
import pytest
import torch

from mtdqn.collect import Collector
from mtdqn.envs import GymVecEnv, check_gym_id
from mtdqn.types import StepResult


class CountingEnv:
    """A TensorVecEnv whose obs is the step within the episode; episodes of env i last 3 + i steps.

    Odd episodes end by truncation, even ones by termination. The reset observation is -1, so a stored
    reset observation would show up as next_obs == -1.
    """

    def __init__(self, num_envs: int = 2) -> None:
        self.num_envs, self.obs_dim, self.n_actions, self.device = num_envs, 1, 2, torch.device("cpu")
        self.t = torch.zeros(num_envs)
        self.episode = torch.zeros(num_envs)
        self.length = 3 + torch.arange(num_envs, dtype=torch.float32)

    def reset(self, seed=None):
        self.t.zero_()
        return torch.full((self.num_envs, 1), -1.0)

    def step(self, actions):
        self.t += 1
        done = self.t >= self.length
        terminated = done & (self.episode % 2 == 0)
        truncated = done & (self.episode % 2 == 1)
        next_obs = self.t.clone().unsqueeze(1)
        self.episode += done.float()
        self.t = torch.where(done, 0.0, self.t)
        obs = torch.where(done.unsqueeze(1), -1.0, next_obs)
        return StepResult(next_obs, torch.ones(self.num_envs), terminated, truncated, obs)

    def close(self):
        """Nothing to release."""


def test_collector_never_stores_reset_obs_as_next_obs_and_reports_episodes():
    env = CountingEnv(2)
    col = Collector(env, policy=lambda o: torch.zeros(o.shape[0], dtype=torch.int64), seed=0)
    finished = []
    for _ in range(12):
        tr, eps = col.step(epsilon=0.5)
        assert (tr.next_obs >= 1).all(), "a reset observation was stored as next_obs"
        # the next step acts on the reset observation where an episode ended
        ended = tr.terminated | tr.truncated
        assert (col.obs[ended] == -1).all()
        if eps is not None:
            finished.append(eps)
    lengths = torch.cat([e.lengths for e in finished]).tolist()
    assert sorted(set(lengths)) == [3, 4]
    returns = torch.cat([e.returns for e in finished]).tolist()
    assert returns == [float(n) for n in lengths]


def test_epsilon_zero_is_greedy_and_one_is_random():
    env = CountingEnv(64)
    col = Collector(env, policy=lambda o: torch.ones(o.shape[0], dtype=torch.int64), seed=0)
    obs = env.reset()
    assert (col.act(obs, 0.0) == 1).all()
    random = col.act(obs, 1.0)
    assert (random == 0).any() and (random == 1).any()


@pytest.mark.parametrize("epsilon", [0.2, 0.8])
def test_epsilon_greedy_explores_a_fraction_epsilon_of_envs(epsilon):
    """With probability epsilon an env acts uniformly at random (half of those pick the non-greedy action of 2),
    else greedily: a policy always choosing 1 leaves a share epsilon / 2 of other actions. Swapping explore and
    greedy gives (1 - epsilon) / 2, which eps 0 and 1 alone cannot tell apart."""
    n = 4000
    col = Collector(CountingEnv(n), policy=lambda o: torch.ones(o.shape[0], dtype=torch.int64), seed=0)
    share = (col.act(torch.zeros(n, 1), epsilon) != 1).float().mean().item()
    p = epsilon / 2
    assert abs(share - p) < 5 * (p * (1 - p) / n) ** 0.5  # 5 binomial standard deviations (<= 0.04)


def test_gym_adapter_same_step_autoreset_keeps_terminal_obs():
    env = GymVecEnv("CartPole-v1", num_envs=3)
    obs = env.reset(seed=0)
    assert obs.shape == (3, 4) and obs.dtype == torch.float32
    seen_done = False
    for _ in range(200):
        res = env.step(torch.ones(3, dtype=torch.int64))
        done = res.terminated | res.truncated
        if done.any():
            seen_done = True
            # CartPole terminates when the pole angle exceeds 12 degrees or the cart leaves the track:
            # the final obs shows that; the reset obs (next to act on) is near zero
            final = res.next_obs[done]
            assert ((final[:, 2].abs() > 0.2) | (final[:, 0].abs() > 2.4)).all()
            assert (res.obs[done].abs() < 0.06).all()
        assert not (res.next_obs.abs() < 1e-12).all(dim=1).any()
    assert seen_done
    env.close()


def test_gym_adapter_matches_gymnasium_for_same_seed():
    env = GymVecEnv("CartPole-v1", num_envs=2)
    ours = env.reset(seed=7)
    ref = gym.make("CartPole-v1")
    for i in range(2):
        o, _ = ref.reset(seed=7 + i)
        assert np.allclose(ours[i].numpy(), o)


@pytest.mark.parametrize(
    ("env_id", "match"),
    [("NoSuchEnv-v0", "not a registered gymnasium id"), ("Pendulum-v1", "Discrete action space")],
)
def test_invalid_gym_ids_are_refused(env_id, match):
    with pytest.raises(ValueError, match=match):
        check_gym_id(env_id)


class _DictObsEnv(gym.Env):
    """A toy env with a Dict observation (like highway-env's lane-keeping) and 2 actions."""

    observation_space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,)), "b": gym.spaces.Box(-1, 1, (3, 1))})
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), 1.0, self.t >= 3, False, {}


def test_dict_observations_are_flattened():
    gym.register("mtdqn-test/DictObs-v0", entry_point=_DictObsEnv)
    assert check_gym_id("mtdqn-test/DictObs-v0").obs_dim == 5
    env = GymVecEnv("mtdqn-test/DictObs-v0", num_envs=2)
    assert env.reset(seed=0).shape == (2, 5)
    res = env.step(torch.zeros(2, dtype=torch.int64))
    assert res.next_obs.shape == (2, 5) and res.reward.tolist() == [1.0, 1.0]


def test_box_spaces_other_than_discrete_actions_still_refused():
    with pytest.raises(ValueError, match="Discrete"):
        check_gym_id("MountainCarContinuous-v0")

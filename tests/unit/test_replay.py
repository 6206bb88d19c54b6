import re

import pytest
import torch

from mtdqn.replay import PrioritizedReplayBuffer, ReplayBuffer, SumTree
from mtdqn.types import Transition


def row(step: int, n_envs: int = 1, terminated=None, truncated=None, reward=None) -> Transition:
    """A transition row whose obs encode (step, env) so samples can be traced back."""
    env = torch.arange(n_envs, dtype=torch.float32)
    obs = torch.stack([torch.full((n_envs,), float(step)), env], dim=1)
    next_obs = obs + torch.tensor([0.5, 0.0])
    z = torch.zeros(n_envs, dtype=torch.bool)
    return Transition(
        obs=obs,
        action=torch.full((n_envs,), step % 2, dtype=torch.int64),
        reward=torch.full((n_envs,), float(step)) if reward is None else reward,
        next_obs=next_obs,
        terminated=z if terminated is None else terminated,
        truncated=z if truncated is None else truncated,
    )


def test_wraparound_keeps_the_newest_rows():
    buf = ReplayBuffer(capacity=4, num_envs=1, obs_dim=2, gamma=0.9)
    for t in range(7):
        buf.add(row(t))
    assert len(buf) == 4 and buf.pos == 3
    steps = sorted(buf.obs[:, 0, 0].tolist())
    assert steps == [3.0, 4.0, 5.0, 6.0]
    b = buf.sample(batch_size=256)
    assert set(b.obs[0, :, 0].tolist()) == {3.0, 4.0, 5.0, 6.0}
    assert b.obs.shape == (1, 256, 2) and b.actions.shape == (1, 256)


def test_terminated_stops_bootstrapping_truncated_does_not():
    buf = ReplayBuffer(capacity=8, num_envs=2, obs_dim=2, gamma=0.9)
    buf.add(row(0, 2, terminated=torch.tensor([True, False]), truncated=torch.tensor([False, True])))
    rows, envs = torch.tensor([0, 0]), torch.tensor([0, 1])
    b = buf.gather(rows, envs, torch.ones(2))
    assert b.discounts.tolist() == pytest.approx([0.0, 0.9])
    # the truncated env bootstraps from its true final observation, stored as next_obs
    assert b.next_obs[1].tolist() == [0.5, 1.0]


def test_n_step_returns_across_episode_end():
    gamma = 0.5
    buf = ReplayBuffer(capacity=16, num_envs=1, obs_dim=2, gamma=gamma, n_step=3)
    term = [False, False, True, False, False, False]
    rewards = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    for t in range(6):
        buf.add(row(t, terminated=torch.tensor([term[t]]), reward=torch.tensor([rewards[t]])))
    b = buf.gather(torch.tensor([0, 1, 2, 3]), torch.zeros(4, dtype=torch.int64), torch.ones(4))
    # t=0: 1 + .5*2 + .25*4, episode terminates at t=2 -> no bootstrap
    # t=1: 2 + .5*4, terminates at t=2
    # t=2: 4, terminates
    # t=3: 8 + .5*16 + .25*32, bootstrap from next_obs of t=5 with gamma^3
    assert b.rewards.tolist() == pytest.approx([3.0, 4.0, 4.0, 24.0])
    assert b.discounts.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.125])
    assert b.next_obs[3, 0].item() == 5.5
    assert b.next_obs[0, 0].item() == 2.5  # final obs of the terminated episode


def test_n_step_truncation_bootstraps_with_shorter_discount():
    buf = ReplayBuffer(capacity=16, num_envs=1, obs_dim=2, gamma=0.5, n_step=3)
    for t in range(4):
        buf.add(row(t, truncated=torch.tensor([t == 1]), reward=torch.tensor([1.0])))
    b = buf.gather(torch.tensor([0]), torch.tensor([0]), torch.ones(1))
    assert b.rewards.item() == pytest.approx(1.5)
    assert b.discounts.item() == pytest.approx(0.25)  # gamma^2, truncated episodes still bootstrap
    assert b.next_obs[0, 0].item() == 1.5


def test_n_step_never_samples_rows_without_lookahead():
    buf = ReplayBuffer(capacity=100, num_envs=2, obs_dim=2, gamma=0.9, n_step=3)
    for t in range(5):
        buf.add(row(t, 2))
    assert buf.sampleable == 6
    b = buf.sample(batch_size=500)
    assert b.obs[..., 0].max().item() == 2.0  # rows 3 and 4 lack 3 steps of look-ahead


def test_state_dict_roundtrip():
    buf = ReplayBuffer(capacity=8, num_envs=2, obs_dim=2, gamma=0.9)
    for t in range(3):
        buf.add(row(t, 2))
    other = ReplayBuffer(capacity=8, num_envs=2, obs_dim=2, gamma=0.9, seed=123)
    other.load_state_dict(buf.state_dict())
    assert len(other) == len(buf) and other.pos == buf.pos
    assert torch.equal(other.sample(16).obs, buf.sample(16).obs)


def test_sumtree_sums_and_find():
    tree = SumTree(5)
    tree.update(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([1.0, 0.0, 2.0, 3.0, 4.0]))
    assert tree.total.item() == 10.0
    found = tree.find(torch.tensor([0.0, 0.99, 1.0, 2.99, 3.0, 5.99, 6.0, 9.99]))
    assert found.tolist() == [0, 0, 2, 2, 3, 3, 4, 4]
    tree.update(torch.tensor([4]), torch.tensor([0.0]))
    assert tree.total.item() == 6.0


def test_prioritized_sampling_follows_priorities_and_weights():
    buf = PrioritizedReplayBuffer(capacity=4, num_envs=1, obs_dim=2, gamma=0.9, alpha=1.0, beta=1.0, eps=0.0)
    for t in range(4):
        buf.add(row(t))
    buf.update_priorities(torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    b = buf.sample(batch_size=8000)
    counts = torch.bincount(b.indices.reshape(-1), minlength=4).float() / 8000
    assert torch.allclose(counts, torch.tensor([0.125, 0.125, 0.25, 0.5]), atol=0.02)
    # IS weights (N P(i))^-beta normalised by the max: P=[1/8,1/8,1/4,1/2] -> w ~ [1, 1, .5, .25]
    w = {int(i): float(x) for i, x in zip(b.indices.reshape(-1), b.weights.reshape(-1), strict=True)}
    assert w[0] == pytest.approx(1.0) and w[2] == pytest.approx(0.5) and w[3] == pytest.approx(0.25)


def test_prioritized_priorities_are_td_errors_to_the_power_alpha():
    """p_i = (|td_i| + eps)^alpha: with alpha 0.5 TD errors 1 and 4 give priorities 1 and 2, sampled 1/3 and 2/3 of
    the time (every other test uses alpha 1, where ignoring alpha changes nothing)."""
    buf = PrioritizedReplayBuffer(capacity=2, num_envs=1, obs_dim=2, gamma=0.9, alpha=0.5, beta=0.0, eps=0.0)
    for t in range(2):
        buf.add(row(t))
    buf.update_priorities(torch.tensor([0, 1]), torch.tensor([1.0, -4.0]))
    assert buf.tree.leaves(torch.tensor([0, 1])).tolist() == pytest.approx([1.0, 2.0])
    assert buf.max_priority == pytest.approx(2.0)
    counts = torch.bincount(buf.sample(batch_size=6000).indices.reshape(-1), minlength=2).float() / 6000
    assert counts.tolist() == pytest.approx([1 / 3, 2 / 3], abs=0.03)


@pytest.mark.parametrize(("progress", "beta", "expected"), [
    (0.0, 0.0, [1.0, 1.0, 1.0, 1.0]), (0.5, 0.5, [1.0, 1.0, 2 ** -0.5, 0.5]), (1.0, 1.0, [1.0, 1.0, 0.5, 0.25]),
    (1.7, 1.0, [1.0, 1.0, 0.5, 0.25]),  # past data.total_env_steps (a resume with a smaller budget): beta_end
])
def test_prioritized_beta_is_annealed_with_progress_and_weights_use_it(progress, beta, expected):
    """replay.beta_end (Schaul et al. 2016 anneal beta to 1): beta moves linearly from replay.beta to beta_end with
    the fraction of training done, and the IS weights (N P(i))^-beta / max are taken with the current beta."""
    buf = PrioritizedReplayBuffer(capacity=4, num_envs=1, obs_dim=2, gamma=0.9, alpha=1.0, beta=0.0, beta_end=1.0,
                                  eps=0.0)
    for t in range(4):
        buf.add(row(t))
    buf.update_priorities(torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 1.0, 2.0, 4.0]))  # P = [1/8, 1/8, 1/4, 1/2]
    buf.set_progress(progress)
    assert buf.beta == pytest.approx(beta)
    b = buf.sample(batch_size=2000)
    w = {int(i): float(x) for i, x in zip(b.indices.reshape(-1), b.weights.reshape(-1), strict=True)}
    assert [w[i] for i in range(4)] == pytest.approx(expected)


def test_prioritized_beta_stays_constant_without_beta_end_and_refuses_a_bad_one():
    buf = PrioritizedReplayBuffer(capacity=4, num_envs=1, obs_dim=2, gamma=0.9, beta=0.4)
    buf.set_progress(1.0)
    assert buf.beta == 0.4  # the default: results from before beta_end existed do not change
    ReplayBuffer(capacity=4, num_envs=1, obs_dim=2, gamma=0.9).set_progress(0.5)  # uniform replay ignores it
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=rf"replay.beta_end={bad} must lie in \[0, 1\]"):
            PrioritizedReplayBuffer(capacity=4, num_envs=1, obs_dim=2, gamma=0.9, beta_end=bad)


def test_prioritized_new_rows_get_max_priority_and_update_changes_sampling():
    buf = PrioritizedReplayBuffer(capacity=8, num_envs=1, obs_dim=2, gamma=0.9, alpha=1.0, beta=0.0, eps=0.0)
    for t in range(2):
        buf.add(row(t))
    buf.update_priorities(torch.tensor([0, 1]), torch.tensor([0.0, 10.0]))
    assert buf.max_priority == 10.0
    buf.add(row(2))
    assert buf.tree.leaves(torch.tensor([2])).item() == 10.0
    b = buf.sample(batch_size=1000)
    assert (b.indices == 0).sum() == 0  # zero priority is never sampled


def test_prioritized_n_step_rows_wait_for_lookahead():
    buf = PrioritizedReplayBuffer(capacity=16, num_envs=1, obs_dim=2, gamma=0.9, n_step=3)
    for t in range(4):
        buf.add(row(t))
    leaves = buf.tree.leaves(torch.arange(4))
    assert leaves.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_prioritized_n_step_overwritten_rows_wait_for_lookahead_after_wrapping():
    """A row overwritten once the ring wraps drops the priority of the transition it replaces until its own n-step
    look-ahead is written: rows 0 and 1 hold steps 6 and 7 (no 3-step look-ahead yet), not the old steps 0 and 1."""
    buf = PrioritizedReplayBuffer(capacity=6, num_envs=1, obs_dim=2, gamma=0.9, n_step=3)
    for t in range(8):
        buf.add(row(t))
    assert buf.tree.leaves(torch.arange(6)).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert set(buf.sample(batch_size=500).obs[0, :, 0].tolist()) == {2.0, 3.0, 4.0, 5.0}


def test_invalid_sizes_raise():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity=0, num_envs=1, obs_dim=2, gamma=0.9)
    with pytest.raises(ValueError, match="gamma"):
        ReplayBuffer(capacity=8, num_envs=1, obs_dim=2, gamma=1.5)


@pytest.mark.parametrize("kind", [ReplayBuffer, PrioritizedReplayBuffer])
def test_a_restored_replay_ends_its_last_rows_episodes(kind):
    """After a resume the envs start new episodes: an n-step return from the rows before the checkpoint summed the
    new episode's rewards and bootstrapped from its observation (5 + 0.5 x 100 + 0.25 x 101 for row 4)."""
    buf = kind(capacity=100, num_envs=1, obs_dim=2, gamma=0.5, n_step=3)
    for t in range(1, 6):
        buf.add(row(t))
    restored = kind(capacity=100, num_envs=1, obs_dim=2, gamma=0.5, n_step=3)
    restored.load_state_dict(buf.state_dict())
    for t in (100, 101, 102):
        restored.add(row(t))
    b = restored.gather(torch.tensor([3]), torch.tensor([0]), torch.ones(1))  # the row of step 4
    assert b.rewards.item() == 4 + 0.5 * 5  # steps 4 and 5, then the episode ended (truncated)
    assert b.next_obs[0, 0].item() == 5.5 and b.discounts.item() == 0.25  # bootstraps from step 5's own next obs


def test_a_bad_replay_gamma_is_named_replay_gamma():
    """conf/replay's gamma is ${gamma}: a bad replay.gamma was reported as `gamma=2`, a key not given."""
    with pytest.raises(ValueError, match=re.escape("replay.gamma=2 must lie in (0, 1]")):
        ReplayBuffer(capacity=4, num_envs=1, obs_dim=2, gamma=2)


def test_prioritized_state_dict_restores_the_sum_tree_and_max_priority():
    """A resumed prioritized replay keeps the learned priorities (the sum tree) and the running max priority: a
    fresh tree would sample only rows added after the resume, a reset max would give them priority 1, not 10."""
    buf = PrioritizedReplayBuffer(capacity=8, num_envs=1, obs_dim=2, gamma=0.9, alpha=1.0, beta=0.0, eps=0.0)
    for t in range(4):
        buf.add(row(t))
    buf.update_priorities(torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 10.0, 2.0, 3.0]))
    restored = PrioritizedReplayBuffer(capacity=8, num_envs=1, obs_dim=2, gamma=0.9, alpha=1.0, beta=0.0, eps=0.0)
    restored.load_state_dict(buf.state_dict())
    assert torch.equal(restored.tree.tree, buf.tree.tree)
    assert restored.max_priority == 10.0
    restored.add(row(4))
    assert restored.tree.leaves(torch.tensor([4])).item() == 10.0  # new rows get the restored max priority
    steps = set(restored.sample(batch_size=500).obs[0, :, 0].tolist())
    assert steps == {0.0, 1.0, 2.0, 3.0, 4.0}

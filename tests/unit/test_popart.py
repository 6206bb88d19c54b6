"""PopArt wired into MultiTaskDQNModule (model.popart=true): each test fails if the switch were ignored."""

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from mtdqn.losses import td_target
from mtdqn.models import MultiTaskDQNModule
from mtdqn.nets.multitask import INVALID_Q, MultiTaskQNetwork
from mtdqn.types import Batch, TaskSpec

MIXED = [TaskSpec("small", 4, 2), TaskSpec("big", 6, 3)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make(popart: bool = True, **kwargs) -> MultiTaskDQNModule:
    net = partial(MultiTaskQNetwork, hidden=(16, 16), dueling=kwargs.pop("dueling", False),
                  architecture=kwargs.pop("architecture", "multihead"))
    return MultiTaskDQNModule(net=net, optimizer=partial(torch.optim.SGD, lr=0.1), task=MIXED, popart=popart,
                              grad_diagnostics_every=0, **kwargs)


def batch(n: int = 32, scale: tuple[float, float] = (1.0, 100.0)) -> Batch:
    """Task 0 has unit rewards, task 1 rewards 100x larger (a different return scale)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.arange(n) % 2
    obs, next_obs = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)
    obs[ids == 0, 4:] = 0.0
    next_obs[ids == 0, 4:] = 0.0
    rewards = torch.randn(n, generator=g) + 1.0
    rewards = rewards * torch.tensor(scale)[ids]
    actions = torch.randint(0, 2, (n,), generator=g)
    return Batch(obs=obs, actions=actions, rewards=rewards, next_obs=next_obs, discounts=torch.full((n,), 0.9),
                 weights=torch.ones(n), indices=torch.arange(n), task_ids=ids)


def test_popart_switch_builds_the_head_and_plain_heads_without_it():
    assert make().q_net.popart is not None and make().q_net.heads is None
    assert make(popart=False).q_net.popart is None and make(popart=False).q_net.heads is not None


def test_statistics_update_preserves_the_module_outputs():
    m, b = make(popart_beta=0.5), batch()
    before = m.q_net(b.obs, b.task_ids).detach()
    for _ in range(3):
        m.popart_td_terms(b)
    head = m.q_net.popart
    assert head.mu[1] > 10 * head.mu[0].abs() and head.sigma[1] > 10 * head.sigma[0]  # per-task statistics
    after = m.q_net(b.obs, b.task_ids).detach()
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-4)
    assert torch.all(after[b.task_ids == 0, 2] == INVALID_Q)
    assert torch.equal(m.target_net.popart.mu, torch.zeros(2))  # the target keeps its own statistics until a sync


@pytest.mark.parametrize("double_q", [False, True])
def test_update_minimizes_the_loss_on_per_task_normalized_targets(double_q):
    """popart_beta=1: the statistics become the batch's per-task mean/std, so the expected loss is known."""
    m, b = make(popart_beta=1.0, double_q=double_q), batch()
    with torch.no_grad():
        q_before = m.q_net(b.obs, b.task_ids).gather(1, b.actions[:, None]).squeeze(1)
        online_next = m.q_net(b.next_obs, b.task_ids) if double_q else None
        y = td_target(b.rewards, b.discounts, m.target_net(b.next_obs, b.task_ids), online_next)
    mu = torch.stack([y[b.task_ids == t].mean() for t in range(2)])
    sigma = torch.stack([y[b.task_ids == t].std(unbiased=False) for t in range(2)])
    mu_s, sd_s = mu[b.task_ids], sigma[b.task_ids]
    per_sample = F.smooth_l1_loss((q_before - mu_s) / sd_s, (y - mu_s) / sd_s, reduction="none")
    expected = sum(per_sample[b.task_ids == t].mean() for t in range(2))
    losses = []
    m.gradient_step = losses.append  # capture the loss the optimizer would minimize
    td, q_mean = m.update(b, None, 0)
    assert torch.allclose(m.q_net.popart.mu, mu, rtol=1e-5) and torch.allclose(m.q_net.popart.sigma, sigma, rtol=1e-4)
    assert torch.isclose(losses[0], expected, rtol=1e-4)
    plain = sum(F.smooth_l1_loss(q_before, y, reduction="none")[b.task_ids == t].mean() for t in range(2))
    assert plain > 20 * expected  # without PopArt task 1's 100x returns dominate the loss
    # logged Q in return units (the preserved online outputs), not the normalized ones
    assert torch.allclose(q_mean, torch.stack([q_before[b.task_ids == t].mean() for t in range(2)]), atol=1e-4)


def test_hard_target_sync_copies_weights_with_their_statistics():
    m, b = make(popart_beta=0.5), batch()
    for _ in range(3):
        m.popart_td_terms(b)
    m.update_target(1.0)
    assert torch.equal(m.target_net.popart.mu, m.q_net.popart.mu)
    assert torch.allclose(m.target_net(b.next_obs, b.task_ids), m.q_net(b.next_obs, b.task_ids))


def test_polyak_target_sync_averages_q_in_return_units():
    m, b = make(popart_beta=0.5), batch()
    for _ in range(3):  # only the statistics and the head move: the torsos stay equal
        m.popart_td_terms(b)
    with torch.no_grad():
        m.q_net.popart.bias.add_(0.3)
        online, target = m.q_net(b.next_obs, b.task_ids), m.target_net(b.next_obs, b.task_ids)
    m.update_target(0.25)
    mixed = m.target_net(b.next_obs, b.task_ids)
    valid = online > INVALID_Q
    assert torch.allclose(mixed[valid], (0.75 * target + 0.25 * online)[valid], rtol=1e-5, atol=1e-4)
    assert torch.equal(m.target_net.popart.mu, m.q_net.popart.mu)


def test_statistics_are_saved_in_the_state_dict():
    m, b = make(popart_beta=0.5), batch()
    m.popart_td_terms(b)
    m.update_target(1.0)
    state = m.state_dict()
    assert {"q_net.popart.mu", "q_net.popart.nu", "target_net.popart.mu", "target_net.popart.nu"} <= set(state)
    fresh = make(popart_beta=0.5)
    fresh.load_state_dict(copy.deepcopy(state))
    assert torch.equal(fresh.q_net.popart.sigma, m.q_net.popart.sigma)
    assert torch.equal(fresh.q_net(b.obs, b.task_ids), m.q_net(b.obs, b.task_ids))


def test_popart_metrics_are_per_task():
    m = make()
    names = set(m.popart_metrics())
    assert names == {"train/small/popart_mu", "train/small/popart_sigma", "train/big/popart_mu",
                     "train/big/popart_sigma"}
    assert make(popart=False).popart_metrics() == {}


@pytest.mark.parametrize("kwargs", [dict(dueling=True), dict(architecture="conditioned")])
def test_popart_needs_one_linear_head_per_task(kwargs):
    tasks = [TaskSpec("a", 4, 2), TaskSpec("b", 4, 2)]
    with pytest.raises(ValueError, match="model.popart=true needs one linear head per task"):
        MultiTaskQNetwork(tasks, hidden=(8,), popart_beta=1e-3, **kwargs)

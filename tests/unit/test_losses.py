import pytest
import torch
from torch import nn

from mtdqn.collect import LinearEpsilon
from mtdqn.losses import polyak_update, td_loss, td_target


def test_td_target_plain_dqn_uses_target_max():
    rewards = torch.tensor([1.0, 0.5])
    discounts = torch.tensor([0.9, 0.0])  # second sample terminated
    next_q_target = torch.tensor([[1.0, 3.0], [5.0, 2.0]])
    y = td_target(rewards, discounts, next_q_target, None)
    assert torch.allclose(y, torch.tensor([1.0 + 0.9 * 3.0, 0.5]))


def test_td_target_double_q_uses_online_argmax_target_value():
    rewards = torch.tensor([0.0, 1.0])
    discounts = torch.tensor([1.0, 0.5])
    next_q_target = torch.tensor([[10.0, 1.0], [2.0, 7.0]])
    next_q_online = torch.tensor([[0.0, 5.0], [3.0, 1.0]])  # online picks a=1 then a=0
    y = td_target(rewards, discounts, next_q_target, next_q_online)
    assert torch.allclose(y, torch.tensor([1.0, 1.0 + 0.5 * 2.0]))
    # plain DQN would have used the max of the target instead
    assert not torch.allclose(y, td_target(rewards, discounts, next_q_target, None))


def test_td_loss_huber_and_mse_and_weights():
    q = torch.tensor([0.0, 0.0])
    y = torch.tensor([0.5, 3.0])
    huber, td_abs = td_loss(q, y, kind="huber")
    assert torch.isclose(huber, torch.tensor((0.5 * 0.25 + (3.0 - 0.5)) / 2))
    assert torch.allclose(td_abs, torch.tensor([0.5, 3.0]))
    mse, _ = td_loss(q, y, kind="mse")
    assert torch.isclose(mse, torch.tensor((0.25 + 9.0) / 2))
    weighted, _ = td_loss(q, y, torch.tensor([1.0, 0.0]), kind="mse")
    assert torch.isclose(weighted, torch.tensor(0.25 / 2))


def test_polyak_update_hard_and_soft():
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(0.0)
    polyak_update(online, target, 0.25)
    assert torch.allclose(target.weight, torch.full_like(target.weight, 0.25))
    polyak_update(online, target, 1.0)
    assert torch.equal(target.weight, online.weight)


def test_linear_epsilon_schedule():
    eps = LinearEpsilon(start=1.0, end=0.1, duration=100, warmup=20)
    assert eps(0) == 1.0 and eps(19) == 1.0
    assert abs(eps(50) - 0.55) < 1e-9
    assert eps(100) == 0.1 and eps(10_000) == 0.1


@pytest.mark.parametrize("key", ["duration", "warmup"])
def test_linear_epsilon_names_the_one_bad_key(key):
    """`warmup=-5` was reported as 'exploration.duration=8000 and warmup=-5 must be >= 0'."""
    with pytest.raises(ValueError, match=rf"^exploration\.{key}=-5 must be >= 0 \(env steps\)$"):
        LinearEpsilon(**{key: -5})

"""DQNModule honours its switches (each test fails if the switch were ignored)."""

import importlib.util
from functools import partial

import pytest
import torch

from mtdqn.losses import td_loss, td_target
from mtdqn.models import DQNModule
from mtdqn.nets import QNetwork
from mtdqn.train import build
from mtdqn.types import Batch, TaskSpec
from tests.helpers.config import compose_cfg, params_vector

TASK = TaskSpec("toy", obs_dim=3, n_actions=4)


def make(**kwargs) -> DQNModule:
    torch.manual_seed(0)
    net = partial(QNetwork, hidden=[8], dueling=kwargs.pop("dueling", False))
    module = DQNModule(net=net, optimizer=partial(torch.optim.SGD, lr=0.1), task=TASK, **kwargs)
    with torch.no_grad():  # make online and target differ
        for p in module.target_net.parameters():
            p.add_(torch.randn_like(p))
    return module


def batch(n: int = 16) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(
        obs=torch.randn(n, 3, generator=g), actions=torch.randint(0, 4, (n,), generator=g),
        rewards=torch.randn(n, generator=g), next_obs=torch.randn(n, 3, generator=g),
        discounts=torch.full((n,), 0.9), weights=torch.ones(n), indices=torch.arange(n),
        task_ids=torch.zeros(n, dtype=torch.int64),
    )


@pytest.mark.parametrize("double_q", [False, True])
def test_double_q_switch_changes_the_target(double_q):
    m, b = make(double_q=double_q), batch()
    loss, _, _ = m.compute_loss(b)
    q = m.q_net(b.obs).gather(1, b.actions[:, None]).squeeze(1)
    online_next = m.q_net(b.next_obs) if double_q else None
    expected, _ = td_loss(q, td_target(b.rewards, b.discounts, m.target_net(b.next_obs), online_next))
    assert torch.isclose(loss, expected)
    other_next = None if double_q else m.q_net(b.next_obs)
    other, _ = td_loss(q, td_target(b.rewards, b.discounts, m.target_net(b.next_obs), other_next))
    assert not torch.isclose(loss, other)


def test_loss_switch_and_importance_weights():
    b = batch()
    huber, _, _ = make(loss="huber").compute_loss(b)
    mse, _, _ = make(loss="mse").compute_loss(b)
    assert not torch.isclose(huber, mse)
    zero_weighted, _, _ = make(loss="mse").compute_loss(b._replace(weights=torch.zeros(16)))
    assert zero_weighted.item() == 0.0


def test_dueling_switch_builds_a_dueling_head():
    assert hasattr(make(dueling=True).q_net.head, "advantage")
    assert not hasattr(make().q_net.head, "advantage")


def test_dueling_head_subtracts_the_mean_advantage():
    """Q = V + A - mean_a A (Wang et al. 2016): without the mean subtraction V and A are not identifiable."""
    head = make(dueling=True).q_net.head
    with torch.no_grad():
        head.advantage.bias.add_(3.0)  # a mean advantage far from 0
    f = torch.randn(5, 8)
    adv = head.advantage(f)
    torch.testing.assert_close(head(f), head.value(f) + adv - adv.mean(-1, keepdim=True))
    torch.testing.assert_close(head(f).mean(-1, keepdim=True), head.value(f))


@pytest.mark.parametrize("balance", ["dqn", "sum", "pcgrad"])
def test_regularizer_gradient_reaches_the_update(balance):
    """model.regularizers (EWC's penalty) must add their gradient to every update: DQNModule.update, the multi-task
    autograd update and PCGrad's step (which adds it after the projection). The gradients handed to the optimizer
    (apply_grads, as on the lean path) with a regularizer minus those without are exactly its gradient."""
    from types import SimpleNamespace

    from mtdqn.models import MultiTaskDQNModule
    from mtdqn.nets.multitask import MultiTaskQNetwork

    torch.manual_seed(0)
    if balance == "dqn":
        m, b = make(), batch()
    else:
        tasks = [TaskSpec("a", 3, 4), TaskSpec("b", 3, 4)]
        m = MultiTaskDQNModule(net=partial(MultiTaskQNetwork, hidden=(8, 8)), optimizer=partial(torch.optim.SGD, lr=0.1),
                               task=tasks, loss_balance=balance, grad_diagnostics_every=0)
        b = batch()._replace(task_ids=torch.arange(16) % 2)
        m._trainer = SimpleNamespace(world_size=1, precision_plugin=None)  # pcgrad_step asks for the world size
    params = list(m.q_net.parameters())
    m._lean, m._trainable = object(), params  # gradient_step hands autograd's gradients to apply_grads
    handed: list[list[torch.Tensor]] = []
    m.apply_grads = lambda grads, scaled=False: handed.append([g.detach().clone() for g in grads])
    last = params[-1]  # the (last) head's bias
    m.update(b, None, 1)
    m.regularizers.append(lambda: 1e3 * last.square().sum())
    m.update(b, None, 1)
    for p, plain, regularized in zip(params, *handed, strict=True):
        expected = 2e3 * last.detach() if p is last else torch.zeros_like(p)
        torch.testing.assert_close(regularized - plain, expected, rtol=1e-5, atol=1e-4)
    assert last.detach().abs().min() > 1e-3  # the regularizer's gradient is not ~0


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_target_sync_in_env_steps_hard_and_polyak(tau):
    m = make(target_update_period=10, tau=tau)
    online, before = params_vector(m.q_net), params_vector(m.target_net)
    m.sync_target(9)  # not due yet
    assert torch.equal(params_vector(m.target_net), before)
    m.sync_target(10)
    assert torch.allclose(params_vector(m.target_net), before + tau * (online - before), atol=1e-6)
    m.sync_target(35)  # two periods passed: tau_eff = 1 - (1 - tau)^2
    if tau < 1:
        mid = before + tau * (online - before)
        assert torch.allclose(params_vector(m.target_net), mid + 0.75 * (online - mid), atol=1e-6)


def test_target_follows_the_online_network_in_update_units(tmp_path):
    """model.target_update_unit=updates: the target is synced between gradient updates (period 1, tau 1: it ends
    equal to the online network), so a round's target values cannot be computed ahead (round_target_values: None)."""
    m = make(target_update_unit="updates")
    stacked = batch()._replace(next_obs=torch.randn(2, 16, 3), task_ids=torch.zeros(2, 16, dtype=torch.int64))
    assert m.round_target_values(stacked) is None and make().round_target_values(stacked) is not None
    cfg = compose_cfg(["debug=smoke", "logger=none", "callbacks=none", "model.target_update_unit=updates",
                       "model.target_update_period=1", "model.tau=1.0"], tmp_path)
    model, data, trainer = build(cfg)
    start = params_vector(model.target_net).clone()
    trainer.fit(model, datamodule=data)
    assert trainer.global_step > 0 and not torch.equal(params_vector(model.target_net), start)
    assert torch.equal(params_vector(model.target_net), params_vector(model.q_net))


@pytest.mark.parametrize("max_grad_norm", [0.0, 1e-3])
def test_gradient_clipping_switch(tmp_path, max_grad_norm):
    cfg = compose_cfg(["debug=smoke", "logger=none", "callbacks=none", "optimizer=sgd", "optimizer.momentum=0",
                       f"model.max_grad_norm={max_grad_norm}"], tmp_path)
    model, data, trainer = build(cfg)
    start = params_vector(model.q_net).clone()
    trainer.fit(model, datamodule=data)
    moved = (params_vector(model.q_net) - start).norm().item()
    lr_times_updates = 0.01 * trainer.global_step
    if max_grad_norm:
        assert moved <= max_grad_norm * lr_times_updates * 1.001  # each SGD step is at most lr * max_norm
    else:
        assert moved > 1e-3 * lr_times_updates


def test_num_envs_and_replay_ratio(tmp_path):
    cfg = compose_cfg(["debug=smoke", "logger=none", "callbacks=none", "data.num_envs=4",
                       "data.replay_ratio=0.25"], tmp_path)
    model, data, trainer = build(cfg)
    trainer.fit(model, datamodule=data)
    assert data.buffer.obs.shape[1] == 4 and len(data.buffer) == 600
    assert trainer.global_step == 5 * 25  # 5 rounds of 100 env steps x 0.25 updates per env step


@pytest.mark.parametrize("max_grad_norm", [10.0, 1e-3])
def test_lean_step_is_used_and_matches_the_standard_path(tmp_path, max_grad_norm):
    """max_grad_norm=1e-3 clips every update on both paths (the standard path in on_before_optimizer_step, the lean
    one in apply_grads): a lean path that logged the norm but stepped with unclipped gradients trains other weights
    (Adam is not invariant to a per-update rescaling)."""
    results = {}
    for lean in (True, False):
        cfg = compose_cfg(["debug=smoke", "logger=none", "callbacks=none", "seed=5", f"model.lean_step={lean}",
                           f"model.max_grad_norm={max_grad_norm}"], tmp_path / str(lean))
        torch.manual_seed(5)
        model, data, trainer = build(cfg)
        trainer.fit(model, datamodule=data)
        assert (model._lean is not None) == lean
        assert (model._explicit is not None) == lean  # plain MLP: hand-written gradients too
        results[lean] = params_vector(model.q_net)
    torch.testing.assert_close(results[True], results[False], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", ["explicit", "lean_autograd"])
def test_lean_step_matches_the_standard_path_with_a_convolution_on_minatar(tmp_path, path, monkeypatch):
    """The MinAtar preset's convolution takes the lean path with hand-written gradients (PatchConv), or with
    autograd's when they are switched off (as for networks of several convolutions): either must train to the same
    weights as backward + clip + Adam.step (autograd's weight gradient comes channels-last)."""
    pytest.importorskip("minatar", reason="MinAtar ids need the optional extra .[minatar]")
    results = {}
    for lean in (True, False):
        cfg = compose_cfg(["+experiment=minatar_dqn", "logger=none", "callbacks=none", "seed=5",
                           f"model.lean_step={lean}", "data.total_env_steps=1536", "data.learning_starts=1024"],
                          tmp_path / str(lean))
        torch.manual_seed(5)
        model, data, trainer = build(cfg)
        if lean and path == "lean_autograd":
            monkeypatch.setattr("mtdqn.models.dqn.ExplicitMLPGrads.supports", staticmethod(lambda net: False))
        trainer.fit(model, datamodule=data)
        monkeypatch.undo()
        assert (model._lean is not None) == lean and trainer.global_step == 192
        assert (model._explicit is not None) == (lean and path == "explicit")
        results[lean] = params_vector(model.q_net)
    torch.testing.assert_close(results[True], results[False], rtol=1e-4, atol=1e-5)


MINATAR = pytest.mark.skipif(importlib.util.find_spec("minatar") is None, reason="MinAtar ids need .[minatar]")
# a tiny minatar_mtl run: its own budgets, as key=value overrides (they win over the preset and debug=smoke)
MINATAR_MTL = ["+experiment=minatar_mtl", "net.conv=[[16,3,1]]", "net.hidden=[16]", "data.num_envs=2",
               "data.env_steps_per_round=96", "data.total_env_steps=960", "data.learning_starts=384",
               "data.batch_size=48"]
MTL_EXPLICIT = ["model=mtdqn", "net=multihead", "task_set=driving", "net.hidden=[16]", "model.grad_diagnostics_every=3"]


@pytest.mark.parametrize(("extra", "supports"), [
    (["model.double_q=true", "replay=prioritized", "model.loss=mse"], "mtdqn.models.dqn.ExplicitMLPGrads.supports"),
    (["model.target_update_unit=updates", "model.tau=0.5"], "mtdqn.models.dqn.ExplicitMLPGrads.supports"),
    # multi-head multi-task DQN (autograd only for the rounds whose gradient cosines are logged)
    ([*MTL_EXPLICIT, "model.loss_balance=weighted", "model.task_weights=[0.5,1.0,2.0]", "replay=prioritized",
      "model.loss=mse"], "mtdqn.models.mtdqn.ExplicitMultiHeadGrads.supports"),
    ([*MTL_EXPLICIT, "model.double_q=false", "model.target_update_unit=updates", "model.tau=0.5"],
     "mtdqn.models.mtdqn.ExplicitMultiHeadGrads.supports"),
    ([*MTL_EXPLICIT, "model.double_q=false", "data.batch_composition=weighted", "data.task_weights=[0.2,0.4,0.4]"],
     "mtdqn.models.mtdqn.ExplicitMultiHeadGrads.supports"),
    # observation sizes 4 / 6 and action counts 2 / 3: per-task input adapters and heads (the MinAtar preset's form)
    (["model=mtdqn", "net=multihead", "task_set=gym", "task_set.tasks=[CartPole-v1,Acrobot-v1]", "net.hidden=[16,16]",
      "model.grad_diagnostics_every=3", "model.double_q=true", "replay=prioritized"],
     "mtdqn.models.mtdqn.ExplicitMultiHeadGrads.supports"),
    # FiLM conditioning (the driving preset lane_keep_mtl_share's network), with its data sharing and MSE
    ([*MTL_EXPLICIT, "net=conditioned", "net.conditioning=film", "net.hidden=[16,8]", "model.loss=mse",
      "model.double_q=true", "data.share_fraction=[0.5,0,0.5]"], "mtdqn.models.mtdqn.ExplicitFiLMGrads.supports"),
    ([*MTL_EXPLICIT, "net=conditioned", "net.conditioning=film", "model.loss_balance=weighted",
      "model.task_weights=[0.5,1.0,2.0]", "replay=prioritized"], "mtdqn.models.mtdqn.ExplicitFiLMGrads.supports"),
    # PCGrad from per-task hand-written gradients (the same random projection order: one global RNG draw per task)
    ([*MTL_EXPLICIT, "net=conditioned", "net.conditioning=film", "net.hidden=[16,8]", "model.loss_balance=pcgrad",
      "model.loss=mse", "data.share_fraction=[0.5,0,0.5]"], "mtdqn.models.mtdqn.ExplicitFiLMGrads.supports"),
    # (adapters and heads around one hidden layer: the tasks share no parameter, so no gradient cosines are logged;
    # computing them crashed before)
    (["model=mtdqn", "net=multihead", "task_set=gym", "task_set.tasks=[CartPole-v1,Acrobot-v1]", "net.hidden=[16]",
      "model.loss_balance=pcgrad", "replay=prioritized", "model.grad_diagnostics_every=3"],
     "mtdqn.models.mtdqn.ExplicitMultiHeadGrads.supports"),
    # MinAtar games behind one convolution each (channel counts differ), plain sum and PCGrad; one DQN on a game
    pytest.param([*MINATAR_MTL, "model.grad_diagnostics_every=3"],
                 "mtdqn.models.mtdqn.ExplicitMultiHeadGrads.supports", marks=MINATAR),
    pytest.param([*MINATAR_MTL, "model.loss_balance=pcgrad"],
                 "mtdqn.models.mtdqn.ExplicitMultiHeadGrads.supports", marks=MINATAR),
    pytest.param(["+experiment=minatar_dqn", "net.hidden=[16]", "data.num_envs=2", "data.total_env_steps=600",
                  "data.env_steps_per_round=100", "data.learning_starts=200"],
                 "mtdqn.models.dqn.ExplicitMLPGrads.supports", marks=MINATAR),
])
def test_explicit_gradient_path_matches_autograd_in_training(tmp_path, extra, supports, monkeypatch):
    """The lean path with hand-written gradients trains the same weights as the autograd path."""
    results = []
    for explicit in (True, False):
        cfg = compose_cfg(["debug=smoke", "logger=none", "callbacks=none", "seed=3", *extra], tmp_path / str(explicit))
        model, data, trainer = build(cfg)
        if not explicit:
            monkeypatch.setattr(supports, staticmethod(lambda net: False))
        trainer.fit(model, datamodule=data)
        monkeypatch.undo()
        assert (model._explicit is not None) == explicit and model._lean is not None
        results.append(params_vector(model.q_net))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["dqn", "dqn-double-q", "mtdqn", "dqn-updates"])
def test_round_batched_target_values_equal_per_update_ones(tmp_path, model, monkeypatch):
    """Precomputing Q_target for the whole round (target frozen in env-step mode) changes nothing; without double
    Q (the default) the lean path also computes the round's TD targets in one op. In update units (dqn-updates) the
    target moves within the round, so nothing may be computed ahead: values from the round's first target differ."""
    extra = {"dqn": [], "dqn-double-q": ["model.double_q=true"],
             "dqn-updates": ["model.target_update_unit=updates", "model.target_update_period=1"],
             "mtdqn": ["model=mtdqn", "net=multihead", "task_set=driving", "net.hidden=[16]"]}[model]
    results = []
    for precompute in (True, False):
        cfg = compose_cfg(["debug=smoke", "logger=none", "callbacks=none", "seed=2", *extra], tmp_path / str(precompute))
        m, data, trainer = build(cfg)
        if not precompute:
            monkeypatch.setattr(type(m), "round_target_values", lambda self, batch, obs_quantum=None: None)
        trainer.fit(m, datamodule=data)
        monkeypatch.undo()
        results.append(params_vector(m.q_net))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra", [[], ["model=mtdqn", "net=multihead", "task_set=driving", "net.hidden=[16]"]])
def test_prioritized_replay_receives_td_errors_from_the_module(tmp_path, extra):
    cfg = compose_cfg(["debug=smoke", "logger=none", "callbacks=none", "replay=prioritized", *extra], tmp_path)
    model, data, trainer = build(cfg)
    trainer.fit(model, datamodule=data)
    for buf in data.buffers:  # without updates every leaf would still hold the initial priority 1.0
        leaves = buf.tree.leaves(torch.arange(len(buf)))
        assert leaves.unique().numel() > 2

"""The lean update path computes exactly what backward + clip_grad_norm_ + Adam.step compute."""

import copy

import pytest
import torch
import torch.nn.functional as F

from mtdqn.models.lean_step import LeanAdam, clip_grads_


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_lean_adam_matches_optimizer_step(cls):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    ref = copy.deepcopy(net)
    kw = dict(lr=1e-2, weight_decay=0.01, fused=True)
    opt, ref_opt = cls(net.parameters(), **kw), cls(ref.parameters(), **kw)
    lean = LeanAdam(opt)
    for _step in range(5):
        x, y = torch.randn(8, 3), torch.randn(8, 2)
        grads = list(torch.autograd.grad(F.mse_loss(net(x), y), list(net.parameters())))
        clip_grads_(grads, 0.5)
        lean.step(grads)
        ref_opt.zero_grad()
        F.mse_loss(ref(x), y).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        ref_opt.step()
        for p, q in zip(net.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # the state lives in the optimizer, so its state_dict round-trips as usual
    assert float(opt.state_dict()["state"][0]["step"]) == 5.0


def test_lean_adam_matches_optimizer_step_for_a_convolution_on_channels_last_images():
    """MinAtar's (H, W, C) images reach the convolution permuted, so `torch.autograd.grad` returns its weight
    gradient channels-last (other strides than the weight); the fused kernel walks tensors as flat buffers, so
    LeanAdam must copy such a gradient into the weight's layout. Without that, each weight moved by another
    weight's gradient (the lean path's MinAtar convolution learned half as well as SB3's; 2026-11-30)."""
    from mtdqn.nets.q import QNetwork

    torch.manual_seed(0)
    net = QNetwork(100 * 4, 3, hidden=[32], conv=[[8, 3, 1]], obs_shape=(10, 10, 4))
    ref = copy.deepcopy(net)
    opt, ref_opt = (torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in (net, ref))
    lean = LeanAdam(opt)
    params = list(net.parameters())
    x = (torch.rand(16, 400) < 0.2).float()
    grads = list(torch.autograd.grad(net(x).square().mean(), params))
    assert grads[0].stride() != params[0].stride()  # the case this test is about: a channels-last weight gradient
    for step in range(5):
        x = (torch.rand(16, 400) < 0.2).float()
        grads = list(torch.autograd.grad(net(x).square().mean(), params))
        clip_grads_(grads, 10.0)
        lean.step(grads)
        ref_opt.zero_grad()
        ref(x).square().mean().backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 10.0)
        ref_opt.step()
        for p, q in zip(net.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=f"step {step}")


def test_lean_adam_follows_a_reloaded_optimizer_state():
    """LeanAdam caches the optimizer's state tensors; load_state_dict (resume) replaces them and the cache must
    follow, or the moments of the checkpoint would be ignored."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ref = copy.deepcopy(net)
    opt, ref_opt = (torch.optim.Adam(m.parameters(), lr=1e-2, fused=True) for m in (net, ref))
    lean = LeanAdam(opt)
    xs = [torch.randn(8, 3) for _ in range(4)]
    for x in xs[:2]:
        lean.step(list(torch.autograd.grad(net(x).square().mean(), list(net.parameters()))))
    saved_opt, saved_net = copy.deepcopy(opt.state_dict()), copy.deepcopy(net.state_dict())
    lean.step(list(torch.autograd.grad(net(xs[2]).square().mean(), list(net.parameters()))))
    opt.load_state_dict(saved_opt)  # back to after step 2, as a resume would
    net.load_state_dict(saved_net)
    lean.step(list(torch.autograd.grad(net(xs[3]).square().mean(), list(net.parameters()))))
    for x in (xs[0], xs[1], xs[3]):
        ref_opt.zero_grad()
        ref(x).square().mean().backward()
        ref_opt.step()
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert float(opt.state_dict()["state"][0]["step"]) == 3.0


def test_lean_adam_reads_the_learning_rate_at_every_step():
    """A schedule (model.scheduler) writes each round's lr into the optimizer's param group; LeanAdam must step
    with that lr, not the one it was built with (the schedule was logged but not applied)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ref = copy.deepcopy(net)
    opt, ref_opt = (torch.optim.Adam(m.parameters(), lr=1e-2, fused=True) for m in (net, ref))
    lean = LeanAdam(opt)
    x = torch.randn(8, 3)
    opt.param_groups[0]["lr"] = 0.0
    before = [p.detach().clone() for p in net.parameters()]
    lean.step(list(torch.autograd.grad(net(x).square().mean(), list(net.parameters()))))
    for p, q in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, q)
    net.load_state_dict(ref.state_dict())  # the same state as the reference again: lr 3e-3 from here
    opt.state.clear()
    for o in (opt, ref_opt):
        o.param_groups[0]["lr"] = 3e-3
    for _ in range(2):
        lean.step(list(torch.autograd.grad(net(x).square().mean(), list(net.parameters()))))
        ref_opt.zero_grad()
        ref(x).square().mean().backward()
        ref_opt.step()
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_lean_adam_refuses_unsupported_optimizers():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert not LeanAdam.supports(torch.optim.SGD(p, lr=0.1))
    assert not LeanAdam.supports(torch.optim.Adam(p, lr=0.1))  # not fused
    assert not LeanAdam.supports(torch.optim.Adam(p, lr=0.1, fused=True, amsgrad=True))
    assert LeanAdam.supports(torch.optim.Adam(p, lr=0.1, fused=True))


def test_clip_grads_matches_clip_grad_norm():
    grads = [torch.randn(4, 4) * 10, torch.randn(4) * 10]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    expected = torch.nn.utils.clip_grad_norm_(params, 1.0)
    total = clip_grads_(grads, 1.0)
    torch.testing.assert_close(total, expected)
    for p, g in zip(params, grads, strict=True):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("kind", ["huber", "mse"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("hidden", [(32,), (32, 16), (8, 8, 8)])
def test_explicit_mlp_grads_equal_autograd(kind, weighted, hidden):
    from mtdqn.models.mlp_grads import ExplicitMLPGrads
    from mtdqn.nets import QNetwork

    torch.manual_seed(1)
    net = QNetwork(obs_dim=5, n_actions=3, hidden=hidden)
    obs, actions = torch.randn(64, 5), torch.randint(0, 3, (64,))
    target = 3 * torch.randn(64)  # both Huber branches are hit
    weights = torch.rand(64) if weighted else None
    assert_explicit_equals_autograd(ExplicitMLPGrads(net), net, obs, actions, target, weights, kind)


def assert_explicit_equals_autograd(explicit, net, obs, actions, target, weights, kind):
    """ExplicitMLPGrads' loss, |td|, mean Q and gradients (in `parameters()` order) equal autograd's through `net`."""
    from mtdqn.losses import td_loss

    loss, td_abs, q_mean, grads = explicit.loss_and_grads(obs, actions, target, weights, kind)
    q_taken = net(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
    ref_loss, ref_td = td_loss(q_taken, target, weights, kind)
    ref_grads = torch.autograd.grad(ref_loss, list(net.parameters()))
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(td_abs, ref_td)
    torch.testing.assert_close(q_mean, q_taken.mean())
    assert [g.shape for g in grads] == [r.shape for r in ref_grads]
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_explicit_greedy_equals_module_argmax():
    from mtdqn.models.mlp_grads import ExplicitMLPGrads
    from mtdqn.nets import QNetwork

    torch.manual_seed(2)
    net = QNetwork(obs_dim=5, n_actions=4, hidden=(16, 16))
    obs = torch.randn(257, 5)
    explicit = ExplicitMLPGrads(net)
    assert torch.equal(explicit.q_values(obs), net(obs))
    assert torch.equal(explicit.greedy(obs), net(obs).argmax(-1))
    with torch.no_grad():  # the cached W^T views follow in-place updates and replaced parameters
        net.head.weight.mul_(-1.0)
        net.torso[0].weight = torch.nn.Parameter(torch.randn_like(net.torso[0].weight))
    assert torch.equal(explicit.q_values(obs), net(obs))


def test_explicit_grads_skip_td_abs_when_not_needed():
    from mtdqn.models.mlp_grads import ExplicitMLPGrads
    from mtdqn.nets import QNetwork

    torch.manual_seed(3)
    net = QNetwork(obs_dim=5, n_actions=3, hidden=(8,))
    args = (torch.randn(16, 5), torch.randint(0, 3, (16,)), torch.randn(16), None, "huber")
    full = ExplicitMLPGrads(net).loss_and_grads(*args)
    lean = ExplicitMLPGrads(net).loss_and_grads(*args, need_td_abs=False)
    assert lean[1] is None and full[1] is not None
    for a, b in zip(full[3], lean[3], strict=True):
        assert torch.equal(a, b)


def test_explicit_grads_only_for_plain_mlps():
    from mtdqn.models.mlp_grads import ExplicitMLPGrads
    from mtdqn.nets import QNetwork

    assert ExplicitMLPGrads.supports(QNetwork(4, 2))
    assert not ExplicitMLPGrads.supports(QNetwork(4, 2, dueling=True))
    assert not ExplicitMLPGrads.supports(QNetwork(4, 2, layer_norm=True))
    assert not ExplicitMLPGrads.supports(QNetwork(4, 2, activation="tanh"))
    assert not ExplicitMLPGrads.supports(QNetwork(4, 2, obs_norm=True))


@pytest.mark.parametrize("kind", ["huber", "mse"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("obs_shape", "conv"), [
    ((10, 10, 4), [[16, 3, 1]]),  # MinAtar: channels last, the MinAtar paper's layer
    ((3, 9, 11), [[5, 3, 2]]),    # channels first, stride 2, not square
    ((7, 6), [[4, 2, 1]]),        # one channel
])
def test_explicit_grads_through_one_convolution_equal_autograd(kind, weighted, obs_shape, conv):
    """A one-convolution encoder (PatchConv: the convolution as a product over the input's patches) gives
    autograd's loss and gradients for every parameter, the convolution's included, in `parameters()` order; Q-values
    and greedy actions stay the module's to the last digit."""
    import math

    from mtdqn.losses import td_loss
    from mtdqn.models.mlp_grads import ExplicitMLPGrads
    from mtdqn.nets import QNetwork

    torch.manual_seed(4)
    dim = math.prod(obs_shape)
    net = QNetwork(obs_dim=dim, n_actions=3, hidden=(32, 16), conv=conv, obs_shape=obs_shape)
    obs = torch.randn(48, dim)
    obs[::3] = (torch.rand(16, dim) < 0.2).float()  # MinAtar-like binary images too
    actions, target = torch.randint(0, 3, (48,)), 3 * torch.randn(48)
    weights = torch.rand(48) if weighted else None
    explicit = ExplicitMLPGrads(net)
    assert_explicit_equals_autograd(explicit, net, obs, actions, target, weights, kind)
    with torch.no_grad():
        assert torch.equal(explicit.q_values(obs), net(obs))
        assert torch.equal(explicit.greedy(obs), net(obs).argmax(-1))
        # rows of a round's (G, B, D) batch in one go, and a view into it (the round's minibatches)
        stacked = obs.view(4, 12, dim)
        torch.testing.assert_close(explicit.batched_q_values(stacked), net(stacked))
        view_loss = explicit.loss_and_grads(stacked[2], actions[24:36], target[24:36], None, kind)[0]
        q_view = net(obs[24:36]).gather(1, actions[24:36].unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(view_loss, td_loss(q_view, target[24:36], None, kind)[0])


def test_explicit_grads_take_one_convolution_only():
    from mtdqn.models.mlp_grads import ExplicitMLPGrads
    from mtdqn.nets import QNetwork

    image = {"obs_dim": 400, "n_actions": 3, "obs_shape": (10, 10, 4)}
    assert ExplicitMLPGrads.supports(QNetwork(**image, conv=[[16, 3, 1]]))
    assert not ExplicitMLPGrads.supports(QNetwork(**image, conv=[[16, 3, 1], [8, 3, 1]]))  # two: autograd
    assert not ExplicitMLPGrads.supports(QNetwork(**image, conv=[[16, 3, 1]], activation="tanh"))
    assert not ExplicitMLPGrads.supports(QNetwork(**image, conv=[[16, 3, 1]], dueling=True))


def _tasks(obs_dims=(5, 5, 5), n_actions=(3, 3, 3)):
    from mtdqn.types import TaskSpec

    return [TaskSpec(name=f"t{i}", obs_dim=d, n_actions=a) for i, (d, a) in enumerate(zip(obs_dims, n_actions, strict=True))]


@pytest.mark.parametrize("kind", ["huber", "mse"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("task_weights", [None, (0.2, 0.5, 1.3)])
@pytest.mark.parametrize("net_kind", ["multihead", "film", "adapters", "adapters-grouped"])
def test_explicit_multitask_grads_equal_autograd(kind, weighted, task_weights, net_kind):
    """Per-task weighted TD loss and its gradients, by hand, equal autograd through the module, in parameters()
    order; a task absent from the batch gets exactly zero gradients in its own parameters (multi-head: its head,
    and its input adapter where observation sizes differ; FiLM: its rows of every scale and shift). "adapters":
    observation sizes 5 / 4 / 6 and action counts 3 / 2 / 4 (MinAtar-like), the batch in random task order or
    grouped by task (as replay batches come)."""
    from mtdqn.losses.multitask import task_weighted_loss
    from mtdqn.models.mlp_grads import ExplicitFiLMGrads, ExplicitMultiHeadGrads
    from mtdqn.nets.multitask import MultiTaskQNetwork

    torch.manual_seed(4)
    adapters = net_kind.startswith("adapters")
    tasks = _tasks(obs_dims=(5, 4, 6), n_actions=(3, 2, 4)) if adapters else _tasks()
    net = _film_net() if net_kind == "film" else MultiTaskQNetwork(tasks, hidden=(16, 8))
    explicit_cls = ExplicitFiLMGrads if net_kind == "film" else ExplicitMultiHeadGrads
    n = 64
    task_ids = torch.randint(0, 2, (n,))  # task 2 absent
    if net_kind == "adapters-grouped":
        task_ids = task_ids.sort().values
    width = 6 if adapters else 5
    obs = torch.randn(n, width) * (torch.arange(width) < torch.tensor([t.obs_dim for t in tasks])[task_ids, None])
    actions = (torch.rand(n) * torch.tensor([t.n_actions for t in tasks])[task_ids]).long()
    target = 3 * torch.randn(n)
    weights = torch.rand(n) if weighted else None
    tw = None if task_weights is None else torch.tensor(task_weights)
    total, per_task, td_abs, q_per_task, grads = explicit_cls(net).loss_and_grads(
        obs, actions, task_ids, target, weights, tw, kind)
    ref_q = net(obs, task_ids).gather(1, actions.unsqueeze(1)).squeeze(1)
    loss_fn = torch.nn.functional.smooth_l1_loss if kind == "huber" else torch.nn.functional.mse_loss
    per_sample = loss_fn(ref_q, target, reduction="none") * (weights if weighted else 1.0)
    ref_total, ref_per_task = task_weighted_loss(per_sample, task_ids, tw, 3)
    # the absent task's adapter never sees a row (routed per task): zero, as the hand-written gradient
    ref_grads = torch.autograd.grad(ref_total, list(net.parameters()), materialize_grads=True)
    torch.testing.assert_close(total, ref_total)
    torch.testing.assert_close(per_task, ref_per_task)
    from mtdqn.models.mtdqn import task_means

    torch.testing.assert_close(q_per_task, task_means(ref_q.detach(), task_ids, 3))
    torch.testing.assert_close(td_abs, (ref_q - target).abs())
    assert [g.shape for g in grads] == [p.shape for p in net.parameters()]
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    if net_kind != "film":
        names = [n for n, _ in net.named_parameters()]
        own = [g for name, g in zip(names, grads, strict=True) if name.startswith(("heads.2.", "adapters.2."))]
        assert len(own) == (4 if adapters else 2) and not any(g.any() for g in own)  # the absent task's
    else:
        for name, g in zip([n for n, _ in net.named_parameters()], grads, strict=True):
            if name.startswith("film_"):
                assert not g[2].any() and g[:2].abs().sum() > 0  # the absent task's rows


@pytest.mark.parametrize(("net_kind", "split"), [
    *((kind, split) for kind in ("multihead", "film", "adapters") for split in ("grouped", "any order")),
    # per-task input adapters take the hand-written path on the CPU only (rows, never masks)
    ("multihead", "masks"), ("film", "masks"),
])
def test_explicit_per_task_grads_equal_autograd_of_each_tasks_loss(net_kind, split, monkeypatch):
    """PCGrad's input by hand (one backward, weight gradients summed per task): task t's gradients equal autograd's
    of its mean loss alone (zero for the absent task 2), and the tasks' gradients sum to the plain-sum loss's; for
    a batch grouped by task (replay's), one in any order, and the accelerators' (T, B) masks instead of rows."""
    from mtdqn.losses.multitask import split_flat, task_weighted_loss
    from mtdqn.models.mlp_grads import ExplicitFiLMGrads, ExplicitMultiHeadGrads, task_masks
    from mtdqn.nets.multitask import MultiTaskQNetwork

    torch.manual_seed(8)
    tasks = _tasks(obs_dims=(5, 4, 6), n_actions=(3, 2, 4)) if net_kind == "adapters" else _tasks()
    net = _film_net() if net_kind == "film" else MultiTaskQNetwork(tasks, hidden=(16, 8))
    explicit = (ExplicitFiLMGrads if net_kind == "film" else ExplicitMultiHeadGrads)(net)
    n, width = 48, max(t.obs_dim for t in tasks)
    task_ids = torch.randint(0, 2, (n,))
    task_ids = task_ids.sort().values if split == "grouped" else task_ids
    if split == "masks":
        monkeypatch.setattr(type(explicit), "_task_split", lambda self, ids: task_masks(ids, self.n_tasks))
    obs, target, weights = torch.randn(n, width), torch.randn(n), torch.rand(n)
    actions = (torch.rand(n) * torch.tensor([t.n_actions for t in tasks])[task_ids]).long()
    per_task, td_abs, _, task_grads = explicit.task_loss_and_grads(obs, actions, task_ids, target, weights, "huber")
    ref_q = net(obs, task_ids).gather(1, actions.unsqueeze(1)).squeeze(1)
    per_sample = torch.nn.functional.smooth_l1_loss(ref_q, target, reduction="none") * weights
    _, ref_per_task = task_weighted_loss(per_sample, task_ids, None, 3)
    torch.testing.assert_close(per_task, ref_per_task)
    torch.testing.assert_close(td_abs, (ref_q - target).abs())
    params = list(net.parameters())
    assert task_grads.shape == (3, sum(p.numel() for p in params))  # one flat row per task, parameters() order
    for t in range(3):
        ref = torch.autograd.grad(ref_per_task[t], params, retain_graph=True, materialize_grads=True)
        for g, r in zip(split_flat(task_grads[t], params), ref, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    assert not task_grads[2].any()
    whole = explicit.loss_and_grads(obs, actions, task_ids, target, weights, None, "huber")[-1]
    for part, g in zip(split_flat(task_grads.sum(0), params), whole, strict=True):
        torch.testing.assert_close(part, g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spaces", [((5, 5, 5), (3, 3, 3)), ((5, 4, 6), (3, 2, 4))])
def test_explicit_multihead_values_and_greedy_equal_module(spaces):
    """Q-values (INVALID_Q where a task lacks the action), a round's batched values and each task's greedy actions
    (from zero-padded or own-width observations) equal the module's; replaced Parameters are followed."""
    from mtdqn.models.mlp_grads import ExplicitMultiHeadGrads
    from mtdqn.nets.multitask import MultiTaskQNetwork

    torch.manual_seed(5)
    net = MultiTaskQNetwork(_tasks(*spaces), hidden=(16, 16))
    width, a_max = max(spaces[0]), max(spaces[1])
    obs, task_ids = torch.randn(300, width), torch.randint(0, 3, (300,))
    explicit = ExplicitMultiHeadGrads(net)
    with torch.no_grad():
        torch.testing.assert_close(explicit.q_values(obs, task_ids), net(obs, task_ids))
        torch.testing.assert_close(explicit.batched_q_values(obs.view(3, 100, width), task_ids.view(3, 100)),
                                   net(obs, task_ids).view(3, 100, a_max))
        for t, d in enumerate(spaces[0]):
            ids = torch.full((300,), t)
            own_width = obs[:, :d]
            expected = net(torch.nn.functional.pad(own_width, (0, width - d)), ids).argmax(-1)
            assert torch.equal(explicit.greedy(own_width, t), expected)
            assert torch.equal(explicit.greedy(torch.nn.functional.pad(own_width, (0, width - d)), t), expected)
        for lin in [m for m in net.torso if isinstance(m, torch.nn.Linear)] + list(net.adapters or []):
            lin.weight = torch.nn.Parameter(torch.randn_like(lin.weight))  # replaced: followed
        torch.testing.assert_close(explicit.q_values(obs, task_ids), net(obs, task_ids))


def test_explicit_multihead_only_for_plain_multihead_nets():
    from mtdqn.models.mlp_grads import ExplicitMultiHeadGrads
    from mtdqn.nets.multitask import MultiTaskQNetwork

    assert ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_tasks()))
    assert not ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_tasks(), architecture="conditioned"))
    assert not ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_tasks(), dueling=True))
    assert not ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_tasks(), layer_norm=True))
    assert not ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_tasks(), popart_beta=1e-3))
    assert not ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_tasks(), obs_norm=True))
    assert ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_tasks(obs_dims=(5, 4, 5))))  # adapters
    assert ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_tasks(n_actions=(3, 2, 3))))
    assert ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_tasks(obs_dims=(5, 4, 5)), hidden=(8,)))
    assert not ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_tasks(obs_dims=(5, 4, 5)), activation="tanh"))
    assert ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_image_tasks((4, 7, 4)), conv=[[5, 3, 1]]))
    assert not ExplicitMultiHeadGrads.supports(MultiTaskQNetwork(_image_tasks((4, 7, 4)), conv=[[5, 3, 1], [4, 2, 1]]))


def _image_tasks(channels):
    """MinAtar-like tasks: 8x8 images with these channel counts (channels last), 3 / 2 / 4 actions."""
    from mtdqn.types import TaskSpec

    return [TaskSpec(name=f"t{i}", obs_dim=64 * c, n_actions=a, obs_shape=(8, 8, c))
            for i, (c, a) in enumerate(zip(channels, (3, 2, 4), strict=True))]


@pytest.mark.parametrize("channels", [(4, 7, 4), (3, 3, 3)])  # one encoder per game / one shared encoder
@pytest.mark.parametrize("order", ["grouped", "any order"])
def test_explicit_multihead_grads_through_conv_encoders_equal_autograd(channels, order):
    """Multi-head networks behind one-convolution image encoders (per game where channel counts differ, else one
    shared) take hand-written gradients: the weighted loss's gradients, and each task's own (PCGrad's input), equal
    autograd's; the absent task 2 gets exactly zero in its encoder and head; Q-values and greedy actions are the
    module's."""
    from mtdqn.losses.multitask import split_flat, task_weighted_loss
    from mtdqn.models.mlp_grads import ExplicitMultiHeadGrads
    from mtdqn.nets.multitask import MultiTaskQNetwork

    torch.manual_seed(9)
    tasks = _image_tasks(channels)
    net = MultiTaskQNetwork(tasks, hidden=(16, 8), conv=[[5, 3, 1]])
    assert len(net.encoders) == (1 if len(set(channels)) == 1 else 3)
    explicit = ExplicitMultiHeadGrads(net)
    n, width = 40, max(t.obs_dim for t in tasks)
    task_ids = torch.randint(0, 2, (n,))  # task 2 absent
    task_ids = task_ids.sort().values if order == "grouped" else task_ids
    dims = torch.tensor([t.obs_dim for t in tasks])[task_ids, None]
    obs = (torch.rand(n, width) < 0.3).float() * (torch.arange(width) < dims)  # each row its own width, zero-padded
    actions = (torch.rand(n) * torch.tensor([t.n_actions for t in tasks])[task_ids]).long()
    target, weights, tw = 3 * torch.randn(n), torch.rand(n), torch.tensor([0.2, 0.5, 1.3])
    total, per_task, _, _, grads = explicit.loss_and_grads(obs, actions, task_ids, target, weights, tw, "huber")
    ref_q = net(obs, task_ids).gather(1, actions.unsqueeze(1)).squeeze(1)
    per_sample = torch.nn.functional.smooth_l1_loss(ref_q, target, reduction="none") * weights
    ref_total, ref_per_task = task_weighted_loss(per_sample, task_ids, tw, 3)
    params = list(net.parameters())
    ref_grads = torch.autograd.grad(ref_total, params, retain_graph=True, materialize_grads=True)
    torch.testing.assert_close(total, ref_total)
    assert [g.shape for g in grads] == [p.shape for p in params]
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    names = [name for name, _ in net.named_parameters()]
    own = [g for name, g in zip(names, grads, strict=True) if name.startswith(("heads.2.", "encoders.2."))]
    assert len(own) == (4 if len(net.encoders) == 3 else 2) and not any(g.any() for g in own)
    _, _, _, task_grads = explicit.task_loss_and_grads(obs, actions, task_ids, target, weights, "huber")
    _, ref_each = task_weighted_loss(per_sample, task_ids, None, 3)
    for t in range(3):
        ref = torch.autograd.grad(ref_each[t], params, retain_graph=True, materialize_grads=True)
        for g, r in zip(split_flat(task_grads[t], params), ref, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(explicit.q_values(obs, task_ids), net(obs, task_ids))
        for t, task in enumerate(tasks):
            expected = net(obs, torch.full((n,), t)).argmax(-1)
            assert torch.equal(explicit.greedy(obs[:, :task.obs_dim], t), expected)


def test_batched_target_values_in_chunks_equal_one_forward(monkeypatch):
    """A round's (G, B, D) next observations go through the target net in row chunks: same values, same shape."""
    from mtdqn.models import mlp_grads
    from mtdqn.nets import QNetwork
    from mtdqn.nets.multitask import MultiTaskQNetwork

    monkeypatch.setattr(mlp_grads, "ROWS_PER_CHUNK", 7)
    torch.manual_seed(6)
    single, multi = QNetwork(obs_dim=5, n_actions=3, hidden=(16,)), MultiTaskQNetwork(_tasks(), hidden=(16,))
    obs, ids = torch.randn(4, 10, 5), torch.randint(0, 3, (4, 10))
    with torch.no_grad():
        torch.testing.assert_close(mlp_grads.ExplicitMLPGrads(single).batched_q_values(obs, ids), single(obs))
        torch.testing.assert_close(mlp_grads.ExplicitMultiHeadGrads(multi).batched_q_values(obs, ids), multi(obs, ids))


def _film_net(seed=6, hidden=(16, 8)):
    """A FiLM-conditioned network with non-trivial per-task scales and shifts (identity at init otherwise)."""
    from mtdqn.nets.multitask import MultiTaskQNetwork

    torch.manual_seed(seed)
    net = MultiTaskQNetwork(_tasks(), hidden=hidden, architecture="conditioned", conditioning="film")
    with torch.no_grad():
        for p in [*net.film_scale, *net.film_shift]:
            p.add_(0.3 * torch.randn_like(p))
    return net


def test_explicit_film_values_and_greedy_equal_module():
    from mtdqn.models.mlp_grads import ExplicitFiLMGrads

    net = _film_net(7, hidden=(16, 16))
    obs, task_ids = torch.randn(300, 5), torch.randint(0, 3, (300,))
    explicit = ExplicitFiLMGrads(net)
    with torch.no_grad():
        torch.testing.assert_close(explicit.q_values(obs, task_ids), net(obs, task_ids))
        torch.testing.assert_close(explicit.batched_q_values(obs.view(3, 100, 5), task_ids.view(3, 100)),
                                   net(obs, task_ids).view(3, 100, 3))
        for t in range(3):
            assert torch.equal(explicit.greedy(obs, t), net(obs, torch.full((300,), t)).argmax(-1))
        net.film_scale[1] = torch.nn.Parameter(torch.rand_like(net.film_scale[1]))  # replaced: followed
        torch.testing.assert_close(explicit.q_values(obs, task_ids), net(obs, task_ids))


def test_explicit_film_only_for_plain_film_nets_and_picked_by_the_module():
    from mtdqn.models.mlp_grads import ExplicitFiLMGrads, ExplicitMultiHeadGrads
    from mtdqn.nets.multitask import MultiTaskQNetwork

    def film(**kw):
        return MultiTaskQNetwork(kw.pop("tasks", _tasks()), architecture="conditioned", conditioning="film", **kw)

    assert ExplicitFiLMGrads.supports(film()) and not ExplicitMultiHeadGrads.supports(film())
    assert not ExplicitFiLMGrads.supports(MultiTaskQNetwork(_tasks()))  # multi-head
    assert not ExplicitFiLMGrads.supports(MultiTaskQNetwork(_tasks(), architecture="conditioned",
                                                            conditioning="onehot"))
    assert not ExplicitFiLMGrads.supports(film(dueling=True))
    assert not ExplicitFiLMGrads.supports(film(layer_norm=True))
    assert not ExplicitFiLMGrads.supports(film(obs_norm=True))
    assert not ExplicitFiLMGrads.supports(film(tasks=_tasks(obs_dims=(5, 4, 5))))  # adapters
    assert not ExplicitFiLMGrads.supports(film(activation="tanh"))

import itertools

import pytest
import torch
import torch.nn.functional as F

from mtdqn.losses.multitask import (
    assign_flat_grad,
    flat_grads,
    grad_cosine_matrix,
    pcgrad,
    task_weighted_loss,
)
from mtdqn.nets.multitask import INVALID_Q, MultiTaskQNetwork
from mtdqn.nets.popart import PopArtHead
from mtdqn.types import TaskSpec


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


SAME = [TaskSpec("a", 4, 2), TaskSpec("b", 4, 2)]
MIXED = [TaskSpec("small", 4, 2), TaskSpec("big", 6, 3)]


def _padded_obs(tasks, task_ids):
    """Random observations zero-padded past each sample's own obs_dim."""
    obs = torch.randn(len(task_ids), max(t.obs_dim for t in tasks))
    for k, t in enumerate(task_ids.tolist()):
        obs[k, tasks[t].obs_dim :] = 0.0
    return obs


def test_multihead_q_comes_from_own_task_head():
    net = MultiTaskQNetwork(SAME, hidden=(16, 16))
    obs, ids = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    q = net(obs, ids)
    feats = net.features(obs, ids)
    for k, t in enumerate(ids.tolist()):
        assert torch.allclose(q[k], net.heads[t](feats[k]))
    # stacked leading dims (G, B) give the same answer
    assert torch.allclose(net(obs.view(2, 3, 4), ids.view(2, 3)).view(6, 2), q)


@pytest.mark.parametrize("tasks", [SAME, MIXED], ids=["same_obs", "mixed_obs"])
def test_loss_of_one_task_flows_only_through_its_own_parts(tasks):
    net = MultiTaskQNetwork(tasks, hidden=(16, 16), dueling=True)
    ids = torch.tensor([0, 1, 0, 1])
    q = net(_padded_obs(tasks, ids), ids)
    q[ids == 0, 0].sum().backward()  # one action: a dueling head's mean-centred sum would cancel
    assert all(p.grad is None or torch.all(p.grad == 0) for p in net.task_parameters(1))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.task_parameters(0))
    assert all(p.grad is not None for p in net.shared_parameters())
    assert sum(p.grad.abs().sum() for p in net.shared_parameters()) > 0


def test_parameter_groups_partition_the_network():
    for kw in (
        dict(),
        dict(architecture="conditioned", conditioning="film"),
        dict(architecture="conditioned", conditioning="embedding"),
    ):
        tasks = MIXED if not kw else SAME
        net = MultiTaskQNetwork(tasks, hidden=(8,), **kw)
        groups = net.shared_parameters() + net.conditioning_parameters()
        groups += [p for t in range(net.n_tasks) for p in net.task_parameters(t)]
        assert len(groups) == len({id(p) for p in groups}) == len(list(net.parameters()))


def test_invalid_actions_are_masked():
    net = MultiTaskQNetwork(MIXED, hidden=(16,))
    with torch.no_grad():  # make the padded action the most attractive if it were not masked
        net.heads[0].bias.fill_(-1e3)
    ids = torch.tensor([0, 0, 1, 1])
    q = net(_padded_obs(MIXED, ids), ids)
    assert q.shape == (4, 3)
    assert torch.all(q[ids == 0, 2] == INVALID_Q)
    assert torch.all(q[ids == 1] > INVALID_Q)
    assert torch.all(net.greedy_action(_padded_obs(MIXED, ids), ids)[ids == 0] < 2)
    assert torch.all(q[ids == 0].max(dim=-1).values == q[ids == 0, :2].max(dim=-1).values)


def test_mixed_obs_adapters_read_only_own_features():
    net = MultiTaskQNetwork(MIXED, hidden=(16, 16))
    assert net.adapters is not None and net.adapters[0].in_features == 4 and net.adapters[1].in_features == 6
    ids = torch.tensor([0, 1, 0])
    obs = _padded_obs(MIXED, ids)
    q = net(obs, ids)
    noisy = obs.clone()
    noisy[ids == 0, 4:] = torch.randn(2, 2)  # garbage in task 0's padding
    assert torch.equal(net(noisy, ids)[ids == 0], q[ids == 0])
    assert MultiTaskQNetwork(SAME, hidden=(16,)).adapters is None  # equal obs dims: one shared torso


@pytest.mark.parametrize("conditioning", ["onehot", "embedding", "film"])
def test_conditioned_outputs_depend_on_task(conditioning):
    net = MultiTaskQNetwork(SAME, hidden=(16, 16), architecture="conditioned", conditioning=conditioning)
    assert net.head is not None and net.heads is None
    if conditioning == "film":
        with torch.no_grad():
            net.film_shift[0][1].add_(0.5)
    obs = torch.randn(5, 4)
    q0 = net(obs, torch.zeros(5, dtype=torch.long))
    q1 = net(obs, torch.ones(5, dtype=torch.long))
    assert q0.shape == (5, 2) and not torch.allclose(q0, q1)


def test_film_at_init_is_the_unconditioned_torso():
    net = MultiTaskQNetwork(
        SAME, hidden=(16, 16), architecture="conditioned", conditioning="film", layer_norm=True
    )
    obs, ids = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    assert torch.allclose(net(obs, ids), net.head(net.torso(obs)))


def test_conditioned_with_mixed_obs_uses_adapters():
    tasks = [TaskSpec("small", 4, 3), TaskSpec("big", 6, 3)]
    net = MultiTaskQNetwork(tasks, hidden=(8,), architecture="conditioned", conditioning="onehot")
    ids = torch.tensor([0, 1])
    assert net(_padded_obs(tasks, ids), ids).shape == (2, 3)


def test_invalid_config_raises_with_key_and_allowed_values():
    with pytest.raises(ValueError, match=r"net\.architecture.*\{'small': 2, 'big': 3\}"):
        MultiTaskQNetwork(MIXED, architecture="conditioned")
    with pytest.raises(ValueError, match=r"net\.architecture='shared'.*multihead"):
        MultiTaskQNetwork(SAME, architecture="shared")
    with pytest.raises(ValueError, match=r"net\.conditioning='task'.*film"):
        MultiTaskQNetwork(SAME, conditioning="task")
    with pytest.raises(ValueError, match=r"net\.activation"):
        MultiTaskQNetwork(SAME, activation="swishy")


def test_pcgrad_projects_conflicting_gradients():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g1' = g1 - (g1.g2/|g2|^2) g2 = (0.5, 0.5); g2' = g2 - (g2.g1/|g1|^2) g1 = (0, 1)
    assert torch.allclose(pcgrad([g1, g2], order=[0, 1]), torch.tensor([0.5, 1.5]))
    gen = torch.Generator().manual_seed(3)
    assert torch.allclose(pcgrad([g1, g2], generator=gen), torch.tensor([0.5, 1.5]))


def _pcgrad_paper(grads, orders):
    """Yu et al. 2020, Algorithm 1, literally: task i's g_i^PC is projected, in orders[i], off each g_j it conflicts
    with (the running g_i^PC, not the original g_i, is tested and projected); returns sum_i g_i^PC."""
    total = torch.zeros_like(grads[0])
    for i, g_i in enumerate(grads):
        g_pc = g_i.clone()
        for j in orders[i]:
            if j != i and torch.dot(g_pc, grads[j]) < 0:
                g_pc = g_pc - torch.dot(g_pc, grads[j]) / grads[j].square().sum() * grads[j]
        total += g_pc
    return total


THREE_CONFLICTING = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), torch.tensor([-1.0, -1.0])]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_pcgrad_projects_the_running_projection_for_three_tasks(order):
    """With three tasks a projection changes the next dot product: g2 = (-1, 1) is orthogonal to g3 = (-1, -1),
    but once projected off g1 it conflicts with g3. (Two tasks, as the tests above, cannot tell g_i^PC from g_i.)"""
    expected = _pcgrad_paper(THREE_CONFLICTING, [order] * 3)
    torch.testing.assert_close(pcgrad(THREE_CONFLICTING, order=list(order)), expected)


def test_pcgrad_draws_a_random_projection_order_per_task_from_the_generator():
    """Without `order`, each task's order is a torch.randperm from `generator` (one draw per task, in task order);
    different seeds give different orders, and here different results."""
    results = set()
    for seed in range(8):
        draws = torch.Generator().manual_seed(seed)
        orders = [torch.randperm(3, generator=draws).tolist() for _ in range(3)]
        out = pcgrad(THREE_CONFLICTING, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out, _pcgrad_paper(THREE_CONFLICTING, orders))
        results.add(tuple(round(v, 5) for v in out.tolist()))
    assert len(results) > 1


def test_pcgrad_leaves_non_conflicting_gradients_alone():
    grads = [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0]), torch.tensor([3.0, 1.0, 0.0])]
    assert torch.allclose(pcgrad(grads, order=[2, 1, 0]), sum(grads))


def test_pcgrad_result_does_not_conflict_with_any_task_for_two_tasks():
    g = [torch.randn(10), torch.randn(10)]
    g[1] = -g[0] + 0.1 * torch.randn(10)  # strongly conflicting
    out = pcgrad(g, order=[0, 1])
    assert all(torch.dot(out, gi) >= -1e-5 for gi in g)


def test_grad_cosine_matrix():
    grads = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([-3.0, 3.0]), torch.zeros(2)]
    c = 1 / 2**0.5
    expected = torch.tensor(
        [[1.0, 0.0, -c, 0.0], [0.0, 1.0, c, 0.0], [-c, c, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    assert torch.allclose(grad_cosine_matrix(grads), expected, atol=1e-6)


def test_flat_grads_and_assign_flat_grad():
    lin, unused = torch.nn.Linear(2, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
        lin.bias.fill_(0.0)
    loss = lin(torch.tensor([[3.0, 4.0]])).sum()
    params = list(lin.parameters()) + list(unused.parameters())
    flat = flat_grads(loss, params)
    assert torch.equal(flat, torch.tensor([3.0, 4.0, 1.0, 0.0, 0.0]))
    assign_flat_grad(params, 2 * flat)
    assert torch.equal(lin.weight.grad, torch.tensor([[6.0, 8.0]])) and torch.equal(
        unused.bias.grad, torch.zeros(1)
    )
    with pytest.raises(ValueError, match="5"):
        assign_flat_grad(params, torch.zeros(4))


def test_task_weighted_loss_on_hand_made_batch():
    loss = torch.tensor([1.0, 3.0, 10.0, 0.5])
    ids = torch.tensor([0, 0, 2, 0])  # task 1 absent
    total, per_task = task_weighted_loss(loss, ids, torch.tensor([1.0, 5.0, 0.5]), n_tasks=3)
    assert torch.allclose(per_task, torch.tensor([1.5, 0.0, 10.0]))
    assert torch.isclose(total, torch.tensor(1.5 + 5.0))
    plain, _ = task_weighted_loss(loss, ids, None, n_tasks=3)
    assert torch.isclose(plain, torch.tensor(11.5))
    x = torch.ones(4, requires_grad=True)
    task_weighted_loss(loss * x, ids, None, 3)[0].backward()
    assert torch.allclose(x.grad, torch.tensor([1.0 / 3, 3.0 / 3, 10.0, 0.5 / 3]))


def test_popart_update_preserves_unnormalized_outputs():
    torch.manual_seed(0)
    head = PopArtHead(8, [2, 3], beta=0.3)
    feats, ids = torch.randn(10, 8), torch.tensor([0, 1] * 5)
    before = head.unnormalized_q(feats, ids)
    for _ in range(5):
        targets = torch.where(ids == 0, 100.0 + 10.0 * torch.randn(10), -5.0 + torch.randn(10))
        head.update_stats(targets, ids)
    assert head.mu[0] > 50.0 and head.mu[1] < -2.0 and head.sigma[0] > 5.0
    after = head.unnormalized_q(feats, ids)
    # exact in real numbers; in float32 sigma * q + mu with mu ~ 100 rounds at ~1e-5 per operation (atol 1e-5 failed
    # on an AVX-512 CPU by one such rounding); without the preserving rescale the outputs would move by ~mu
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-4)
    assert torch.all(after[ids == 0, 2] == INVALID_Q)


def test_popart_absent_task_is_untouched_and_targets_roundtrip():
    head = PopArtHead(4, 2, n_tasks=3, beta=0.5)
    w1 = head.weight[1].clone()
    head.update_stats(torch.tensor([4.0, 6.0]), torch.tensor([0, 2]))
    assert torch.equal(head.weight[1], w1) and head.mu[1] == 0 and head.sigma[1] == 1
    assert torch.isclose(head.mu[0], torch.tensor(2.0)) and torch.isclose(head.mu[2], torch.tensor(3.0))
    y, ids = torch.randn(6) * 30, torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(head.unnormalize(head.normalize_targets(y, ids), ids), y, atol=1e-5)
    head.update_stats(torch.full((3,), 7.0), torch.zeros(3, dtype=torch.long))  # zero variance: sigma bounded
    assert head.sigma.min() >= head.sigma_min


def test_popart_sigma_floor_holds_for_constant_targets():
    """beta=1 and constant targets per task (a task whose episodes all return the same): the batch variance is 0,
    so sigma is its floor sigma_min, and normalized targets, head weights and outputs stay finite (without the
    floor sigma = 0: division by zero in the normalization and in the output-preserving rescale)."""
    torch.manual_seed(0)
    head = PopArtHead(4, [2, 2], beta=1.0)
    feats, ids = torch.randn(6, 4), torch.tensor([0, 1] * 3)
    targets = torch.where(ids == 0, 5.0, -3.0)
    head.update_stats(targets, ids)
    torch.testing.assert_close(head.sigma, torch.full((2,), head.sigma_min))
    normalized = head.normalize_targets(targets, ids)
    assert torch.isfinite(normalized).all() and torch.equal(normalized, torch.zeros(6))
    assert torch.isfinite(head.weight).all() and torch.isfinite(head.unnormalized_q(feats, ids)).all()


def test_popart_normalized_loss_trains_head():
    head = PopArtHead(3, [2], beta=1e-2)
    feats, ids, actions = torch.randn(32, 3), torch.zeros(32, dtype=torch.long), torch.randint(0, 2, (32,))
    y = 50.0 + 5.0 * feats[:, 0]
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(100):
        head.update_stats(y, ids)
        q = head(feats, ids).gather(1, actions[:, None]).squeeze(1)
        loss = F.mse_loss(q, head.normalize_targets(y, ids))
        opt.zero_grad()
        loss.backward()
        opt.step()
    q = head.unnormalized_q(feats, ids).gather(1, actions[:, None]).squeeze(1)
    assert F.mse_loss(q, y) < F.mse_loss(torch.zeros_like(y), y) * 0.05


def test_pcgrad_step_on_network_shared_parameters():
    net = MultiTaskQNetwork(MIXED, hidden=(8, 8))
    ids = torch.tensor([0, 1, 0, 1])
    q = net(_padded_obs(MIXED, ids), ids)[:, 0]
    per_task = task_weighted_loss(q.square(), ids, None, n_tasks=2)[1]
    shared = net.shared_parameters()
    grads = [flat_grads(per_task[t], shared) for t in range(2)]
    assert grad_cosine_matrix(grads).shape == (2, 2)
    assign_flat_grad(shared, pcgrad(grads, generator=torch.Generator().manual_seed(0)))
    assert all(p.grad is not None and p.grad.shape == p.shape for p in shared)


def test_module_gradient_cosines_are_over_the_shared_parameters_only():
    """train/grad_cos/* compares the tasks' gradients on what they share (the torso): each task's own head adds a
    component the other task's gradient lacks, which would pull every cosine toward 0."""
    from functools import partial

    from mtdqn.models import MultiTaskDQNModule

    m = MultiTaskDQNModule(net=partial(MultiTaskQNetwork, hidden=(8, 8)), optimizer=partial(torch.optim.SGD, lr=0.1),
                           task=MIXED)
    ids = torch.tensor([0, 1, 0, 1, 0, 1])
    q = m.q_net(_padded_obs(MIXED, ids), ids)[:, 0]
    per_task = task_weighted_loss((q - 1.0).square(), ids, None, n_tasks=2)[1]
    shared = grad_cosine_matrix([flat_grads(per_task[t], m.q_net.shared_parameters()) for t in range(2)])
    every = grad_cosine_matrix([flat_grads(per_task[t], list(m.q_net.parameters())) for t in range(2)])
    cosines = m.gradient_cosines(per_task)
    torch.testing.assert_close(cosines, shared)
    assert (cosines[0, 1] - every[0, 1]).abs() > 0.05  # the heads matter here: the test can tell them apart


IMAGES = [TaskSpec("four", 400, 3, obs_shape=(10, 10, 4)), TaskSpec("seven", 700, 5, obs_shape=(10, 10, 7))]
SAME_IMAGES = [TaskSpec("a", 400, 3, obs_shape=(10, 10, 4)), TaskSpec("b", 400, 3, obs_shape=(10, 10, 4))]


def test_conv_encoders_per_task_image_and_each_loss_reaches_only_its_own():
    """net.conv on images with different channel counts (MinAtar): one encoder per task, each reading its own
    image; a task's loss reaches its own encoder and head, never the other task's; the groups partition the net."""
    net = MultiTaskQNetwork(IMAGES, hidden=(16,), conv=[[8, 3, 1]])
    assert len(net.encoders) == 2 and net.adapters is None and net.torso[0].in_features == 8 * 8 * 8
    ids = torch.tensor([0, 1, 0, 1])
    obs = _padded_obs(IMAGES, ids)
    q = net(obs, ids)
    from mtdqn.nets.q import ConvEncoder

    assert isinstance(net.encoders[1], ConvEncoder) and net.encoders[1].image_shape == (7, 10, 10)
    expected = net.heads[1](net.torso(net.encoders[1](obs[1:2])))
    torch.testing.assert_close(q[1:2, :5], expected)  # the second sample: its own encoder, torso and head
    q[ids == 0, 0].sum().backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in net.task_parameters(1))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.task_parameters(0))
    assert {id(p) for p in net.encoders[0].parameters()} <= {id(p) for p in net.task_parameters(0)}
    groups = net.shared_parameters() + [p for t in range(2) for p in net.task_parameters(t)]
    assert len(groups) == len({id(p) for p in groups}) == len(list(net.parameters()))
    from mtdqn.models.mlp_grads import ExplicitMultiHeadGrads

    assert ExplicitMultiHeadGrads.supports(net)  # one convolution per encoder: hand-written gradients (PatchConv)


def test_conv_encoder_is_shared_when_the_images_have_one_shape():
    net = MultiTaskQNetwork(SAME_IMAGES, hidden=(16,), conv=[[8, 3, 1]], architecture="conditioned",
                            conditioning="film")
    assert len(net.encoders) == 1
    assert {id(p) for p in net.encoders.parameters()} <= {id(p) for p in net.shared_parameters()}
    assert net(torch.rand(3, 400), torch.tensor([0, 1, 1])).shape == (3, 3)


def test_conv_needs_images_of_one_height_and_width():
    tasks = [TaskSpec("small", 64, 2, obs_shape=(8, 8)), TaskSpec("big", 100, 2, obs_shape=(10, 10))]
    with pytest.raises(ValueError, match=r"net.conv=\[\[8, 3, 1\]\] gives features of different sizes"):
        MultiTaskQNetwork(tasks, hidden=(16,), conv=[[8, 3, 1]])
    with pytest.raises(ValueError, match="net.conv needs image observations"):
        MultiTaskQNetwork(SAME, hidden=(16,), conv=[[8, 3, 1]])
    mixed = [TaskSpec("image", 64, 2, obs_shape=(8, 8)), TaskSpec("vector", 4, 2)]
    with pytest.raises(ValueError, match=r"\['vector'\] observe flat vectors \(the others: \['image'\]\)"):
        MultiTaskQNetwork(mixed, hidden=(16,), conv=[[8, 3, 1]])


THREE = [TaskSpec("b", 40, 3), TaskSpec("f", 70, 3), TaskSpec("a", 40, 5)]


@pytest.mark.parametrize("kind", ["adapters", "encoders"])
@pytest.mark.parametrize("ids", [[0, 0, 1, 1, 1, 2], [2, 0, 1, 0, 2, 1, 1], [1, 0, 1, 0], [2]],
                         ids=["grouped", "shuffled", "a-task-missing", "one-row"])
def test_per_task_modules_run_on_their_own_rows_only(kind, ids):
    """On the CPU each task's input adapter (or image encoder) runs on its own task's rows only, not on the whole
    batch (T times the compute), and the Q-values are those of the whole-batch form (each sample reading its own
    task's output), in batch order, however the batch is ordered."""
    from mtdqn.nets.multitask import select_task

    tasks = THREE if kind == "adapters" else [TaskSpec(t.name, t.obs_dim * 10, t.n_actions,
                                                       obs_shape=(10, 10, t.obs_dim // 10)) for t in THREE]
    net = MultiTaskQNetwork(tasks, hidden=(16, 16), conv=[[4, 3, 1]] if kind == "encoders" else None)
    modules = net.adapters if kind == "adapters" else net.encoders
    rows = [0] * len(tasks)
    for t, m in enumerate(modules):
        m.register_forward_hook(lambda mod, inp, out, t=t: rows.__setitem__(t, rows[t] + inp[0].shape[0]))
    ids = torch.tensor(ids)
    obs = _padded_obs(tasks, ids)
    q = net(obs, ids)
    assert rows == torch.bincount(ids, minlength=len(tasks)).tolist()
    with torch.no_grad():
        firsts = [m(obs[:, :t.obs_dim]) for m, t in zip(modules, tasks, strict=True)]
        first = select_task(torch.stack(firsts, dim=1), ids)
        x = net.torso(first)  # with adapters its first layer is the identity: the adapters are that layer
        whole = torch.stack([torch.nn.functional.pad(h(x), (0, 5 - t.n_actions), value=0.0)
                             for h, t in zip(net.heads, tasks, strict=True)], dim=1)
    expected = select_task(whole, ids)
    valid = q != INVALID_Q  # actions a task does not have
    torch.testing.assert_close(q[valid], expected[valid])

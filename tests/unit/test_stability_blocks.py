"""Building blocks of the stability / robustness features: running observation normalization, FGSM, adversarial
batches, reward scaling and clipping in replay, and the across-seed spread and labels of scripts/compare.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mtdqn.collect import LinearEpsilon
from mtdqn.data import RLDataModule
from mtdqn.evaluation.compare import compare_runs, render_markdown
from mtdqn.losses.adversarial import fgsm_observation, greedy_margin
from mtdqn.models.adversarial import AdversarialObs
from mtdqn.nets import QNetwork, RunningObsNorm
from mtdqn.nets.multitask import MultiTaskQNetwork
from mtdqn.replay import ReplayBuffer
from mtdqn.types import Batch, StepResult, TaskSpec
from tests.helpers.runs import base_config, write_ramp_run


# ---------------------------------------------------------------- running observation normalization
def test_running_norm_equals_the_moments_of_everything_seen_in_any_chunking() -> None:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(1000, 5, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + torch.tensor([5.0, -3, 0, 1e3, 0])
    norm = RunningObsNorm(5)
    for chunk in torch.split(data, [1, 7, 300, 2, 690]):
        norm.update(chunk)
    assert int(norm.count[0]) == 1000
    torch.testing.assert_close(norm.mean[0], data.double().mean(0).float(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(norm.var[0], data.double().var(0, unbiased=False).float(), rtol=1e-5, atol=1e-6)
    out = norm(data)
    torch.testing.assert_close(out.mean(0), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(5), atol=1e-4, rtol=0)


def test_running_norm_is_identity_before_data_clips_after_and_keeps_tasks_apart() -> None:
    norm = RunningObsNorm(2, n_tasks=2, clip=3.0)
    x = torch.tensor([[0.5, -2.0]])
    assert torch.equal(norm(x, torch.tensor([1])), x)
    norm.update(torch.tensor([[0.0, 0.0], [2.0, 2.0]]), task=1)  # task 1: mean 1, var 1
    assert norm.count.tolist() == [0, 2]
    assert torch.equal(norm(x, torch.tensor([0])), x)  # task 0 untouched
    torch.testing.assert_close(norm(torch.tensor([[1.0, 100.0]]), torch.tensor([1])), torch.tensor([[0.0, 3.0]]))
    before = norm.mean.clone()
    norm(torch.randn(10, 2), torch.ones(10, dtype=torch.long))  # forward never changes the statistics
    assert torch.equal(norm.mean, before)


def test_obs_norm_statistics_are_in_the_state_dict_and_restore_q_values() -> None:
    spec = TaskSpec("t", 4, 3)
    nets = [lambda: QNetwork(4, 3, hidden=[8], obs_norm=True),
            lambda: MultiTaskQNetwork([spec, TaskSpec("u", 2, 3)], hidden=[8], obs_norm=True)]  # fmt: skip
    for make in nets:
        a = make()
        a.obs_norm.update(torch.randn(50, 4) * 3 + 2)
        keys = {k for k in a.state_dict() if k.startswith("obs_norm.")}
        assert keys == {"obs_norm.count", "obs_norm.mean", "obs_norm.var"}
        b = make()
        b.load_state_dict(a.state_dict())
        obs = torch.randn(6, 4) * 3
        args = (obs,) if isinstance(a, QNetwork) else (obs, torch.zeros(6, dtype=torch.long))
        assert torch.equal(a(*args), b(*args))
        c = make()
        c.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("obs_norm.")}, strict=False)
        assert not torch.equal(a(*args), c(*args))  # same weights, default statistics: different Q-values


# ---------------------------------------------------------------- FGSM
def test_fgsm_stays_in_the_budget_and_lowers_the_greedy_margin_of_a_linear_q() -> None:
    torch.manual_seed(0)
    q = nn.Linear(6, 4)
    obs = torch.randn(256, 6)
    adv = fgsm_observation(q, obs, 0.05)
    assert (adv - obs).abs().max() <= 0.05 + 1e-6  # float32 rounding of obs +- eps
    assert torch.allclose((adv - obs).abs(), torch.full_like(obs, 0.05), atol=1e-6)  # a full signed step
    greedy = q(obs).argmax(-1)
    clean, attacked = greedy_margin(q(obs), greedy), greedy_margin(q(adv), greedy)
    assert (attacked < clean).all()  # margin = min of linear functions: concave, so the step lowers it
    clipped = fgsm_observation(q, obs, 0.05, low=obs - 0.01, high=obs + 0.01)
    assert (clipped - obs).abs().max() <= 0.01 + 1e-6
    assert torch.equal(fgsm_observation(q, obs, 0.0), obs)
    assert all(p.grad is None for p in q.parameters())  # parameter gradients untouched


def test_fgsm_flips_greedy_actions_of_an_mlp_more_as_the_budget_grows() -> None:
    torch.manual_seed(1)
    net = QNetwork(8, 5, hidden=[32, 32])
    obs = torch.randn(512, 8)
    greedy = net(obs).argmax(-1)
    margin = greedy_margin(net(obs), greedy).detach()
    flips = []
    for eps in (0.01, 0.05, 0.2):
        adv = fgsm_observation(net, obs, eps)
        assert (adv - obs).abs().max() <= eps + 1e-6
        attacked = greedy_margin(net(adv), greedy).detach()
        assert attacked.mean() < margin.mean()
        flips.append((net(adv).argmax(-1) != greedy).float().mean().item())
    assert flips[0] < flips[1] < flips[2]


def test_adversarial_batch_transform_perturbs_only_the_given_fraction() -> None:
    torch.manual_seed(2)
    module = nn.Module()
    module.q_net = QNetwork(3, 2, hidden=[8])
    module.q_values = lambda net, obs, task_ids: net(obs)
    b = Batch(torch.randn(10, 3), torch.zeros(10, dtype=torch.long), torch.ones(10), torch.randn(10, 3),
              torch.ones(10), torch.ones(10), torch.arange(10), torch.zeros(10, dtype=torch.long))  # fmt: skip
    out = AdversarialObs(module, epsilon=0.1, fraction=0.3)(b)
    changed = (out.obs != b.obs).any(-1)
    assert changed[:3].all() and not changed[3:].any()
    assert (out.obs - b.obs).abs().max() <= 0.1 + 1e-6
    assert all(torch.equal(x, y) for x, y in zip(out[1:], b[1:], strict=True))
    with pytest.raises(ValueError, match="adversarial.fraction"):
        AdversarialObs(module, 0.1, 0.0)
    module.tasks = ["only"]  # a single-task module takes the slice without looking at the task ids
    assert torch.equal(AdversarialObs(module, epsilon=0.1, fraction=0.3)(b).obs, out.obs)


def test_adversarial_batch_transform_perturbs_each_tasks_share_within_the_bounds() -> None:
    """A multi-task minibatch is one block per task: the first fraction of it was the first task's rows only."""
    torch.manual_seed(2)
    module = nn.Module()
    module.q_net = QNetwork(3, 2, hidden=[8])
    module.q_values = lambda net, obs, task_ids: net(obs)
    ids = torch.tensor([0] * 6 + [1] * 4)
    b = Batch(torch.rand(10, 3), torch.zeros(10, dtype=torch.long), torch.ones(10), torch.rand(10, 3),
              torch.ones(10), torch.ones(10), torch.arange(10), ids)  # fmt: skip
    low, high = torch.zeros(3), torch.ones(3)
    out = AdversarialObs(module, epsilon=0.5, fraction=0.5, low=low, high=high)(b)
    changed = (out.obs != b.obs).any(-1)
    assert changed.tolist() == [True] * 3 + [False] * 3 + [True] * 2 + [False] * 2
    assert out.obs.min() >= 0.0 and out.obs.max() <= 1.0  # a 0.5 step from [0, 1) stays inside the bounds


# ---------------------------------------------------------------- reward scaling and clipping
class ConstantRewardEnv:
    """Rewards cycle through -3, 0.5, 2, 7; episodes of 4 steps."""

    REWARDS = torch.tensor([-3.0, 0.5, 2.0, 7.0])

    def __init__(self, num_envs: int, device: str | torch.device = "cpu") -> None:
        self.num_envs, self.obs_dim, self.n_actions, self.device = num_envs, 2, 2, torch.device(device)
        self.t = 0

    def reset(self, seed: int | None = None) -> torch.Tensor:
        self.t = 0
        return torch.zeros(self.num_envs, 2)

    def step(self, actions: torch.Tensor) -> StepResult:
        r = self.REWARDS[self.t % 4].expand(self.num_envs).clone()
        self.t += 1
        done = torch.full((self.num_envs,), self.t % 4 == 0)
        obs = torch.full((self.num_envs, 2), float(self.t))
        return StepResult(obs, r, torch.zeros_like(done), done, obs)

    def close(self) -> None:
        self.t = 0


@pytest.mark.parametrize(("scale", "clip"), [(1.0, None), (0.5, None), (1.0, 1.0), (0.5, 1.2)])
def test_reward_scale_and_clip_apply_to_replay_not_to_episode_returns(scale: float, clip: float | None) -> None:
    spec = TaskSpec("const", 2, 2)
    replay = lambda **kw: ReplayBuffer(capacity=64, gamma=0.9, **kw)  # noqa: E731
    dm = RLDataModule(ConstantRewardEnv, replay, LinearEpsilon(), spec, num_envs=2, total_env_steps=64,
                      env_steps_per_round=16, replay_ratio=0.125, batch_size=4, learning_starts=8,
                      reward_scale=scale, reward_clip=clip)  # fmt: skip
    dm.setup()
    stream = iter(dm.train_dataloader().dataset)
    round_ = next(stream)
    stored = dm.buffer.rewards[: dm.buffer.size, 0]
    expected = ConstantRewardEnv.REWARDS.repeat(4)[: stored.numel()] * scale
    if clip is not None:
        expected = expected.clamp(-clip, clip)
    torch.testing.assert_close(stored, expected)
    assert round_.episode_returns.tolist() == [6.5] * round_.episode_returns.numel()  # raw env returns
    assert round_.obs_stats is None  # no normalizing module attached
    for key, value in (("reward_scale", 0.0), ("reward_scale", float("nan")), ("reward_clip", -1.0)):
        with pytest.raises(ValueError, match=f"data.{key}="):
            RLDataModule(ConstantRewardEnv, replay, LinearEpsilon(), spec, **{key: value})


# ---------------------------------------------------------------- compare: --by optimizer, across-seed spread
def test_compare_by_a_config_node_labels_by_class_and_reports_the_spread(tmp_path) -> None:
    finals = {"torch.optim.Adam": [0.2, 0.6, 0.7], "torch.optim.RMSprop": [0.1, 0.3, 0.35]}
    for name, values in finals.items():
        for seed, v in enumerate(values):
            cfg = base_config(seed=seed, optimizer={"_target_": name, "lr": 0.0005})
            write_ramp_run(tmp_path / f"{name}_{seed}", cfg, {"lane_keep": v})
    s = compare_runs([tmp_path], by=["optimizer"], n_boot=200).summary
    table = next(t for t in s["tables"] if t["name"] == "lane_keep")
    assert list(table["rows"]) == ["optimizer=Adam", "optimizer=RMSprop"]
    adam = table["rows"]["optimizer=Adam"]
    assert adam["std"] == pytest.approx(np.std([0.2, 0.6, 0.7], ddof=1))
    assert (adam["min"], adam["max"]) == pytest.approx((0.2, 0.7))
    assert "| optimizer=Adam | 3 |" in render_markdown(s) and "std [min, max] over runs" in render_markdown(s)
    # two nodes of one class (Adam at two learning rates) keep their full labels
    write_ramp_run(tmp_path / "adam_lr", base_config(optimizer={"_target_": "torch.optim.Adam", "lr": 0.1}),
                   {"lane_keep": 0.5})  # fmt: skip
    labels = [g["label"] for g in compare_runs([tmp_path], by=["optimizer"], n_boot=50).summary["groups"]]
    assert len(labels) == 3 and all("lr" in label for label in labels)


def test_robustness_groups_compare_areas_with_the_baseline_group():
    from mtdqn.evaluation.robustness import RunReport, group_summary, render_markdown

    def run(group: str, area: float) -> RunReport:
        curve = {"levels": [0.0, 1.0], "score": [area, area], "area": area}
        return RunReport(f"/runs/{group}{area}", group, {"steer_delay": {"lane_keep": curve}})

    reports = [run("none", 0.7), run("none", 0.8), run("dr", 0.9), run("dr", 0.9)]
    groups = group_summary(reports, ["steer_delay"], n_boot=500)
    assert groups["none"]["baseline"] and not groups["dr"]["baseline"]
    diff = groups["dr"]["axes"]["steer_delay"]
    assert diff["diff_vs_baseline"] == pytest.approx(0.15)
    assert diff["diff_ci"] == pytest.approx([0.1, 0.2])  # baseline resamples: means 0.7, 0.75, 0.8
    assert "diff_vs_baseline" not in groups["none"]["axes"]["steer_delay"]
    flipped = group_summary(reports, ["steer_delay"], n_boot=500, baseline="dr")
    assert flipped["none"]["axes"]["steer_delay"]["diff_vs_baseline"] == pytest.approx(-0.15)
    with pytest.raises(ValueError, match="exactly one group"):
        group_summary(reports, ["steer_delay"], baseline="nothing")
    # a group's exact label wins over labels that merely contain it (eps=0.0 is a part of eps=0.05)
    eps = [run("eps=0.0", 0.7), run("eps=0.0", 0.8), run("eps=0.05", 0.9), run("eps=0.05", 0.9)]
    assert group_summary(eps, ["steer_delay"], n_boot=50, baseline="eps=0.0")["eps=0.0"]["baseline"]
    md = render_markdown({"ci": 0.95, "runs": reports, "inputs": ["/runs"], "episodes": 4, "seed": 0,
                          "axes": {"steer_delay": [0.0, 1.0]}, "groups": groups})
    assert "| none | 2 |" in md and "| baseline |" in md and "+0.150 [+0.100, +0.200]" in md
    assert "One run in" not in md
    lone = group_summary([run("none", 0.7), run("dr", 0.9)], ["steer_delay"], n_boot=50)
    md = render_markdown({"ci": 0.95, "runs": reports, "inputs": ["/runs"], "episodes": 4, "seed": 0,
                          "axes": {"steer_delay": [0.0, 1.0]}, "groups": lone})
    assert "One run in `none`, `dr`: its CIs (and differences) are that run's values, not intervals" in md

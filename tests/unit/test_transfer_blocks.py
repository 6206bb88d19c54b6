"""Transfer building blocks on hand-made inputs: loading, freezing, distillation, EWC, transfer metrics."""

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from mtdqn.callbacks.checkpoint import atomic_torch_save
from mtdqn.evaluation.compare import Run
from mtdqn.evaluation.transfer import (
    bootstrap,
    curve_area,
    final_score,
    own_run_times,
    render_markdown,
    time_to_threshold,
    transfer_report,
    transfer_vs_scratch,
)
from mtdqn.losses.distill import distill_kl
from mtdqn.losses.ewc import ewc_penalty, normalize_fisher
from mtdqn.models import DQNModule, MultiTaskDQNModule
from mtdqn.models.student import DistillStudentModule
from mtdqn.nets import QNetwork
from mtdqn.nets.multitask import MultiTaskQNetwork
from mtdqn.transfer import EWCConfig, apply_transfer, load_matching, load_source, teachers_for
from mtdqn.transfer.ewc import source_fisher
from mtdqn.transfer.loading import popart_heads
from mtdqn.transfer.modes import FreezeSchedule
from mtdqn.types import Batch, TaskSpec
from tests.helpers.runs import write_run

DRIVING = [TaskSpec(n, 26, 9) for n in ("lane_keep", "pedestrian", "traffic_light")]


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def write_source(run_dir, net: nn.Module, config: dict | None, extra: dict | None = None):
    """A run directory holding checkpoints/last.ckpt (q_net and target_net tensors) and config.yaml."""
    state = {f"q_net.{k}": v for k, v in net.state_dict().items()}
    state.update({f"target_net.{k}": v + 1.0 for k, v in net.state_dict().items()})
    path = run_dir / "checkpoints" / "last.ckpt"
    atomic_torch_save({"state_dict": state, **(extra or {})}, path)
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return path


MTL_CONFIG = {"task_set": {"kind": "driving", "tasks": [t.name for t in DRIVING], "env_kwargs": {}},
              "net": {"_target_": "mtdqn.nets.multitask.MultiTaskQNetwork", "_partial_": True,
                      "architecture": "multihead", "hidden": [16, 16]},
              "gamma": 0.9, "model": {"double_q": False, "loss": "mse"}}


def dqn(n_actions: int = 9, hidden=(16, 16), seed: int = 1) -> DQNModule:
    torch.manual_seed(seed)
    return DQNModule(net=partial(QNetwork, hidden=list(hidden)), optimizer=partial(torch.optim.Adam, lr=1e-2),
                     task=TaskSpec("urban", 26, n_actions))


# --- loading --------------------------------------------------------------------------------------------------


def test_mismatched_heads_are_reinitialized_and_everything_else_loads_bit_identical(tmp_path):
    torch.manual_seed(0)
    source = QNetwork(26, 9, hidden=[16, 16])
    path = write_source(tmp_path, source, None)
    model = dqn(n_actions=5)  # another action count: head shapes differ
    fresh = params(model.q_net)
    apply_transfer(model, {"mode": "finetune", "checkpoint": str(path)})
    after = params(model.q_net)
    for name in ("torso.0.weight", "torso.0.bias", "torso.2.weight", "torso.2.bias"):
        assert torch.equal(after[name], source.state_dict()[name]), name
        assert not torch.equal(after[name], fresh[name])
    for name in ("head.weight", "head.bias"):
        assert torch.equal(after[name], fresh[name]), name  # kept its fresh initialization
    # the target network starts as a copy of the loaded online network (not the source's target)
    for (n, p), q in zip(model.q_net.state_dict().items(), model.target_net.state_dict().values(), strict=True):
        assert torch.equal(p, q), n


def test_load_matching_reports_loaded_reinitialized_and_unused():
    torch.manual_seed(0)
    source = MultiTaskQNetwork(DRIVING, hidden=[16, 16])
    target = QNetwork(26, 9, hidden=[16, 16])
    report = load_matching(target, source.state_dict())
    assert set(report.loaded) == {"torso.0.weight", "torso.0.bias", "torso.2.weight", "torso.2.bias"}
    assert set(report.reinitialized) == {"head.weight", "head.bias"}
    assert "heads.1.weight" in report.unused
    assert "re-initialized 2" in report.summary()


def test_head_from_sends_the_target_head_to_that_source_tasks_head(tmp_path):
    torch.manual_seed(0)
    source = MultiTaskQNetwork(DRIVING, hidden=[16, 16])
    path = write_source(tmp_path, source, MTL_CONFIG)
    model = dqn()
    apply_transfer(model, {"mode": "finetune", "checkpoint": str(path), "head_from": "pedestrian"})
    assert torch.equal(model.q_net.head.weight, source.heads[1].weight)
    assert torch.equal(model.q_net.torso[2].weight, source.torso[2].weight)
    with pytest.raises(ValueError, match="transfer.head_from='urban' is not a source task"):
        apply_transfer(dqn(), {"mode": "finetune", "checkpoint": str(path), "head_from": "urban"})


def test_a_source_config_that_does_not_fit_the_checkpoint_is_refused(tmp_path):
    """A 3-task checkpoint with a single-task pedestrian run's config.yaml: its task list sent the target head to
    heads.0 (lane_keep) silently, and EWC ended in load_state_dict's RuntimeError; both are refused, naming
    transfer.source_config and what differs. A config.yaml found beside the checkpoint is checked as well."""
    torch.manual_seed(0)
    ckpt = write_source(tmp_path / "copy", MultiTaskQNetwork(DRIVING, hidden=[16, 16]), None)
    other = tmp_path / "pedestrian.yaml"
    other.write_text(yaml.safe_dump({**expert_config("pedestrian"), "net": {
        "_target_": "mtdqn.nets.QNetwork", "_partial_": True, "hidden": [16, 16]}}))
    for mode in ("finetune", "ewc"):
        with pytest.raises(ValueError) as err:
            apply_transfer(dqn(), {"mode": mode, "checkpoint": str(ckpt), "source_config": str(other),
                                   "head_from": "pedestrian"})
        msg = str(err.value)
        assert msg.startswith(f"transfer.source_config={str(other)!r} does not fit the checkpoint"), msg
        assert "task_set.tasks=['pedestrian']" in msg and "heads.0.weight" in msg and "head.weight" in msg
        assert "\n" not in msg
    beside = write_source(tmp_path / "run", MultiTaskQNetwork(DRIVING, hidden=[16, 16]), expert_config("pedestrian"))
    with pytest.raises(ValueError, match=r"transfer.checkpoint='.*': the config.yaml of its run \(.*run/config.yaml\) "
                                         r"does not fit the checkpoint .* with transfer.source_config"):
        apply_transfer(dqn(), {"mode": "finetune", "checkpoint": str(beside)})
    fits = tmp_path / "mtl.yaml"  # the right config loads the named task's head
    fits.write_text(yaml.safe_dump(MTL_CONFIG))
    model = dqn()
    apply_transfer(model, {"mode": "finetune", "checkpoint": str(ckpt), "source_config": str(fits),
                           "head_from": "pedestrian"})
    assert torch.equal(model.q_net.head.weight, load_source(str(ckpt)).net_state()["heads.1.weight"])


def obs_norm_source(tasks=DRIVING) -> MultiTaskQNetwork:
    """A multi-head net with obs_norm whose per-task statistics come from observations far from (0, 1)."""
    torch.manual_seed(0)
    net = MultiTaskQNetwork(tasks, hidden=[16, 16], obs_norm=True)
    for k in range(len(tasks)):
        net.obs_norm.update(5.0 * k + (k + 1) * torch.randn(50 + 10 * k, 26), task=k)
    return net


def dqn_obs_norm(obs_norm: bool = True) -> DQNModule:
    torch.manual_seed(1)
    return DQNModule(net=partial(QNetwork, hidden=[16, 16], obs_norm=obs_norm),
                     optimizer=partial(torch.optim.Adam, lr=1e-2), task=TaskSpec("urban", 26, 9))


def test_a_source_and_target_that_differ_in_obs_norm_are_refused(tmp_path):
    """The target fed raw observations to a torso trained on normalized ones (the source's normalizer listed as
    unused), or a fresh normalizer rescaled the inputs of a torso trained on raw ones: both are refused."""
    with_norm = write_source(tmp_path / "norm", obs_norm_source(), MTL_CONFIG | {"net": {
        **MTL_CONFIG["net"], "obs_norm": True}})
    with pytest.raises(ValueError, match=r"net.obs_norm=false: the source \(transfer.checkpoint='.*norm.*'\) was "
                                         r"trained with net.obs_norm=true, so its torso expects normalized "
                                         r"observations and would get raw ones; set net.obs_norm=true"):
        apply_transfer(dqn(), {"mode": "finetune", "checkpoint": str(with_norm), "head_from": "lane_keep"})
    plain = write_source(tmp_path / "plain", QNetwork(26, 9, hidden=[16, 16]), None)
    with pytest.raises(ValueError, match=r"net.obs_norm=true: the source .* was trained with net.obs_norm=false, so "
                                         r"its torso expects raw observations and would get them rescaled by a "
                                         r"fresh normalizer; set net.obs_norm=false"):
        apply_transfer(dqn_obs_norm(), {"mode": "freeze", "checkpoint": str(plain)})


def test_the_source_normalizer_statistics_are_loaded_with_the_torso(tmp_path, caplog):
    """head_from: every target task gets that source task's statistics, so the target plays it exactly as the
    source did; without it a 3-task source's statistics are pooled (the mean and variance of all its tasks'
    observations); a target with as many tasks takes them task by task. The log says they were loaded."""
    source = obs_norm_source()
    path = write_source(tmp_path, source, MTL_CONFIG | {"net": {**MTL_CONFIG["net"], "obs_norm": True}})
    model = dqn_obs_norm()
    with caplog.at_level("INFO", logger="mtdqn"):
        apply_transfer(model, {"mode": "finetune", "checkpoint": str(path), "head_from": "pedestrian"})
    assert torch.equal(model.q_net.obs_norm.mean[0], source.obs_norm.mean[1])
    assert torch.equal(model.q_net.obs_norm.count, source.obs_norm.count[1:2])
    obs = 5.0 + 2.0 * torch.randn(8, 26)
    assert torch.allclose(model.q_net(obs), source(obs, torch.full((8,), 1)))
    assert torch.equal(model.target_net.obs_norm.var, model.q_net.obs_norm.var)
    assert "observation normalizer (net.obs_norm) statistics loaded with the torso: those of source task " \
        "'pedestrian' (transfer.head_from)" \
        in caplog.text
    assert "unused source tensors: obs_norm" not in caplog.text

    pooled = dqn_obs_norm()
    apply_transfer(pooled, {"mode": "finetune", "checkpoint": str(path)})
    n, mean, var = source.obs_norm.count.double(), source.obs_norm.mean.double(), source.obs_norm.var.double()
    total = (n[:, None] * mean).sum(0) / n.sum()
    spread = (n[:, None] * (var + (mean - total).square())).sum(0) / n.sum()
    assert int(pooled.q_net.obs_norm.count) == int(n.sum())
    assert torch.allclose(pooled.q_net.obs_norm.mean[0].double(), total, atol=1e-5)
    assert torch.allclose(pooled.q_net.obs_norm.var[0].double(), spread, rtol=1e-5)

    mtl = MultiTaskDQNModule(net=partial(MultiTaskQNetwork, hidden=[16, 16], obs_norm=True),
                             optimizer=partial(torch.optim.Adam, lr=1e-2), task=DRIVING)
    apply_transfer(mtl, {"mode": "finetune", "checkpoint": str(path)})
    for k in ("count", "mean", "var"):
        assert torch.equal(getattr(mtl.q_net.obs_norm, k), getattr(source.obs_norm, k)), k


def test_torso_lr_scale_puts_the_loaded_torso_in_its_own_param_group(tmp_path):
    path = write_source(tmp_path, QNetwork(26, 9, hidden=[16, 16]), None)
    model = dqn(n_actions=5)
    apply_transfer(model, {"mode": "finetune", "checkpoint": str(path), "torso_lr_scale": 0.1})
    assert model.lr_scale == {"torso.": 0.1}
    opt = model.configure_optimizers()
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([1e-3, 1e-2])
    torso_group = next(g for g in opt.param_groups if g["lr"] == pytest.approx(1e-3))
    assert {id(p) for p in torso_group["params"]} == {id(p) for p in model.q_net.torso.parameters()}


def test_a_source_whose_torso_does_not_fit_is_refused(tmp_path):
    torch.manual_seed(0)
    wide = write_source(tmp_path / "wide", MultiTaskQNetwork(DRIVING, hidden=[16, 16]), MTL_CONFIG)
    # another width: only the head's bias (9,) matched before
    with pytest.raises(ValueError, match=r"transfer.checkpoint='.*wide.*': the source network's torso does not fit "
                                         r"the target's: torso.0.weight \(shape \(16, 26\) in source vs \(8, 26\)\)"):
        apply_transfer(dqn(hidden=(8, 8)), {"mode": "finetune", "checkpoint": str(wide), "head_from": "lane_keep"})
    # another observation size (a CartPole source): torso.0.bias and torso.2.* matched, torso.0.weight did not
    cartpole = write_source(tmp_path / "cartpole", QNetwork(4, 2, hidden=[16, 16]), None)
    for mode in ("finetune", "freeze"):
        with pytest.raises(ValueError, match=r"torso does not fit the target's: torso.0.weight \(shape \(16, 4\) "
                                             r"in source vs \(16, 26\)\); every torso tensor"):
            apply_transfer(dqn(), {"mode": mode, "checkpoint": str(cartpole)})


def test_a_layer_norm_mismatch_is_refused_naming_net_layer_norm(tmp_path):
    path = write_source(tmp_path, QNetwork(26, 9, hidden=[16, 16]), None)
    torch.manual_seed(1)
    model = DQNModule(net=partial(QNetwork, hidden=[16, 16], layer_norm=True),
                      optimizer=partial(torch.optim.Adam, lr=1e-2), task=TaskSpec("urban", 26, 9))
    with pytest.raises(ValueError) as err:
        apply_transfer(model, {"mode": "finetune", "checkpoint": str(path)})
    assert "torso does not fit the target's (the source was trained with net.layer_norm=false, the target has " \
           "net.layer_norm=true)" in str(err.value)
    assert str(err.value).endswith("use a source with the same net.hidden, net.layer_norm, observation size, conv "
                                   "layers and task conditioning")


def test_a_layer_that_fits_only_partly_keeps_its_fresh_initialization_whole(tmp_path):
    """Per-task input adapters: task b's observation size differs (its adapter's bias fits, its weight does not),
    so adapter b stays fresh whole; adapter a, the torso and the heads load; one source head is left over."""
    torch.manual_seed(0)
    source = MultiTaskQNetwork([TaskSpec("a", 26, 9), TaskSpec("b", 10, 9), TaskSpec("c", 10, 9)], hidden=[16, 16])
    path = write_source(tmp_path, source, None)
    model = MultiTaskDQNModule(net=partial(MultiTaskQNetwork, hidden=[16, 16]),
                               optimizer=partial(torch.optim.Adam, lr=1e-2),
                               task=[TaskSpec("a", 26, 9), TaskSpec("b", 12, 9)])
    fresh = params(model.q_net)
    apply_transfer(model, {"mode": "finetune", "checkpoint": str(path)})
    after, src = params(model.q_net), source.state_dict()
    for name in ("adapters.0.weight", "adapters.0.bias", "torso.2.weight", "heads.0.weight", "heads.1.bias"):
        assert torch.equal(after[name], src[name]), name
    for name in ("adapters.1.weight", "adapters.1.bias"):
        assert torch.equal(after[name], fresh[name]), name


class Payload:
    """Any class: torch.save pickles it, so a weights-only load must refuse the file."""


def test_checkpoints_load_weights_only_and_pickled_objects_are_refused(tmp_path):
    clean = write_source(tmp_path / "clean", QNetwork(26, 9, hidden=[16, 16]), None)
    assert load_source(str(clean)).net_state()["head.weight"].shape == (9, 16)
    evil = write_source(tmp_path / "evil", QNetwork(26, 9, hidden=[16, 16]), None, {"payload": Payload()})
    with pytest.raises(ValueError, match=r"transfer.checkpoint=.*pickled objects"):
        apply_transfer(dqn(), {"mode": "finetune", "checkpoint": str(evil)})


@pytest.mark.parametrize(
    ("transfer", "match"),
    [
        ({"mode": "warp"}, r"transfer.mode='warp' is not one of \['none', 'finetune'"),
        ({"mode": "finetune"}, r"transfer.checkpoint=None: transfer.mode='finetune' needs a source checkpoint"),
        ({"mode": "freeze", "checkpoint": "/no/such/last.ckpt"}, r"transfer.checkpoint='/no/such/last.ckpt' is not a file"),
        ({"mode": "finetune", "checkpoint": "x", "torso_lr_scale": 0}, r"transfer.torso_lr_scale=0.0 must be > 0"),
        ({"mode": "freeze", "checkpoint": "x", "freeze_updates": -5}, r"transfer.freeze_updates=-5 must be >= 0"),
        ({"mode": "ewc", "checkpoint": "x", "ewc": {"lambda": -1}}, r"transfer.ewc.lambda=-1.0 must be >= 0"),
        ({"mode": "distill"}, r"transfer.teachers=None: transfer.mode='distill' needs teacher checkpoints"),
        ({"mode": "none", "chekpoint": "x"}, r"transfer has unknown keys \['chekpoint'\]"),
    ],
)
def test_bad_transfer_config_names_the_key_the_value_and_the_options(transfer, match):
    with pytest.raises(ValueError, match=match):
        apply_transfer(dqn(), transfer)


def test_distill_mode_and_student_model_go_together(tmp_path):
    path = write_source(tmp_path, QNetwork(26, 9, hidden=[16, 16]), None)
    with pytest.raises(ValueError, match="model=student goes with transfer=distill"):
        apply_transfer(dqn(), {"mode": "distill", "teachers": [str(path)]})


# --- freezing -------------------------------------------------------------------------------------------------


def test_freeze_schedule_toggles_requires_grad_and_the_trainable_list():
    model = dqn()
    model._trainable = list(model.q_net.parameters())
    torso = list(model.q_net.torso.parameters())
    hook = FreezeSchedule(model, torso, updates=3)
    hook(0)
    assert not any(p.requires_grad for p in torso)
    assert {id(p) for p in model._trainable} == {id(p) for p in model.q_net.head.parameters()}
    hook(2)
    assert not any(p.requires_grad for p in torso)
    hook(3)
    assert all(p.requires_grad for p in torso)
    assert len(model._trainable) == len(list(model.q_net.parameters()))
    forever = FreezeSchedule(model, torso, updates=None)
    forever(10**9)
    assert not any(p.requires_grad for p in torso)


def test_freeze_updates_zero_loads_the_torso_and_says_it_is_not_frozen(tmp_path, caplog):
    path = write_source(tmp_path, QNetwork(26, 9, hidden=[16, 16]), None)
    model = dqn(n_actions=5)
    with caplog.at_level("INFO", logger="mtdqn"):
        apply_transfer(model, {"mode": "freeze", "checkpoint": str(path), "freeze_updates": 0})
    assert "not frozen (transfer.freeze_updates=0)" in caplog.text and "frozen for 0" not in caplog.text
    assert all(p.requires_grad for p in model.q_net.torso.parameters())


def test_frozen_parameters_are_skipped_by_adam_including_its_moments():
    model = dqn()
    torso = list(model.q_net.torso.parameters())
    FreezeSchedule(model, torso, updates=None)(0)
    opt = model.configure_optimizers()
    before = params(model.q_net)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        model.q_net(torch.randn(8, 26)).square().mean().backward()
        opt.step()
    after = params(model.q_net)
    assert all(torch.equal(after[n], before[n]) for n in before if n.startswith("torso."))
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert all(p not in opt.state for p in torso)


# --- distillation ---------------------------------------------------------------------------------------------


def test_distill_kl_equals_the_closed_form():
    teacher = torch.tensor([[0.02, 0.0, -0.01]])
    student = torch.tensor([[1.0, 2.0, 0.0]])
    t = 0.01
    p = np.exp(np.array([2.0, 0.0, -1.0]))
    p /= p.sum()
    q = np.exp(np.array([1.0, 2.0, 0.0]))
    q /= q.sum()
    expected = float(np.sum(p * np.log(p / q)))
    assert distill_kl(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)
    assert distill_kl(teacher / t, teacher, t).item() == pytest.approx(0.0, abs=1e-6)
    per_sample = distill_kl(torch.cat([student, teacher / t]), torch.cat([teacher, teacher]), t, reduction="none")
    assert per_sample.tolist() == pytest.approx([expected, 0.0], abs=1e-5)


class ConstantTeacher(nn.Module):
    def __init__(self, q: list[float]) -> None:
        super().__init__()
        self.register_buffer("q", torch.tensor(q))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q.expand(obs.shape[0], -1)


def student(**kwargs) -> DistillStudentModule:
    torch.manual_seed(0)
    tasks = [TaskSpec("a", 4, 3), TaskSpec("b", 4, 2)]
    module = DistillStudentModule(net=partial(MultiTaskQNetwork, hidden=[8]), optimizer=partial(torch.optim.SGD, lr=0.1),
                                  task=tasks, **kwargs)
    module.set_teachers([ConstantTeacher([0.0, 0.05, 0.0]), ConstantTeacher([0.03, 0.0])])
    return module


def test_each_sample_is_taught_by_its_own_tasks_teacher():
    m = student()
    q = m.teacher_q_values(torch.zeros(3, 4), torch.tensor([0, 1, 0]))
    assert q[0].tolist() == pytest.approx([0.0, 0.05, 0.0])
    assert q[1, :2].tolist() == pytest.approx([0.03, 0.0])
    assert q[1, 2].item() < -1e8  # task b has no third action
    assert m.behavior_policy_for(0)(torch.zeros(2, 4)).tolist() == [1, 1]
    assert m.behavior_policy_for(1)(torch.zeros(2, 4)).tolist() == [0, 0]
    own = student(data_source="student")
    obs = torch.randn(5, 4)
    assert torch.equal(own.behavior_policy_for(0)(obs), own.policy_for(0)(obs))


def test_distillation_coefficient_decays_linearly_in_env_steps():
    assert student(distill_coef=2.0).distill_coefficient(10**6) == 2.0
    m = student(distill_coef=2.0, distill_decay_env_steps=1000)
    assert [m.distill_coefficient(s) for s in (0, 250, 1000, 5000)] == pytest.approx([2.0, 1.5, 0.0, 0.0])


def test_student_update_minimizes_weighted_td_and_decayed_distillation():
    """The loss handed to the optimizer is sum_t w_t (td_coef TD_t + c KL_t) with c decayed at the env steps seen
    (distill_coef 2 decaying over 1000 steps, at 250: c = 1.5), td_coef 0.7 and task weights 0.3 / 2 under
    loss_balance=weighted: the coefficient's decay, td_coef and the weights each change it."""
    import torch.nn.functional as F

    m = student(loss_balance="weighted", task_weights=[0.3, 2.0], td_coef=0.7, distill_coef=2.0,
                distill_decay_env_steps=1000, grad_diagnostics_every=0)
    m.env_steps_seen = 250
    n = 16
    g = torch.Generator().manual_seed(5)
    ids = torch.arange(n) % 2
    b = Batch(obs=torch.randn(n, 4, generator=g), actions=torch.randint(0, 2, (n,), generator=g),
              rewards=torch.randn(n, generator=g), next_obs=torch.randn(n, 4, generator=g), discounts=torch.zeros(n),
              weights=torch.ones(n), indices=torch.arange(n), task_ids=ids)
    losses = []
    m.gradient_step = losses.append
    m.update(b, None, index=1)
    expected = 0.0
    teachers = [torch.tensor([0.0, 0.05, 0.0]), torch.tensor([0.03, 0.0])]
    for t, (w, teacher) in enumerate(zip((0.3, 2.0), teachers, strict=True)):
        own = ids == t
        q = m.q_net(b.obs[own], ids[own])[:, : teacher.numel()]  # the task's own actions only
        td = F.smooth_l1_loss(q.gather(1, b.actions[own, None]).squeeze(1), b.rewards[own])  # discount 0: y = r
        kl = distill_kl(q, teacher.expand_as(q), temperature=0.01)
        expected = expected + w * (0.7 * td + 1.5 * kl)
    assert len(losses) == 1
    torch.testing.assert_close(losses[0], expected, rtol=1e-5, atol=1e-6)


def test_student_update_moves_the_student_toward_its_teachers():
    m = student(temperature=0.01)
    m._trainable = list(m.q_net.parameters())
    m.gradient_step = lambda loss: _sgd(m, loss)
    n = 32
    ids = torch.arange(n) % 2
    b = Batch(obs=torch.randn(n, 4), actions=torch.zeros(n, dtype=torch.int64), rewards=torch.zeros(n),
              next_obs=torch.randn(n, 4), discounts=torch.zeros(n), weights=torch.ones(n), indices=torch.arange(n),
              task_ids=ids)
    kl_before = distill_kl(m.q_values(m.q_net, b.obs, ids), m.teacher_q_values(b.obs, ids)).item()
    for _ in range(30):
        m.update(b, None, index=1)
    kl_after = distill_kl(m.q_values(m.q_net, b.obs, ids), m.teacher_q_values(b.obs, ids)).item()
    assert kl_after < 0.5 * kl_before
    assert torch.equal(m.policy_for(0)(b.obs), torch.ones(n, dtype=torch.int64))  # the teacher's greedy action
    metrics = m.extra_metrics()
    assert metrics["train/distill_coef"] == 1.0 and metrics["train/a/distill_kl"] >= 0


def _sgd(m: nn.Module, loss: torch.Tensor) -> None:
    grads = torch.autograd.grad(loss, m._trainable)
    with torch.no_grad():
        for p, g in zip(m._trainable, grads, strict=True):
            p.sub_(0.1 * g)


def expert_config(task: str) -> dict:
    """config.yaml of a single-task QNetwork run on one driving task."""
    return {**MTL_CONFIG, "task_set": {"kind": "driving", "tasks": [task], "env_kwargs": {}},
            "net": {"_target_": "mtdqn.nets.QNetwork", "_partial_": True, "hidden": [8]}}


def test_teachers_mapping_sends_each_task_to_the_checkpoint_mapped_to_it(tmp_path):
    torch.manual_seed(0)
    mtl = write_source(tmp_path / "mtl", MultiTaskQNetwork(DRIVING, hidden=[16, 16]), MTL_CONFIG)
    experts = {t: QNetwork(26, 9, hidden=[8]) for t in ("lane_keep", "traffic_light")}
    paths = {t: write_source(tmp_path / t, net, expert_config(t)) for t, net in experts.items()}
    # the multi-task run is listed first and was trained on every task: only its key's task goes to it
    teachers = teachers_for(DRIVING, {"pedestrian": str(mtl), "lane_keep": str(paths["lane_keep"]),
                                      "traffic_light": str(paths["traffic_light"])})
    obs = torch.randn(5, 26)
    assert isinstance(teachers[0].net, QNetwork) and teachers[0].task_index is None
    assert torch.equal(teachers[0](obs), experts["lane_keep"](obs))
    assert isinstance(teachers[1].net, MultiTaskQNetwork) and teachers[1].task_index == 1
    assert torch.equal(teachers[2](obs), experts["traffic_light"](obs))
    with pytest.raises(ValueError, match=r"transfer.teachers.pedestrian: .*lane_keep.* was not trained on "
                                         r"pedestrian \(its tasks: \['lane_keep'\]\)"):
        teachers_for(DRIVING, {"pedestrian": str(paths["lane_keep"]), "lane_keep": str(mtl),
                               "traffic_light": str(mtl)})
    with pytest.raises(ValueError, match=r"transfer.teachers has no teacher for student tasks \['traffic_light'\]"):
        teachers_for(DRIVING, {"pedestrian": str(mtl), "lane_keep": str(mtl)})


def test_a_listed_teacher_trained_on_no_student_task_is_refused(tmp_path):
    torch.manual_seed(0)
    mtl = write_source(tmp_path / "mtl", MultiTaskQNetwork(DRIVING, hidden=[16, 16]), MTL_CONFIG)
    urban = write_source(tmp_path / "urban", QNetwork(26, 9, hidden=[8]), expert_config("urban"))
    with pytest.raises(ValueError, match=r"transfer.teachers\[1\]: .*urban.* was trained on \['urban'\], none of "
                                         r"the student's tasks \['lane_keep', 'pedestrian', 'traffic_light'\]"):
        teachers_for(DRIVING, [str(mtl), str(urban)])
    assert [t.task_index for t in teachers_for(DRIVING, [str(mtl)])] == [0, 1, 2]


def test_a_listed_teacher_whose_tasks_all_go_to_earlier_teachers_is_logged(tmp_path, caplog):
    torch.manual_seed(0)
    mtl = write_source(tmp_path / "mtl", MultiTaskQNetwork(DRIVING, hidden=[16, 16]), MTL_CONFIG)
    lane = write_source(tmp_path / "lane", QNetwork(26, 9, hidden=[8]), expert_config("lane_keep"))
    with caplog.at_level("WARNING", logger="mtdqn"):
        teachers = teachers_for(DRIVING, [str(mtl), str(lane)])
    assert [t.task_index for t in teachers] == [0, 1, 2]  # the first listed teacher trained on each task
    assert "transfer.teachers[1]" in caplog.text and "teaches no task" in caplog.text


# --- EWC ------------------------------------------------------------------------------------------------------


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_quadratically():
    anchor = [torch.tensor([1.0, -2.0]), torch.tensor([[0.5]])]
    fisher = [torch.tensor([2.0, 0.0]), torch.tensor([[4.0]])]
    direction = [torch.tensor([1.0, 3.0]), torch.tensor([[-1.0]])]
    assert ewc_penalty(anchor, anchor, fisher, lam=10.0).item() == 0.0
    moved = [[a + t * d for a, d in zip(anchor, direction, strict=True)] for t in (1.0, 2.0)]
    p1, p2 = (ewc_penalty(m, anchor, fisher, lam=10.0).item() for m in moved)
    assert p1 == pytest.approx(0.5 * 10.0 * (2.0 * 1.0 + 0.0 * 9.0 + 4.0 * 1.0))
    assert p2 == pytest.approx(4.0 * p1)
    assert normalize_fisher(fisher)[0].tolist() == pytest.approx([2.0 / 2.0, 0.0])


def test_ewc_fisher_is_the_mean_squared_per_sample_gradient_of_the_source_td_loss(tmp_path):
    torch.manual_seed(0)
    cfg = {**MTL_CONFIG, "task_set": {"kind": "driving", "tasks": ["lane_keep"], "env_kwargs": {}},
           "net": {"_target_": "mtdqn.nets.QNetwork", "_partial_": True, "hidden": [4]}}
    net = QNetwork(26, 9, hidden=[4])
    rows, envs = 3, 2
    g = torch.Generator().manual_seed(1)
    replay = {"obs": torch.randn(rows, envs, 26, generator=g), "next_obs": torch.randn(rows, envs, 26, generator=g),
              "actions": torch.randint(0, 9, (rows, envs), generator=g), "rewards": torch.randn(rows, envs, generator=g),
              "terminated": torch.tensor([[True, False]] * rows), "done": torch.zeros(rows, envs, dtype=torch.bool),
              "pos": rows, "size": rows}
    path = write_source(tmp_path, net, cfg, {"RLDataModule": {"replays": [replay]}})
    fisher = source_fisher(load_source(str(path)), EWCConfig(fisher_samples=6, fisher_batch_size=1, seed=3))
    # by hand: the same 6 draws, target net = source target (weights + 1), gamma 0.9, MSE loss (config)
    target = QNetwork(26, 9, hidden=[4])
    target.load_state_dict({k: v + 1.0 for k, v in net.state_dict().items()})
    idx = torch.randint(0, rows * envs, (6,), generator=torch.Generator().manual_seed(3))
    flat = {k: replay[k].reshape(rows * envs, *replay[k].shape[2:])[idx] for k in
            ("obs", "next_obs", "actions", "rewards", "terminated")}
    expected = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for i in range(6):
        with torch.no_grad():
            y = flat["rewards"][i] + 0.9 * (~flat["terminated"][i]).float() * target(flat["next_obs"][i:i + 1]).max()
        q = net(flat["obs"][i:i + 1])[0, flat["actions"][i]]
        grads = torch.autograd.grad((q - y).square(), list(net.parameters()))
        for (n, _), gr in zip(net.named_parameters(), grads, strict=True):
            expected[n] += gr.square() / 6
    for n in expected:
        assert torch.allclose(fisher[n], expected[n], rtol=1e-4, atol=1e-7), n
    assert sum(float(f.sum()) for f in fisher.values()) > 0


def ewc_source(tmp_path):
    """A driving source checkpoint with a small saved replay per task (EWC's Fisher reads it)."""
    torch.manual_seed(0)
    source = MultiTaskQNetwork(DRIVING, hidden=[16, 16])
    replays = [{"obs": torch.randn(4, 2, 26), "next_obs": torch.randn(4, 2, 26), "actions": torch.randint(0, 9, (4, 2)),
                "rewards": torch.randn(4, 2), "terminated": torch.zeros(4, 2, dtype=torch.bool),
                "done": torch.zeros(4, 2, dtype=torch.bool), "pos": 4, "size": 4} for _ in DRIVING]
    return write_source(tmp_path, source, MTL_CONFIG, {"MultiTaskDataModule": {"replays": replays}})


def test_ewc_mode_adds_a_penalty_that_is_zero_at_the_source_and_pulls_back(tmp_path):
    path = ewc_source(tmp_path)
    model = dqn()
    apply_transfer(model, {"mode": "ewc", "checkpoint": str(path), "ewc": {"lambda": 5.0, "fisher_samples": 8}})
    assert len(model.regularizers) == 1
    assert model.regularization().item() == 0.0
    with torch.no_grad():
        model.q_net.torso[0].weight.add_(0.1)
        model.q_net.head.weight.add_(0.1)  # a fresh head is not anchored
    penalty = model.regularization()
    assert penalty.item() > 0
    grad_w, grad_head = torch.autograd.grad(penalty, [model.q_net.torso[0].weight, model.q_net.head.weight],
                                            allow_unused=True)
    assert grad_head is None
    assert (grad_w >= 0).all() and grad_w.sum() > 0  # pulls the weights back down toward the anchor


@pytest.mark.parametrize("normalize", ["mean", "none"])
def test_ewc_fisher_is_normalized_to_mean_one_unless_normalize_is_none(tmp_path, normalize):
    """transfer.ewc.normalize=mean (the default) divides the Fisher by its mean over every anchored entry, so
    lambda weighs a mean squared deviation whatever the loss scale; none keeps the raw Fisher of the source."""
    path = ewc_source(tmp_path)
    ewc = {"fisher_samples": 8, "normalize": normalize}
    model = dqn()
    apply_transfer(model, {"mode": "ewc", "checkpoint": str(path), "ewc": ewc})
    fisher = model.regularizers[0].fisher
    raw = source_fisher(load_source(str(path)), EWCConfig.from_mapping(ewc))
    raw = [raw[n] for n in ("torso.0.weight", "torso.0.bias", "torso.2.weight", "torso.2.bias")]  # loaded: torso
    assert [f.shape for f in fisher] == [r.shape for r in raw]
    raw_mean = float(sum(r.sum() for r in raw) / sum(r.numel() for r in raw))
    assert raw_mean != pytest.approx(1.0, rel=0.1)  # so that normalizing shows
    scale = raw_mean if normalize == "mean" else 1.0
    for f, r in zip(fisher, raw, strict=True):
        assert torch.allclose(f, r / scale, rtol=1e-5, atol=0.0)
    if normalize == "mean":
        assert float(sum(f.sum() for f in fisher) / sum(f.numel() for f in fisher)) == pytest.approx(1.0, rel=1e-5)


def test_ewc_needs_the_replay_saved_in_the_source_checkpoint(tmp_path):
    path = write_source(tmp_path, MultiTaskQNetwork(DRIVING, hidden=[16, 16]), MTL_CONFIG)
    with pytest.raises(ValueError, match="holds no replay buffers"):
        apply_transfer(dqn(), {"mode": "ewc", "checkpoint": str(path)})


# --- PopArt sources (model.popart=true) -----------------------------------------------------------------------

POPART_CONFIG = {**MTL_CONFIG, "model": {**MTL_CONFIG["model"], "popart": True, "popart_beta": 0.001}}


def popart_net(tasks=DRIVING, mu=(1.0, -2.0, 0.5), sigma=(2.0, 3.0, 0.5)) -> MultiTaskQNetwork:
    """A multi-head net with a PopArt head whose statistics are far from (0, 1): Q = sigma_t * head_t + mu_t."""
    torch.manual_seed(0)
    net = MultiTaskQNetwork(tasks, hidden=[16, 16], popart_beta=1e-3)
    mu, sigma = torch.tensor(mu[: len(tasks)]), torch.tensor(sigma[: len(tasks)])
    net.popart.mu.copy_(mu)
    net.popart.nu.copy_(sigma.square() + mu.square())
    return net


def test_a_popart_run_teaches_in_return_units(tmp_path):
    source = popart_net()
    path = write_source(tmp_path, source, POPART_CONFIG)
    teachers = teachers_for(DRIVING, [str(path)])
    obs = torch.randn(6, 26)
    for k, teacher in enumerate(teachers):
        ids = torch.full((6,), k)
        assert teacher.net.popart.beta == 1e-3
        assert torch.allclose(teacher(obs), source(obs, ids))  # sigma_k * head_k + mu_k
        assert not torch.allclose(teacher(obs), source.normalized_q(obs, ids))


def test_finetune_from_a_popart_source_takes_its_head_in_return_units(tmp_path):
    source = popart_net()
    path = write_source(tmp_path, source, POPART_CONFIG)
    model = dqn()
    apply_transfer(model, {"mode": "finetune", "checkpoint": str(path), "head_from": "pedestrian"})
    obs = torch.randn(6, 26)
    assert torch.allclose(model.q_net(obs), source(obs, torch.full((6,), 1)), atol=1e-5)
    # a plain multi-head target gets every head, by name
    module = MultiTaskDQNModule(net=partial(MultiTaskQNetwork, hidden=[16, 16]),
                                optimizer=partial(torch.optim.Adam, lr=1e-2), task=DRIVING)
    apply_transfer(module, {"mode": "finetune", "checkpoint": str(path)})
    ids = torch.arange(6) % 3
    assert torch.allclose(module.q_net(obs, ids), source(obs, ids), atol=1e-5)


def test_ewc_fisher_of_a_popart_source_is_its_normalized_td_loss(tmp_path):
    """One task, MSE: the normalized loss is the return-unit loss / sigma^2, so every Fisher entry of the PopArt
    source (torso, and its head as the equivalent plain head) is the plain twin's / sigma^4."""
    lane = DRIVING[:1]
    source = popart_net(lane, mu=(0.5,), sigma=(2.0,))
    plain = MultiTaskQNetwork(lane, hidden=[16, 16])
    plain.load_state_dict({k: v for k, v in {**source.state_dict(), **popart_heads(source.state_dict())}.items()
                           if not k.startswith("popart.")})
    g = torch.Generator().manual_seed(1)
    replay = {"obs": torch.randn(3, 2, 26, generator=g), "next_obs": torch.randn(3, 2, 26, generator=g),
              "actions": torch.randint(0, 9, (3, 2), generator=g), "rewards": torch.randn(3, 2, generator=g),
              "terminated": torch.tensor([[True, False]] * 3), "done": torch.zeros(3, 2, dtype=torch.bool),
              "pos": 3, "size": 3}
    fishers = []
    for name, net, cfg in (("popart", source, POPART_CONFIG), ("plain", plain, MTL_CONFIG)):
        cfg = {**cfg, "task_set": {"kind": "driving", "tasks": ["lane_keep"], "env_kwargs": {}}}
        state = {f"{p}{k}": v for k, v in net.state_dict().items() for p in ("q_net.", "target_net.")}
        path = tmp_path / name / "checkpoints" / "last.ckpt"
        atomic_torch_save({"state_dict": state, "MultiTaskDataModule": {"replays": [replay]}}, path)
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(cfg))
        fishers.append(source_fisher(load_source(str(path)), EWCConfig(fisher_samples=6, seed=3)))
    popart_f, plain_f = fishers
    for name in ("torso.0.weight", "torso.2.bias", "heads.0.weight", "heads.0.bias"):
        assert torch.allclose(popart_f[name] * 16.0, plain_f[name], rtol=1e-3, atol=1e-9), name
    assert float(plain_f["heads.0.weight"].sum()) > 0


def test_ewc_from_a_popart_source_anchors_the_head_it_loaded(tmp_path):
    source = popart_net()
    replays = [{"obs": torch.randn(4, 2, 26), "next_obs": torch.randn(4, 2, 26), "actions": torch.randint(0, 9, (4, 2)),
                "rewards": torch.randn(4, 2), "terminated": torch.zeros(4, 2, dtype=torch.bool),
                "done": torch.zeros(4, 2, dtype=torch.bool), "pos": 4, "size": 4} for _ in DRIVING]
    path = write_source(tmp_path, source, POPART_CONFIG, {"MultiTaskDataModule": {"replays": replays}})
    model = dqn()
    apply_transfer(model, {"mode": "ewc", "checkpoint": str(path), "head_from": "traffic_light",
                           "ewc": {"fisher_samples": 8}})
    assert model.regularization().item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        model.q_net.head.weight.add_(0.1)
    assert model.regularization().item() > 0


# --- transfer metrics -----------------------------------------------------------------------------------------

STEPS = np.array([0.0, 1000.0, 2000.0, 3000.0, 4000.0])
SCRATCH = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
TRANSFER = np.array([0.5, 0.75, 1.0, 1.0, 1.0])


def test_transfer_metrics_on_synthetic_curves_equal_hand_computed_values():
    m = transfer_vs_scratch(STEPS, TRANSFER, SCRATCH, threshold=0.9)
    assert m["jumpstart"] == pytest.approx(0.5)
    assert m["asymptotic_gain"] == pytest.approx(0.0)
    assert m["time_to_threshold_ratio"] == pytest.approx(2000.0 / 4000.0)
    # areas: scratch 0.5 x 4000 = 2000; transfer (0.625 + 0.875 + 1 + 1) x 1000 = 3500
    assert curve_area(STEPS, SCRATCH) == pytest.approx(2000.0)
    assert m["area_ratio"] == pytest.approx(3500.0 / 2000.0)
    assert time_to_threshold(STEPS, SCRATCH * 0.5, 0.9) == math.inf
    never = transfer_vs_scratch(STEPS, SCRATCH * 0.5, SCRATCH, 0.9)
    assert never["time_to_threshold_ratio"] == math.inf
    assert math.isnan(transfer_vs_scratch(STEPS, TRANSFER, SCRATCH * 0.5, 0.9)["time_to_threshold_ratio"])
    assert math.isnan(transfer_vs_scratch(STEPS, TRANSFER, SCRATCH - 1.0, 0.9)["area_ratio"])  # scratch area < 0


def test_window_averages_the_final_score_and_needs_the_threshold_held():
    """A noisy curve: one lucky evaluation (0.95 at 1000) crosses 0.9 with window 1; with window 2 the threshold
    counts only where two consecutive evaluations average >= 0.9 (0.9, 1.0 at 3000-4000) and the final score is
    the mean of the last two (0.95)."""
    noisy = np.array([0.1, 0.95, 0.6, 0.9, 1.0])
    assert time_to_threshold(STEPS, noisy, 0.9) == 1000.0
    assert time_to_threshold(STEPS, noisy, 0.9, window=2) == 4000.0
    assert time_to_threshold(STEPS, noisy, 0.9, window=6) == math.inf  # fewer evaluations than the window
    assert final_score(noisy, 2) == pytest.approx(0.95) and final_score(noisy) == pytest.approx(1.0)
    # against TRANSFER as the baseline: its window-2 means 0.625, 0.875, 1.0, 1.0 hold 0.9 by 3000, final 1.0
    m = transfer_vs_scratch(STEPS, noisy, TRANSFER, 0.9, window=2)
    assert m["asymptotic_gain"] == pytest.approx(0.95 - 1.0)
    assert m["time_to_threshold_ratio"] == pytest.approx(4000.0 / 3000.0)
    with pytest.raises(ValueError, match="--window 0 is invalid"):
        transfer_report([Path("/nonexistent")], window=0)


def test_bootstrap_resamples_transfer_and_scratch_runs_independently():
    """Transfer and scratch seeds are not paired: each group's runs are resampled on their own. Two groups of the
    same scores {0, 1}: their mean difference is 0, with resamples from -1 to 1 (drawing the same indices for both
    groups would make every resample 0, a CI of [0, 0])."""
    runs = np.array([[0.0], [1.0]])
    est = bootstrap([runs, runs.copy()], lambda a, b: float(a.mean() - b.mean()), n_boot=500)
    assert est.value == 0.0
    assert est.low < 0.0 < est.high


def _series_run(steps, values) -> Run:
    return Run(Path("run"), rows=[{"env_steps": s, "eval/x/normalized": v} for s, v in zip(steps, values,
                                                                                        strict=True)])


def test_per_run_time_to_threshold_is_each_runs_own_time_at_its_own_evaluations():
    """Three runs that each touch 0.9 once, at different evaluations: their mean curve (0.6, 0.6, 0.6, ...) never
    reaches 0.9, each run does (1000, 2000, 3000: median 2000); a run that never does counts as inf. On a grid
    that holds other runs' evaluation steps, a step where a run was not evaluated (an interpolated score) does not
    count as reached: evaluated at 0 / 2000 / 4000 with 0 / 0.8 / 1.0, the run reaches 0.9 at 4000, not at 3000."""
    runs = np.array([[0.0, 0.95, 0.4, 0.4, 0.4], [0.0, 0.4, 0.95, 0.4, 0.4], [0.0, 0.4, 0.4, 0.95, 0.4]])
    assert time_to_threshold(STEPS, runs.mean(0), 0.9) == math.inf
    metric = "eval/x/normalized"
    times = own_run_times([_series_run(STEPS, r) for r in runs], metric, STEPS, 0.9)
    assert times.tolist() == [1000.0, 2000.0, 3000.0] and np.median(times) == 2000.0
    never = [_series_run(STEPS, r) for r in (runs[0], runs[0] * 0.5, runs[0] * 0.5)]
    assert np.median(own_run_times(never, metric, STEPS, 0.9)) == math.inf
    assert own_run_times([_series_run(STEPS, r) for r in runs], metric, STEPS, 0.9, window=2).tolist() == [
        math.inf] * 3  # none holds it for two evaluations
    sparse = _series_run([0.0, 2000.0, 4000.0], [0.0, 0.8, 1.0])
    assert own_run_times([sparse], metric, STEPS, 0.9).tolist() == [4000.0]
    assert own_run_times([sparse], metric, STEPS[:4], 0.9).tolist() == [math.inf]  # 4000 is past the grid


def _rows(values, source=None):
    rows = []
    for i, (s, v) in enumerate(zip(STEPS, values, strict=True)):
        row = {"env_steps": int(s), "step": i, "time": float(i), "eval/mean_normalized": float(v)}
        if source is not None:
            row["eval/source/lane_keep/normalized"] = float(source[i])
            row["eval/source/mean_normalized"] = float(source[i])
        rows.append(row)
    return rows


def test_transfer_report_groups_seeds_by_mode_with_bootstrap_cis(tmp_path):
    for seed, shift in enumerate((-0.1, 0.0, 0.1)):
        write_run(tmp_path / f"none{seed}", {"transfer": {"mode": "none"}, "seed": seed}, _rows(SCRATCH + shift),
                  {"status": "completed"})
        forget = np.linspace(0.9, 0.5 + shift, 5)
        write_run(tmp_path / f"ft{seed}", {"transfer": {"mode": "finetune"}, "seed": seed},
                  _rows(TRANSFER + shift, forget), {"status": "completed"})
    report = transfer_report([tmp_path], n_boot=500)
    assert list(report["groups"]) == ["none", "finetune"]
    ft = report["groups"]["finetune"]
    assert ft["n_runs"] == 3
    assert ft["jumpstart"].value == pytest.approx(0.5)
    assert ft["asymptotic_gain"].value == pytest.approx(0.0)
    assert ft["time_to_threshold_ratio"].value == pytest.approx(0.5)
    assert ft["area_ratio"].value == pytest.approx(3500.0 / 2000.0)
    assert ft["jumpstart"].low <= 0.5 <= ft["jumpstart"].high
    first = ft["first"]
    assert first.low < first.value < first.high  # seeds differ: a real interval
    assert ft["forgetting"]["eval/source/lane_keep/normalized"].value == pytest.approx(0.4)
    assert "jumpstart" not in report["groups"]["none"] and "run_time_ratio" not in report["groups"]["none"]
    # per run: every scratch seed (shifted -0.1 / 0 / +0.1) reaches 0.9 at its last evaluation, every finetune seed
    # at 2000 (0.9, 1.0, 1.1 there)
    assert report["groups"]["none"]["run_steps"] == [4000.0] * 3 and ft["run_steps"] == [2000.0] * 3
    assert ft["run_steps_median"].value == 2000.0 and ft["run_time_ratio"].value == pytest.approx(0.5)
    md = render_markdown(report)  # env steps as integers with thousands separators, under 10,000 too
    assert "| finetune | 2,000; 2,000; 2,000 | 2,000 [2,000, 2,000] | 0.500 [0.500, 0.500] |" in md
    assert "| none | 4,000; 4,000; 4,000 | 4,000 [4,000, 4,000] |  |" in md
    assert "| 2,000 [2,000, 2,000] | 0.500 [" in md.split("## Per-run")[0]  # the main table's column


# --- source-task evaluation -----------------------------------------------------------------------------------


def test_source_tasks_are_played_by_the_same_named_head_or_the_single_policy():
    from mtdqn.callbacks.evaluation import source_policy_index

    lane, urban = TaskSpec("lane_keep", 26, 9), TaskSpec("urban", 26, 9)
    assert source_policy_index(DRIVING, TaskSpec("traffic_light", 26, 9)) == 2
    assert source_policy_index([urban], lane) == 0
    with pytest.raises(ValueError, match="'urban' is not a task of the 3-task model"):
        source_policy_index(DRIVING, urban)
    with pytest.raises(ValueError, match=r"'CartPole-v1' has obs_dim/n_actions \(4, 2\)"):
        source_policy_index([urban], TaskSpec("CartPole-v1", 4, 2))


def test_peak_forgetting_sees_a_drop_that_recovers_by_the_last_eval():
    from mtdqn.evaluation.transfer import forgetting, peak_forgetting

    dip = np.array([0.8, 0.5, 0.7, 0.8])  # forgotten at eval 2, recovered at the end
    slide = np.array([0.9, 0.9, 0.6])
    assert peak_forgetting([dip, slide]) == pytest.approx((0.3 + 0.3) / 2)
    assert forgetting(np.array([0.8, 0.9]), np.array([0.8, 0.6])) == pytest.approx((0.0 + 0.3) / 2)
    assert peak_forgetting([np.array([0.5, 0.6, 0.7])]) == pytest.approx(-0.1)  # improved all along


def test_transfer_report_has_peak_forgetting_per_source_task(tmp_path):
    for seed in range(2):
        write_run(tmp_path / f"none{seed}", {"transfer": {"mode": "none"}, "seed": seed}, _rows(SCRATCH),
                  {"status": "completed"})
        write_run(tmp_path / f"ft{seed}", {"transfer": {"mode": "finetune"}, "seed": seed},
                  _rows(TRANSFER, np.array([0.9, 0.4, 0.6, 0.8, 0.9])), {"status": "completed"})
    report = transfer_report([tmp_path], n_boot=200)
    ft = report["groups"]["finetune"]
    assert ft["forgetting"]["eval/source/lane_keep/normalized"].value == pytest.approx(0.0)
    assert ft["peak_forgetting"]["eval/source/lane_keep/normalized"].value == pytest.approx(0.5)
    from mtdqn.evaluation.transfer import render_markdown

    assert "Peak forgetting per source task" in render_markdown(report)


# --- transfer report: the common env-step range, runs left out, bad flags ---------------------------------------


def _pair(tmp_path, n=2, source=None):
    """n completed scratch and finetune seeds on STEPS (0-4000)."""
    for seed in range(n):
        write_run(tmp_path / f"none{seed}", {"transfer": {"mode": "none"}, "seed": seed}, _rows(SCRATCH),
                  {"status": "completed"})
        write_run(tmp_path / f"ft{seed}", {"transfer": {"mode": "finetune"}, "seed": seed},
                  _rows(TRANSFER, source), {"status": "completed"})


def test_a_running_run_that_shortens_the_range_is_named_and_every_column_uses_that_range(tmp_path):
    """A finetune seed still running (no summary.json, evaluated to 2000 only) ends the range every run covers at
    2000: the report says so, naming it, and final scores and forgetting are taken at 2000 for every run (the
    completed finetune seeds' source score 0.9 -> 0.7 at 2000, not 0.5 at their last evaluation);
    --skip-incomplete leaves it out and the range is 0-4000 again."""
    source = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    _pair(tmp_path, source=source)
    write_run(tmp_path / "running", {"transfer": {"mode": "finetune"}, "seed": 9}, _rows(TRANSFER, source)[:3])
    report = transfer_report([tmp_path], n_boot=100)
    assert report["env_step_range"] == [0.0, 2000.0] and report["n_evaluations"] == 3
    assert report["incomplete"] == [str(tmp_path / "running")]
    limit = next(w for w in report["warnings"] if w.startswith("common env-step range ends at 2,000, not 4,000"))
    assert "running (incomplete)" in limit and "--skip-incomplete" in limit
    ft = report["groups"]["finetune"]
    assert ft["final"].value == pytest.approx(1.0) and report["groups"]["none"]["final"].value == pytest.approx(0.5)
    assert ft["forgetting"]["eval/source/lane_keep/normalized"].value == pytest.approx(0.2)
    md = render_markdown(report)
    assert "Env-step range: 0-2,000 env steps (3 evaluation steps on the grid)" in md
    assert "## Incomplete runs (no completed summary.json; included)" in md and "## Warnings" in md
    full = transfer_report([tmp_path], n_boot=100, skip_incomplete=True)
    assert full["env_step_range"] == [0.0, 4000.0] and full["skipped_incomplete"] == [str(tmp_path / "running")]
    assert not [w for w in full["warnings"] if w.startswith("common env-step range")]
    assert full["groups"]["finetune"]["forgetting"]["eval/source/lane_keep/normalized"].value == pytest.approx(0.4)


def test_peak_forgetting_looks_only_within_the_common_range(tmp_path):
    """The completed finetune seeds' source score dips (0.9 -> 0.2) only at 3000, after the common range a running
    seed ends at 2000: within the range no seed forgot anything, so peak forgetting is 0, not the dip."""
    source = np.array([0.9, 0.9, 0.9, 0.2, 0.9])
    _pair(tmp_path, source=source)
    write_run(tmp_path / "running", {"transfer": {"mode": "finetune"}, "seed": 9}, _rows(TRANSFER, source)[:3])
    report = transfer_report([tmp_path], n_boot=50)
    assert report["env_step_range"] == [0.0, 2000.0]
    peak = report["groups"]["finetune"]["peak_forgetting"]["eval/source/lane_keep/normalized"]
    assert peak.value == pytest.approx(0.0)


def test_no_common_range_or_a_single_common_evaluation_is_refused_naming_the_runs(tmp_path):
    _pair(tmp_path)
    late = [{**r, "env_steps": r["env_steps"] + 4000} for r in _rows(SCRATCH)]  # 4000-8000: shares only 4000
    write_run(tmp_path / "src", {"transfer": {"mode": "none"}}, late, {"status": "completed"})
    with pytest.raises(ValueError, match=r"range common to every run's 'eval/mean_normalized' is 4,000-4,000 with 1 "
                                         r"evaluation\(s\); at least 2 are needed.*first evaluation of src"):
        transfer_report([tmp_path], n_boot=10)
    write_run(tmp_path / "src", {"transfer": {"mode": "none"}},
              [{**r, "env_steps": r["env_steps"] + 5000} for r in _rows(SCRATCH)], {"status": "completed"})
    with pytest.raises(ValueError, match=r"no env-step range common to every run's 'eval/mean_normalized': src "
                                         r"evaluate\(s\) from 5,000 env steps"):
        transfer_report([tmp_path], n_boot=10)


def test_another_evaluation_schedule_is_reported_as_interpolated(tmp_path):
    _pair(tmp_path)
    rows = [r for r in _rows(SCRATCH) if r["env_steps"] in (0, 3000, 4000)]
    write_run(tmp_path / "sparse", {"transfer": {"mode": "none"}}, rows, {"status": "completed"})
    report = transfer_report([tmp_path], n_boot=10)
    assert any(w.startswith("1 of 5 runs were not evaluated at every one of the grid's 5 env steps") and
               w.endswith(": sparse") for w in report["warnings"])


def test_a_window_longer_than_the_common_range_is_refused(tmp_path):
    _pair(tmp_path)
    with pytest.raises(ValueError, match=r"--window 10: the common env-step range 0-4,000 has only 5 evaluations"):
        transfer_report([tmp_path], n_boot=10, window=10)
    assert transfer_report([tmp_path], n_boot=10, window=5)["window"] == 5


def test_failed_runs_and_unreadable_lines_are_listed_not_dropped_silently(tmp_path):
    _pair(tmp_path)
    write_run(tmp_path / "crashed", {"transfer": {"mode": "finetune"}}, _rows(TRANSFER)[:2],
              {"status": "failed", "error": "RuntimeError: CUDA out of memory"})
    with open(tmp_path / "none0" / "metrics.jsonl", "a") as f:
        f.write("{garbage\n")
    report = transfer_report([tmp_path], n_boot=10)
    assert report["failed"] == [{"path": str(tmp_path / "crashed"), "error": "RuntimeError: CUDA out of memory"}]
    assert report["groups"]["finetune"]["n_runs"] == 2
    assert any("metrics.jsonl:6: unreadable line skipped" in w for w in report["warnings"])
    md = render_markdown(report)
    assert "## Failed runs (left out)" in md and "CUDA out of memory" in md


def test_undefined_bootstrap_resamples_are_counted_and_reported(tmp_path):
    """Scratch seeds at -1, 0.6, 0.6: the mean area is > 0, but resamples with two -1 seeds have a scratch area
    < 0 and no area ratio; they are left out of its CI and counted."""
    for seed, level in enumerate((-1.0, 0.6, 0.6)):
        write_run(tmp_path / f"none{seed}", {"transfer": {"mode": "none"}}, _rows(np.full(5, level)),
                  {"status": "completed"})
        write_run(tmp_path / f"ft{seed}", {"transfer": {"mode": "finetune"}}, _rows(TRANSFER), {"status": "completed"})
    report = transfer_report([tmp_path], n_boot=200)
    area = report["groups"]["finetune"]["area_ratio"]
    assert math.isfinite(area.value) and 20 < area.n_undefined < 100
    assert any(w.startswith(f"finetune: area_ratio: {area.n_undefined} of 200 bootstrap resamples undefined")
               for w in report["warnings"])


def test_source_mean_is_no_task_column_and_a_whole_config_node_is_refused_as_group_key(tmp_path):
    _pair(tmp_path, source=np.array([0.9, 0.8, 0.7, 0.6, 0.5]))
    report = transfer_report([tmp_path], n_boot=10)
    per_task = render_markdown(report).split("## Forgetting per source task")[1].split("\n\n")[1]
    assert "`eval/source/lane_keep/normalized`" in per_task and "mean_normalized" not in per_task
    with pytest.raises(ValueError, match=r"--by transfer: a config node, not one value; group by one of its keys "
                                         r"that differ between these runs: transfer.mode"):
        transfer_report([tmp_path], by="transfer", n_boot=10)


def test_a_group_whose_runs_differ_in_other_settings_is_named_with_the_keys_and_how_to_split_it(tmp_path):
    """Finetune runs from two checkpoints at two torso learning-rate scales were pooled as seeds of one setting
    without a word; the warning names the keys, their values and --by; seeds alone differing is no warning."""
    for seed in range(3):
        write_run(tmp_path / f"none{seed}", {"transfer": {"mode": "none"}, "seed": seed}, _rows(SCRATCH),
                  {"status": "completed"})
    for seed, (scale, ckpt) in enumerate([(1.0, "a.ckpt"), (1.0, "a.ckpt"), (0.1, "b.ckpt")]):
        write_run(tmp_path / f"ft{seed}", {"transfer": {"mode": "finetune", "torso_lr_scale": scale,
                                                        "checkpoint": ckpt}, "seed": seed},
                  _rows(TRANSFER), {"status": "completed"})
    report = transfer_report([tmp_path], n_boot=20)
    mixed = [w for w in report["warnings"] if "pooled as seeds of one setting" in w]
    assert mixed == [
        "group finetune: its 3 runs differ in transfer.checkpoint, transfer.torso_lr_scale (transfer.checkpoint: "
        "a.ckpt (2 runs), b.ckpt (1 run); transfer.torso_lr_scale: 1.0 (2 runs), 0.1 (1 run)) but are pooled as "
        "seeds of one setting; split them with --by transfer.checkpoint, or report each setting's runs separately"]
    assert "pooled as seeds of one setting" in render_markdown(report)
    split = transfer_report([tmp_path / f"ft{i}" for i in range(2)] + [tmp_path / f"none{i}" for i in range(3)],
                            n_boot=20)
    assert not [w for w in split["warnings"] if "pooled" in w]


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--ci", "1.5", "argument --ci: '1.5' is not a coverage strictly between 0 and 1"),
    ("--n-boot", "0", "argument --n-boot: '0' is not an integer >= 1"),
    ("--window", "0", "argument --window: '0' is not an integer >= 1"),
    ("--threshold", "nan", "argument --threshold: 'nan' is not a finite number"),
])
def test_transfer_report_script_refuses_bad_flags(tmp_path, flag, value, message):
    from tests.helpers.scripts import run_script

    _pair(tmp_path)
    done = run_script("transfer_report", str(tmp_path), flag, value, "--out", str(tmp_path / "out"), "--no-plot")
    assert done.returncode == 2 and f"transfer_report.py: error: {message}" in done.stderr


def test_runs_on_another_task_set_are_refused_naming_them(tmp_path):
    """The source run (lane_keep_mtl, transfer.mode=none) given beside the urban sweep joined the scratch group."""
    for name, mode in (("scratch", "none"), ("finetune", "finetune")):
        write_run(tmp_path / name, {"transfer": {"mode": mode}, "task_set": {"tasks": ["urban"]}}, _rows(SCRATCH),
                  {"status": "completed"})
    write_run(tmp_path / "src", {"transfer": {"mode": "none"}, "task_set": {"tasks": ["lane_keep", "pedestrian"]}},
              _rows(SCRATCH), {"status": "completed"})
    with pytest.raises(ValueError, match=r"the runs train different task sets: \['urban'\] \(finetune, scratch\); "
                                         r"\['lane_keep', 'pedestrian'\] \(src\)"):
        transfer_report([tmp_path], n_boot=50)
    assert set(transfer_report([tmp_path / "scratch", tmp_path / "finetune"], n_boot=50)["groups"]) == {
        "none", "finetune"}


def test_ewc_fisher_reads_a_uint8_replay_as_the_source_trained_on_it(tmp_path):
    """An Atari source stores frames as uint8 (quantum 1/255): the Fisher was computed on the raw grid values, 255
    times the observations the source trained on; now it equals the Fisher of the same replay stored as float32."""
    from mtdqn.replay.buffer import ReplayBuffer
    from mtdqn.types import Transition

    torch.manual_seed(0)
    cfg = {**MTL_CONFIG, "task_set": {"kind": "driving", "tasks": ["lane_keep"], "env_kwargs": {}},
           "net": {"_target_": "mtdqn.nets.QNetwork", "_partial_": True, "hidden": [4]}}
    net = QNetwork(26, 9, hidden=[4])
    g = torch.Generator().manual_seed(1)
    grid = [torch.randint(0, 256, (2, 26), generator=g).float() / 255 for _ in range(5)]
    fishers = []
    for storage in ("uint8", "float32"):
        buf = ReplayBuffer(20, 2, 26, 0.9, obs_storage=storage, obs_quantum=1 / 255)
        for t in range(4):
            buf.add(Transition(grid[t], torch.tensor([t % 9, (t + 1) % 9]), torch.tensor([0.5, -1.0]), grid[t + 1],
                               torch.zeros(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)))
        path = write_source(tmp_path / storage, net, cfg, {"RLDataModule": {"replays": [buf.state_dict()]}})
        fishers.append(source_fisher(load_source(str(path)), EWCConfig(fisher_samples=6, fisher_batch_size=1, seed=3)))
    for n in fishers[1]:
        assert torch.allclose(fishers[0][n], fishers[1][n], rtol=1e-5, atol=1e-8), n

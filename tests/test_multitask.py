"""Multi-task DQN end to end: batch composition, driving task set, heterogeneous spaces, PCGrad."""

import json

import pytest
import torch

from mtdqn.data.multitask import batch_counts
from mtdqn.train import build, train
from tests.helpers.config import compose_cfg

MTL = ["debug=smoke", "logger=jsonl", "callbacks.progress=null", "model=mtdqn", "net=multihead",
       "net.hidden=[32,32]", "data.num_envs=2"]


def test_batch_counts_split_exactly():
    assert batch_counts(12, [1, 1, 1]) == [4, 4, 4]
    assert batch_counts(10, [1, 1, 1]) == [4, 3, 3]
    assert batch_counts(8, [2, 1, 1]) == [4, 2, 2]
    assert batch_counts(8, [0, 1, 1]) == [0, 4, 4]
    with pytest.raises(ValueError):
        batch_counts(8, [0, 0])


@pytest.mark.parametrize(("composition", "weights", "expected"),
                         [("uniform", None, [10, 10, 10]), ("weighted", [3, 1, 1], [18, 6, 6])])
def test_round_batches_are_composed_per_task_as_configured(tmp_path, composition, weights, expected):
    extra = [f"+data.batch_composition={composition}"]
    if weights:
        extra.append(f"+data.task_weights=[{','.join(map(str, weights))}]")
    cfg = compose_cfg([*MTL, "task_set=driving", "data.batch_size=30", *extra], tmp_path)
    model, data, trainer = build(cfg)
    data.trainer = trainer
    trainer.strategy._lightning_module = model
    data.setup()
    round_ = next(iter(data.train_dataloader()))
    counts = torch.bincount(round_.batch.task_ids[0], minlength=3).tolist()
    assert counts == expected
    assert round_.batch.obs.shape[1] == 30


def test_driving_multitask_smoke_logs_per_task_metrics(tmp_path):
    summary = train(compose_cfg([*MTL, "task_set=driving", "model.grad_diagnostics_every=1"], tmp_path))
    assert summary["status"] == "completed"
    for name in ("eval/lane_keep/normalized", "eval/pedestrian/normalized", "eval/traffic_light/normalized",
                 "eval/mean_normalized", "eval/min_normalized"):
        assert name in summary, name
    names = set().union(*[json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()])
    for name in ("train/lane_keep/td_loss", "train/pedestrian/q_mean", "train/grad_cos/lane_keep__pedestrian"):
        assert name in names, name


@pytest.mark.parametrize("balance", ["sum", "pcgrad"])
def test_heterogeneous_gym_task_set_trains(tmp_path, balance):
    """CartPole (4 obs, 2 actions) + Acrobot (6 obs, 3 actions) in one multi-head network."""
    cfg = compose_cfg([*MTL, "task_set=gym", "task_set.tasks=[CartPole-v1,Acrobot-v1]",
                       f"model.loss_balance={balance}"], tmp_path)
    model, data, trainer = build(cfg)
    before = torch.cat([p.detach().flatten().clone() for p in model.q_net.parameters()])
    trainer.fit(model, datamodule=data)
    after = torch.cat([p.detach().flatten() for p in model.q_net.parameters()])
    assert trainer.global_step > 0 and not torch.equal(before, after)
    assert data.buffers[0].obs.shape[-1] == 4 and data.buffers[1].obs.shape[-1] == 6
    acrobot = model.policy_for(1)(torch.zeros(5, 6))
    assert acrobot.max() < 3
    cartpole = model.policy_for(0)(torch.zeros(5, 4))
    assert cartpole.max() < 2


def test_single_task_model_refuses_a_task_set(tmp_path):
    with pytest.raises(ValueError, match="model=mtdqn"):
        build(compose_cfg(["debug=smoke", "task_set=driving"], tmp_path))

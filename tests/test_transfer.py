"""Transfer end to end on the driving suite with tiny budgets: finetune, freeze, ewc and distill runs."""

import json
from pathlib import Path

import pytest
import torch

from mtdqn.callbacks.checkpoint import load_checkpoint
from mtdqn.train import build, train
from tests.helpers.config import compose_cfg

SMOKE = ["debug=smoke", "logger=jsonl", "callbacks.progress=null", "data.num_envs=2"]
TARGET = [*SMOKE, "task_set=urban", "net=mlp", "net.hidden=[32,32]"]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A tiny multi-task source run on the three driving tasks (checkpoint with replay, config.yaml)."""
    run = tmp_path_factory.mktemp("source")
    cfg = compose_cfg([*SMOKE, "task_set=driving", "model=mtdqn", "net=multihead", "net.hidden=[32,32]"], run)
    assert train(cfg)["status"] == "completed"
    return run


def source_tensors(run: Path, prefix: str) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    return {k[len("q_net."):]: v for k, v in state.items() if k.startswith("q_net." + prefix)}


@pytest.mark.parametrize("mode", ["finetune", "ewc"])
def test_transfer_run_starts_from_the_source_and_evaluates_the_source_tasks(tmp_path, source_run, mode):
    ckpt = source_run / "checkpoints" / "last.ckpt"
    summary = train(compose_cfg([*TARGET, f"transfer={mode}", f"transfer.checkpoint={ckpt}",
                                 "transfer.head_from=lane_keep", "transfer.eval_source_tasks=[lane_keep,pedestrian]",
                                 "callbacks.eval.at_start=true"], tmp_path))
    assert summary["status"] == "completed"
    rows = [r for r in read_metrics(tmp_path) if "eval/urban/return" in r]
    assert rows[0]["env_steps"] == 0 and rows[-1]["env_steps"] >= 600
    for name in ("eval/source/lane_keep/return", "eval/source/pedestrian/normalized", "eval/source/mean_normalized"):
        assert name in rows[0] and name in summary, name
    # before any update the target (source torso + source lane_keep head) plays lane_keep exactly as the source
    source_summary = json.loads((source_run / "summary.json").read_text())
    assert rows[0]["eval/source/lane_keep/return"] == pytest.approx(source_summary["eval/lane_keep/return"])
    # EWC's penalty is logged with every round (it was nowhere in the metrics); finetune has no extra loss term
    penalties = [r["train/regularization"] for r in read_metrics(tmp_path) if "train/regularization" in r]
    assert (len(penalties) > 0 and max(penalties) > 0) if mode == "ewc" else not penalties


def test_freeze_keeps_the_torso_bit_identical_for_freeze_updates_then_trains_it(tmp_path, source_run):
    ckpt = source_run / "checkpoints" / "last.ckpt"
    torso = source_tensors(source_run, "torso.")
    cfg = compose_cfg([*TARGET, "transfer=freeze", f"transfer.checkpoint={ckpt}", "transfer.freeze_updates=15",
                       "callbacks.checkpoint=null"], tmp_path)
    model, data, trainer = build(cfg)
    seen: list[tuple[int, bool]] = []

    def record(step: int) -> None:
        current = dict(model.q_net.named_parameters())
        seen.append((step, all(torch.equal(current[n], t) for n, t in torso.items())))

    model.before_update.append(record)
    head_before = model.q_net.head.weight.detach().clone()
    trainer.fit(model, datamodule=data)
    assert len(seen) > 20
    assert all(same for step, same in seen if step <= 15), seen  # frozen through update 15 (the 16th starts it)
    assert not any(same for step, same in seen if step >= 16), seen
    assert not torch.equal(model.q_net.head.weight, head_before)


def test_freeze_for_ever_never_moves_the_torso(tmp_path, source_run):
    ckpt = source_run / "checkpoints" / "last.ckpt"
    cfg = compose_cfg([*TARGET, "transfer=freeze", f"transfer.checkpoint={ckpt}", "transfer.torso_lr_scale=0.5",
                       "callbacks.checkpoint=null"], tmp_path)
    model, data, trainer = build(cfg)
    trainer.fit(model, datamodule=data)
    current = dict(model.q_net.named_parameters())
    assert all(torch.equal(current[n], t) for n, t in source_tensors(source_run, "torso.").items())
    opt = trainer.optimizers[0]
    assert all(p not in opt.state for p in model.q_net.torso.parameters())  # no Adam moments either
    assert all(p in opt.state for p in model.q_net.head.parameters())


def test_finetune_logs_the_loaded_torsos_scaled_learning_rate(tmp_path, source_run):
    ckpt = source_run / "checkpoints" / "last.ckpt"
    train(compose_cfg([*TARGET, "transfer=finetune", f"transfer.checkpoint={ckpt}", "transfer.torso_lr_scale=0.25",
                       "optimizer.lr=0.002", "scheduler=linear", "callbacks.checkpoint=null"], tmp_path))
    rows = [r for r in read_metrics(tmp_path) if "train/lr" in r]
    assert len(rows) >= 2 and 0.25 * 0.002 < rows[0]["train/lr"] <= 0.002  # the head's (unscaled), decaying
    assert rows[-1]["train/lr"] < rows[0]["train/lr"]  # the schedule moves both groups
    assert all(r["train/lr_scaled"] == pytest.approx(0.25 * r["train/lr"]) for r in rows)


def test_distill_run_trains_a_smaller_student_from_the_teacher(tmp_path, source_run):
    ckpt = source_run / "checkpoints" / "last.ckpt"
    summary = train(compose_cfg([*SMOKE, "task_set=driving", "model=student", "net=multihead", "net.hidden=[16,16]",
                                 "transfer=distill", f"transfer.teachers=[{ckpt}]", "optimizer.lr=0.003"], tmp_path))
    assert summary["status"] == "completed"
    for task in ("lane_keep", "pedestrian", "traffic_light"):
        assert f"eval/{task}/normalized" in summary
    kl = [r["train/distill_kl"] for r in read_metrics(tmp_path) if "train/distill_kl" in r]
    assert len(kl) >= 3 and all(v >= 0 for v in kl)
    assert kl[-1] < kl[0]
    student = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert student["q_net.torso.0.weight"].shape == (16, 26)  # the student's own, smaller net
    assert not any(k.startswith("teacher") for k in student)  # teachers are not saved with the student


def test_a_loaded_policy_explores_from_epsilon_start_and_scratch_ignores_it(tmp_path, source_run):
    ckpt = source_run / "checkpoints" / "last.ckpt"
    common = [*TARGET, f"transfer.checkpoint={ckpt}", "transfer.epsilon_start=0.2", "exploration.start=0.9"]
    _, data, _ = build(compose_cfg([*common, "transfer=finetune"], tmp_path / "ft"))
    assert data.exploration.start == 0.2 and data.exploration.end == compose_cfg(TARGET, tmp_path).exploration.end
    _, scratch, _ = build(compose_cfg([*common, "transfer=none"], tmp_path / "none"))
    assert scratch.exploration.start == 0.9
    with pytest.raises(ValueError, match=r"transfer.epsilon_start=1.5 is invalid: expected a number in \[0, 1\]"):
        build(compose_cfg([*TARGET, "transfer=finetune", f"transfer.checkpoint={ckpt}", "transfer.epsilon_start=1.5"],
                          tmp_path / "bad"))


def test_transfer_errors_stop_the_run_at_build_with_the_key(tmp_path, source_run):
    with pytest.raises(ValueError, match="transfer.checkpoint=None: transfer.mode='finetune'"):
        build(compose_cfg([*TARGET, "transfer=finetune"], tmp_path))
    with pytest.raises(ValueError, match="transfer.teachers: no teacher was trained on task 'urban'"):
        build(compose_cfg([*TARGET, "model=student", "net=multihead", "transfer=distill",
                           f"transfer.teachers=[{source_run / 'checkpoints' / 'last.ckpt'}]"], tmp_path))
    with pytest.raises(ValueError, match="transfer.eval_source_tasks: 'nowhere' is not a driving task"):
        build(compose_cfg([*TARGET, "transfer.eval_source_tasks=[nowhere]"], tmp_path))


def test_freeze_a_convolutional_source_on_another_game(tmp_path):
    """A MinAtar Breakout run with a conv encoder, frozen onto Asterix (same 10x10x4 image, 5 actions, not 3): the
    encoder counts as torso (transfer.torso_prefixes), is loaded bit for bit and never moves; the head is new."""
    pytest.importorskip("minatar", reason="MinAtar ids need the optional extra .[minatar]")
    tiny = ["data.total_env_steps=600", "data.learning_starts=200", "data.env_steps_per_round=64",
            "callbacks.eval.every_env_steps=300", "callbacks.eval.episodes=2", "logger=jsonl",
            "callbacks.progress=null", "print_config=false", "net.hidden=[32]"]
    source = tmp_path / "source"
    assert train(compose_cfg(["+experiment=minatar_dqn", *tiny], source))["status"] == "completed"
    cfg = compose_cfg(["+experiment=minatar_dqn", *tiny, "task_set.tasks=[MinAtar/Asterix-v1]", "transfer=freeze",
                       f"transfer.checkpoint={source / 'checkpoints' / 'last.ckpt'}", "callbacks.checkpoint=null"],
                      tmp_path / "target")
    model, data, trainer = build(cfg)
    loaded = source_tensors(source, "encoder.")
    assert set(loaded) == {"encoder.convs.0.weight", "encoder.convs.0.bias"}
    trainer.fit(model, datamodule=data)
    current = dict(model.q_net.named_parameters())
    assert all(torch.equal(current[n], t) and not current[n].requires_grad for n, t in loaded.items())
    assert model.q_net.head.out_features == 5

"""GPU checks (skipped without CUDA; run by scripts/gpu_checks.sh on a GPU machine): the driving simulator,
replay and the whole training stack on the device, resume on the device, and single-GPU DDP."""

import pytest
import pytorch_lightning as pl
import torch

from mtdqn.envs.driving import TASKS, DrivingVecEnv
from mtdqn.replay import PrioritizedReplayBuffer, ReplayBuffer
from mtdqn.train import build, train
from mtdqn.types import Transition
from tests.helpers.config import compose_cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LANE = ["+experiment=lane_keep_dqn", "logger=jsonl", "callbacks.progress=null", "data.total_env_steps=8000",
        "data.learning_starts=2000", "callbacks.eval.every_env_steps=4000", "callbacks.eval.episodes=4",
        "callbacks.checkpoint.every_env_steps=4000"]


@pytest.mark.parametrize("task", TASKS)
def test_driving_sim_on_gpu_matches_cpu(task):
    """Same seeds, same actions: the same episodes on both devices (floats to rounding, events exactly)."""
    envs = {d: DrivingVecEnv(task, 64, device=d) for d in ("cpu", "cuda")}
    obs = {d: e.reset(7) for d, e in envs.items()}
    assert torch.allclose(obs["cpu"], obs["cuda"].cpu(), atol=1e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        a = torch.randint(0, envs["cpu"].n_actions, (64,), generator=gen)
        r = {d: e.step(a.to(d)) for d, e in envs.items()}
        assert torch.equal(r["cpu"].terminated, r["cuda"].terminated.cpu())
        assert torch.equal(r["cpu"].truncated, r["cuda"].truncated.cpu())
        assert torch.allclose(r["cpu"].reward, r["cuda"].reward.cpu(), atol=1e-3)
        assert torch.allclose(r["cpu"].next_obs, r["cuda"].next_obs.cpu(), atol=1e-3)


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_replay_lives_and_samples_on_gpu(cls):
    buf = cls(capacity=256, num_envs=4, obs_dim=3, gamma=0.9, device="cuda", seed=0)
    no = torch.zeros(4, dtype=torch.bool, device="cuda")
    for t in range(100):
        obs = torch.full((4, 3), float(t), device="cuda")
        buf.add(Transition(obs, torch.zeros(4, dtype=torch.int64, device="cuda"), torch.ones(4, device="cuda"),
                           obs + 1, no, no))
    b = buf.sample(32, n_batches=2)
    assert b.obs.device.type == "cuda" and b.obs.shape == (2, 32, 3)
    assert torch.equal(b.next_obs[..., 0], b.obs[..., 0] + 1)
    assert buf.rows == 64 and buf.size == 64  # wrapped around on the device


def test_training_on_gpu_keeps_everything_on_the_device_and_resumes(tmp_path):
    first = compose_cfg([*LANE, "trainer=gpu"], tmp_path / "first")
    model, data, trainer = build(first)
    seen: list[torch.device] = []
    trainer.callbacks.append(pl.Callback())
    trainer.callbacks[-1].on_train_batch_end = lambda tr, m, *a: seen.append(next(m.q_net.parameters()).device)
    trainer.fit(model, datamodule=data)  # (Lightning moves the module back to the CPU after fit)
    assert seen and all(d.type == "cuda" for d in seen)
    assert data.buffer.obs.device.type == "cuda" and data.env.device.type == "cuda"
    assert trainer.global_step > 0
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    second = compose_cfg([*LANE, "trainer=gpu", "data.total_env_steps=12000", f"ckpt_path={ckpt}"], tmp_path / "second")
    summary = train(second)
    assert summary["status"] == "completed"
    assert summary["time/updates"] > trainer.global_step


def test_single_gpu_ddp_trains(tmp_path):
    summary = train(compose_cfg([*LANE, "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=1"], tmp_path))
    assert summary["status"] == "completed"
    assert summary["time/updates"] > 0


def test_multitask_on_gpu(tmp_path):
    summary = train(compose_cfg([
        "+experiment=lane_keep_mtl", "trainer=gpu", "logger=jsonl", "callbacks.progress=null",
        "data.total_env_steps=12000", "data.learning_starts=3000", "callbacks.eval.every_env_steps=6000",
        "callbacks.eval.episodes=4", "callbacks.checkpoint.every_env_steps=6000", "model.loss_balance=pcgrad",
    ], tmp_path))
    assert summary["status"] == "completed"
    assert "eval/mean_normalized" in summary


def test_minatar_conv_trains_on_gpu(tmp_path):
    """+experiment=minatar_dqn trainer=gpu: MinAtar's numpy env feeds the device's replay; the conv encoder's
    weights live and train on the GPU."""
    pytest.importorskip("minatar", reason="MinAtar ids need the optional extra .[minatar]")
    cfg = compose_cfg(["+experiment=minatar_dqn", "trainer=gpu", "logger=jsonl", "callbacks.progress=null",
                       "data.total_env_steps=4000", "data.learning_starts=1000", "callbacks.eval.every_env_steps=2000",
                       "callbacks.eval.episodes=4", "callbacks.checkpoint=null"], tmp_path)
    model, data, trainer = build(cfg)
    before = model.q_net.encoder.convs[0].weight.detach().clone()
    trainer.fit(model, datamodule=data)
    weight = model.q_net.encoder.convs[0].weight
    assert weight.is_cuda and trainer.global_step > 0 and not torch.equal(before.to(weight.device), weight)


def test_16_mixed_clips_and_steps_with_true_gradients(tmp_path):
    """trainer.precision=16-mixed (a GradScaler, loss scale 65536): the gradient norm that clipping sees and logs is
    the true one, as under 32-true (it was the scaled one, and every update shrank ~10^4x), single-task and with
    PCGrad's explicit multi-task gradients (which also crashed on a Half/Float mismatch)."""
    import json

    def first_norm(name, *extra):
        train(compose_cfg([*LANE, "trainer=gpu", *extra], tmp_path / name))
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return next(r["train/grad_norm"] for r in rows if "train/grad_norm" in r)

    full, mixed = first_norm("fp32"), first_norm("amp", "trainer.precision=16-mixed")
    assert 0.5 < mixed / full < 2.0, (full, mixed)
    summary = train(compose_cfg([
        "+experiment=lane_keep_mtl", "trainer=gpu", "trainer.precision=16-mixed", "logger=jsonl",
        "callbacks.progress=null", "data.total_env_steps=12000", "data.learning_starts=3000",
        "callbacks.eval.every_env_steps=6000", "callbacks.eval.episodes=4", "callbacks.checkpoint=null",
        "model.loss_balance=pcgrad"], tmp_path / "mtl"))
    assert summary["status"] == "completed"

"""Every optimizer preset trains; DivergenceGuard stops a diverging run and keeps the last good checkpoint."""

import io
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from mtdqn.callbacks import EnvStepCheckpoint, load_checkpoint
from mtdqn.callbacks.guard import DivergenceError, DivergenceGuard
from mtdqn.train import build
from tests.helpers.config import CONF_DIR, compose_cfg, params_vector

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "optimizer").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_optimizer_preset_builds_and_moves_the_q_network(tmp_path, name):
    cfg = compose_cfg([f"optimizer={name}", "debug=smoke", "logger=none", "callbacks=none",
                       "data.total_env_steps=300"], tmp_path)
    model, data, trainer = build(cfg)
    before = params_vector(model.q_net).clone()
    trainer.fit(model, datamodule=data)
    after = params_vector(model.q_net)
    assert trainer.global_step > 0
    assert torch.isfinite(after).all()
    assert not torch.equal(before, after), f"optimizer={name} did not change the Q-network"
    # the optimizer state goes into checkpoints, which are loaded weights-only (no ListConfig betas etc.)
    buf = io.BytesIO()
    torch.save(trainer.optimizers[0].state_dict(), buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)


class PoisonParams(pl.Callback):
    """Write NaN into the Q-network at the start of the first round after `at_env_steps`."""

    def __init__(self, at_env_steps: int) -> None:
        self.at, self.poisoned_at = at_env_steps, None

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        steps = trainer.datamodule.current_env_steps()
        if self.poisoned_at is None and steps >= self.at:
            with torch.no_grad():
                next(pl_module.q_net.parameters()).view(-1)[0] = float("nan")
            self.poisoned_at = steps


def test_guard_stops_on_nan_and_keeps_the_last_good_checkpoint(tmp_path):
    # the guard is listed after the checkpoint and diverges on a checkpoint round (600): it must still run first
    cfg = compose_cfg(["debug=smoke", "logger=none", "callbacks.eval=null", "callbacks.progress=null",
                       "callbacks.checkpoint.every_env_steps=200",
                       "callbacks.guard._target_=mtdqn.callbacks.guard.DivergenceGuard"], tmp_path)
    model, data, trainer = build(cfg)
    poison = PoisonParams(at_env_steps=500)
    trainer.callbacks.append(poison)
    with pytest.raises(DivergenceError) as info:
        trainer.fit(model, datamodule=data)
    ckpt = next(cb for cb in trainer.callbacks if isinstance(cb, EnvStepCheckpoint)).path
    message = str(info.value)
    assert poison.poisoned_at == 500
    for part in ("train/td_loss=nan", "env step 600", f"update {trainer.global_step}", str(ckpt),
                 "left intact", "optimizer.lr", "target_update_period"):
        assert part in message, (part, message)
    assert "max_grad_norm" not in message and "huber" not in message  # clipping and Huber are on: no advice to use them
    assert trainer.mtdqn_diverged
    saved = load_checkpoint(ckpt)
    assert saved["RLDataModule"]["env_steps"] == 400 < poison.poisoned_at
    q_params = {k: v for k, v in saved["state_dict"].items() if k.startswith("q_net.")}
    assert q_params and all(torch.isfinite(v).all() for v in q_params.values())


def test_a_diverged_round_is_not_evaluated(tmp_path):
    """The guard runs before the evaluation of the round it stops: an evaluation of the diverged network was logged
    as the run's last (compare.py --failed last then scored it as the last evaluation before the failure)."""
    import json

    cfg = compose_cfg(["debug=smoke", "logger=jsonl", "callbacks.progress=null", "callbacks.eval.every_env_steps=100",
                       "callbacks.guard._target_=mtdqn.callbacks.guard.DivergenceGuard"], tmp_path)
    model, data, trainer = build(cfg)
    trainer.callbacks.append(PoisonParams(at_env_steps=500))
    with pytest.raises(DivergenceError):
        trainer.fit(model, datamodule=data)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(r["env_steps"] for r in rows if "eval/CartPole-v1/return" in r) == 500


def fake_trainer(td_loss: float, q_mean: float) -> SimpleNamespace:
    return SimpleNamespace(
        callback_metrics={"train/td_loss": torch.tensor(td_loss), "train/q_mean": torch.tensor(q_mean)},
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision),
        datamodule=SimpleNamespace(current_env_steps=lambda: 1234),
        global_step=56, callbacks=[],
    )


def test_guard_fires_when_q_mean_explodes():
    guard, q_net = DivergenceGuard(max_abs_q=1e3), nn.Linear(2, 2)
    ok = fake_trainer(0.5, -999.0)
    guard.on_train_batch_end(ok, SimpleNamespace(q_net=q_net), None, None, 0)
    assert not hasattr(ok, "mtdqn_diverged")
    exploded = fake_trainer(0.5, -2e3)
    with pytest.raises(DivergenceError, match=r"\|train/q_mean\|=2000 > max_abs_q=1000 at env step 1234, update 56"):
        guard.on_train_batch_end(exploded, SimpleNamespace(q_net=q_net), None, None, 0)
    assert exploded.mtdqn_diverged


def test_guard_fires_when_the_td_loss_passes_its_optional_bound():
    """A loss that explodes (2e9) while |mean Q| stays under max_abs_q went on; max_td_loss stops it (no default)."""
    q_net = nn.Linear(2, 2)
    exploding = fake_trainer(2e9, 5e4)
    DivergenceGuard().on_train_batch_end(exploding, SimpleNamespace(q_net=q_net), None, None, 0)  # unbounded
    assert not hasattr(exploding, "mtdqn_diverged")
    with pytest.raises(DivergenceError, match=r"train/td_loss=2e\+09 > max_td_loss=1e\+06 at env step 1234"):
        DivergenceGuard(max_td_loss=1e6).on_train_batch_end(exploding, SimpleNamespace(q_net=q_net), None, None, 0)
    with pytest.raises(ValueError, match=r"callbacks.guard.max_td_loss=0 must be > 0"):
        DivergenceGuard(max_td_loss=0)


def test_guard_names_the_non_finite_parameter_every_n_rounds():
    guard, q_net = DivergenceGuard(check_params_every=2), nn.Linear(2, 2)
    with torch.no_grad():
        q_net.bias[1] = float("inf")
    trainer, module = fake_trainer(0.5, 1.0), SimpleNamespace(q_net=q_net)
    guard.on_train_batch_end(trainer, module, None, None, 0)  # round 1: parameters not checked
    with pytest.raises(DivergenceError, match=r"q_net\.bias has 1/2 non-finite entries \(e\.g\. inf\)"):
        guard.on_train_batch_end(trainer, module, None, None, 1)


@pytest.mark.parametrize("scheduler", ["linear", "cosine"])
def test_lr_schedule_decays_the_learning_rate_over_env_steps(tmp_path, scheduler):
    import json

    from mtdqn.train import train

    cfg = compose_cfg(["debug=smoke", "logger=jsonl", "callbacks.progress=null", f"scheduler={scheduler}",
                       "scheduler.final_fraction=0.0", "optimizer.lr=0.001"], tmp_path)
    train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [(r["env_steps"], r["train/lr"]) for r in rows if "train/lr" in r]
    assert len(lrs) >= 3
    steps, values = zip(*lrs, strict=True)
    assert all(a > b for a, b in zip(values, values[1:], strict=False))  # strictly decreasing with env steps
    factor = 1 - steps[-1] / 600 if scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * steps[-1] / 600))
    assert values[-1] == pytest.approx(0.001 * factor, rel=1e-5)


def test_divergence_advice_names_only_the_stabilizers_the_run_has_off():
    from types import SimpleNamespace

    from mtdqn.callbacks.guard import advice

    assert advice(SimpleNamespace(max_grad_norm=10.0, loss_kind="huber")) == (
        "Try a lower learning rate (optimizer.lr) or a larger model.target_update_period.")
    assert advice(SimpleNamespace(max_grad_norm=10.0, loss_kind="huber", tau=0.005)) == (
        "Try a lower learning rate (optimizer.lr) or a smaller model.tau (now 0.005).")  # Polyak: tau, not the period
    text = advice(SimpleNamespace(max_grad_norm=0.0, loss_kind="mse"))
    assert "gradient clipping (model.max_grad_norm, e.g. 10)" in text and "the Huber loss (model.loss=huber)" in text

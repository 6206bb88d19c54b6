"""Gradient clipping and explicit (PCGrad) gradients under precision=16-mixed, whose GradScaler multiplies the loss
by its scale: the optimizer must step with the true gradient, clipped by its true norm. On the CPU Lightning maps
16-mixed to bf16-mixed (no scaler), so a GPU run is emulated with Lightning's own 16-mixed MixedPrecision plugin
and a CPU GradScaler."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from mtdqn.losses.multitask import flat_grads, pcgrad, split_flat
from mtdqn.train import build
from tests.helpers.config import compose_cfg

SCALE = 2.0**16  # GradScaler's default initial loss scale


def fit_16_mixed(overrides: list[str], tmp_path, spy) -> tuple[list[list[torch.Tensor]], list, torch.amp.GradScaler]:
    """Train the config 300 env steps (two rounds of updates) under emulated 16-mixed; `spy(model, scaler, true)`
    appends the true gradients of each update to `true`. Returns (true gradients, the gradients each optimizer step
    used, the scaler)."""
    cfg = compose_cfg(["debug=smoke", "logger=none", "callbacks=none", "data.total_env_steps=300", *overrides],
                      tmp_path)
    model, data, trainer0 = build(cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0, enable_progress_bar=False,
                         callbacks=[c for c in trainer0.callbacks if type(c).__name__ == "EnvStepBudget"],
                         plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    true: list[list[torch.Tensor]] = []
    used: list[list[torch.Tensor]] = []
    spy(model, scaler, true)
    configure = model.configure_optimizers

    def with_hooks():
        opt = configure()
        before: list[torch.Tensor] = []

        def pre(o, args, kwargs):
            before[:] = [p.detach().clone() for p in model._trainable]

        def post(o, args, kwargs):  # the gradient the step applied: SGD without momentum, or Adam's first moment
            if isinstance(o, torch.optim.SGD):
                lr = o.param_groups[0]["lr"]
                used.append([(b - p.detach()) / lr for b, p in zip(before, model._trainable, strict=True)])
            elif not used:  # after Adam's first step exp_avg = (1 - beta1) g
                beta1 = o.param_groups[0]["betas"][0]
                used.append([o.state[p]["exp_avg"] / (1 - beta1) for p in model._trainable])

        opt.register_step_pre_hook(pre)
        opt.register_step_post_hook(post)
        return opt

    model.configure_optimizers = with_hooks
    trainer.fit(model, datamodule=data)
    assert str(trainer.precision) == "16-mixed" and model._lean is None and len(true) == trainer.global_step > 0
    assert scaler.get_scale() == SCALE  # the scaler was live and skipped no step (true and used stay aligned)
    return true, used, scaler


def spy_backward(model, scaler, true) -> None:
    """Records manual_backward's gradients divided by the loss scale."""
    backward = model.manual_backward

    def spied(loss, *args, **kwargs):
        backward(loss, *args, **kwargs)
        true.append([p.grad.detach() / scaler.get_scale() for p in model._trainable])

    model.manual_backward = spied


def spy_pcgrad(model, scaler, true) -> None:
    """Records PCGrad's combined gradient of the unscaled per-task losses, with the permutations the module then
    draws (the global RNG is rewound)."""
    step = model.pcgrad_step

    def spied(per_task):
        rng = torch.get_rng_state()
        grads = [flat_grads(per_task[t], model._trainable, retain_graph=True) for t in range(len(model.tasks))]
        true.append([g.clone() for g in split_flat(pcgrad(grads), model._trainable)])
        torch.set_rng_state(rng)
        step(per_task)

    model.pcgrad_step = spied


def clipped(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    return [g * min(1.0, max_norm / (float(norm) + 1e-6)) for g in grads]


def assert_steps_used_clipped_true_gradients(true, used, max_norm: float) -> None:
    norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in true[0]])))
    assert (norm < max_norm) == (max_norm == 100.0)  # the parameters below test each side of the threshold
    for t, u in zip(true, used, strict=False):  # Adam: its first step only
        for a, b in zip(clipped(t, max_norm), u, strict=True):
            torch.testing.assert_close(b, a, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize(("optimizer", "max_norm"), [("sgd", 100.0), ("sgd", 0.05), ("adam", 0.05)])
def test_dqn_clips_the_true_gradient_under_16_mixed(tmp_path, optimizer, max_norm):
    """Below max_grad_norm the step uses the true gradient, above it the true gradient scaled to max_grad_norm; the
    clip used to see gradients still multiplied by the loss scale (every update ~10^4x too small). SGD is unscaled
    by Lightning before the hook that clips; fused Adam unscales in its own step, so the hook unscales it."""
    extra = ["optimizer.momentum=0"] if optimizer == "sgd" else []
    true, used, _ = fit_16_mixed([f"optimizer={optimizer}", *extra, f"model.max_grad_norm={max_norm}"], tmp_path,
                                 spy_backward)
    assert len(used) == (len(true) if optimizer == "sgd" else 1)
    assert_steps_used_clipped_true_gradients(true, used, max_norm)


@pytest.mark.parametrize(("optimizer", "max_norm"), [("sgd", 100.0), ("adam", 0.05)])
def test_pcgrad_steps_with_the_true_projected_gradient_under_16_mixed(tmp_path, optimizer, max_norm):
    """PCGrad's explicit gradients reach the scaler-wrapped step in loss-scale units: it used to assign true
    gradients that the step then divided by the loss scale, after a Half/Float dtype error in the projection."""
    extra = ["optimizer.momentum=0"] if optimizer == "sgd" else []
    true, used, _ = fit_16_mixed(["model=mtdqn", "net=multihead", "task_set=driving", "model.loss_balance=pcgrad",
                                  f"optimizer={optimizer}", *extra, f"model.max_grad_norm={max_norm}"], tmp_path,
                                 spy_pcgrad)
    assert len(used) == (len(true) if optimizer == "sgd" else 1)
    assert_steps_used_clipped_true_gradients(true, used, max_norm)

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

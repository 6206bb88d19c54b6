"""Elastic weight consolidation (Kirkpatrick et al. 2017) as pure functions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def ewc_penalty(params: Sequence[Tensor], anchors: Sequence[Tensor], fisher: Sequence[Tensor], lam: float) -> Tensor:
    """(lam / 2) * sum_i F_i (theta_i - theta*_i)^2 over matching lists of tensors (0 at the anchor).

    `anchors` (theta*) and `fisher` (F, the diagonal Fisher information, >= 0) are constants; the penalty's
    gradient reaches `params` only.
    """
    if not (len(params) == len(anchors) == len(fisher)):
        raise ValueError(f"ewc_penalty: {len(params)} params, {len(anchors)} anchors, {len(fisher)} Fisher tensors")
    if lam < 0:
        raise ValueError(f"EWC lambda={lam} must be >= 0")
    if not params:
        return torch.zeros(())
    total = sum(((p - a).square() * f).sum() for p, a, f in zip(params, anchors, fisher, strict=True))
    return 0.5 * lam * total


def normalize_fisher(fisher: Sequence[Tensor], kind: str = "mean") -> list[Tensor]:
    """`mean`: divide every entry by the mean Fisher over all entries (lambda then weighs a mean squared
    deviation, whatever the loss scale); `none`: unchanged."""
    if kind == "none":
        return list(fisher)
    if kind != "mean":
        raise ValueError(f"transfer.ewc.normalize={kind!r} is not one of ['mean', 'none']")
    n = sum(f.numel() for f in fisher)
    mean = sum(float(f.sum()) for f in fisher) / max(n, 1)
    return [f / mean if mean > 0 else f.clone() for f in fisher]

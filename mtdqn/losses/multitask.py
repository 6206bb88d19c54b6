"""Multi-task loss math as pure functions: per-task loss weighting, gradient surgery (PCGrad), conflict diagnostics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

_EPS = 1e-12


def flat_grads(loss: Tensor, params: Sequence[nn.Parameter], retain_graph: bool = True) -> Tensor:
    """d loss / d params flattened into one (P,) vector; parameters the loss does not reach give zeros."""
    params = list(params)
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
    )


def split_flat(flat: Tensor, params: Sequence[nn.Parameter]) -> list[Tensor]:
    """A flat (P,) vector cut back into one view per parameter, shaped like it (the inverse of flattening)."""
    total = sum(p.numel() for p in params)
    if flat.numel() != total:
        raise ValueError(f"flat gradient has {flat.numel()} entries, the parameters have {total}")
    out, offset = [], 0
    for p in params:
        out.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


@torch.no_grad()
def assign_flat_grad(params: Iterable[nn.Parameter], flat: Tensor, accumulate: bool = False) -> None:
    """Write a flat (P,) gradient back into `p.grad` of each parameter (added to it when `accumulate`)."""
    params = list(params)
    for p, chunk in zip(params, split_flat(flat, params), strict=True):
        chunk = chunk.to(p.dtype)
        if accumulate and p.grad is not None:
            p.grad.add_(chunk)
        else:
            p.grad = chunk.clone()


def pcgrad(
    grads: Sequence[Tensor] | Tensor, generator: torch.Generator | None = None, order: Sequence[int] | None = None
) -> Tensor:
    """PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"): sum of conflict-projected task gradients.

    For each task i, for each other task j (in `order`, else a random permutation drawn from `generator`):
    if g_i^PC . g_j < 0, g_i^PC <- g_i^PC - (g_i^PC . g_j / |g_j|^2) g_j. Returns sum_i g_i^PC, shape (P,).

    `grads`: T gradients of P entries, a sequence or a (T, P) tensor. Every g_i^PC stays g_i minus a combination of
    the task gradients, g_i - sum_k c_ik g_k, so each dot product it needs is a combination of the Gram matrix's
    entries (g_i^PC . g_j = G_ij - sum_k c_ik G_kj): the projections run on T x T numbers, and the P-sized work is
    one Gram product and one weighted sum (instead of 2 T (T - 1) passes over P). Branch-free (the projection
    coefficient is clamped at 0), so it never syncs the device.

    Computed in float32 outside autocast: called inside a mixed-precision forward context (precision=16-mixed),
    the Gram product ran in fp16 (a dtype error against the float32 coefficients, and loss-scaled gradients'
    squared norms overflow fp16). Linear in the gradients' scale: pcgrad(s g) = s pcgrad(g).
    """
    g = grads if isinstance(grads, Tensor) else torch.stack(list(grads))  # (T, P)
    if torch.is_autocast_enabled(g.device.type):
        with torch.autocast(g.device.type, enabled=False):
            return pcgrad(g.float(), generator, order).to(g.dtype)
    n_tasks = g.shape[0]
    gram = g @ g.T
    sq_norms = gram.diagonal().clamp_min(_EPS)
    coef = g.new_zeros(n_tasks, n_tasks)  # coef[i, k]: how much of g_k task i's projected gradient has lost
    for i in range(n_tasks):
        js = list(order) if order is not None else torch.randperm(n_tasks, generator=generator).tolist()
        for j in js:
            if j == i:
                continue
            dot = gram[i, j] - torch.dot(coef[i], gram[:, j])
            coef[i, j] = dot.clamp(max=0.0) / sq_norms[j]  # 0 unless the two conflict
    # sum_i g_i^PC = sum_k (1 - sum_i coef[i, k]) g_k
    return (1.0 - coef.sum(dim=0)) @ g


def grad_cosine_matrix(grads: Sequence[Tensor]) -> Tensor:
    """Cosine similarity between task gradients, (T, T); a zero gradient has cosine 0 with everything. In float32
    outside autocast, as `pcgrad`."""
    g = torch.stack(list(grads))
    if torch.is_autocast_enabled(g.device.type):
        with torch.autocast(g.device.type, enabled=False):
            return grad_cosine_matrix(g.float())
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(_EPS)
    return unit @ unit.T


def task_weighted_loss(
    per_sample_loss: Tensor, task_ids: Tensor, weights: Tensor | None, n_tasks: int
) -> tuple[Tensor, Tensor]:
    """sum_t w_t * mean(loss of task t's samples); returns (total, per-task means (T,)), absent tasks count 0.

    `weights=None` is the plain sum over tasks (all ones). Per-sample importance weights belong in
    `per_sample_loss` already.
    """
    loss, ids = per_sample_loss.reshape(-1), task_ids.reshape(-1)
    sums = loss.new_zeros(n_tasks).index_add(0, ids, loss)
    counts = torch.bincount(ids, minlength=n_tasks).to(loss.dtype)
    per_task = sums / counts.clamp_min(1.0)
    if weights is None:
        return per_task.sum(), per_task
    return (weights.to(loss.dtype) * per_task).sum(), per_task

"""Explicit TD-loss gradients for a plain MLP Q-network: the hot loop's update without autograd.

For `QNetwork` with a (Linear -> ReLU)* torso and a linear head (no layer norm, dueling head or observation
normalizer), optionally behind a one-convolution encoder (the MinAtar paper's network), the forward pass, the
Huber / MSE TD loss and its gradients with respect to every weight and bias are a handful of `addmm` / `mm` calls
written out by hand (the convolution as one product over its input patches: `PatchConv`). Autograd records and
replays ~40 small ops per update whose Python and dispatch cost dominates at DQN's batch sizes on a CPU (the matrix
products are about a fifth of an update: `scripts/bench_dqn.py`); the explicit form does the same arithmetic with
about half the ops and no graph.
Same math as `td_loss` + `torch.autograd.grad` (tested to float32 rounding in tests/unit/test_lean_step.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.models.lean_step import no_grad
from mtdqn.nets.multitask import invalid_fill

# grad where the ReLU's output is > 0, else 0: one kernel instead of a comparison and a multiply
_relu_backward = torch.ops.aten.threshold_backward.default

# Rows per forward when a whole round's next observations go through the target network at once: a 256-wide
# layer's activations for 2048 rows (2 MB) stay in cache, for the round's ~50k rows they do not. Measured on this
# machine (1 thread, 23-256-256-3x5 multi-head net, 49,152 rows): module forward 0.24 s, one addmm chain 0.16 s,
# 2048-row chunks 0.10 s.
ROWS_PER_CHUNK = 2048


def chunked_rows(fn, obs: Tensor, *rest: Tensor) -> Tensor:
    """fn over (..., D) inputs flattened to rows, in ROWS_PER_CHUNK-row chunks; output reshaped to (..., A)."""
    lead = obs.shape[:-1]
    flat = [obs.reshape(-1, obs.shape[-1]), *(r.reshape(-1) for r in rest)]
    if flat[0].shape[0] <= ROWS_PER_CHUNK:
        out = fn(*flat)
    else:
        out = torch.cat([fn(*parts) for parts in zip(*(f.split(ROWS_PER_CHUNK) for f in flat), strict=True)])
    return out.reshape(*lead, out.shape[-1])


class TransposedWeights:
    """W^T of some Linear layers as cached views: they follow the in-place optimizer updates and checkpoint loads,
    and are rebuilt if a layer's weight Parameter was replaced. Call it to get the list."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.layers = layers
        self._weights: list[Tensor] = []
        self._wt: list[Tensor] = []

    def __call__(self) -> list[Tensor]:
        if len(self._weights) != len(self.layers) or any(
                lin.weight is not w for lin, w in zip(self.layers, self._weights, strict=True)):
            self._weights = [lin.weight for lin in self.layers]
            self._wt = [w.t() for w in self._weights]
        return self._wt


def relu_torso_names(torso: nn.Sequential) -> list[str] | None:
    """Parameter names `torso.<i>.weight/bias` of a (Linear, ReLU)* torso in order; None for any other torso."""
    layers = list(torso)
    pairs = len(layers) % 2 == 0 and all(
        isinstance(a, nn.Linear) and type(b) is nn.ReLU for a, b in zip(layers[::2], layers[1::2], strict=True))
    return [f"torso.{2 * i}.{k}" for i in range(len(layers) // 2) for k in ("weight", "bias")] if pairs else None


class PatchConv:
    """One unpadded Conv2d -> ReLU of a ConvEncoder, on the encoder's flat observations, with its weight gradients by
    hand: the convolution is one product of the input's k x k patches (gathered by `as_strided`, one copy) with the
    kernel, so its backward is one `mm` more, with no autograd graph and no input gradient (it reads the observation).
    Outputs come in Conv2d's (channels, height, width) order, flattened, as the encoder's."""

    def __init__(self, encoder: nn.Module) -> None:
        if not self.supports(encoder):
            raise ValueError(f"PatchConv needs a ConvEncoder of one Conv2d -> ReLU, got {encoder}")
        self.conv: nn.Conv2d = encoder.convs[0]
        c, h, w = encoder.image_shape
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        self.channels_last = bool(encoder.channels_last)
        self.out_hw = ((h - k) // s + 1, (w - k) // s + 1)
        # (Ho, Wo, then each patch's elements in the flat observation's order) and their strides in it
        if self.channels_last:  # (H, W, C)
            self.patch_shape, self.patch_strides = (*self.out_hw, k, k, c), (s * w * c, s * c, w * c, c, 1)
        else:  # (C, H, W) or (H, W)
            self.patch_shape, self.patch_strides = (*self.out_hw, c, k, k), (s * w, s, h * w, w, 1)
        self.in_dim, self.patch_dim = c * h * w, c * k * k

    @staticmethod
    def supports(encoder: nn.Module | None) -> bool:
        """True for a ConvEncoder whose layers are exactly one unpadded, undilated, ungrouped Conv2d and a ReLU."""
        from mtdqn.nets.q import ConvEncoder

        if type(encoder) is not ConvEncoder or len(encoder.convs) != 2:
            return False
        conv, act = encoder.convs
        return (type(conv) is nn.Conv2d and type(act) is nn.ReLU and conv.padding == (0, 0) and conv.dilation == (1, 1)
                and conv.groups == 1 and conv.bias is not None and conv.padding_mode == "zeros")

    def _kernel(self) -> Tensor:
        """(out, patch_dim): the weight with each row in the patches' element order."""
        w = self.conv.weight
        return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1) if self.channels_last else w.reshape(w.shape[0], -1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(features (B, out * Ho * Wo) in Conv2d's order, the patches (B * Ho * Wo, patch_dim) and the ReLU's
        output per position (B * Ho * Wo, out)) for the backward."""
        # a task's first obs_dim columns of a zero-padded batch are read in place (their rows' stride is the batch's)
        if obs.dim() != 2 or obs.stride(1) != 1 or obs.shape[1] != self.in_dim:
            obs = obs[:, :self.in_dim].contiguous()
        n = obs.shape[0]
        patches = obs.as_strided((n, *self.patch_shape), (obs.stride(0), *self.patch_strides)).reshape(-1, self.patch_dim)
        y = torch.addmm(self.conv.bias, patches, self._kernel().t()).clamp_(min=0.0)
        features = y.view(n, -1, y.shape[1]).transpose(1, 2).reshape(n, -1)
        return features, patches, y

    def grads(self, g: Tensor, patches: Tensor, y: Tensor, split: list | None = None) -> tuple[Tensor, Tensor]:
        """(weight, bias) gradients from d loss / d features (B, out * Ho * Wo); with `split` (each task's rows of
        the batch, None for an absent task: `_MultiTaskExplicit._rows`) one per task, (T, *weight.shape) and
        (T, out), each from its task's samples alone."""
        n, out = g.shape[0], y.shape[1]
        g = _relu_backward(g.view(n, out, -1).transpose(1, 2).reshape(-1, out), y, 0.0)
        if split is None:
            return self._weight(torch.mm(g.t(), patches)), g.sum(0)
        positions = g.shape[0] // max(n, 1)
        dw = g.new_zeros(len(split), *self.conv.weight.shape)
        db = g.new_zeros(len(split), out)
        for t, r in enumerate(split):
            if r is None:
                continue
            if isinstance(r, slice):
                r = slice(r.start * positions, r.stop * positions)
                g_t, p_t = g[r], patches[r]
            else:  # sample rows -> their positions' rows
                r = (r.unsqueeze(1) * positions + torch.arange(positions, device=r.device)).reshape(-1)
                g_t, p_t = g.index_select(0, r), patches.index_select(0, r)
            dw[t] = self._weight(torch.mm(g_t.t(), p_t))
            torch.sum(g_t, 0, out=db[t])
        return dw, db

    def _weight(self, dw: Tensor) -> Tensor:
        """A (out, patch_dim) gradient in the weight's (out, in, k, k) layout."""
        w = self.conv.weight
        if self.channels_last:
            dw = dw.view(w.shape[0], w.shape[2], w.shape[3], w.shape[1]).permute(0, 3, 1, 2).contiguous()
        return dw.view_as(w)


class ExplicitMLPGrads:
    """Forward + TD loss + gradients of a plain ReLU MLP Q-network (optionally behind a one-convolution encoder),
    parameters in `q_net.parameters()` order."""

    def __init__(self, q_net: nn.Module) -> None:
        if not self.supports(q_net):
            raise ValueError(f"ExplicitMLPGrads needs a plain ReLU MLP QNetwork, got {q_net}")
        self.linears: list[nn.Linear] = [m for m in q_net.torso if isinstance(m, nn.Linear)] + [q_net.head]
        self.transposed = TransposedWeights(self.linears)
        self.encoder = q_net.encoder
        self.conv = PatchConv(q_net.encoder) if q_net.encoder is not None else None

    @staticmethod
    def supports(q_net: nn.Module) -> bool:
        """True for QNetwork(torso = (Linear, ReLU)*, head = Linear, no observation normalizer), with no encoder or a
        one-convolution one (`PatchConv.supports`)."""
        from mtdqn.nets.q import QNetwork

        if type(q_net) is not QNetwork or getattr(q_net, "obs_norm", None) is not None:
            return False
        encoder = getattr(q_net, "encoder", None)
        if encoder is not None and not PatchConv.supports(encoder):
            return False
        conv = ["encoder.convs.0.weight", "encoder.convs.0.bias"] if encoder is not None else []
        torso = relu_torso_names(q_net.torso)
        names = [n for n, _ in q_net.named_parameters()]
        return torso is not None and type(q_net.head) is nn.Linear and names == [
            *conv, *torso, "head.weight", "head.bias"]

    @no_grad
    def q_values(self, obs: Tensor) -> Tensor:
        """Q(obs, .) through the addmm chain that nn.Linear uses (bit-identical to `q_net(obs)`), without
        nn.Module call overhead (a convolutional encoder runs as the module does: Conv2d's kernel)."""
        wt = self.transposed()
        h = obs if self.encoder is None else self.encoder(obs)
        for lin, w in zip(self.linears[:-1], wt, strict=False):
            h = torch.addmm(lin.bias, h, w).clamp_(min=0.0)
        return torch.addmm(self.linears[-1].bias, h, wt[-1])

    def greedy(self, obs: Tensor) -> Tensor:
        """argmax_a Q(obs, a): the collector calls this once per env step."""
        return self.q_values(obs).argmax(dim=-1)

    def batched_q_values(self, obs: Tensor, task_ids: Tensor | None = None) -> Tensor:
        """Q(obs, .) for obs of any leading shape (a round's (G, B, D) next observations), in cache-sized
        chunks; `task_ids` is unused (one task)."""
        return chunked_rows(self.q_values, obs)

    @no_grad
    def loss_and_grads(
        self, obs: Tensor, actions: Tensor, target: Tensor, weights: Tensor | None, kind: str,
        need_td_abs: bool = True,
    ) -> tuple[Tensor, Tensor | None, Tensor, list[Tensor]]:
        """(loss, |td error| per sample or None when not `need_td_abs`, mean Q of the taken actions,
        [dW1, db1, ..., dW_head, db_head]). Each op here runs once per update, so the loss uses torch's fused
        loss kernels and the ReLU backward one `threshold_backward` call."""
        wt = self.transposed()
        conv_cache = None
        if self.conv is not None:
            obs, *conv_cache = self.conv.forward(obs)
        acts = [obs]
        h = obs
        for lin, w in zip(self.linears[:-1], wt, strict=False):
            h = torch.addmm(lin.bias, h, w).clamp_(min=0.0)
            acts.append(h)
        q = torch.addmm(self.linears[-1].bias, h, wt[-1])
        idx = actions.unsqueeze(1)
        q_taken = q.gather(1, idx).squeeze(1)
        n = q_taken.shape[0]
        if kind == "huber":
            if weights is None:
                loss = F.huber_loss(q_taken, target)
            else:
                loss = F.huber_loss(q_taken, target, reduction="none").mul_(weights).mean()
        else:  # mse
            if weights is None:
                loss = F.mse_loss(q_taken, target)
            else:
                loss = F.mse_loss(q_taken, target, reduction="none").mul_(weights).mean()
        diff = q_taken - target
        td_abs = diff.abs() if need_td_abs else None
        if kind == "huber":
            dloss = diff.clamp_(-1.0, 1.0)  # d huber / d diff
        else:
            dloss = diff.mul_(2.0)  # d diff^2 / d diff
        if weights is not None:
            dloss.mul_(weights)
        gq = torch.zeros_like(q).scatter_(1, idx, dloss.div_(n).unsqueeze(1))
        grads: list[Tensor] = []
        g = gq
        for layer in range(len(self.linears) - 1, -1, -1):
            lin, inp = self.linears[layer], acts[layer]
            grads.append(g.sum(0))  # bias
            grads.append(torch.mm(g.t(), inp))  # weight
            if layer > 0:  # through the ReLU of the layer below: zero where its output was clamped
                g = _relu_backward(torch.mm(g, lin.weight), inp, 0.0)
        if conv_cache is not None:  # on into the convolution (PatchConv.grads applies its ReLU)
            dw, db = self.conv.grads(torch.mm(g, self.linears[0].weight), *conv_cache)
            grads += [db, dw]
        grads.reverse()
        return loss, td_abs, q_taken.mean(), grads


def task_loss_terms(
    q_taken: Tensor, target: Tensor, task_ids: Tensor, n_tasks: int, weights: Tensor | None,
    task_weights: Tensor | None, kind: str, need_td_abs: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """`task_weighted_loss` of the (importance-weighted) Huber / MSE TD errors and its derivative by hand: (total,
    per-task mean losses (T,), |td| or None, per-task mean Q of the taken actions (T,), d total / d q_taken (B,))."""
    loss_fn = F.huber_loss if kind == "huber" else F.mse_loss
    per_sample = loss_fn(q_taken, target, reduction="none")
    if weights is not None:
        per_sample = per_sample.mul_(weights)
    counts = torch.bincount(task_ids, minlength=n_tasks).to(per_sample.dtype).clamp_(min=1.0)
    per_task = per_sample.new_zeros(n_tasks).index_add_(0, task_ids, per_sample).div_(counts)
    q_per_task = per_sample.new_zeros(n_tasks).index_add_(0, task_ids, q_taken).div_(counts)
    scale = counts.reciprocal() if task_weights is None else task_weights.to(counts.dtype) / counts
    total = per_task.sum() if task_weights is None else (task_weights.to(per_task.dtype) * per_task).sum()
    diff = q_taken - target
    td_abs = diff.abs() if need_td_abs else None
    dloss = diff.clamp_(-1.0, 1.0) if kind == "huber" else diff.mul_(2.0)
    if weights is not None:
        dloss.mul_(weights)
    dloss.mul_(scale[task_ids])  # d total / d q_taken: w_t / n_t per sample of task t
    return total, per_task, td_abs, q_per_task, dloss


def task_masks(task_ids: Tensor, n_tasks: int) -> Tensor:
    """(T, B) bool: row t marks task t's samples."""
    return task_ids.unsqueeze(0) == torch.arange(n_tasks, device=task_ids.device).unsqueeze(1)


class _MultiTaskExplicit(ABC):
    """What the multi-task classes below share: the loss and its gradients from their `_taken` (forward to the taken
    actions' Q, with what the backward needs) and `_backward` (gradients in `q_net.parameters()` order from
    d loss / d q_taken; with `per_task`, each task's gradient of its own samples' loss, stacked)."""

    n_tasks: int

    @abstractmethod
    def _taken(self, obs: Tensor, actions: Tensor, task_ids: Tensor) -> tuple[tuple, Tensor]:
        """(what `_backward` needs, Q of the taken actions (B,))."""

    @abstractmethod
    def _backward(self, cache: tuple, dloss: Tensor, per_task: bool = False) -> list[Tensor]:
        """Gradients in `q_net.parameters()` order from d loss / d q_taken (B,); `per_task`: each (T, *shape), row t
        the gradient of task t's samples' terms alone."""

    def _rows(self, task_ids: Tensor) -> tuple[list[slice | Tensor | None], bool]:
        """Each task's rows of the batch (None for an absent task) and whether they are slices (a batch grouped by
        task, as replay batches and rollouts come) rather than index lists."""
        counts = torch.bincount(task_ids, minlength=self.n_tasks).tolist()
        if bool((task_ids[1:] >= task_ids[:-1]).all()):
            rows, start = [], 0
            for n in counts:
                rows.append(slice(start, start + n) if n else None)
                start += n
            return rows, True
        return [(task_ids == t).nonzero().squeeze(1) if n else None for t, n in enumerate(counts)], False

    @staticmethod
    def _take(x: Tensor, rows: slice | Tensor) -> Tensor:
        return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)

    def _task_split(self, task_ids: Tensor) -> list | Tensor:
        """How per-task weight gradients split the batch: on the CPU each task's rows (`_rows`: a product over the
        task's rows only); elsewhere a (T, B) bool mask (products over the whole batch, masked: T times the weight
        gradients' FLOPs, but no host synchronization, which reading the tasks' row counts would need)."""
        if task_ids.device.type == "cpu":
            return self._rows(task_ids)[0]
        return task_masks(task_ids, self.n_tasks)

    def _linear_grads(self, g: Tensor, inp: Tensor, split: list | Tensor | None) -> tuple[Tensor, Tensor]:
        """(weight, bias) gradients of a Linear whose output gradient is g (B, out) and input inp (B, in): summed over
        the batch, or with `split` (`_task_split`) one per task, (T, out, in) and (T, out), from its samples only."""
        if split is None:
            return torch.mm(g.t(), inp), g.sum(0)
        if isinstance(split, Tensor):  # (T, B) mask
            mask = split.to(g.dtype)
            masked = g.unsqueeze(0) * mask.unsqueeze(2)  # (T, B, out)
            return torch.matmul(masked.transpose(1, 2), inp), torch.mm(mask, g)
        w = g.new_zeros(len(split), g.shape[1], inp.shape[1])
        b = g.new_zeros(len(split), g.shape[1])
        for t, r in enumerate(split):
            if r is not None:
                g_t = self._take(g, r)
                torch.mm(g_t.t(), self._take(inp, r), out=w[t])
                torch.sum(g_t, 0, out=b[t])
        return w, b

    @staticmethod
    def _own_row(grad: Tensor, t: int, n_tasks: int) -> Tensor:
        """(T, *grad.shape): `grad` in row t, zeros elsewhere (a parameter only task t's samples reach)."""
        out = grad.new_zeros(n_tasks, *grad.shape)
        out[t] = grad
        return out

    @no_grad
    def loss_and_grads(
        self, obs: Tensor, actions: Tensor, task_ids: Tensor, target: Tensor, weights: Tensor | None,
        task_weights: Tensor | None, kind: str, need_td_abs: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor, list[Tensor]]:
        """(total loss, per-task mean losses (T,), |td| per sample or None, per-task mean Q of the taken actions
        (T,), gradients in `q_net.parameters()` order); a task absent from the batch has mean loss and Q 0 and
        exactly zero gradients in its own parameters. `task_weights=None` is the plain sum over tasks."""
        cache, q_taken = self._taken(obs, actions, task_ids)
        total, per_task, td_abs, q_per_task, dloss = task_loss_terms(
            q_taken, target, task_ids, self.n_tasks, weights, task_weights, kind, need_td_abs)
        return total, per_task, td_abs, q_per_task, self._backward(cache, dloss)

    @no_grad
    def task_loss_and_grads(
        self, obs: Tensor, actions: Tensor, task_ids: Tensor, target: Tensor, weights: Tensor | None, kind: str,
        need_td_abs: bool = True,
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Each task's gradient on its own (PCGrad, gradient cosines): (per-task mean losses (T,), |td| or None,
        per-task mean Q (T,), (T, P): row t the gradient of task t's mean loss, flattened in `q_net.parameters()`
        order; all zero for a task absent from the batch). One forward and one backward: a sample's derivative
        reaches every layer through its own row only, so the layers' input gradients are computed once for the
        whole batch and only the weight gradients are summed per task (over its own rows)."""
        cache, q_taken = self._taken(obs, actions, task_ids)
        _, per_task, td_abs, q_per_task, dloss = task_loss_terms(
            q_taken, target, task_ids, self.n_tasks, weights, None, kind, need_td_abs)
        grads = self._backward(cache, dloss, per_task=True)
        return per_task, td_abs, q_per_task, torch.cat([g.reshape(self.n_tasks, -1) for g in grads], dim=1)


class ExplicitMultiHeadGrads(_MultiTaskExplicit):
    """Forward + per-task TD loss + gradients of a multi-head MultiTaskQNetwork without autograd.

    For `MultiTaskQNetwork(architecture="multihead")` with a plain ReLU torso shared by every task and one linear
    head per task (no conditioning, dueling heads, PopArt or observation normalizer; on the CPU, one-convolution
    image encoders, shared or one per task, each on its own task's rows: `PatchConv`): the heads are
    evaluated as one `addmm` against their concatenated weights (B, sum_t A_t) and each sample reads its own task's
    block, so a sample's gradient reaches only the torso and its own head (the other heads' rows of the gradient are
    exactly zero, as with autograd through `select_task`). Heads may differ in action count (Q of actions a task
    does not have is INVALID_Q, as in the module). Tasks whose observation sizes differ have per-task input adapters
    (Linear(obs_dim_t, hidden[0]) reading the first obs_dim_t features, then the shared ReLU): on the CPU each
    adapter runs on its own task's rows only, as the module's `_per_task` does (a batch grouped by task, as replay
    batches come, uses slices; any other order index lists). The loss is `task_weighted_loss`: sum_t w_t * mean
    over task t's samples of the (importance-weighted) Huber / MSE TD error. Same math as `MultiTaskDQNModule`'s
    autograd update (tested to float32 rounding in tests/unit/test_lean_step.py); gradients in
    `q_net.parameters()` order.
    """

    def __init__(self, q_net: nn.Module) -> None:
        if not self.supports(q_net):
            raise ValueError(f"ExplicitMultiHeadGrads needs a plain multi-head MultiTaskQNetwork, got {q_net}")
        self.torso: list[nn.Linear] = [m for m in q_net.torso if isinstance(m, nn.Linear)]
        self.heads: list[nn.Linear] = list(q_net.heads)
        self.adapters: list[nn.Linear] | None = list(q_net.adapters) if q_net.adapters is not None else None
        self.encoders: list[nn.Module] | None = list(q_net.encoders) if q_net.encoders is not None else None
        self.patch_convs = [PatchConv(e) for e in self.encoders] if self.encoders is not None else None
        self.obs_dims = list(q_net.obs_dims)
        self.n_tasks = len(self.heads)
        self.widths = [h.out_features for h in self.heads]
        self.n_actions = max(self.widths)
        self.equal_widths = len(set(self.widths)) == 1
        device = self.heads[0].weight.device
        starts = torch.tensor([0, *self.widths[:-1]], device=device).cumsum(0)
        self.starts = starts  # (T,): first column of task t's block in the concatenated head outputs
        self.valid = q_net.valid_actions  # (T, A): the actions task t has
        width = torch.tensor(self.widths, device=device)[:, None]
        action = torch.arange(self.n_actions, device=device)[None, :]
        self.columns = starts[:, None] + torch.minimum(action, width - 1)  # (T, A), invalid ones clamped
        self.transposed = TransposedWeights(self.torso)  # torso only: the heads are concatenated per call
        produced = self._names(len(self.torso), self.n_tasks, self.adapters is not None,
                               len(self.encoders) if self.encoders is not None else 0)
        self.order = [produced.index(n) for n, _ in q_net.named_parameters()]

    @staticmethod
    def _names(n_torso: int, n_tasks: int, adapters: bool, encoders: int = 0) -> list[str]:
        """Parameter names in the order loss_and_grads computes their gradients (with adapters the torso's first
        Linear is replaced by them: its Linears sit at positions 2, 4, ...)."""
        skip, pair = (2 if adapters else 0), ("weight", "bias")
        adapter = [f"adapters.{t}.{k}" for t in range(n_tasks) for k in pair] if adapters else []
        encoder = [f"encoders.{e}.convs.0.{k}" for e in range(encoders) for k in pair]
        return [*(f"torso.{skip + 2 * i}.{k}" for i in range(n_torso) for k in pair), *adapter, *encoder,
                *(f"heads.{t}.{k}" for t in range(n_tasks) for k in pair)]

    @staticmethod
    def supports(q_net: nn.Module) -> bool:
        """True for a multi-head MultiTaskQNetwork with a (Linear, ReLU)* torso (or, with per-task input adapters
        on the CPU, adapters + ReLU + (Linear, ReLU)*; or, on the CPU, behind one-convolution encoders) and
        nn.Linear heads, and nothing else (no conditioning, FiLM, PopArt, observation normalizer)."""
        from mtdqn.nets.multitask import MultiTaskQNetwork

        if type(q_net) is not MultiTaskQNetwork or q_net.architecture != "multihead" or q_net.heads is None:
            return False
        extras = ("obs_norm", "embedding", "film_scale", "popart")
        if any(getattr(q_net, k, None) is not None for k in extras):
            return False
        encoders = getattr(q_net, "encoders", None)
        if encoders is not None and not all(  # CPU only, as the adapters (each on its own task's rows)
                PatchConv.supports(e) and e.convs[0].weight.device.type == "cpu" for e in encoders):
            return False
        layers, adapters = list(q_net.torso), q_net.adapters
        if adapters is not None:  # the adapters replace the first Linear; CPU only (row routing syncs the host)
            if not (all(type(a) is nn.Linear for a in adapters) and type(layers[0]) is nn.Identity
                    and type(layers[1]) is nn.ReLU and adapters[0].weight.device.type == "cpu"):
                return False
            layers = layers[2:]
        torso = relu_torso_names(nn.Sequential(*layers))
        if torso is None or not all(type(h) is nn.Linear for h in q_net.heads):
            return False
        names = [n for n, _ in q_net.named_parameters()]
        expected = ExplicitMultiHeadGrads._names(len(torso) // 2, len(q_net.heads), adapters is not None,
                                                 len(encoders) if encoders is not None else 0)
        return sorted(names) == sorted(expected)

    def _encode(self, obs: Tensor, task_ids: Tensor | int, grads: bool) -> tuple[Tensor, list | None, list | None]:
        """The encoders' image features (B, F), each task's rows (per-task encoders) and, with `grads`, what
        `PatchConv.grads` needs per encoder (None for a task absent from the batch). Without `grads` the encoder
        modules run (Conv2d's kernel: the module's values to the last digit)."""
        encoders, convs = self.encoders, self.patch_convs
        if isinstance(task_ids, int) or len(encoders) == 1:  # one task's rows (acting) or one shared encoder
            e = 0 if len(encoders) == 1 else task_ids
            x = obs[:, :self.obs_dims[e]] if len(encoders) > 1 else obs
            if not grads:
                return encoders[e](x), None, None
            features, *cache = convs[e].forward(x)
            return features, None, [cache]
        rows, grouped = self._rows(task_ids)
        parts, caches = [], []
        for e, c, d, r in zip(encoders, convs, self.obs_dims, rows, strict=True):
            if r is None:
                caches.append(None)
                continue
            x = self._take(obs, r)[:, :d]
            if grads:
                features, *cache = c.forward(x)
                caches.append(cache)
            else:
                features = e(x)
            parts.append((r, features))
        if grouped:
            features = torch.cat([p for _, p in parts]) if len(parts) > 1 else parts[0][1]
        else:
            features = obs.new_empty(obs.shape[0], parts[0][1].shape[1])
            for r, p in parts:
                features.index_copy_(0, r, p)
        return features, rows, caches if grads else None

    def _first(self, obs: Tensor, task_ids: Tensor | int) -> tuple[Tensor, list | None]:
        """The first hidden layer (after its ReLU) and, with adapters, each task's rows (None without adapters)."""
        if self.adapters is None:
            lin = self.torso[0]
            return torch.addmm(lin.bias, obs, self.transposed()[0]).clamp_(min=0.0), None
        if isinstance(task_ids, int):  # every row of one task (acting)
            a = self.adapters[task_ids]
            return torch.addmm(a.bias, obs[:, :self.obs_dims[task_ids]], a.weight.t()).clamp_(min=0.0), None
        rows, grouped = self._rows(task_ids)
        parts = [(r, torch.addmm(a.bias, self._take(obs, r)[:, :d], a.weight.t()))
                 for a, d, r in zip(self.adapters, self.obs_dims, rows, strict=True) if r is not None]
        if grouped:
            h = torch.cat([p for _, p in parts]) if len(parts) > 1 else parts[0][1]
        else:
            h = obs.new_empty(obs.shape[0], self.adapters[0].out_features)
            for r, p in parts:
                h.index_copy_(0, r, p)
        return h.clamp_(min=0.0), rows

    def _torso(self, obs: Tensor, task_ids: Tensor | int,
               grads: bool = False) -> tuple[list[Tensor], list | None, list | None]:
        """([x, h1, ..., h_L]: the torso's input (obs, or the encoders' features) and every ReLU layer's output,
        each task's rows with adapters or per-task encoders, the encoders' caches for the backward with `grads`)."""
        caches = None
        if self.encoders is not None:
            obs, rows, caches = self._encode(obs, task_ids, grads)
            h = self._first(obs, task_ids)[0]
        else:
            h, rows = self._first(obs, task_ids)
        acts = [obs, h]
        skip = 0 if self.adapters is not None else 1  # without adapters torso[0] made h1
        for lin, w in zip(self.torso[skip:], self.transposed()[skip:], strict=True):
            acts.append(torch.addmm(lin.bias, acts[-1], w).clamp_(min=0.0))
        return acts, rows, caches

    def _heads(self) -> tuple[Tensor, Tensor]:
        """The heads' weights (sum_t A_t, H) and biases stacked in task order (copies of the current values)."""
        return torch.cat([h.weight for h in self.heads]), torch.cat([h.bias for h in self.heads])

    @no_grad
    def q_values(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        """Q(obs, .) of each sample's own task, (B, max A); same values as `q_net(obs, task_ids)`."""
        h = self._torso(obs, task_ids)[0][-1]
        w, b = self._heads()
        q_all = torch.addmm(b, h, w.t())
        if self.equal_widths:
            q_all = q_all.view(-1, self.n_tasks, self.n_actions)
            return q_all[torch.arange(q_all.shape[0], device=q_all.device), task_ids]
        q = q_all.gather(1, self.columns.index_select(0, task_ids))
        return q.masked_fill_(~self.valid.index_select(0, task_ids), invalid_fill(q.dtype))

    def batched_q_values(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        """Each sample's own-task Q(obs, .) for any leading shape (a round's (G, B, D) next observations), in
        cache-sized chunks."""
        return chunked_rows(self.q_values, obs, task_ids)

    @no_grad
    def greedy(self, obs: Tensor, task_idx: int) -> Tensor:
        """argmax_a Q(obs, a) for task `task_idx`: only that task's adapter and head (the collector calls this every
        step; `obs` may be the task's own width or zero-padded)."""
        head = self.heads[task_idx]
        return torch.addmm(head.bias, self._torso(obs, task_idx)[0][-1], head.weight.t()).argmax(dim=-1)

    def _taken(self, obs: Tensor, actions: Tensor, task_ids: Tensor) -> tuple[tuple, Tensor]:
        acts, rows, convs = self._torso(obs, task_ids, grads=True)
        w_heads, b_heads = self._heads()
        q_all = torch.addmm(b_heads, acts[-1], w_heads.t())  # (B, sum_t A_t)
        idx = (self.starts.index_select(0, task_ids) + actions).unsqueeze(1)
        return (obs, acts, rows, convs, w_heads, q_all, idx, task_ids), q_all.gather(1, idx).squeeze(1)

    def _backward(self, cache: tuple, dloss: Tensor, per_task: bool = False) -> list[Tensor]:
        obs, acts, rows, convs, w_heads, q_all, idx, task_ids = cache
        g = torch.zeros_like(q_all).scatter_(1, idx, dloss.unsqueeze(1))
        d_w_heads, d_b_heads = torch.mm(g.t(), acts[-1]), g.sum(0)  # head t's block: task t's samples alone
        g = _relu_backward(torch.mm(g, w_heads), acts[-1], 0.0)
        first = 0 if self.adapters is None else 1  # index in acts of the torso Linears' first input
        split = (rows if rows is not None else self._task_split(task_ids)) if per_task else None
        torso_grads: list[Tensor] = []
        for layer in range(len(self.torso) - 1, -1, -1):
            inp = acts[first + layer]
            w, b = self._linear_grads(g, inp, split)
            torso_grads += [b, w]  # bias, weight (reversed below)
            if first + layer > 0:
                g = _relu_backward(torch.mm(g, self.torso[layer].weight), inp, 0.0)
        torso_grads.reverse()
        own = (lambda x, t: self._own_row(x, t, self.n_tasks)) if per_task else (lambda x, t: x)
        adapter_grads: list[Tensor] = []
        for t, (a, d, r) in enumerate(zip(self.adapters or [], self.obs_dims, rows or [], strict=False)):
            if r is None:
                adapter_grads += [own(torch.zeros_like(a.weight), t), own(torch.zeros_like(a.bias), t)]
            else:
                g_t = self._take(g, r)
                adapter_grads += [own(torch.mm(g_t.t(), self._take(obs, r)[:, :d]), t), own(g_t.sum(0), t)]
        encoder_grads: list[Tensor] = []
        if self.encoders is not None:  # on into the convolutions (PatchConv.grads applies their ReLU)
            g = torch.mm(g, self.torso[0].weight)
            if len(self.encoders) == 1:  # shared: per task over its own rows when asked (CPU: rows, never masks)
                encoder_grads += self.patch_convs[0].grads(g, *convs[0], self._rows(task_ids)[0] if per_task else None)
            else:
                for t, (c, cache_t, r) in enumerate(zip(self.patch_convs, convs, rows, strict=True)):
                    w = c.conv.weight
                    dw, db = ((torch.zeros_like(w), w.new_zeros(w.shape[0])) if r is None
                              else c.grads(self._take(g, r), *cache_t))
                    encoder_grads += [own(dw, t), own(db, t)]
        head_grads = [own(x, t) for t, (w, b) in enumerate(zip(d_w_heads.split(self.widths),
                                                               d_b_heads.split(self.widths), strict=True))
                      for x in (w, b)]
        produced = [*torso_grads, *adapter_grads, *encoder_grads, *head_grads]
        return [produced[i] for i in self.order]


class ExplicitFiLMGrads(_MultiTaskExplicit):
    """Forward + per-task TD loss + gradients of a FiLM-conditioned MultiTaskQNetwork without autograd.

    For `MultiTaskQNetwork(architecture="conditioned", conditioning="film")` with a plain ReLU torso and one linear
    head (no input adapters, conv encoders, dueling head, PopArt, layer norm or observation normalizer): hidden
    layer l computes relu((h W_l^T + b_l) * scale_l[t] + shift_l[t]) for a sample of task t, the head reads the last
    one. The FiLM gradients are per-task sums (`index_add_`) of the samples' terms, so a task absent from the batch
    gets exactly zero. Same math as `MultiTaskDQNModule`'s autograd update (tested to float32 rounding in
    tests/unit/test_lean_step.py); gradients in `q_net.parameters()` order.
    """

    def __init__(self, q_net: nn.Module) -> None:
        if not self.supports(q_net):
            raise ValueError(f"ExplicitFiLMGrads needs a plain FiLM-conditioned MultiTaskQNetwork, got {q_net}")
        self.torso: list[nn.Linear] = [m for m in q_net.torso if isinstance(m, nn.Linear)]
        self.head: nn.Linear = q_net.head
        self.film_scale, self.film_shift = q_net.film_scale, q_net.film_shift  # read per call (a replaced
        # Parameter is followed, as TransposedWeights follows the Linear weights)
        self.n_tasks = q_net.n_tasks
        self.transposed = TransposedWeights([*self.torso, self.head])
        produced = self._names(len(self.torso))  # loss_and_grads' list -> parameters() order
        self.order = [produced.index(n) for n, _ in q_net.named_parameters()]

    @staticmethod
    def _names(n_layers: int) -> list[str]:
        """Parameter names in the order loss_and_grads computes their gradients."""
        layers = range(n_layers)
        return [*(f"torso.{2 * i}.{k}" for i in layers for k in ("weight", "bias")),
                *(f"film_scale.{i}" for i in layers), *(f"film_shift.{i}" for i in layers), "head.weight", "head.bias"]

    @staticmethod
    def supports(q_net: nn.Module) -> bool:
        """True for a FiLM-conditioned MultiTaskQNetwork with a (Linear, ReLU)* torso, one nn.Linear head and
        nothing else (no adapters, conv encoders, embedding, PopArt, observation normalizer)."""
        from mtdqn.nets.multitask import MultiTaskQNetwork

        if type(q_net) is not MultiTaskQNetwork or q_net.architecture != "conditioned":
            return False
        if q_net.conditioning != "film" or type(q_net.head) is not nn.Linear or q_net.film_scale is None:
            return False
        if any(getattr(q_net, k, None) is not None for k in ("obs_norm", "adapters", "encoders", "embedding", "popart")):
            return False
        torso = relu_torso_names(q_net.torso)
        if torso is None:
            return False
        names = [n for n, _ in q_net.named_parameters()]
        return sorted(names) == sorted(ExplicitFiLMGrads._names(len(torso) // 2))

    def _forward(self, obs: Tensor, task_ids: Tensor | int) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """([obs, h_1, ..., h_L], [z_1, ..., z_L] before FiLM, [scale_1[t], ...] per sample): `task_ids` a (B,)
        tensor or one task index for every row."""
        acts, pre, scales = [obs], [], []
        for lin, w, scale, shift in zip(self.torso, self.transposed(), self.film_scale, self.film_shift,
                                        strict=False):  # transposed() ends with the head's
            z = torch.addmm(lin.bias, acts[-1], w)
            if isinstance(task_ids, int):
                s, c = scale[task_ids], shift[task_ids]
            else:
                s, c = scale.index_select(0, task_ids), shift.index_select(0, task_ids)
            acts.append((z * s + c).clamp_(min=0.0))
            pre.append(z)
            scales.append(s)
        return acts, pre, scales

    @no_grad
    def q_values(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        """Q(obs, .) of each sample's task, (B, A); same values as `q_net(obs, task_ids)`."""
        return torch.addmm(self.head.bias, self._forward(obs, task_ids)[0][-1], self.transposed()[-1])

    def batched_q_values(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        """Each sample's Q(obs, .) for any leading shape (a round's (G, B, D) next observations), in cache-sized
        chunks."""
        return chunked_rows(self.q_values, obs, task_ids)

    @no_grad
    def greedy(self, obs: Tensor, task_idx: int) -> Tensor:
        """argmax_a Q(obs, a) for task `task_idx` (the collector calls this every step)."""
        h = self._forward(obs, task_idx)[0][-1]
        return torch.addmm(self.head.bias, h, self.transposed()[-1]).argmax(dim=-1)

    def _taken(self, obs: Tensor, actions: Tensor, task_ids: Tensor) -> tuple[tuple, Tensor]:
        acts, pre, scales = self._forward(obs, task_ids)
        q = torch.addmm(self.head.bias, acts[-1], self.transposed()[-1])
        idx = actions.unsqueeze(1)
        return (acts, pre, scales, task_ids, q, idx), q.gather(1, idx).squeeze(1)

    def _backward(self, cache: tuple, dloss: Tensor, per_task: bool = False) -> list[Tensor]:
        acts, pre, scales, task_ids, q, idx = cache
        split = self._task_split(task_ids) if per_task else None
        g = torch.zeros_like(q).scatter_(1, idx, dloss.unsqueeze(1))
        head = list(self._linear_grads(g, acts[-1], split))
        g = _relu_backward(torch.mm(g, self.head.weight), acts[-1], 0.0)  # d / d (z * scale + shift), last layer
        n_layers = len(self.torso)
        linear, d_scale, d_shift = [None] * (2 * n_layers), [None] * n_layers, [None] * n_layers
        # FiLM's scale and shift have one row per task, summed over that task's samples: task t's gradient of them
        # is row t alone
        own = self._own_rows if per_task else (lambda x: x)
        for layer in range(n_layers - 1, -1, -1):
            z = pre[layer]
            d_scale[layer] = own(z.new_zeros(self.n_tasks, z.shape[1]).index_add_(0, task_ids, g * z))
            d_shift[layer] = own(z.new_zeros(self.n_tasks, z.shape[1]).index_add_(0, task_ids, g))
            g = g * scales[layer]  # d / d z
            linear[2 * layer], linear[2 * layer + 1] = self._linear_grads(g, acts[layer], split)
            if layer > 0:
                g = _relu_backward(torch.mm(g, self.torso[layer].weight), acts[layer], 0.0)
        produced = [*linear, *d_scale, *d_shift, *head]
        return [produced[i] for i in self.order]

    def _own_rows(self, grad: Tensor) -> Tensor:
        """(T, T, H) from a per-task parameter's gradient (T, H): task t's gradient has only its own row t."""
        out = grad.new_zeros(self.n_tasks, *grad.shape)
        diag = torch.arange(self.n_tasks, device=grad.device)
        out[diag, diag] = grad
        return out

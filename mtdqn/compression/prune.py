"""Pruning: global magnitude (unstructured, iterative, masks enforced) and structured (whole hidden neurons).

Unstructured: Zhu & Gupta 2017 ("To prune, or not to prune"): the sparsity rises on a cubic schedule over
`steps` pruning steps; after each step the network is fine-tuned on pool states by distillation to the *unpruned*
network's Q-values (distill_kl at a temperature by default, or mse regression) while the masks keep pruned weights
exactly zero. Measured on the lane_keep_mtl agent, the kl fine-tune keeps the greedy policy far better than mse:
its action gaps (median ~0.1 on Q-values ~40) are lost in an mse fit's value error.
Structured: the hidden neurons with the smallest saliency are removed: their producing Linear rows (bias
entries, LayerNorm entries, FiLM columns) and the next layer's input columns, so every Linear really shrinks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtdqn.compression.config import PruneSettings, StructuredSettings
from mtdqn.compression.data import StatePool
from mtdqn.compression.fit import Masks, apply_masks, fit_to_teacher
from mtdqn.compression.policy import QPolicy, hidden_widths
from mtdqn.nets.popart import PopArtHead
from mtdqn.nets.q import DuelingHead


def prunable_weights(net: nn.Module) -> dict[str, nn.Parameter]:
    """The weight matrix of every nn.Linear and PopArt head (biases, norms, conditioning tables are not pruned)."""
    return {f"{name}.weight" if name else "weight": m.weight for name, m in net.named_modules()
            if isinstance(m, (nn.Linear, PopArtHead))}


def global_magnitude_masks(weights: dict[str, Tensor], sparsity: float) -> Masks:
    """Masks pruning exactly round(sparsity x total) weights, those of smallest |w| across all matrices."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"compression.prune.sparsity={sparsity} must lie in [0, 1)")
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    k = round(sparsity * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset : offset + w.numel()].view_as(w).clone()
        offset += w.numel()
    return masks


def sparsity_schedule(final: float, steps: int) -> list[float]:
    """Cubic ramp s_i = final x (1 - (1 - i/steps)^3), i = 1..steps (ends exactly at `final`)."""
    return [final * (1.0 - (1.0 - i / steps) ** 3) for i in range(1, steps + 1)]


def linear_sparsity(net: nn.Module) -> float:
    """Fraction of exactly-zero entries over every Linear weight matrix."""
    weights = list(prunable_weights(net).values())
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def iterative_prune(
    policy: QPolicy, pool: StatePool, teacher_q: Tensor, settings: PruneSettings, seed: int = 0,
    max_epochs: float | None = None,
) -> tuple[QPolicy, dict]:
    """Prune a copy of `policy` to `settings.sparsity` in `settings.steps` steps, fine-tuning in between."""
    pruned = copy.deepcopy(policy)
    masks: Masks = {}
    curve: list[float] = []
    for i, target in enumerate(sparsity_schedule(settings.sparsity, settings.steps)):
        masks = global_magnitude_masks(prunable_weights(pruned), target)
        apply_masks(pruned, masks)
        curve += fit_to_teacher(pruned, pool, teacher_q, settings.finetune_steps, settings.batch_size, settings.lr,
                                settings.loss, settings.temperature, masks=masks, seed=seed + i,
                                max_epochs=max_epochs)
    return pruned, {"sparsity": linear_sparsity(pruned), "target_sparsity": settings.sparsity,
                    "loss_curve": curve, "masks": masks}


# ---------------------------------------------------------------- structured pruning


@dataclass
class HiddenLayer:
    """What reads and writes one hidden layer's neurons."""

    producers: list[nn.Linear]  # compute the layer (rows); per-task input adapters for layer 0 when present
    norm: nn.LayerNorm | None
    film: tuple[nn.ParameterList, int] | None  # (the net, layer index): FiLM scale/shift columns
    consumers: list[nn.Module]  # read the layer (columns): next Linear, or the Q head(s) (Linear or PopArtHead)


def hidden_layers(net: nn.Module) -> list[HiddenLayer]:
    """The hidden layers of a QNetwork / MultiTaskQNetwork torso (Linear, [LayerNorm], activation per layer)."""
    blocks: list[list[nn.Module]] = [[]]
    for m in net.torso:
        blocks[-1].append(m)
        if not isinstance(m, (nn.Linear, nn.LayerNorm, nn.Identity)):  # the activation closes the block
            blocks.append([])
    blocks = [b for b in blocks if b]
    adapters = getattr(net, "adapters", None)
    layers = []
    for i, block in enumerate(blocks):
        linear = [m for m in block if isinstance(m, nn.Linear)]
        producers = list(adapters) if (i == 0 and adapters is not None) else linear
        norm = next((m for m in block if isinstance(m, nn.LayerNorm)), None)
        film = (net, i) if getattr(net, "film_scale", None) is not None else None
        layers.append(HiddenLayer(producers, norm, film, []))
    for i, layer in enumerate(layers[:-1]):
        layer.consumers = layers[i + 1].producers
    layers[-1].consumers = head_linears(net)
    return layers


def head_linears(net: nn.Module) -> list[nn.Module]:
    """The layers that read the torso output: Linear (linear or dueling heads, single or per task) or a PopArt head
    (weight (T, A, in))."""
    if getattr(net, "popart", None) is not None:
        return [net.popart]
    heads = [net.head] if getattr(net, "head", None) is not None else list(getattr(net, "heads", None) or [])
    out: list[nn.Module] = []
    for h in heads:
        out += [h.value, h.advantage] if isinstance(h, DuelingHead) else [h]
    return out


def neuron_scores(layer: HiddenLayer, criterion: str) -> Tensor:
    """Saliency of each neuron: l1 / l2 norm of its incoming weights, bias (and FiLM shifts), over every producer;
    or l2_io: that incoming L2 norm x the outgoing L2 norm (its column in every consumer)."""
    with torch.no_grad():
        rows = torch.cat([torch.cat([p.weight, p.bias[:, None]], dim=1) if p.bias is not None else p.weight
                          for p in layer.producers], dim=1)
        if layer.film is not None:  # a FiLM shift makes a neuron active even with zero incoming weights
            owner, i = layer.film
            rows = torch.cat([rows, owner.film_shift[i].T], dim=1)
        if criterion == "l1":
            return rows.abs().sum(dim=1)
        incoming = rows.square().sum(dim=1).sqrt()
        if criterion == "l2":
            return incoming
        cols = torch.cat([c.weight.reshape(-1, c.weight.shape[-1]) for c in layer.consumers], dim=0)
        return incoming * cols.square().sum(dim=0).sqrt()


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` wherever `old` is a child module inside `root`."""
    for module in root.modules():
        for name, child in list(module._modules.items()):
            if child is old:
                module._modules[name] = new


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def shrink_layer(net: nn.Module, layer: HiddenLayer, keep: Tensor) -> None:
    """Keep only neurons `keep` (sorted indices) of one hidden layer: new smaller Linear/LayerNorm modules."""
    with torch.no_grad():
        for p in layer.producers:
            _replace(net, p, _linear(p.weight[keep], None if p.bias is None else p.bias[keep]))
        for c in layer.consumers:
            if isinstance(c, nn.Linear):
                _replace(net, c, _linear(c.weight[:, keep], c.bias))
            else:  # PopArtHead: per-task weights (T, A, in), sliced in place
                c.weight = nn.Parameter(c.weight[..., keep].clone())
                c.in_features = len(keep)
        if layer.norm is not None:
            norm = nn.LayerNorm(len(keep), eps=layer.norm.eps, elementwise_affine=layer.norm.elementwise_affine)
            if layer.norm.elementwise_affine:
                norm.weight.copy_(layer.norm.weight[keep])
                norm.bias.copy_(layer.norm.bias[keep])
            _replace(net, layer.norm, norm)
        if layer.film is not None:
            owner, i = layer.film
            owner.film_scale[i] = nn.Parameter(owner.film_scale[i][:, keep].clone())
            owner.film_shift[i] = nn.Parameter(owner.film_shift[i][:, keep].clone())


def structured_prune(policy: QPolicy, keep_fraction: float, criterion: str = "l2_io") -> QPolicy:
    """A copy of `policy` whose hidden layers keep round(width x keep_fraction) neurons (at least 1) of highest
    saliency. Neurons with zero incoming weights and bias output act(0) = 0 for every supported activation, so
    removing them leaves the Q-values unchanged (not exactly so with LayerNorm, whose statistics change)."""
    pruned = copy.deepcopy(policy)
    net = pruned.net
    for i in range(len(hidden_widths(net))):
        layer = hidden_layers(net)[i]  # re-read: the previous cut replaced this layer's producers
        width = layer.producers[0].out_features
        n_keep = max(1, round(width * keep_fraction))
        keep = torch.topk(neuron_scores(layer, criterion), n_keep).indices.sort().values
        shrink_layer(net, layer, keep)
    return pruned


def structured(
    policy: QPolicy, pool: StatePool, teacher_q: Tensor, settings: StructuredSettings, seed: int = 0,
    max_epochs: float | None = None,
) -> tuple[QPolicy, dict]:
    """Structured pruning to `keep_fraction` of each hidden layer, then an optional fine-tune on pool states."""
    pruned = structured_prune(policy, settings.keep_fraction, settings.criterion)
    curve = fit_to_teacher(pruned, pool, teacher_q, settings.finetune_steps, settings.batch_size, settings.lr,
                           settings.loss, settings.temperature, seed=seed, max_epochs=max_epochs)
    return pruned, {"hidden": hidden_widths(pruned.net), "loss_curve": curve}

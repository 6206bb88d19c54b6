"""What a policy costs: parameters, non-zero parameters, file bytes, multiply-adds, CPU latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from mtdqn.callbacks.checkpoint import atomic_torch_save
from mtdqn.nets.popart import PopArtHead
from mtdqn.nets.q import ConvEncoder


def _quantized_linears() -> tuple[type, ...]:
    try:
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQLinear

        return (DynamicQLinear,)
    except ImportError:  # pragma: no cover - torch without the ao namespace
        return ()


def _linear_weights(module: nn.Module) -> list[tuple[Tensor, Tensor | None]]:
    """(weight, bias) of every Linear layer, float or dynamically quantized (int8 weights as integers)."""
    out = []
    qtypes = _quantized_linears()
    for m in module.modules():
        if qtypes and isinstance(m, qtypes):
            out.append((m.weight().int_repr(), m.bias()))
        elif isinstance(m, (nn.Linear, PopArtHead)):  # PopArt: every task's head in one matmul
            out.append((m.weight.detach(), None if m.bias is None else m.bias.detach()))
    return out


def count_params(module: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters), counting the packed weights of quantized Linear layers too."""
    total = nonzero = 0
    for p in module.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    if _quantized_linears():
        for m in module.modules():
            if isinstance(m, _quantized_linears()):
                w, b = m.weight().int_repr(), m.bias()
                total += w.numel() + (b.numel() if b is not None else 0)
                nonzero += int(torch.count_nonzero(w)) + (int(torch.count_nonzero(b)) if b is not None else 0)
    return total, nonzero


def count_macs(module: nn.Module) -> tuple[int, int]:
    """Multiply-adds per forward of one state, over every Linear layer the forward runs (a multi-head net runs
    every head and every input adapter) and every convolution of a ConvEncoder (weight size x output positions):
    (dense, non-zero weights only = what a sparse kernel would do)."""
    dense = nonzero = 0
    for w, _ in _linear_weights(module):
        dense += w.numel()
        nonzero += int(torch.count_nonzero(w))
    for m in module.modules():
        if isinstance(m, ConvEncoder):
            for w, positions in m.conv_macs():
                dense += w.numel() * positions
                nonzero += int(torch.count_nonzero(w)) * positions
    return dense, nonzero


def file_bytes(module: nn.Module, path: Path) -> int:
    """Save the module's state_dict to `path` and return the file's size in bytes."""
    atomic_torch_save(module.state_dict(), path)
    return path.stat().st_size


@torch.inference_mode()
def measure_latency(
    policies: Mapping[str, nn.Module],
    inputs: Mapping[int, tuple[Tensor, Tensor]],
    calls: int = 50,
    rounds: int = 10,
    warmup: int = 20,
) -> dict[str, dict[int, float]]:
    """Median milliseconds per forward call, per policy and batch size, with torch threads 1.

    Every (policy, batch size) gets `warmup` untimed calls, then `rounds` rounds of `calls` individually timed
    calls; the rounds visit the policies in turn so load changes on a shared machine affect all of them alike.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in inputs} for n in policies}
        for policy in policies.values():
            for obs, ids in inputs.values():
                for _ in range(warmup):
                    policy(obs, ids)
        for _ in range(rounds):
            for name, policy in policies.items():
                for b, (obs, ids) in inputs.items():
                    bucket = times[name][b]
                    for _ in range(calls):
                        t0 = time.perf_counter_ns()
                        policy(obs, ids)
                        bucket.append((time.perf_counter_ns() - t0) / 1e6)
        return {n: {b: statistics.median(v) for b, v in per.items()} for n, per in times.items()}
    finally:
        torch.set_num_threads(threads)

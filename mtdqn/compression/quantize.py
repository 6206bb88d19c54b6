"""Quantization: int8 dynamic quantization of the Linear layers, fp16 / bf16 weights.

int8 uses torch.ao.quantization.quantize_dynamic (deprecated in favour of torchao, which this environment does
not ship; it still works on torch 2.13): int8 weights with per-channel (or per-tensor) scales, activations
quantized on the fly per batch. When no quantized engine is available the method is reported as skipped with
the reason instead of failing the run.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from mtdqn.compression.config import QuantizeSettings
from mtdqn.compression.policy import QPolicy

CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16}
ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")


class QuantizationUnavailable(RuntimeError):
    """No quantized engine on this machine / build: int8 is skipped, with this message in the report."""


def pick_engine() -> str:
    """The active quantized engine, or the first supported one (raises QuantizationUnavailable if none)."""
    supported = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if torch.backends.quantized.engine in supported:
        return torch.backends.quantized.engine
    for engine in ENGINES:
        if engine in supported:
            torch.backends.quantized.engine = engine
            return engine
    raise QuantizationUnavailable(f"no quantized engine in this torch build (supported: "
                                  f"{torch.backends.quantized.supported_engines}); int8 skipped")


def quantize_int8(policy: QPolicy, settings: QuantizeSettings | None = None) -> tuple[QPolicy, dict]:
    """A copy of `policy` with every nn.Linear replaced by a dynamically quantized int8 Linear."""
    if policy.dtype != torch.float32:
        raise ValueError(f"int8 quantization needs a float32 policy, got {policy.dtype}")
    settings = settings or QuantizeSettings()
    engine = pick_engine()
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if settings.per_channel else default_dynamic_qconfig
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
            net = quantize_dynamic(copy.deepcopy(policy.net).eval(), {nn.Linear: qconfig}, dtype=torch.qint8)
            QPolicy(net, policy.multitask)(*_probe(policy))  # the engine really runs
    except (RuntimeError, NotImplementedError) as exc:
        raise QuantizationUnavailable(f"int8 dynamic quantization failed on engine {engine!r}: "
                                      f"{str(exc).splitlines()[0]}") from exc
    return QPolicy(net, policy.multitask), {"engine": engine, "per_channel": settings.per_channel}


def cast(policy: QPolicy, method: str) -> tuple[QPolicy, dict]:
    """A copy of `policy` with weights in fp16 or bf16 (inputs cast in, Q-values cast back to float32)."""
    dtype = CASTS[method]
    net = copy.deepcopy(policy.net).to(dtype)
    return QPolicy(net, policy.multitask, dtype=dtype), {"dtype": str(dtype).removeprefix("torch.")}


def _probe(policy: QPolicy) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-state input for `policy` (zero observation, task 0)."""
    net = policy.net
    return torch.zeros(1, getattr(net, "max_obs_dim", None) or net.obs_dim), torch.zeros(1, dtype=torch.int64)

"""Counter-based random numbers: a splitmix64 hash of (env seed, episode, step, stream) in int64 tensor ops.

Every random draw of env i is a pure function of its own seed and counters, so an env's trajectory does not
depend on how many envs run beside it (unlike a shared torch.Generator).
"""

from __future__ import annotations

import torch
from torch import Tensor

_M64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """The int64 two's-complement value of an unsigned 64-bit constant."""
    c &= _M64
    return c - (1 << 64) if c >= 1 << 63 else c


GOLDEN = _signed(0x9E3779B97F4A7C15)
_C1 = _signed(0xBF58476D1CE4E5B9)
_C2 = _signed(0x94D049BB133111EB)
_EP_MULT = _signed(0xD1B54A32D192ED03)
_STEP_MULT = _signed(0xAEF17502108EF2D9)


def _srl(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: Tensor) -> Tensor:
    """The splitmix64 finalizer (a bijection on 64-bit integers) applied elementwise."""
    x = (x ^ _srl(x, 30)) * _C1
    x = (x ^ _srl(x, 27)) * _C2
    return x ^ _srl(x, 31)


def seed_keys(seeds: Tensor) -> Tensor:
    """Hash per-env integer seeds (N,) int64 into well-mixed keys."""
    return mix64(seeds * GOLDEN + 0x632BE59BD9B4E019)


def uniforms(key: Tensor, episode: Tensor, step: Tensor | int, stream: int, n_words: int) -> Tensor:
    """(N, 4 * n_words) uniforms in (0, 1) with 16-bit resolution for counters (episode, step, stream)."""
    base = key + episode * _EP_MULT + step * _STEP_MULT
    streams = torch.arange(stream + 1, stream + 1 + n_words, device=key.device, dtype=torch.int64) * GOLDEN
    h = mix64(base.unsqueeze(-1) + streams)  # (N, n_words)
    shifts = torch.tensor([0, 16, 32, 48], device=key.device, dtype=torch.int64)
    bits = (h.unsqueeze(-1) >> shifts) & 0xFFFF  # (N, n_words, 4)
    return (bits.flatten(1).to(torch.float32) + 0.5) * (1.0 / 65536.0)


def normals(key: Tensor, episode: Tensor, step: Tensor | int, stream: int, n: int) -> Tensor:
    """(N, n) standard normal draws (Box-Muller on counter-based uniforms)."""
    n_pairs = (n + 1) // 2
    u = uniforms(key, episode, step, stream, (2 * n_pairs + 3) // 4)[:, : 2 * n_pairs]
    r = torch.sqrt(-2.0 * torch.log(u[:, :n_pairs]))
    theta = (2.0 * torch.pi) * u[:, n_pairs:]
    return torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=1)[:, :n]

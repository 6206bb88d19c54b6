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


def _consts(device: torch.device) -> tuple[Tensor, ...]:
    """0-dim int64 tensors of the hash constants on `device` (cached): a Python int operand costs a scalar
    wrap per op, a ready tensor does not."""
    key = ("consts", device)
    if key not in _CACHE:
        vals = (30, (1 << 34) - 1, 27, (1 << 37) - 1, 31, (1 << 33) - 1, _C1, _C2, _EP_MULT, _STEP_MULT, 0xFFFF)
        _CACHE[key] = tuple(torch.tensor(v, dtype=torch.int64, device=device) for v in vals)
    return _CACHE[key]


def mix64(x: Tensor) -> Tensor:
    """The splitmix64 finalizer (a bijection on 64-bit integers) applied elementwise."""
    s30, m30, s27, m27, s31, m31, c1, c2 = _consts(x.device)[:8]
    # (x ^ srl(x, k)) * c, with srl(x, k) = (x >> k) & (2^(64-k) - 1); in place on fresh temporaries
    y = torch.bitwise_right_shift(x, s30).bitwise_and_(m30).bitwise_xor_(x).mul_(c1)
    y = y.bitwise_xor_(torch.bitwise_right_shift(y, s27).bitwise_and_(m27)).mul_(c2)
    return y.bitwise_xor_(torch.bitwise_right_shift(y, s31).bitwise_and_(m31))


def seed_keys(seeds: Tensor) -> Tensor:
    """Hash per-env integer seeds (N,) int64 into well-mixed keys."""
    return mix64(seeds * GOLDEN + 0x632BE59BD9B4E019)


_CACHE: dict[tuple, Tensor] = {}


def _streams(first: int, n_words: int, device: torch.device) -> Tensor:
    """(n_words, 1) int64 stream offsets for stream ids first .. first + n_words - 1 (cached)."""
    key = ("streams", first, n_words, device)
    if key not in _CACHE:
        ids = torch.arange(first + 1, first + 1 + n_words, device=device, dtype=torch.int64)
        _CACHE[key] = (ids * GOLDEN).unsqueeze(1)
    return _CACHE[key]


def _shifts(device: torch.device) -> Tensor:
    """(1, 4, 1) bit shifts that split a 64-bit word into four 16-bit fields (cached)."""
    key = ("shifts", device)
    if key not in _CACHE:
        _CACHE[key] = torch.tensor([0, 16, 32, 48], device=device).view(1, 4, 1)
    return _CACHE[key]


def uniforms(key: Tensor, episode: Tensor, step: Tensor | int, stream: int, n_words: int) -> Tensor:
    """(4 * n_words, N) uniforms in (0, 1) with 16-bit resolution.

    Word w (rows 4w .. 4w+3) of env i is a pure function of (key[i], episode[i], step[i], stream + w), so
    draws of one env never depend on other envs; each row is contiguous over envs.
    """
    dev = key.device
    c = _consts(dev)
    base = key + episode * c[8]
    if isinstance(step, Tensor):
        base += step * c[9]
    elif step != 0:
        base = base + step * _STEP_MULT
    h = mix64(base + _streams(stream, n_words, dev))  # (n_words, N)
    bits = torch.bitwise_right_shift(h.unsqueeze(1), _shifts(dev)).bitwise_and_(c[10])  # (n_words, 4, N)
    scale, offset = _float_consts(dev)
    return bits.flatten(0, 1).to(torch.float32).mul_(scale).add_(offset)


def _float_consts(device: torch.device) -> tuple[Tensor, Tensor]:
    """0-dim float32 tensors 1 / 65536 and 0.5 / 65536 on `device` (cached)."""
    key = ("fconsts", device)
    if key not in _CACHE:
        _CACHE[key] = tuple(torch.tensor(v, dtype=torch.float32, device=device) for v in (1 / 65536, 0.5 / 65536))
    return _CACHE[key]


def normals(key: Tensor, episode: Tensor, step: Tensor | int, stream: int, n: int) -> Tensor:
    """(n, N) standard normal draws (Box-Muller on counter-based uniforms)."""
    n_pairs = (n + 1) // 2
    u = uniforms(key, episode, step, stream, (2 * n_pairs + 3) // 4)
    r = torch.sqrt(-2.0 * torch.log(u[:n_pairs]))
    theta = (2.0 * torch.pi) * u[n_pairs : 2 * n_pairs]
    return torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=0)[:n]

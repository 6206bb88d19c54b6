"""Plain nn.Modules for Q-functions: MLP torsos, convolutional encoders for image observations, (dueling) Q
heads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from mtdqn.nets.normalize import RunningObsNorm

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


def positive_widths(hidden: Sequence[Any]) -> bool:
    """A non-empty list of positive integers (`[64, abc]` from the command line holds a string; `64` is no list)."""
    if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence):
        return False
    return bool(hidden) and all(isinstance(h, int | float) and not isinstance(h, bool) and float(h).is_integer()
                                and h > 0 for h in hidden)


def mlp(in_dim: int, hidden: Sequence[int], activation: str = "relu", layer_norm: bool = False) -> nn.Sequential:
    """Linear -> [LayerNorm] -> activation for each hidden width."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"net.activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
    if not positive_widths(hidden):
        raise ValueError(f"net.hidden={hidden!r} must be a non-empty list of positive widths, e.g. net.hidden=[64,64]")
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(nn.Linear(in_dim, int(width)))
        if layer_norm:
            layers.append(nn.LayerNorm(int(width)))
        layers.append(ACTIVATIONS[activation]())
        in_dim = int(width)
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Flat image observations (B, H*W*C) -> features (B, out_dim) through Conv2d -> activation layers.

    `obs_shape` is the observation's shape before flattening: (H, W) (one channel), (C, H, W) or (H, W, C).
    Channels come first when the first dimension is the smallest (Stable-Baselines3's rule: MinAtar's (10, 10, C)
    is channels-last, a stack of four 84x84 Atari frames (4, 84, 84) channels-first). `layers` lists
    [out_channels, kernel, stride] per convolution, unpadded: [[16, 3, 1]] is the MinAtar paper's network (Young &
    Tian 2019), [[32, 8, 4], [64, 4, 2], [64, 3, 1]] the Nature DQN's (Mnih et al. 2015).
    """

    def __init__(self, obs_shape: Sequence[int] | None, layers: Sequence[Sequence[int]],
                 activation: str = "relu") -> None:
        super().__init__()
        shape = tuple(int(d) for d in obs_shape or ())
        if len(shape) not in (2, 3) or min(shape) <= 0:
            seen = shape or "none of those (a flat vector, or more than 3 dimensions: a stack of multi-channel images)"
            raise ValueError(f"net.conv needs image observations of shape (H, W), (C, H, W) or (H, W, C); the task's "
                             f"observation has shape {seen}: use net.conv=null")
        bad = [list(layer) for layer in layers if len(layer) != 3 or any(int(v) <= 0 for v in layer)]
        if not layers or bad:
            raise ValueError(f"net.conv={[list(x) for x in layers]}: give a non-empty list of "
                             f"[out_channels, kernel, stride] with positive integers (bad: {bad})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"net.activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
        self.obs_shape = shape
        self.channels_last = len(shape) == 3 and shape.index(min(shape)) != 0
        c, h, w = (1, *shape) if len(shape) == 2 else ((shape[2], *shape[:2]) if self.channels_last else shape)
        self.image_shape = (c, h, w)  # what the convolutions see
        convs: list[nn.Module] = []
        sizes: list[tuple[int, int]] = []
        for out, kernel, stride in ((int(a), int(b), int(s)) for a, b, s in layers):
            if kernel > min(h, w):
                raise ValueError(f"net.conv={[list(x) for x in layers]}: a {kernel}x{kernel} kernel does not fit the "
                                 f"{h}x{w} feature map it meets (observation {shape})")
            convs += [nn.Conv2d(c, out, kernel, stride), ACTIVATIONS[activation]()]
            c, h, w = out, (h - kernel) // stride + 1, (w - kernel) // stride + 1
            sizes.append((h, w))
        self.convs = nn.Sequential(*convs)
        self.out_dim = c * h * w
        self.out_sizes = sizes  # (height, width) each convolution outputs

    def conv_macs(self) -> list[tuple[Tensor, int]]:
        """(weight, output positions) per convolution: weight.numel() x positions multiply-adds per image."""
        convs = [m for m in self.convs if isinstance(m, nn.Conv2d)]
        return [(m.weight.detach(), h * w) for m, (h, w) in zip(convs, self.out_sizes, strict=True)]

    def forward(self, obs: Tensor) -> Tensor:
        """(..., H*W*C) -> (..., out_dim): any leading dimensions (a round's (G, B, D) batches)."""
        lead = obs.shape[:-1]
        x = obs.reshape(-1, *self.obs_shape)
        x = x.permute(0, 3, 1, 2) if self.channels_last else x.reshape(-1, *self.image_shape)
        return self.convs(x).reshape(*lead, self.out_dim)


class DuelingHead(nn.Module):
    """Q(s, a) = V(s) + A(s, a) - mean_a A(s, a) (Wang et al. 2016)."""

    def __init__(self, in_dim: int, n_actions: int) -> None:
        super().__init__()
        self.value = nn.Linear(in_dim, 1)
        self.advantage = nn.Linear(in_dim, n_actions)

    def forward(self, features: Tensor) -> Tensor:
        adv = self.advantage(features)
        return self.value(features) + adv - adv.mean(dim=-1, keepdim=True)


class QNetwork(nn.Module):
    """MLP torso plus a linear or dueling head: obs (B, obs_dim) -> Q-values (B, n_actions).

    With `obs_norm`, a RunningObsNorm (`self.obs_norm`, buffers in the state_dict) normalizes the input first.
    With `conv` ([out_channels, kernel, stride] per layer), a ConvEncoder (`self.encoder`) turns the flat image
    observation, reshaped to the task's `obs_shape`, into the torso's input.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden: Sequence[int] = (256, 256),
        dueling: bool = False,
        activation: str = "relu",
        layer_norm: bool = False,
        obs_norm: bool = False,  # running observation normalization (statistics updated by the training module)
        conv: Sequence[Sequence[int]] | None = None,  # [out_channels, kernel, stride] per conv layer (images)
        obs_shape: Sequence[int] | None = None,  # the task's observation shape before flattening (TaskSpec)
    ) -> None:
        super().__init__()
        if obs_dim <= 0 or n_actions <= 0:
            raise ValueError(f"QNetwork needs obs_dim > 0 and n_actions > 0, got {obs_dim}, {n_actions}")
        self.obs_dim = int(obs_dim)  # the flat observation's width (a conv encoder's torso reads other widths)
        self.obs_norm = RunningObsNorm(obs_dim) if obs_norm else None
        self.encoder = ConvEncoder(obs_shape, conv, activation) if conv else None
        self.torso = mlp(self.encoder.out_dim if self.encoder else obs_dim, hidden, activation, layer_norm)
        width = int(hidden[-1])
        self.head = DuelingHead(width, n_actions) if dueling else nn.Linear(width, n_actions)

    def forward(self, obs: Tensor) -> Tensor:
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        if self.encoder is not None:
            obs = self.encoder(obs)
        return self.head(self.torso(obs))

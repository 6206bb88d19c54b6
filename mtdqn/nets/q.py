"""Plain nn.Modules for Q-functions: MLP torsos and (dueling) Q heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtdqn.nets.normalize import RunningObsNorm

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


def mlp(in_dim: int, hidden: Sequence[int], activation: str = "relu", layer_norm: bool = False) -> nn.Sequential:
    """Linear -> [LayerNorm] -> activation for each hidden width."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"net.activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
    if not hidden or any(int(h) <= 0 for h in hidden):
        raise ValueError(f"net.hidden={list(hidden)} must be a non-empty list of positive widths")
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(nn.Linear(in_dim, int(width)))
        if layer_norm:
            layers.append(nn.LayerNorm(int(width)))
        layers.append(ACTIVATIONS[activation]())
        in_dim = int(width)
    return nn.Sequential(*layers)


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
    ) -> None:
        super().__init__()
        if obs_dim <= 0 or n_actions <= 0:
            raise ValueError(f"QNetwork needs obs_dim > 0 and n_actions > 0, got {obs_dim}, {n_actions}")
        self.obs_norm = RunningObsNorm(obs_dim) if obs_norm else None
        self.torso = mlp(obs_dim, hidden, activation, layer_norm)
        width = int(hidden[-1])
        self.head = DuelingHead(width, n_actions) if dueling else nn.Linear(width, n_actions)

    def forward(self, obs: Tensor) -> Tensor:
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        return self.head(self.torso(obs))

"""One interface over every Q-network a compression method produces: (obs, task_ids) -> Q-values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.nets.multitask import MultiTaskQNetwork
from mtdqn.types import TaskSpec

NetBuilder = Callable[[Sequence[int]], nn.Module]  # hidden widths -> a fresh net of the same kind


class QPolicy(nn.Module):
    """Wraps a single-task (obs -> Q) or multi-task ((obs, task_ids) -> Q) network behind (obs, task_ids) -> Q.

    `dtype` is the weights' precision: observations are cast to it and Q-values come back as float32, so
    fp16 / bf16 policies are drop-in replacements. Observations are (B, obs_width), zero-padded to the widest task.
    """

    def __init__(self, net: nn.Module, multitask: bool, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.net, self.multitask, self.dtype = net, multitask, dtype

    def forward(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        obs = obs.to(self.dtype)
        q = self.net(obs, task_ids) if self.multitask else self.net(obs)
        return q.float()


def wrap(net: nn.Module) -> QPolicy:
    """A float32 QPolicy around a trained Q-network (multi-task when it is a MultiTaskQNetwork)."""
    return QPolicy(net, multitask=isinstance(net, MultiTaskQNetwork))


def net_builder(net_factory: Callable[..., nn.Module], tasks: Sequence[TaskSpec], multitask: bool) -> NetBuilder:
    """hidden -> net_factory(..., hidden=hidden): the same architecture kind as the trained net, other widths."""
    tasks = list(tasks)

    def build(hidden: Sequence[int]) -> nn.Module:
        widths = [int(h) for h in hidden]
        if multitask:
            return net_factory(tasks=tasks, hidden=widths)
        return net_factory(**tasks[0].net_kwargs(), hidden=widths)

    return build


def trained_net_factory(net_factory: Callable[..., nn.Module], net: nn.Module) -> Callable[..., nn.Module]:
    """The factory as the training module called it: with the PopArt head the module adds (model.popart=true)."""
    popart = getattr(net, "popart", None)
    return partial(net_factory, popart_beta=popart.beta) if popart is not None else net_factory


def hidden_widths(net: nn.Module) -> list[int]:
    """Widths of the hidden layers of a QNetwork / MultiTaskQNetwork torso."""
    widths = [m.out_features for m in net.torso if isinstance(m, nn.Linear)]
    adapters = getattr(net, "adapters", None)
    return ([adapters[0].out_features] if adapters is not None else []) + widths


def task_policy(policy: nn.Module, task_idx: int, obs_width: int) -> Callable[[Tensor], Tensor]:
    """Greedy actions of `policy` for task `task_idx` (obs zero-padded to `obs_width`)."""

    @torch.no_grad()
    def act(obs: Tensor) -> Tensor:
        if obs.shape[-1] < obs_width:
            obs = F.pad(obs, (0, obs_width - obs.shape[-1]))
        ids = torch.full(obs.shape[:-1], task_idx, dtype=torch.int64, device=obs.device)
        return policy(obs, ids).argmax(dim=-1)

    return act

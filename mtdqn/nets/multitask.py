"""Multi-task Q-networks: a shared torso with per-task heads, or one task-conditioned network.

Task identity travels with every observation (`task_ids`, as in mtrl's `MTObs`). Per-task parts (input adapters,
Q heads) are vectorized as "compute every task's part on the whole batch, then select each sample's own": a loop
over the few tasks, never over samples, no data-dependent shapes and no device sync. Gradients of the unselected
outputs are exactly zero, so each sample's loss reaches only its own task's adapter and head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.nets.normalize import RunningObsNorm
from mtdqn.nets.q import ACTIVATIONS, ConvEncoder, DuelingHead, mlp
from mtdqn.types import TaskSpec

if TYPE_CHECKING:
    from mtdqn.nets.popart import PopArtHead

ARCHITECTURES = ("multihead", "conditioned")
CONDITIONINGS = ("none", "onehot", "embedding", "film")
INVALID_Q = -1e9  # Q-value of actions a task does not have: finite, never the argmax, ignored by the max


def invalid_fill(dtype: torch.dtype) -> float:
    """INVALID_Q, clipped to the dtype's finite range (float16 cannot hold -1e9)."""
    return max(INVALID_Q, torch.finfo(dtype).min)


def select_task(stacked: Tensor, task_ids: Tensor) -> Tensor:
    """Pick each sample's own task slice: stacked (B, T, ...) and task_ids (B,) -> (B, ...)."""
    return stacked[torch.arange(stacked.shape[0], device=stacked.device), task_ids]


def _check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {list(allowed)}")


class MultiTaskQNetwork(nn.Module):
    """Multi-task Q-network: obs (B, max_obs_dim) zero-padded, task_ids (B,) -> Q-values (B, max_n_actions).

    architecture="multihead": shared torso, one Q head per task (Hessel et al. 2019 style multi-head DQN).
    architecture="conditioned": one shared torso and head, told the task by `conditioning`: "onehot" or
    "embedding" (concatenated to the input), "film" (per-task scale and shift on every hidden layer, Perez et al.
    2018, identity at init) or "none" (a task-blind shared network). `conditioning` is unused by "multihead".
    When tasks differ in obs_dim, each task gets an input adapter Linear(obs_dim_t, hidden[0]) that reads only its
    first obs_dim_t features and feeds the shared rest of the torso. Q-values of actions a task does not have are
    INVALID_Q.
    `popart_beta` (multihead, non-dueling only) replaces the per-task heads by one PopArtHead (mtdqn.nets.popart):
    `forward` still returns Q in return units (sigma_t * head_t + mu_t), `normalized_q` the head's normalized
    output that PopArt's TD loss is computed on.
    `obs_norm` adds a per-task RunningObsNorm (`self.obs_norm`, mtdqn.nets.normalize) in front of the torso.
    `conv` ([out_channels, kernel, stride] per layer) reads image observations through ConvEncoders before the
    torso: one shared encoder when every task's image has one shape, else one per task (each reading its own
    image, as the input adapters do for vectors); their features must have one size (the same height and width).
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        hidden: Sequence[int] = (256, 256),
        architecture: str = "multihead",
        conditioning: str = "onehot",
        embedding_dim: int = 16,
        dueling: bool = False,
        activation: str = "relu",
        layer_norm: bool = False,
        popart_beta: float | None = None,  # PopArt statistics step size per update (None = plain heads)
        obs_norm: bool = False,  # running per-task observation normalization (RunningObsNorm, updated by the module)
        conv: Sequence[Sequence[int]] | None = None,  # [out_channels, kernel, stride] per conv layer (images)
    ) -> None:
        super().__init__()
        tasks = list(tasks)
        _check_choice("net.architecture", architecture, ARCHITECTURES)
        _check_choice("net.conditioning", conditioning, CONDITIONINGS)
        if not tasks:
            raise ValueError("MultiTaskQNetwork needs at least one task, got an empty task list")
        if any(t.obs_dim <= 0 or t.n_actions <= 0 for t in tasks):
            raise ValueError(f"every task needs obs_dim > 0 and n_actions > 0, got {self._dims(tasks)}")
        self.n_tasks = len(tasks)
        self.obs_dims = [int(t.obs_dim) for t in tasks]
        self.n_actions = [int(t.n_actions) for t in tasks]
        self.max_obs_dim, self.max_n_actions = max(self.obs_dims), max(self.n_actions)
        self.architecture = architecture
        self.conditioning = conditioning if architecture == "conditioned" else "none"
        if architecture == "conditioned" and len(set(self.n_actions)) > 1:
            raise ValueError(
                f"net.architecture='conditioned' shares one Q head and needs equal action counts, got "
                f"{dict(zip([t.name for t in tasks], self.n_actions, strict=True))}; use net.architecture='multihead'"
            )
        if popart_beta is not None and (architecture != "multihead" or dueling):
            raise ValueError(
                f"model.popart=true needs one linear head per task (net=multihead, net.dueling=false), got "
                f"net.architecture={architecture!r}, net.dueling={dueling}"
            )
        if self.conditioning == "embedding" and embedding_dim <= 0:
            raise ValueError(f"net.embedding_dim={embedding_dim} must be a positive integer")
        self.obs_norm = RunningObsNorm(self.max_obs_dim, self.n_tasks) if obs_norm else None
        self.encoders = self._build_encoders(tasks, conv, activation) if conv else None
        self._build_body(list(hidden), embedding_dim, activation, layer_norm)
        self._build_heads(int(hidden[-1]), dueling, popart_beta)
        valid = torch.arange(self.max_n_actions)[None, :] < torch.tensor(self.n_actions)[:, None]
        self.register_buffer("valid_actions", valid, persistent=False)  # (T, max_n_actions) bool

    @staticmethod
    def _dims(tasks: Sequence[TaskSpec]) -> dict[str, tuple[int, int]]:
        return {t.name: (t.obs_dim, t.n_actions) for t in tasks}

    def _build_body(self, hidden: list[int], embedding_dim: int, activation: str, layer_norm: bool) -> None:
        cond_dim = {"onehot": self.n_tasks, "embedding": embedding_dim}.get(self.conditioning, 0)
        self.embedding = (
            nn.Embedding(self.n_tasks, embedding_dim) if self.conditioning == "embedding" else None
        )
        # Same layout as QNetwork.torso (Linear, [LayerNorm], act per layer); mlp() validates hidden/activation.
        in_dim = self.encoders[0].out_dim if self.encoders is not None else self.max_obs_dim
        self.torso = mlp(in_dim + cond_dim, hidden, activation, layer_norm)
        self._act_type = ACTIVATIONS[activation]
        self.adapters: nn.ModuleList | None = None
        if self.encoders is None and len(set(self.obs_dims)) > 1:  # per-task input adapters: the first Linear
            self.torso[0] = nn.Identity()
            self.adapters = nn.ModuleList(nn.Linear(d + cond_dim, int(hidden[0])) for d in self.obs_dims)
        self.film_scale: nn.ParameterList | None = None
        self.film_shift: nn.ParameterList | None = None
        if self.conditioning == "film":  # FiLM (Perez et al. 2018): gamma_t * h + beta_t, identity at init
            self.film_scale = nn.ParameterList(nn.Parameter(torch.ones(self.n_tasks, int(w))) for w in hidden)
            self.film_shift = nn.ParameterList(
                nn.Parameter(torch.zeros(self.n_tasks, int(w))) for w in hidden
            )

    @staticmethod
    def _build_encoders(tasks: Sequence[TaskSpec], conv: Sequence[Sequence[int]], activation: str) -> nn.ModuleList:
        shapes = [t.obs_shape for t in tasks]
        flat = [t.name for t in tasks if not t.obs_shape]
        if flat:  # ConvEncoder's own error would not say which task
            raise ValueError(f"net.conv needs image observations for every task; {flat} observe flat vectors "
                             f"(the others: {[t.name for t in tasks if t.obs_shape]}): use net.conv=null, or "
                             "image tasks only")
        encoders = [ConvEncoder(s, conv, activation) for s in (shapes[:1] if len(set(shapes)) == 1 else shapes)]
        sizes = {t.name: e.out_dim for t, e in zip(tasks, encoders, strict=False)}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"net.conv={[list(x) for x in conv]} gives features of different sizes {sizes} for "
                             f"observation shapes {dict(zip([t.name for t in tasks], shapes, strict=True))}: the "
                             "tasks' images need one height and width")
        return nn.ModuleList(encoders)

    def _build_heads(self, width: int, dueling: bool, popart_beta: float | None) -> None:
        def make(n: int) -> nn.Module:
            return DuelingHead(width, n) if dueling else nn.Linear(width, n)

        self.head: nn.Module | None = None
        self.heads: nn.ModuleList | None = None
        self.popart: PopArtHead | None = None
        if popart_beta is not None:
            from mtdqn.nets.popart import PopArtHead  # popart.py imports this module (invalid_fill)

            self.popart = PopArtHead(width, self.n_actions, beta=popart_beta)
        elif self.architecture == "conditioned":
            self.head = make(self.max_n_actions)
        else:
            self.heads = nn.ModuleList(make(n) for n in self.n_actions)

    def _condition(self, x: Tensor, task_ids: Tensor) -> Tensor:
        if self.conditioning == "onehot":
            return torch.cat([x, F.one_hot(task_ids, self.n_tasks).to(x.dtype)], dim=-1)
        if self.conditioning == "embedding":
            return torch.cat([x, self.embedding(task_ids).to(x.dtype)], dim=-1)
        return x

    def _per_task(self, fns: Sequence, obs: Tensor, task_ids: Tensor) -> Tensor:
        """fns[t](obs rows of task t, their task_ids) for each sample's own task t -> (B, ...) in batch order.

        On the CPU each task's module runs on its own rows only (grouped by task, then put back in batch order):
        with per-task input adapters or encoders every task's module on the whole batch costs T times the compute
        (MinAtar's three games: the adapters were ~2/3 of a forward pass). On an accelerator, where the extra
        FLOPs are cheap and grouping needs the per-task counts on the host (a synchronization per call), and while
        tracing (TorchScript / ONNX export need shapes that do not depend on the data), every module runs on the
        whole batch and each sample reads its own task's output: the same values up to float rounding (a matrix
        product over fewer rows may sum in another order)."""
        if obs.device.type != "cpu" or torch.jit.is_tracing() or obs.shape[0] == 0:
            return select_task(torch.stack([f(obs, task_ids) for f in fns], dim=1), task_ids)
        order = torch.argsort(task_ids, stable=True)
        grouped = bool((order[1:] > order[:-1]).all())  # replay batches and rollouts come grouped by task
        if not grouped:
            obs, task_ids = obs[order], task_ids[order]
        counts = torch.bincount(task_ids, minlength=len(fns)).tolist()
        parts, start = [], 0
        for f, n in zip(fns, counts, strict=True):
            if n:
                parts.append(f(obs[start:start + n], task_ids[start:start + n]))
                start += n
        out = torch.cat(parts)
        if grouped:
            return out
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return out[inverse]

    def _first_layer(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        if self.encoders is not None:
            if len(self.encoders) == 1:
                image = self.encoders[0](obs)
            else:  # each task's encoder on its own image's features
                image = self._per_task([lambda o, _, e=e, d=d: e(o[:, :d])
                                        for e, d in zip(self.encoders, self.obs_dims, strict=True)], obs, task_ids)
            return self.torso[0](self._condition(image, task_ids))
        if self.adapters is None:
            return self.torso[0](self._condition(obs, task_ids))
        # each task's adapter on its own features (the first obs_dim_t columns)
        return self._per_task([lambda o, i, a=a, d=d: a(self._condition(o[:, :d], i))
                               for a, d in zip(self.adapters, self.obs_dims, strict=True)], obs, task_ids)

    def features(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        """Torso output: obs (B, max_obs_dim), task_ids (B,) -> (B, hidden[-1])."""
        if obs.shape[-1] != self.max_obs_dim:
            raise ValueError(f"obs has {obs.shape[-1]} features, expected max_obs_dim={self.max_obs_dim}")
        if self.obs_norm is not None:
            obs = self.obs_norm(obs, task_ids)
        x = self._first_layer(obs, task_ids)
        layer = 0
        for module in list(self.torso)[1:]:
            if isinstance(module, self._act_type):
                if self.film_scale is not None:  # FiLM before the nonlinearity; index_select, not [task_ids]:
                    # the same values and gradients at half the cost (advanced indexing's backward is an
                    # accumulating index_put)
                    x = (x * self.film_scale[layer].index_select(0, task_ids)
                         + self.film_shift[layer].index_select(0, task_ids))
                layer += 1
            x = module(x)
        return x

    def forward(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        """Q-values (..., max_n_actions) for obs (..., max_obs_dim) and task_ids (...) int64."""
        lead = task_ids.shape
        obs, task_ids = obs.reshape(-1, obs.shape[-1]), task_ids.reshape(-1)
        feats = self.features(obs, task_ids)
        if self.popart is not None:
            return self.popart.unnormalized_q(feats, task_ids).reshape(*lead, self.max_n_actions)
        if self.head is not None:
            q = self.head(feats)
        else:
            outs = [
                F.pad(h(feats), (0, self.max_n_actions - n))
                for h, n in zip(self.heads, self.n_actions, strict=True)
            ]
            q = select_task(torch.stack(outs, dim=1), task_ids)
        q = q.masked_fill(~self.valid_actions[task_ids], invalid_fill(q.dtype))
        return q.reshape(*lead, self.max_n_actions)

    def normalized_q(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        """PopArt only: the head's normalized Q-values (..., max_n_actions), the TD loss's units."""
        if self.popart is None:
            raise ValueError("normalized_q needs a PopArt head (model.popart=true)")
        lead = task_ids.shape
        obs, task_ids = obs.reshape(-1, obs.shape[-1]), task_ids.reshape(-1)
        return self.popart(self.features(obs, task_ids), task_ids).reshape(*lead, self.max_n_actions)

    @torch.no_grad()
    def greedy_action(self, obs: Tensor, task_ids: Tensor) -> Tensor:
        """argmax_a Q(s, a) over each task's own actions: (...) int64."""
        return self(obs, task_ids).argmax(dim=-1)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss flows through: the shared torso (and the shared head if conditioned)."""
        params = list(self.encoders.parameters()) if self.encoders is not None and len(self.encoders) == 1 else []
        params += list(self.torso.parameters())
        return params + (list(self.head.parameters()) if self.head is not None else [])

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        """Parameters only task t's loss flows through: its input adapter or encoder and its Q head (if any)."""
        if not 0 <= t < self.n_tasks:
            raise IndexError(f"task index {t} out of range for {self.n_tasks} tasks")
        params = list(self.adapters[t].parameters()) if self.adapters is not None else []
        if self.encoders is not None and len(self.encoders) > 1:
            params += list(self.encoders[t].parameters())
        return params + (list(self.heads[t].parameters()) if self.heads is not None else [])

    def conditioning_parameters(self) -> list[nn.Parameter]:
        """Per-task tables indexed by task id (embedding, FiLM, the PopArt head's stacked per-task weights): each
        task's loss reaches only its own row."""
        params = list(self.embedding.parameters()) if self.embedding is not None else []
        if self.film_scale is not None:
            params += list(self.film_scale) + list(self.film_shift)
        return params + (list(self.popart.parameters()) if self.popart is not None else [])

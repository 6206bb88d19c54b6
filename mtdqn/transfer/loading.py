"""Source checkpoints for transfer: weights-only loading, name-and-shape matching, teachers for distillation.

A source run directory holds `config.yaml` and `checkpoints/last.ckpt` (the Lightning checkpoint: `state_dict` with
`q_net.*` and `target_net.*`, and the data module's state with its replay buffers). Checkpoints are loaded
weights-only (`mtdqn.callbacks.checkpoint.load_checkpoint`): a file that carries pickled objects is refused.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from mtdqn.callbacks.checkpoint import load_checkpoint
from mtdqn.envs import task_specs
from mtdqn.nets.multitask import MultiTaskQNetwork
from mtdqn.nets.popart import PopArtHead
from mtdqn.nets.q import QNetwork
from mtdqn.types import TaskSpec

log = logging.getLogger("mtdqn")
NET_PREFIX = "q_net."
TARGET_PREFIX = "target_net."
DATAMODULE_KEYS = ("MultiTaskDataModule", "RLDataModule")  # where Lightning stores the data module's state
NET_CLASSES: dict[str, type[nn.Module]] = {  # nets a source config may name (no arbitrary imports from a file)
    "mtdqn.nets.QNetwork": QNetwork,
    "mtdqn.nets.q.QNetwork": QNetwork,
    "mtdqn.nets.multitask.MultiTaskQNetwork": MultiTaskQNetwork,
}


@dataclass
class SourceCheckpoint:
    """A loaded source: the checkpoint dict (tensors only) and the run's resolved config (None if not found)."""

    path: Path
    checkpoint: dict[str, Any]
    config: dict[str, Any] | None
    config_path: Path | None = None  # the config.yaml it was read from

    @property
    def tasks(self) -> list[str] | None:
        """Task names the source was trained on (from its config), or None without a config."""
        if self.config is None:
            return None
        return [str(t) for t in (self.config.get("task_set") or {}).get("tasks") or []]

    def net_state(self, prefix: str = NET_PREFIX) -> dict[str, Tensor]:
        """The online (or, with prefix='target_net.', target) network's tensors, names without the prefix."""
        state = self.checkpoint.get("state_dict") or {}
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    def transfer_state(self) -> dict[str, Tensor]:
        """`net_state()` plus, for a PopArt source (model.popart=true: one stacked `popart.*` head), the plain
        per-task heads `heads.<k>.weight/bias` it is equivalent to in return units (sigma_k W_k, sigma_k b_k + mu_k):
        what a target without PopArt loads, by name or through `head_from`."""
        state = self.net_state()
        return {**state, **popart_heads(state, self.n_actions())}

    def n_actions(self) -> list[int] | None:
        """Action count of each source task (from its config), or None without a config."""
        if self.config is None:
            return None
        ts = self.config.get("task_set") or {}
        return [s.n_actions for s in task_specs(str(ts.get("kind")), list(ts.get("tasks") or []),
                                                dict(ts.get("env_kwargs") or {}))]

    def replays(self) -> list[dict[str, Any]]:
        """Per-task replay buffer states saved with the checkpoint (empty list if none)."""
        for key in DATAMODULE_KEYS:
            if isinstance(self.checkpoint.get(key), Mapping):
                return list(self.checkpoint[key].get("replays") or [])
        for value in self.checkpoint.values():  # a data module of another class name
            if isinstance(value, Mapping) and "replays" in value:
                return list(value["replays"])
        return []


def popart_sigma_mu(state: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """A PopArt head's per-task (sigma, mu) from its `popart.*` tensors, sigma as PopArtHead computes it."""
    head = PopArtHead(state["popart.weight"].shape[-1], state["popart.weight"].shape[1],
                      n_tasks=state["popart.weight"].shape[0])
    head.load_state_dict({k: state[f"popart.{k}"] for k in ("weight", "bias", "mu", "nu")})
    return head.sigma.detach(), head.mu.detach()


def popart_heads(state: Mapping[str, Tensor], n_actions: Sequence[int] | None = None) -> dict[str, Tensor]:
    """{heads.<k>.weight, heads.<k>.bias}: the plain linear heads giving a PopArt head's Q-values in return units
    (sigma_k * (W_k f + b_k) + mu_k), each cut to its task's action count; {} for a net without a PopArt head."""
    if "popart.weight" not in state or any(k.startswith("heads.") for k in state):
        return {}
    sigma, mu = popart_sigma_mu(state)
    weight, bias = state["popart.weight"], state["popart.bias"]
    n_actions = list(n_actions) if n_actions else [weight.shape[1]] * weight.shape[0]
    out = {}
    for k, n in enumerate(n_actions[: weight.shape[0]]):
        out[f"heads.{k}.weight"] = weight[k, :n] * sigma[k]
        out[f"heads.{k}.bias"] = bias[k, :n] * sigma[k] + mu[k]
    return out


def resolve_checkpoint(ref: str, key: str) -> Path:
    """A local checkpoint path, or a W&B model artifact `wandb:<entity>/<project>/<name>:<alias>` (online only)."""
    if ref.startswith("wandb:"):
        try:
            import wandb

            directory = Path(wandb.Api().artifact(ref[len("wandb:"):], type="model").download())
        except Exception as exc:  # no network, not logged in, unknown artifact
            raise ValueError(f"{key}={ref!r}: cannot download the W&B artifact ({type(exc).__name__}: {exc}); "
                             "use a local path to last.ckpt") from exc
        ref = str(directory / "last.ckpt")
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ValueError(f"{key}={ref!r} is not a file; expected a checkpoint such as <run>/checkpoints/last.ckpt")
    return path


def config_file(ckpt: Path, explicit: str | None = None) -> Path | None:
    """The source run's config.yaml: `explicit`, else <run>/config.yaml for <run>/checkpoints/last.ckpt (or one
    beside the checkpoint); None when there is none."""
    if explicit:
        if not Path(explicit).is_file():
            raise ValueError(f"transfer.source_config={explicit!r} is not a file")
        return Path(explicit)
    return next((c for c in (ckpt.parent.parent / "config.yaml", ckpt.parent / "config.yaml") if c.is_file()), None)


def _shapes_differ(expected: Mapping[str, Tensor], actual: Mapping[str, Tensor], limit: int = 4) -> list[str]:
    """How the tensors of the config's network (`expected`) and of the checkpoint (`actual`) differ, in words."""
    def names(keys: list[str]) -> str:
        return ", ".join(keys[:limit]) + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")

    only_ckpt = [k for k in actual if k not in expected]
    only_cfg = [k for k in expected if k not in actual]
    shapes = [f"{k} {tuple(actual[k].shape)} in the checkpoint vs {tuple(v.shape)} in the config's network"
              for k, v in expected.items() if k in actual and tuple(actual[k].shape) != tuple(v.shape)]
    out = [f"the checkpoint has {names(only_ckpt)}, the config's network does not"] if only_ckpt else []
    out += [f"the config's network has {names(only_cfg)}, the checkpoint does not"] if only_cfg else []
    return out + shapes[:limit]


def check_config_fits(source: SourceCheckpoint, key: str, ref: str, explicit: str | None) -> None:
    """Refuse a source config whose network and task list (names and shapes of the net it builds) do not fit the
    checkpoint's tensors: its task names would pick the wrong head (`head_from`), EWC and teachers would not load.
    A net class outside mtdqn.nets cannot be rebuilt and is not checked."""
    if source.config is None:
        return
    try:
        net_class(dict(source.config.get("net") or {}), key)
    except ValueError:
        return
    where = (f"transfer.source_config={explicit!r}" if explicit
             else f"{key}={ref!r}: the config.yaml of its run ({source.config_path})")
    try:
        net, _ = build_net(source.config, key)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: its network cannot be built ({str(exc).splitlines()[0]}); give the config.yaml "
                         "of the run that saved the checkpoint") from exc
    differ = _shapes_differ(net.state_dict(), source.net_state())
    if differ:
        net_cfg, ts = source.config.get("net") or {}, source.config.get("task_set") or {}
        raise ValueError(
            f"{where} does not fit the checkpoint {str(source.path)!r}: its network (net._target_="
            f"{net_cfg.get('_target_')}, net.hidden={net_cfg.get('hidden')}, task_set.tasks={ts.get('tasks')}) "
            f"differs: {'; '.join(differ)}; give the config.yaml of the run that saved the checkpoint"
            + ("" if explicit else " with transfer.source_config"))


def load_source(ref: str, key: str = "transfer.checkpoint", config: str | None = None) -> SourceCheckpoint:
    """Resolve and load a checkpoint weights-only (pickled objects are refused), with its run config."""
    path = resolve_checkpoint(ref, key)
    try:
        ckpt = load_checkpoint(path)
    except ValueError as exc:
        raise ValueError(f"{key}={ref!r}: {exc}") from exc
    if not isinstance(ckpt, dict) or not any(k.startswith(NET_PREFIX) for k in ckpt.get("state_dict") or {}):
        raise ValueError(f"{key}={ref!r} holds no Q-network weights (no 'state_dict' with '{NET_PREFIX}*' tensors)")
    found = config_file(path, config)
    raw = yaml.safe_load(found.read_text()) if found is not None else None
    source = SourceCheckpoint(path, ckpt, raw if isinstance(raw, dict) else None, found)
    check_config_fits(source, key, ref, config)
    return source


@dataclass
class LoadReport:
    """What `load_matching` did: tensors loaded (target name -> source name), re-initialized (name -> why)."""

    loaded: dict[str, str] = field(default_factory=dict)
    reinitialized: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)  # source tensors no target tensor took
    notes: list[str] = field(default_factory=list)  # further lines for the log (how obs_norm was loaded)

    def summary(self) -> str:
        """A few lines for the log."""
        lines = [f"loaded {len(self.loaded)} tensors: " + ", ".join(
            k if k == v else f"{k} <- {v}" for k, v in self.loaded.items())]
        if self.reinitialized:
            lines.append(f"re-initialized {len(self.reinitialized)}: " + ", ".join(
                f"{k} ({why})" for k, why in self.reinitialized.items()))
        if self.unused:
            lines.append(f"unused source tensors: {', '.join(self.unused)}")
        return "\n".join(lines + self.notes)


def head_prefix_map(target_names: Sequence[str], source: SourceCheckpoint, head_from: str | None) -> dict[str, str]:
    """{target prefix: source prefix} sending the target's head(s) to the head of source task `head_from`."""
    if head_from is None:
        return {}
    tasks = source.tasks
    if tasks is None:
        raise ValueError(f"transfer.head_from={head_from!r} needs the source run's config.yaml (its task names); "
                         f"none next to {source.path} (set transfer.source_config)")
    if head_from not in tasks:
        raise ValueError(f"transfer.head_from={head_from!r} is not a source task; the source trained on {tasks}")
    names = source.transfer_state()  # a PopArt source's head as plain heads.<k>.* in return units
    if any(n.startswith("heads.") for n in names):
        src = f"heads.{tasks.index(head_from)}."
    elif any(n.startswith("head.") for n in names):
        src = "head."
    else:
        raise ValueError(f"transfer.head_from={head_from!r}: the source network has no 'head.' or 'heads.' tensors")
    targets = sorted({".".join(n.split(".")[:2]) + "." for n in target_names if n.startswith("heads.")})
    targets += ["head."] if any(n.startswith("head.") for n in target_names) else []
    return {t: src for t in targets}


def source_name(name: str, prefix_map: Mapping[str, str]) -> str:
    """The source tensor name for target tensor `name` (first matching prefix rewritten, else the same name)."""
    for target_prefix, source_prefix in prefix_map.items():
        if name.startswith(target_prefix):
            return source_prefix + name[len(target_prefix):]
    return name


@torch.no_grad()
def load_matching(target: nn.Module, source_state: Mapping[str, Tensor],
                  prefix_map: Mapping[str, str] | None = None) -> LoadReport:
    """Copy every source tensor whose (mapped) name and shape match into `target`; the rest keep their values."""
    prefix_map = prefix_map or {}
    report = LoadReport()
    for name, tensor in target.state_dict().items():
        src = source_name(name, prefix_map)
        if src not in source_state:
            report.reinitialized[name] = f"no {src!r} in source"
        elif tuple(source_state[src].shape) != tuple(tensor.shape):
            report.reinitialized[name] = f"shape {tuple(source_state[src].shape)} in source vs {tuple(tensor.shape)}"
        else:
            tensor.copy_(source_state[src])
            report.loaded[name] = src
    report.unused = [k for k in source_state if k not in set(report.loaded.values())]
    return report


OBS_NORM = "obs_norm."  # RunningObsNorm buffers (net.obs_norm=true): count (T,), mean and var (T, D)


def has_obs_norm(state: Mapping[str, Tensor]) -> bool:
    """The network whose state this is normalizes its observations (net.obs_norm=true)."""
    return f"{OBS_NORM}mean" in state


def obs_norm_statistics(source: Mapping[str, Tensor], target: Mapping[str, Tensor], tasks: Sequence[str] | None,
                        head_from: str | None, checkpoint: str) -> tuple[dict[str, Tensor], str]:
    """The source normalizer's statistics laid out for the target's normalizer (rows = target tasks), and how:
    the `head_from` task's row for every target task (the target then sees its inputs as that head did); row by row
    when both have as many tasks (as heads load by index); a single-task source's row for every target task;
    else the statistics pooled over the source's tasks (the mix the shared torso was trained on)."""
    count, mean, var = (source[f"{OBS_NORM}{k}"] for k in ("count", "mean", "var"))
    n_target, width = target[f"{OBS_NORM}mean"].shape
    if mean.shape[1] != width:
        raise ValueError(f"transfer.checkpoint={checkpoint!r}: the source's observation normalizer (net.obs_norm) "
                         f"covers {mean.shape[1]} observation features, the target's {width}: use a source with the "
                         "same observation size")
    if head_from is not None and count.shape[0] > 1:
        row = list(tasks or []).index(head_from)
        picked = (count[row:row + 1], mean[row:row + 1], var[row:row + 1])
        how = f"those of source task {head_from!r} (transfer.head_from) for every target task"
    elif count.shape[0] == n_target:
        picked, how = (count, mean, var), "task by task" if n_target > 1 else "the source's own"
    elif count.shape[0] == 1:
        picked, how = (count, mean, var), "the single source task's for every target task"
    else:
        from mtdqn.nets.normalize import RunningObsNorm

        pooled = RunningObsNorm(width)
        for t in range(count.shape[0]):
            n = count[t:t + 1].double()
            pooled.merge(n, mean[t:t + 1].double(), var[t:t + 1].double() * n.unsqueeze(1))
        picked = (pooled.count, pooled.mean, pooled.var)
        how = f"pooled over the source's {count.shape[0]} tasks"
    rows = [x.expand(n_target, *x.shape[1:]) if x.shape[0] == 1 else x for x in picked]
    state = {f"{OBS_NORM}{k}": x.clone().to(target[f"{OBS_NORM}{k}"].dtype)
             for k, x in zip(("count", "mean", "var"), rows, strict=True)}
    return state, how


def net_class(net_cfg: Mapping[str, Any], key: str) -> type[nn.Module]:
    """The network class a config's `net` node names (mtdqn.nets.* only)."""
    target = str(net_cfg.get("_target_", ""))
    if target in NET_CLASSES:
        return NET_CLASSES[target]
    module, _, name = target.rpartition(".")
    if module.startswith("mtdqn.nets"):
        cls = getattr(importlib.import_module(module), name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls
    raise ValueError(f"{key}: net._target_={target!r} is not a network class of mtdqn.nets")


def build_net(config: Mapping[str, Any], key: str) -> tuple[nn.Module, list[TaskSpec]]:
    """A fresh network with the architecture of a run config's `net` node (with the PopArt head `model.popart=true`
    adds, as scripts/compress.py rebuilds it), and that run's task specs."""
    net_cfg = dict(config.get("net") or {})
    cls = net_class(net_cfg, key)
    ts = config.get("task_set") or {}
    specs = task_specs(str(ts.get("kind")), list(ts.get("tasks") or []), dict(ts.get("env_kwargs") or {}))
    kwargs = {k: v for k, v in net_cfg.items() if not k.startswith("_")}
    if cls is QNetwork or not issubclass(cls, MultiTaskQNetwork):
        return cls(**specs[0].net_kwargs(), **kwargs), specs
    model_cfg = config.get("model") or {}
    if model_cfg.get("popart"):  # MultiTaskDQNModule hands its net a PopArt head (forward: Q in return units)
        kwargs["popart_beta"] = float(model_cfg.get("popart_beta", 3e-4))
    return cls(tasks=specs, **kwargs), specs


class TeacherQ(nn.Module):
    """A frozen teacher's Q-values for one task: obs (B, >= obs_dim), zero-padded beyond it -> (B, n_actions)."""

    def __init__(self, net: nn.Module, task_index: int | None, obs_dim: int, n_actions: int) -> None:
        super().__init__()
        self.net, self.task_index, self.obs_dim, self.n_actions = net, task_index, obs_dim, n_actions
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, obs: Tensor) -> Tensor:
        obs = obs[..., : self.obs_dim]
        if self.task_index is None:
            return self.net(obs)
        width = self.net.max_obs_dim
        obs = F.pad(obs, (0, width - obs.shape[-1])) if obs.shape[-1] < width else obs
        ids = torch.full(obs.shape[:-1], self.task_index, dtype=torch.int64, device=obs.device)
        return self.net(obs, ids)[..., : self.n_actions]


def load_teacher(ref: str, key: str) -> tuple[nn.Module, list[TaskSpec], Path]:
    """A teacher network (weights-only, architecture from its run's config.yaml) and its task specs."""
    source = load_source(ref, key)
    if source.config is None:
        raise ValueError(f"{key}={ref!r}: no config.yaml at {source.path.parent.parent} (the teacher's run "
                         "directory); it names the teacher's net architecture and tasks")
    net, specs = build_net(source.config, key)
    try:
        net.load_state_dict(source.net_state(), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{key}={ref!r}: the weights do not fit the net of its config.yaml: "
                         f"{str(exc).splitlines()[0]}") from exc
    return net, specs, source.path


def teachers_for(students: Sequence[TaskSpec], teachers: Sequence[str] | Mapping[str, str]) -> list[TeacherQ]:
    """One TeacherQ per student task: from {task: checkpoint} (each task taught by the checkpoint mapped to it,
    which must have been trained on that task), or from a list (the first listed checkpoint trained on it; a
    listed checkpoint trained on none of the student's tasks is refused)."""
    names = [s.name for s in students]
    cache: dict[str, tuple[nn.Module, list[TaskSpec], Path]] = {}

    def load(ref: str, key: str) -> tuple[nn.Module, list[TaskSpec], Path]:
        if ref not in cache:  # one network per checkpoint, however many tasks it teaches
            cache[ref] = load_teacher(ref, key)
        return cache[ref]

    chosen: dict[str, tuple[str, nn.Module, list[TaskSpec]]] = {}  # student task -> (key, net, specs)
    useless: list[str] = []  # list-form teachers trained on none of the student's tasks
    if isinstance(teachers, Mapping):
        unknown = set(teachers) - set(names)
        if unknown:
            raise ValueError(f"transfer.teachers names tasks {sorted(unknown)} the student does not train on "
                             f"({names})")
        missing = [n for n in names if n not in teachers]
        if missing:
            raise ValueError(f"transfer.teachers has no teacher for student tasks {missing}: the {{task: ckpt}} form "
                             f"needs one entry per student task ({names}), or use the list form")
        for task, ref in teachers.items():
            key = f"transfer.teachers.{task}"
            net, specs, path = load(ref, key)
            if task not in [x.name for x in specs]:
                raise ValueError(f"{key}: {path} was not trained on {task} (its tasks: {[x.name for x in specs]})")
            chosen[task] = (key, net, specs)
    else:
        for i, ref in enumerate(teachers):
            key = f"transfer.teachers[{i}]"
            net, specs, path = load(ref, key)
            taught = [x.name for x in specs if x.name in names]
            if not taught:
                useless.append(f"{key}: {path} was trained on {[x.name for x in specs]}, none of the student's "
                               f"tasks {names}; it would teach nothing (remove it, or check the path)")
                continue
            new = [t for t in taught if t not in chosen]
            if not new:
                log.warning("transfer: %s (%s) teaches no task: every task it was trained on (%s) goes to an "
                            "earlier listed teacher", key, path, ", ".join(taught))
            for t in new:
                chosen[t] = (key, net, specs)
    for name in names:
        if name not in chosen:
            covered = sorted({x.name for _, s, _ in cache.values() for x in s})
            raise ValueError(f"transfer.teachers: no teacher was trained on task {name!r}; the teachers "
                             f"cover {covered}")
    if useless:
        raise ValueError(useless[0])
    out = []
    for student in students:
        key, net, specs = chosen[student.name]
        spec = next(x for x in specs if x.name == student.name)
        if (spec.obs_dim, spec.n_actions) != (student.obs_dim, student.n_actions):
            raise ValueError(f"{key}: task {student.name!r} has obs_dim/n_actions {(spec.obs_dim, spec.n_actions)} "
                             f"for the teacher but {(student.obs_dim, student.n_actions)} for the student")
        index = specs.index(spec) if isinstance(net, MultiTaskQNetwork) else None
        out.append(TeacherQ(net, index, spec.obs_dim, spec.n_actions))
        log.info("transfer: task %s distilled from %s%s", student.name, key,
                 "" if index is None else f" (head {index})")
    return out

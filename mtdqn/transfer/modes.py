"""Transfer strategies applied to a freshly built model (conf/transfer: none | finetune | freeze | ewc | distill).

- finetune: the online network starts from the source checkpoint wherever tensor names and shapes match (heads of
  another action or task count keep their fresh initialization; `head_from` sends the target head(s) to one
  source task's head); the target network starts as a copy of it. `torso_lr_scale` multiplies the learning rate of
  the loaded torso (DQNModule.lr_scale: its own optimizer param group).
- freeze: finetune, and the loaded torso is frozen (requires_grad off, so it gets no gradient and the optimizer,
  Adam's moments included, never touches it) for the first `freeze_updates` gradient updates (null / -1: always),
  through DQNModule.before_update.
- ewc: finetune plus (lambda / 2) sum_i F_i (theta_i - theta*_i)^2 on the loaded parameters (DQNModule.regularizers),
  F the diagonal Fisher of the source network on the replay saved in its checkpoint (mtdqn.transfer.ewc).
- distill: the student (model=student) gets one frozen teacher per task (mtdqn.transfer.loading.teachers_for).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtdqn.models.dqn import DQNModule
from mtdqn.models.student import DistillStudentModule
from mtdqn.transfer.config import TransferConfig
from mtdqn.transfer.ewc import ewc_regularizer
from mtdqn.transfer.loading import (
    OBS_NORM,
    LoadReport,
    has_obs_norm,
    head_prefix_map,
    load_matching,
    load_source,
    obs_norm_statistics,
    teachers_for,
)

log = logging.getLogger("mtdqn")
SHARED_TORSO = ("torso.", "encoder.")  # the shared trunk a transfer carries over: it must load entirely


def _layer_norm(state: dict[str, Tensor]) -> bool:
    """The torso has LayerNorms (net.layer_norm=true): 1-D weights among its Linear layers' 2-D ones."""
    return any(n.startswith("torso.") and n.endswith(".weight") and t.dim() == 1 for n, t in state.items())


def check_fit(q_net: nn.Module, report: LoadReport, fresh: dict[str, Tensor], checkpoint: str,
              source_state: dict[str, Tensor] | None = None) -> None:
    """Refuse a source whose torso (SHARED_TORSO) does not load entirely; a layer elsewhere (a per-task adapter,
    head) that loaded only partly is put back to its fresh initialization whole."""
    misfit = [n for n in q_net.state_dict() if n.startswith(SHARED_TORSO) and n not in report.loaded]
    if misfit:
        ln = ""
        if source_state is not None and _layer_norm(source_state) != _layer_norm(q_net.state_dict()):
            ln = (f" (the source was trained with net.layer_norm={str(_layer_norm(source_state)).lower()}, the "
                  f"target has net.layer_norm={str(_layer_norm(q_net.state_dict())).lower()})")
        raise ValueError(
            f"transfer.checkpoint={checkpoint!r}: the source network's torso does not fit the target's{ln}: "
            + ", ".join(f"{n} ({report.reinitialized[n]})" for n in misfit)
            + f"; every torso tensor ({', '.join(p + '*' for p in SHARED_TORSO)}) must load: use a source with the "
            "same net.hidden, net.layer_norm, observation size, conv layers and task conditioning")
    layers: dict[str, list[str]] = {}
    for name in q_net.state_dict():
        layers.setdefault(name.rpartition(".")[0], []).append(name)
    state = q_net.state_dict()
    with torch.no_grad():
        for layer, names in layers.items():
            loaded = [n for n in names if n in report.loaded]
            if loaded and len(loaded) < len(names):  # e.g. an adapter's bias fits, its weight does not
                misfits = ", ".join(n for n in names if n not in report.loaded)
                for n in loaded:
                    state[n].copy_(fresh[n])
                    report.reinitialized[n] = f"rest of layer {layer} does not fit: {misfits}"
                    del report.loaded[n]


def check_obs_norm(target: dict[str, Tensor], source: dict[str, Tensor], checkpoint: str) -> None:
    """Refuse a source and target of which only one normalizes its observations (net.obs_norm): the torso would
    see inputs on another scale than it was trained on (raw instead of normalized, or rescaled by a fresh
    normalizer)."""
    src, tgt = has_obs_norm(source), has_obs_norm(target)
    if src != tgt:
        raise ValueError(
            f"net.obs_norm={str(tgt).lower()}: the source (transfer.checkpoint={checkpoint!r}) was trained with "
            f"net.obs_norm={str(src).lower()}, so its torso "
            + ("expects normalized observations and would get raw ones" if src
               else "expects raw observations and would get them rescaled by a fresh normalizer")
            + f"; set net.obs_norm={str(src).lower()} as the source run had it")


def load_obs_norm(q_net: nn.Module, source: dict[str, Tensor], tasks: list[str] | None, cfg: TransferConfig,
                  report: LoadReport) -> None:
    """Load the source's observation-normalizer statistics with its torso (which was trained on inputs normalized
    by them), laid out per target task by `obs_norm_statistics`; noted in the report."""
    target = q_net.state_dict()
    stats, how = obs_norm_statistics(source, target, tasks, cfg.head_from, str(cfg.checkpoint))
    with torch.no_grad():
        for name, value in stats.items():
            target[name].copy_(value)
            report.reinitialized.pop(name, None)
            report.loaded[name] = name
    count = int(stats[f"{OBS_NORM}count"].max())
    report.notes.append(f"observation normalizer (net.obs_norm) statistics loaded with the torso: {how} ({count:,} "
                        "source observations per target task; target observations are merged into them)")


def load_into_model(model: DQNModule, cfg: TransferConfig):
    """Load the source checkpoint's online network into `model.q_net` by name and shape (an observation
    normalizer's statistics through `load_obs_norm`); target = online copy."""
    source = load_source(cfg.checkpoint, "transfer.checkpoint", cfg.source_config)
    state = source.transfer_state()
    check_obs_norm(model.q_net.state_dict(), state, cfg.checkpoint)
    prefix_map = head_prefix_map(list(model.q_net.state_dict()), source, cfg.head_from)
    fresh = {k: v.detach().clone() for k, v in model.q_net.state_dict().items()}
    report = load_matching(model.q_net, {k: v for k, v in state.items() if not k.startswith(OBS_NORM)}, prefix_map)
    check_fit(model.q_net, report, fresh, cfg.checkpoint, state)
    if has_obs_norm(state):
        load_obs_norm(model.q_net, state, source.tasks, cfg, report)
    derived = set(state) - set(source.net_state())  # a PopArt source's heads as plain heads: not "unused"
    report.unused = [k for k in state if k not in set(report.loaded.values()) and k not in derived]
    if not report.loaded:
        raise ValueError(f"transfer.checkpoint={cfg.checkpoint!r}: no tensor of the target network matches the "
                         f"source by name and shape ({report.summary()})")
    model.target_net.load_state_dict(model.q_net.state_dict())
    log.info("transfer (%s) from %s:\n%s", cfg.mode, source.path, report.summary())
    return source, report


def torso_names(q_net: nn.Module, report: LoadReport, prefixes: tuple[str, ...]) -> list[str]:
    """Loaded parameters under a torso prefix (heads and re-initialized tensors excluded)."""
    return [n for n, _ in q_net.named_parameters() if n in report.loaded and n.startswith(prefixes)]


def lr_scale_prefixes(q_net: nn.Module, torso: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """Name prefixes covering exactly the `torso` parameters: a whole prefix when all its parameters are in the
    torso (one optimizer group), else the individual names."""
    names = [n for n, _ in q_net.named_parameters()]
    out: list[str] = []
    for prefix in prefixes:
        under = [n for n in names if n.startswith(prefix)]
        chosen = [n for n in under if n in torso]
        out += [prefix] if under and len(chosen) == len(under) else chosen
    return out


class FreezeSchedule:
    """A before_update hook: torso parameters frozen while global_step < `updates` (None: for ever)."""

    def __init__(self, model: DQNModule, params: list[nn.Parameter], updates: int | None) -> None:
        self.model, self.params, self.updates = model, params, updates
        self.frozen: bool | None = None

    def set_frozen(self, frozen: bool) -> None:
        """Toggle requires_grad and refresh the module's list of trainable parameters."""
        for p in self.params:
            p.requires_grad_(not frozen)
        if hasattr(self.model, "_trainable"):  # set in on_train_start
            self.model._trainable = [p for p in self.model.q_net.parameters() if p.requires_grad]
        if self.frozen is not None and not frozen:
            log.info("transfer: torso unfrozen at gradient update %d", self.model.global_step)
        self.frozen = frozen

    def __call__(self, global_step: int) -> None:
        trainer = getattr(self.model, "_trainer", None)
        if self.updates is not None and trainer is not None and trainer.world_size > 1:
            raise ValueError(f"transfer.freeze_updates={self.updates}: unfreezing during training is not supported "
                             "with DDP (trainer.devices > 1); use transfer.freeze_updates=null or one device")
        frozen = self.updates is None or global_step < self.updates
        if frozen != self.frozen:
            self.set_frozen(frozen)


def apply_transfer(model: DQNModule, transfer: Mapping[str, Any] | TransferConfig | None) -> TransferConfig:
    """Apply the selected transfer mode to a freshly built model (before fit); returns the validated config."""
    cfg = transfer if isinstance(transfer, TransferConfig) else TransferConfig.from_mapping(transfer)
    student = isinstance(model, DistillStudentModule)
    if student != (cfg.mode == "distill"):
        raise ValueError(f"transfer.mode={cfg.mode!r} with model={type(model).__name__}: model=student goes with "
                         "transfer=distill, and transfer=distill needs model=student")
    if cfg.mode == "distill":
        model.set_teachers(teachers_for(model.tasks, cfg.teachers))
        return cfg
    if not cfg.loads_policy:
        return cfg
    source, report = load_into_model(model, cfg)
    torso = torso_names(model.q_net, report, cfg.torso_prefixes)
    if cfg.torso_lr_scale != 1.0:
        model.lr_scale.update(dict.fromkeys(lr_scale_prefixes(model.q_net, torso, cfg.torso_prefixes),
                                            cfg.torso_lr_scale))
    if cfg.mode == "freeze":
        if not torso:
            raise ValueError(f"transfer.mode='freeze': no loaded parameter starts with transfer.torso_prefixes="
                             f"{list(cfg.torso_prefixes)}")
        params = dict(model.q_net.named_parameters())
        hook = FreezeSchedule(model, [params[n] for n in torso], cfg.freeze_updates)
        hook(0)
        model.before_update.append(hook)
        if cfg.freeze_updates == 0:
            log.info("transfer: %d torso tensors loaded, not frozen (transfer.freeze_updates=0)", len(torso))
        else:
            log.info("transfer: %d torso tensors frozen for %s gradient updates", len(torso),
                     "all" if cfg.freeze_updates is None else cfg.freeze_updates)
    if cfg.mode == "ewc":
        model.regularizers.append(ewc_regularizer(model.q_net, source, report, cfg.ewc))
    return cfg

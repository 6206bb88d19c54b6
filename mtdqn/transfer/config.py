"""The `transfer` config node as a typed, validated record (conf/transfer/*.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

MODES = ("none", "finetune", "freeze", "ewc", "distill")
FROM_CHECKPOINT = ("finetune", "freeze", "ewc")  # modes that start from transfer.checkpoint
EWC_NORMALIZE = ("mean", "none")
MISSING = "???"  # OmegaConf's mandatory marker, as left by to_container(..., throw_on_missing=False)
DEFAULT_TORSO = ("encoder.", "encoders.", "torso.", "adapters.", "embedding.", "film_")  # conv encoders too


def _missing(value: Any) -> bool:
    return value is None or value == MISSING or value == ""


@dataclass(frozen=True)
class EWCConfig:
    """transfer.ewc: penalty strength and how the diagonal Fisher information is estimated."""

    lam: float = 100.0  # `lambda` in YAML: penalty (lambda / 2) sum_i F_i (theta_i - theta*_i)^2
    fisher_samples: int = 1024  # source replay transitions per source task
    fisher_batch_size: int = 1  # transitions per squared gradient (1 = per-sample empirical Fisher)
    normalize: str = "mean"  # mean (F / mean F) | none
    seed: int = 0  # sampling of the replay transitions

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None) -> EWCConfig:
        node = dict(node or {})
        unknown = set(node) - {"lambda", "fisher_samples", "fisher_batch_size", "normalize", "seed"}
        if unknown:
            raise ValueError(f"transfer.ewc has unknown keys {sorted(unknown)}; known: lambda, fisher_samples, "
                             "fisher_batch_size, normalize, seed")
        cfg = cls(lam=float(node.get("lambda", cls.lam)), fisher_samples=int(node.get("fisher_samples", 1024)),
                  fisher_batch_size=int(node.get("fisher_batch_size", 1)), normalize=str(node.get("normalize", "mean")),
                  seed=int(node.get("seed", 0)))
        if cfg.lam < 0:
            raise ValueError(f"transfer.ewc.lambda={cfg.lam} must be >= 0")
        if cfg.fisher_samples <= 0 or cfg.fisher_batch_size <= 0:
            raise ValueError(f"transfer.ewc.fisher_samples={cfg.fisher_samples} and fisher_batch_size="
                             f"{cfg.fisher_batch_size} must be > 0")
        if cfg.normalize not in EWC_NORMALIZE:
            raise ValueError(f"transfer.ewc.normalize={cfg.normalize!r} is not one of {list(EWC_NORMALIZE)}")
        return cfg


@dataclass(frozen=True)
class TransferConfig:
    """What conf/transfer/<mode>.yaml selects; see that folder for every key's meaning and unit."""

    mode: str = "none"
    checkpoint: str | None = None  # source checkpoint (finetune, freeze, ewc)
    source_config: str | None = None  # source run's config.yaml (default: found next to the checkpoint)
    head_from: str | None = None  # source task whose Q head initializes the target head(s)
    torso_lr_scale: float = 1.0  # learning-rate multiplier of the loaded torso
    epsilon_start: float | None = None  # exploration.start of runs that load a policy (None: exploration.start)
    torso_prefixes: tuple[str, ...] = DEFAULT_TORSO  # parameter-name prefixes that make up the torso
    freeze_updates: int | None = None  # gradient updates the torso stays frozen (None = for ever)
    teachers: tuple[str, ...] | dict[str, str] = ()  # distill: teacher checkpoints (list, or {task: path})
    ewc: EWCConfig = field(default_factory=EWCConfig)
    eval_source_tasks: tuple[str, ...] = ()  # read by callbacks.eval.source_tasks (conf/callbacks/default.yaml)

    @property
    def loads_policy(self) -> bool:
        """The run starts from `checkpoint` (finetune, freeze, ewc)."""
        return self.mode in FROM_CHECKPOINT

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None) -> TransferConfig:
        """Validate a plain mapping (the resolved `transfer` node); bad values raise ValueError naming the key."""
        node = dict(node or {"mode": "none"})
        known = {f.name for f in fields(cls)}
        unknown = set(node) - known
        if unknown:
            raise ValueError(f"transfer has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        mode = node.get("mode", "none")
        if mode not in MODES:
            raise ValueError(f"transfer.mode={mode!r} is not one of {list(MODES)}")
        checkpoint = None if _missing(node.get("checkpoint")) else str(node["checkpoint"])
        if mode in FROM_CHECKPOINT and checkpoint is None:
            raise ValueError(f"transfer.checkpoint={node.get('checkpoint')!r}: transfer.mode={mode!r} needs a source "
                             "checkpoint, e.g. transfer.checkpoint=outputs/<run>/checkpoints/last.ckpt")
        scale = float(node.get("torso_lr_scale", 1.0))
        if not scale > 0:
            raise ValueError(f"transfer.torso_lr_scale={scale} must be > 0 (to stop the torso, use transfer=freeze)")
        eps = node.get("epsilon_start")
        if eps is not None:
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= float(eps) <= 1.0:
                raise ValueError(f"transfer.epsilon_start={eps!r} is invalid: expected a number in [0, 1] (the "
                                 "exploration epsilon a loaded policy starts from) or null (exploration.start)")
            eps = float(eps)
        freeze = node.get("freeze_updates")
        freeze = None if freeze is None or int(freeze) == -1 else int(freeze)
        if freeze is not None and freeze < 0:
            raise ValueError(f"transfer.freeze_updates={freeze} must be >= 0, or null / -1 (frozen for ever)")
        teachers = node.get("teachers") or ()
        if _missing(teachers) or teachers == ():
            teachers = ()
        teachers = {str(k): str(v) for k, v in teachers.items()} if isinstance(teachers, Mapping) else tuple(
            str(t) for t in teachers)
        if mode == "distill" and not teachers:
            raise ValueError(f"transfer.teachers={node.get('teachers')!r}: transfer.mode='distill' needs teacher "
                             "checkpoints, e.g. transfer.teachers=[<run>/checkpoints/last.ckpt,...]")
        source_tasks = node.get("eval_source_tasks") or ()
        if isinstance(source_tasks, str):
            raise ValueError(f"transfer.eval_source_tasks={source_tasks!r} must be a list of task names")
        return cls(
            mode=mode, checkpoint=checkpoint,
            source_config=None if _missing(node.get("source_config")) else str(node["source_config"]),
            head_from=None if _missing(node.get("head_from")) else str(node["head_from"]),
            torso_lr_scale=scale, epsilon_start=eps, torso_prefixes=tuple(node.get("torso_prefixes") or DEFAULT_TORSO),
            freeze_updates=freeze, teachers=teachers, ewc=EWCConfig.from_mapping(node.get("ewc")),
            eval_source_tasks=tuple(str(t) for t in source_tasks),
        )

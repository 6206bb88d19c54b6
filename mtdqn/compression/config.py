"""Typed, validated compression settings (conf/compression): every bad value fails before any env step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from mtdqn.nets.q import positive_widths

METHODS = ("distill", "prune", "structured", "quantize", "fp16", "bf16")
TRAINED = ("distill", "prune", "structured")  # methods that train weights: they must come before any cast
FIT_LOSSES = ("kl", "kl_rusu", "mse")  # see mtdqn.compression.fit.fit_loss
CRITERIA = ("l1", "l2", "l2_io")


@dataclass
class DistillSettings:
    """Offline policy distillation into a smaller network of the same kind (KL on temperature-softened Q)."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])  # student widths
    steps: int = 6000  # gradient steps
    batch_size: int = 256  # states per step
    lr: float = 1e-3  # Adam, cosine-decayed to 0 over `steps`
    temperature: float = 0.01  # softmax temperature of the Q distributions (Rusu et al. 2015 used 0.01)
    loss: str = "kl"  # kl: both distributions at the temperature | kl_rusu: student unscaled | mse


@dataclass
class PruneSettings:
    """Iterative global magnitude pruning of the Linear weights, fine-tuned on replay states between steps."""

    sparsity: float = 0.8  # final fraction of Linear weights set to zero, in [0, 1)
    steps: int = 4  # pruning steps (cubic schedule to `sparsity`)
    finetune_steps: int = 500  # gradient steps after each pruning step
    batch_size: int = 256
    lr: float = 3e-4
    loss: str = "kl"  # fit to the unpruned network: kl | kl_rusu | mse (see fit_loss)
    temperature: float = 0.01  # for the kl losses


@dataclass
class StructuredSettings:
    """Structured pruning: whole hidden neurons removed, the Linear layers really shrink."""

    keep_fraction: float = 0.5  # fraction of each hidden layer's neurons kept, in (0, 1]
    criterion: str = "l2_io"  # l1 | l2 of incoming weights and bias | l2_io: incoming x outgoing L2 norm
    finetune_steps: int = 1000  # gradient steps after the cut (0: none)
    batch_size: int = 256
    lr: float = 3e-4
    loss: str = "kl"
    temperature: float = 0.01


@dataclass
class QuantizeSettings:
    """int8 dynamic quantization of every Linear layer."""

    per_channel: bool = True  # per-output-channel weight scales (more accurate than one scale per tensor)


@dataclass
class DataSettings:
    """The states fine-tuning and distillation train on: the teacher's replay plus fresh teacher rollouts."""

    max_states: int = 200_000  # replay states kept (split equally over tasks)
    rollout_fraction: float = 0.25  # teacher rollout states added, as a fraction of the replay states kept (0: none)
    rollout_epsilon: float = 0.05
    rollout_envs: int = 16  # parallel envs per task for the rollouts
    max_epochs: float = 20.0  # every fit stops after at most this many passes over the states


@dataclass
class EvalSettings:
    """Greedy evaluation of every policy on the same fixed seeds."""

    episodes: int = 64  # per task
    seed: int = 10_000  # env i gets seed + i


@dataclass
class LatencySettings:
    """CPU latency: median of many timed forward calls after warm-up, torch threads 1."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 256])
    calls: int = 20  # timed calls per round
    rounds: int = 15  # rounds, interleaved over policies so load drift hits them all alike
    warmup: int = 20  # untimed calls per policy and batch size


@dataclass
class ExportSettings:
    """TorchScript (and ONNX when the `onnx` package is importable), checked to pick the same actions."""

    torchscript: bool = True
    onnx: bool = True
    check_states: int = 512  # fixed batch of replay states the exported actions are compared on


@dataclass
class CompressionSettings:
    """`methods`: one chain of methods applied in order, or a list of chains each starting from the original."""

    methods: list[list[str]] = field(default_factory=list)
    seed: int = 0
    distill: DistillSettings = field(default_factory=DistillSettings)
    prune: PruneSettings = field(default_factory=PruneSettings)
    structured: StructuredSettings = field(default_factory=StructuredSettings)
    quantize: QuantizeSettings = field(default_factory=QuantizeSettings)
    data: DataSettings = field(default_factory=DataSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    export: ExportSettings = field(default_factory=ExportSettings)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> CompressionSettings:
        """Build and validate from a plain mapping (the `compression` config node without `_target_`)."""
        settings = _build(cls, dict(values or {}), "compression")
        settings.methods = normalize_chains(settings.methods)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the key, the bad value and what is allowed."""
        _check_range("compression.prune.sparsity", self.prune.sparsity, 0.0, 1.0, "[0, 1)", hi_open=True)
        _check_range("compression.structured.keep_fraction", self.structured.keep_fraction, 0.0, 1.0, "(0, 1]",
                     lo_open=True)
        _check_range("compression.data.rollout_epsilon", self.data.rollout_epsilon, 0.0, 1.0, "[0, 1]")
        _check_range("compression.data.rollout_fraction", self.data.rollout_fraction, 0.0, 10.0, "[0, 10]")
        for key, value in (("distill.hidden", self.distill.hidden),):
            if not positive_widths(value):
                raise ValueError(f"compression.{key}={list(value)} must be a non-empty list of positive widths")
        for key, value, allowed in (("distill.loss", self.distill.loss, FIT_LOSSES),
                                    ("prune.loss", self.prune.loss, FIT_LOSSES),
                                    ("structured.loss", self.structured.loss, FIT_LOSSES),
                                    ("structured.criterion", self.structured.criterion, CRITERIA)):
            if value not in allowed:
                raise ValueError(f"compression.{key}={value!r} is not one of {list(allowed)}")
        positive = {
            "distill.steps": self.distill.steps, "distill.batch_size": self.distill.batch_size,
            "distill.lr": self.distill.lr, "distill.temperature": self.distill.temperature,
            "prune.steps": self.prune.steps, "prune.batch_size": self.prune.batch_size, "prune.lr": self.prune.lr,
            "prune.temperature": self.prune.temperature, "structured.batch_size": self.structured.batch_size,
            "structured.lr": self.structured.lr, "structured.temperature": self.structured.temperature,
            "data.max_states": self.data.max_states, "data.rollout_envs": self.data.rollout_envs,
            "data.max_epochs": self.data.max_epochs,
            "eval.episodes": self.eval.episodes, "latency.calls": self.latency.calls,
            "latency.rounds": self.latency.rounds, "export.check_states": self.export.check_states,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"compression.{key}={value} must be > 0")
        non_negative = {"prune.finetune_steps": self.prune.finetune_steps,
                        "structured.finetune_steps": self.structured.finetune_steps,
                        "latency.warmup": self.latency.warmup}
        for key, value in non_negative.items():
            if value < 0:
                raise ValueError(f"compression.{key}={value} must be >= 0")
        if not self.latency.batch_sizes or any(int(b) <= 0 for b in self.latency.batch_sizes):
            raise ValueError(f"compression.latency.batch_sizes={self.latency.batch_sizes} must be positive sizes")


def normalize_chains(methods: Sequence[Any] | str | None) -> list[list[str]]:
    """`[distill, quantize]` (one chain) or `[[distill, quantize], [prune]]` (several) -> list of chains;
    "distill+quantize" is accepted for a chain too. Unknown methods and casts before training raise ValueError."""
    if methods is None:
        return []
    if isinstance(methods, str):
        methods = [methods]
    items = list(methods)
    if all(isinstance(m, str) and "+" not in m for m in items):
        chains = [items] if items else []
    else:
        chains = [m.split("+") if isinstance(m, str) else list(m) for m in items]
    for chain in chains:
        if not chain:
            raise ValueError(f"compression.methods={items} holds an empty chain; allowed methods: {list(METHODS)}")
        for m in chain:
            if m not in METHODS:
                raise ValueError(f"compression.methods: {m!r} is not one of {list(METHODS)}")
        cast = next((m for m in chain if m not in TRAINED), None)
        if cast is not None and any(m in TRAINED for m in chain[chain.index(cast):]):
            raise ValueError(
                f"compression.methods: chain {chain} trains after {cast!r}; methods that train weights "
                f"({list(TRAINED)}) must come before casts ({[m for m in METHODS if m not in TRAINED]})"
            )
        if len(set(chain)) != len(chain):
            raise ValueError(f"compression.methods: chain {chain} repeats a method")
    return [list(c) for c in chains]


def chain_name(chain: Sequence[str]) -> str:
    """The report's name of a chain: methods joined by '+'."""
    return "+".join(chain)


def _check_range(key: str, value: float, lo: float, hi: float, allowed: str,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    bad = value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi)
    if bad:
        raise ValueError(f"{key}={value} must lie in {allowed}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Dataclass `cls` from `values`; unknown keys and wrongly typed sections raise ValueError."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{prefix}.{key} is not a setting; allowed keys: {sorted(known)}")
        default = known[key].default_factory() if callable(known[key].default_factory) else known[key].default
        if is_dataclass(default):
            if not isinstance(value, Mapping):
                raise ValueError(f"{prefix}.{key}={value!r} must be a mapping of {sorted(f.name for f in fields(default))}")
            kwargs[key] = _build(type(default), dict(value), f"{prefix}.{key}")
        else:
            kwargs[key] = list(value) if isinstance(value, (list, tuple)) else value
    return cls(**kwargs)

"""Typed, validated compression settings (conf/compression): every bad value fails before any env step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, get_type_hints

from mtdqn.config_checks import INT, NUM, check_number
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
    """Evaluation of every policy on the same fixed seeds: greedy, or epsilon-greedy as the run evaluated."""

    episodes: int = 64  # per task
    seed: int = 10_000  # env i gets seed + i
    epsilon: float = 0.0  # share of random actions, as the run's callbacks.eval.epsilon (Atari's protocol: 0.05)


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
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check every setting's type and range, raising ValueError naming the full key, the bad value and what is
        allowed; integral floats (1e4) become ints, ints become floats where a float is meant."""
        self.methods = normalize_chains(self.methods)
        _validate(self, "compression")


# the bound of every int and float setting (keys relative to `compression`; mtdqn.config_checks.BOUNDS)
BOUNDS: dict[str, str] = {
    "seed": ">= 0",
    "distill.steps": "> 0", "distill.batch_size": "> 0", "distill.lr": "> 0", "distill.temperature": "> 0",
    "prune.sparsity": "in [0, 1)", "prune.steps": "> 0", "prune.finetune_steps": ">= 0", "prune.batch_size": "> 0",
    "prune.lr": "> 0", "prune.temperature": "> 0",
    "structured.keep_fraction": "in (0, 1]", "structured.finetune_steps": ">= 0", "structured.batch_size": "> 0",
    "structured.lr": "> 0", "structured.temperature": "> 0",
    "data.max_states": "> 0", "data.rollout_fraction": "in [0, 10]", "data.rollout_epsilon": "in [0, 1]",
    "data.rollout_envs": "> 0", "data.max_epochs": "> 0",
    "eval.episodes": "> 0", "eval.seed": ">= 0", "eval.epsilon": "in [0, 1]",
    "latency.calls": "> 0", "latency.rounds": "> 0", "latency.warmup": ">= 0",
    "export.check_states": "> 0",
}
# the allowed values of every string setting
CHOICES: dict[str, tuple[str, ...]] = {
    "distill.loss": FIT_LOSSES, "prune.loss": FIT_LOSSES, "structured.loss": FIT_LOSSES,
    "structured.criterion": CRITERIA,
}
# what every list-of-positive-integers setting holds
WIDTHS: dict[str, str] = {"distill.hidden": "positive widths", "latency.batch_sizes": "positive batch sizes"}


def _validate(settings: Any, prefix: str) -> None:
    """Type and range of every leaf of the settings dataclass `settings` (sections recursively)."""
    hints = get_type_hints(type(settings))
    for f in fields(settings):
        key, value = f"{prefix}.{f.name}", getattr(settings, f.name)
        rel = key.removeprefix("compression.")
        kind = hints[f.name]
        if is_dataclass(value):
            _validate(value, key)
        elif rel == "methods":
            continue  # normalize_chains
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{key}={value!r} must be true or false")
        elif kind in (int, float):
            check_number(key, value, INT if kind is int else NUM, BOUNDS[rel])
            setattr(settings, f.name, kind(value))
        elif kind is str:
            if not isinstance(value, str) or value not in CHOICES[rel]:
                raise ValueError(f"{key}={value!r} is not one of {list(CHOICES[rel])}")
        elif rel in WIDTHS:
            if not isinstance(value, list | tuple) or not positive_widths(value):
                raise ValueError(f"{key}={value!r} must be a non-empty list of {WIDTHS[rel]} (integers > 0)")
            setattr(settings, f.name, [int(v) for v in value])
        else:  # a new setting needs a rule here
            raise TypeError(f"{key}: no check for settings of type {kind}")


def normalize_chains(methods: Sequence[Any] | str | None) -> list[list[str]]:
    """`[distill, quantize]` (one chain) or `[[distill, quantize], [prune]]` (several) -> list of chains;
    "distill+quantize" is accepted for a chain too. Unknown methods and casts before training raise ValueError."""
    if methods is None:
        return []
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list | tuple):
        raise ValueError(f"compression.methods={methods!r} must be a list of methods or of chains of methods; "
                         f"allowed methods: {list(METHODS)}")
    items = list(methods)
    odd = [m for m in items if not isinstance(m, str | list | tuple)]
    if odd:
        raise ValueError(f"compression.methods: {odd[0]!r} is neither a method nor a chain of methods; allowed "
                         f"methods: {list(METHODS)}")
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

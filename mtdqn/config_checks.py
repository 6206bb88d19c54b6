"""Checks of the composed config before anything is built: numeric and true/false keys (their type and range), the
replay against the minibatch, and every key given to a component (`_target_` nodes, `data`) against its arguments.

Hydra parses `data.total_env_steps=abc` as a string and `data.batch_size=32.5` as a float; without this table they
failed deep inside a constructor with a TypeError, and `optimizer.lr=-1` with torch's 'Invalid learning rate: -1',
which names no key; `model.double_q=yes` (a string, and truthy) silently turned double DQN on, as `no` or
`flase` would have. The components keep their own checks (they are also used without Hydra); this table makes
train.py's answer one line with the key, the value and what is allowed, before any env is made.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

INT, NUM = "an integer", "a number"
BOUNDS: dict[str, Callable[[float], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in [0, 10]": lambda v: 0 <= v <= 10,
    ">= -1": lambda v: v >= -1,
}
# key: (kind, bound, null allowed); a key absent from the config (another optimizer, callbacks=none) is skipped
RULES: dict[str, tuple[str, str, bool]] = {
    "gamma": (NUM, "in (0, 1]", False),
    "torch_threads": (INT, "> 0", True),
    "data.num_envs": (INT, "> 0", False),
    "data.total_env_steps": (INT, "> 0", False),
    "data.env_steps_per_round": (INT, "> 0", False),
    "data.replay_ratio": (NUM, "> 0", False),
    "data.batch_size": (INT, "> 0", False),
    "data.learning_starts": (INT, ">= 0", False),
    "data.reward_scale": (NUM, "> 0", False),
    "data.reward_clip": (NUM, "> 0", True),
    "optimizer.lr": (NUM, "> 0", False),
    "optimizer.weight_decay": (NUM, ">= 0", True),
    "model.max_grad_norm": (NUM, ">= 0", False),  # 0 disables clipping (null crashed mid-training)
    "model.target_update_period": (INT, "> 0", False),
    "model.tau": (NUM, "in (0, 1]", False),
    "exploration.start": (NUM, "in [0, 1]", False),
    "exploration.end": (NUM, "in [0, 1]", False),
    "exploration.duration": (INT, ">= 0", False),
    "replay.capacity": (INT, "> 0", False),
    "replay.n_step": (INT, "> 0", False),
    "replay.alpha": (NUM, "in [0, 1]", False),
    "replay.beta": (NUM, "in [0, 1]", False),
    "replay.beta_end": (NUM, "in [0, 1]", True),
    "callbacks.eval.every_env_steps": (INT, "> 0", False),
    "callbacks.eval.episodes": (INT, "> 0", False),
    "callbacks.eval.epsilon": (NUM, "in [0, 1]", False),
    "callbacks.checkpoint.every_env_steps": (INT, "> 0", False),
    "adversarial.epsilon": (NUM, ">= 0", True),
    "adversarial.fraction": (NUM, "in (0, 1]", False),
    "callbacks.guard.max_abs_q": (NUM, "> 0", False),
    "callbacks.guard.check_params_every": (INT, "> 0", False),
    "callbacks.guard.max_td_loss": (NUM, "> 0", True),
    "scheduler.final_fraction": (NUM, "in [0, 1]", False),
    "scheduler.warmup_fraction": (NUM, "in [0, 1)", False),
    "optimizer.momentum": (NUM, ">= 0", True),
    "optimizer.eps": (NUM, ">= 0", False),
    "optimizer.alpha": (NUM, "in [0, 1)", False),  # RMSprop's smoothing constant: 2 trained until it diverged
    "data.collect_solved_score": (NUM, "> 0", False),
    "data.collect_unsolved_score": (NUM, "> 0", True),
    "model.grad_diagnostics_every": (INT, ">= 0", False),
    "callbacks.eval.seed": (INT, ">= 0", False),  # -1 failed in gymnasium's reset after the first round
    "callbacks.progress.refresh_seconds": (NUM, "> 0", False),
    "trainer.log_every_n_steps": (INT, "> 0", False),
    "trainer.max_epochs": (INT, ">= -1", False),  # -1: no epoch limit (EnvStepBudget ends the run)
}
# true/false keys: Hydra parses only true/false (any case) as booleans; key: null allowed (the library's default)
FLAGS: dict[str, bool] = {
    "print_config": False,
    "flush_denormal": False,
    "model.double_q": False,
    "model.lean_step": False,
    "model.popart": False,
    "net.dueling": False,
    "net.layer_norm": False,
    "net.obs_norm": False,
    "callbacks.eval.at_start": False,
    "logger.wandb.log_model": False,
    "compression.quantize.per_channel": False,
    "compression.export.onnx": False,
    "compression.export.torchscript": False,
    "optimizer.fused": True,
    "optimizer.foreach": True,
    "optimizer.centered": False,
    "optimizer.decoupled_weight_decay": False,
    "optimizer.rectify": False,
    "optimizer.weight_decouple": False,
    "trainer.enable_checkpointing": False,
    "trainer.enable_model_summary": False,
}
_ABSENT = object()


def check_number(key: str, value: Any, kind: str, bound: str, nullable: bool = False) -> None:
    """Raise ValueError `<key>=<value> must be <kind> <bound>` unless value is such a number (an integral float,
    as Hydra parses 1e6, counts as an integer; a bool does not count as a number)."""
    if value is None and nullable:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (number and (kind == NUM or float(value).is_integer()) and BOUNDS[bound](value)):
        null = " (or null)" if nullable else ""
        raise ValueError(f"{key}={value!r} must be {kind} {bound}{null}")


def check_numbers(cfg: DictConfig) -> None:
    """Every key of RULES present in cfg (interpolations resolved)."""
    for key, (kind, bound, nullable) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            check_number(key, value, kind, bound, nullable)


def check_flags(cfg: DictConfig) -> None:
    """Every key of FLAGS present in cfg is true or false (or null where allowed)."""
    for key, nullable in FLAGS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not isinstance(value, bool) and not (value is None and nullable):
            raise ValueError(f"{key}={value!r} must be true or false{' (or null)' if nullable else ''}")


def check_relations(cfg: DictConfig) -> None:
    """Settings valid alone that contradict each other: epsilon that rises over training, and a collection
    schedule driven by evaluations in a run that has none (it never acted, silently)."""
    start = OmegaConf.select(cfg, "exploration.start", default=None)
    end = OmegaConf.select(cfg, "exploration.end", default=None)
    if isinstance(start, int | float) and isinstance(end, int | float) and end > start:
        raise ValueError(f"exploration.end={end} is above exploration.start={start}: epsilon would rise over "
                         "training; give an end <= start")
    if OmegaConf.select(cfg, "data.collect_schedule", default=None) == "by_score" and not OmegaConf.select(
            cfg, "callbacks.eval", default=None):
        raise ValueError("data.collect_schedule=by_score acts on evaluations and this run has none (callbacks.eval "
                         "is not set, e.g. callbacks=none): use callbacks=default, or data.collect_schedule=fixed")


def check_layout_keys(cfg: DictConfig) -> None:
    """task_set.tasks given (a bare `task_set=gym` ended in omegaconf's MissingMandatoryValue traceback), net.hidden
    a non-empty list of positive widths, and net.conv
    null or a non-empty list of [out_channels, kernel, stride] of positive integers (`net.conv=[16,3,1]` ended in a
    TypeError traceback, `[[16,3.5,1]]` was cut to a 3x3 kernel, `[]` trained an MLP)."""
    if OmegaConf.is_missing(cfg.task_set, "tasks") or not cfg.task_set.get("tasks"):
        raise ValueError("task_set.tasks is not set: give the task ids, e.g. task_set.tasks=[CartPole-v1]")
    tasks = cfg.task_set.tasks
    if not OmegaConf.is_list(tasks):  # `task_set.tasks=CartPole-v1` was read letter by letter: "'C' is not a
        # registered gymnasium id"
        shown = OmegaConf.to_container(tasks) if OmegaConf.is_config(tasks) else tasks
        example = shown if isinstance(shown, str) and shown else "CartPole-v1"
        raise ValueError(f"task_set.tasks={shown!r} must be a list of task ids, e.g. task_set.tasks=[{example}]")
    hidden = OmegaConf.select(cfg, "net.hidden", default=None)
    if hidden is not None:  # `net.hidden=64` ended in a TypeError traceback
        from mtdqn.nets.q import positive_widths

        widths = OmegaConf.to_container(hidden) if OmegaConf.is_config(hidden) else hidden
        if not positive_widths(widths):
            raise ValueError(f"net.hidden={widths!r} must be a non-empty list of positive widths, e.g. "
                             "net.hidden=[64,64]")
    conv = OmegaConf.select(cfg, "net.conv", default=None)
    if conv is None:
        return
    layers = OmegaConf.to_container(conv) if OmegaConf.is_config(conv) else conv

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if not (isinstance(layers, list) and layers and all(
            isinstance(layer, list) and len(layer) == 3 and all(map(whole, layer)) for layer in layers)):
        raise ValueError(f"net.conv={layers!r}: give null (no convolutions) or a non-empty list of [out_channels, "
                         "kernel, stride] per layer, each a positive integer, e.g. net.conv=[[16,3,1]]")


def check_replay_size(cfg: DictConfig) -> None:
    """A minibatch must fit in replay (each task's, in a multi-task run): a capacity below the batch size makes every
    minibatch repeat transitions."""
    capacity = OmegaConf.select(cfg, "replay.capacity", default=None)
    batch = OmegaConf.select(cfg, "data.batch_size", default=None)
    if isinstance(capacity, int) and isinstance(batch, int) and capacity < batch:
        raise ValueError(f"replay.capacity={capacity} is smaller than data.batch_size={batch}: every minibatch would "
                         "repeat transitions; raise replay.capacity or lower data.batch_size")


# where a component passes its **kwargs on: its keys are checked against both signatures
PASSED_ON = {"pytorch_lightning.loggers.wandb.WandbLogger": "wandb.init"}


def _accepted(target: Any) -> set[str] | None:
    """The keyword arguments `target` takes (a class: its constructor's), None where it takes any (**kwargs, unless
    PASSED_ON says where they go) or its signature cannot be read."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind == p.VAR_KEYWORD for p in params):
        onward = PASSED_ON.get(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}")
        if onward is not None:
            try:
                further = _accepted(_locate(onward))
            except Exception:  # not importable here: unchecked, as a component that takes any key
                return None
        elif inspect.isclass(target) and target.__module__.startswith("mtdqn."):
            # mtdqn's subclasses (MultiTaskDQNModule, PrioritizedReplayBuffer) pass **kwargs to their base class
            base = next((b for b in target.__mro__[1:] if "__init__" in vars(b)), None)
            further = _accepted(base) if base is not None and base.__module__.startswith("mtdqn.") else None
        else:
            return None
        return None if further is None else names | further
    return names


def check_keys(path: str, keys: list[str], target: Any) -> None:
    """Refuse a key `target` does not take (`+model.dobule_q=true` ended in a TypeError traceback once the component
    was built), with the nearest names it does take."""
    accepted = _accepted(target)
    if accepted is None:
        return
    for key in keys:
        if key.startswith("_") or key in accepted:
            continue
        close = difflib.get_close_matches(key, sorted(accepted), n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else f"it takes {sorted(accepted)}"
        name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', target)}".lstrip(".")
        raise ValueError(f"{path}{key}: {name} takes no argument {key!r}; {hint}")


# modules a `_target_` may name that come with an optional extra (pyproject.toml)
OPTIONAL_MODULES = {"pytorch_optimizer": "optim"}


def _locate(path: str) -> Any:
    """The object at a dotted import path (hydra.utils.get_object, without its error log when a module is
    missing)."""
    parts = path.split(".")
    error: ImportError = ImportError(f"cannot import {path!r}")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module + ".").startswith(exc.name + "."):  # this prefix (or its parent) is no module
                error = exc
                continue
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise error


def _missing_module(exc: BaseException | None) -> str | None:
    """The top-level module whose import failed somewhere in exc's chain, if any."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


# nodes without a `_target_` whose keys mtdqn reads itself: what else they hold is ignored, so it is refused
# (`+task_set.task=[Acrobot-v1]` quietly trained CartPole-v1, `+adversarial.eps=0.02` quietly trained without FGSM)
OWN_KEYS: dict[str, tuple[str, ...]] = {
    "task_set": ("kind", "tasks", "env_kwargs"),
    "adversarial": ("epsilon", "fraction"),
}


def top_level_keys() -> list[str]:
    """The config's top-level keys: conf/train.yaml's own, its config groups (defaults list) and Hydra's `hydra`."""
    from mtdqn.overrides import CONF_DIR

    train = OmegaConf.load(CONF_DIR / "train.yaml")
    keys = {str(k) for k in train.keys() if k != "defaults"} | {"hydra"}
    for entry in train.get("defaults") or []:
        name = next(iter(entry)) if OmegaConf.is_dict(entry) else str(entry)
        keys.add(str(name).split()[-1].split("/")[0])  # `optional local`, `override hydra/launcher`
    return sorted(keys - {"_self_"})


def _unknown(key: str, value: Any, where: str, allowed: list[str]) -> ValueError:
    shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    prefix = where.rstrip(".")
    close = difflib.get_close_matches(key.split(".")[-1], allowed, n=3)
    hint = f"did you mean {' or '.join(f'{where}{c}' for c in close)}?" if close else f"the keys are {allowed}"
    place = f"{prefix} has no key {key!r}" if prefix else f"{key!r} is not a key of the config"
    return ValueError(f"{where}{key}={shown!r}: {place} (it would be ignored); {hint}")


def check_own_keys(cfg: DictConfig) -> None:
    """Refuse keys nothing reads: at the top level (conf/train.yaml's keys and groups) and in OWN_KEYS' nodes."""
    top = top_level_keys()
    for key, value in cfg.items_ex(resolve=False):
        if str(key) not in top:
            raise _unknown(str(key), value, "", top)
    for node, allowed in OWN_KEYS.items():
        sub = cfg.get(node)
        if OmegaConf.is_dict(sub):
            for key, value in sub.items_ex(resolve=False):
                if str(key) not in allowed:
                    raise _unknown(str(key), value, f"{node}.", sorted(allowed))


def check_arguments(cfg: DictConfig, data_module: Any) -> None:
    """Every key of a node with a `_target_` (model, net, optimizer, replay, callbacks, loggers, trainer, ...) and of
    `data` (given to `data_module`) is an argument its class takes; the top level, `task_set` and `adversarial` hold
    only the keys mtdqn reads (check_own_keys)."""
    check_own_keys(cfg)
    def walk(node: Any, path: str) -> None:
        if not OmegaConf.is_dict(node):
            return
        keys = [str(k) for k in node.keys()]
        if "_target_" in keys:
            try:
                target = _locate(str(node._target_))
            except Exception as exc:  # an unknown _target_ keeps Hydra's own error, raised where it is instantiated
                missing = _missing_module(exc)
                if missing in OPTIONAL_MODULES:
                    raise ValueError(
                        f"{path}_target_={str(node._target_)!r} needs {missing}, which is not installed: pip install "
                        f"-c constraints.txt -e '.[{OPTIONAL_MODULES[missing]}]'") from None
                target = None
            if target is not None:
                check_keys(path, keys, target)
        for key, value in node.items_ex(resolve=False):  # an interpolation (model.net: ${net}) is walked where it points
            walk(value, f"{path}{key}.")

    for key, value in cfg.items_ex(resolve=False):
        if key != "hydra":
            walk(value, f"{key}.")
    if OmegaConf.is_dict(cfg.get("data")):
        check_keys("data.", [str(k) for k in cfg.data.keys()], data_module)


def check_optimizer_settings(cfg: DictConfig) -> None:
    """optimizer.betas, where the optimizer has it (adamw, radam, adabelief, lion; `+optimizer.betas` for adam): a
    list of two numbers in [0, 1). `optimizer.betas=abc` ended in a TypeError traceback, `[0.9]` in an IndexError,
    `[1.5,0.999]` in torch's 'Invalid beta parameter at index 0', which names no key. (What else the optimizer
    refuses comes from its constructor, tried at build time: mtdqn.models.dqn.make_optimizer.)"""
    betas = OmegaConf.select(cfg, "optimizer.betas", default=_ABSENT)
    if betas is _ABSENT:
        return
    plain = OmegaConf.to_container(betas) if OmegaConf.is_config(betas) else betas

    def beta(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1

    if not (isinstance(plain, list) and len(plain) == 2 and all(map(beta, plain))):
        raise ValueError(f"optimizer.betas={plain!r} must be a list of two numbers in [0, 1) (the decay rates of "
                         "the optimizer's running averages), e.g. optimizer.betas=[0.9,0.999]")


def _folder_key(key: str) -> bool:
    """A key that names a folder something writes into (callbacks.checkpoint.dirpath, logger.*.save_dir,
    callbacks.eval.video_dir, compression.output_dir, the profiler's dirpath)."""
    return key == "dirpath" or key.endswith("_dir")


def check_folders(cfg: DictConfig) -> None:
    """Every folder key (outside `hydra`) names a folder or a path where one can be made: not an existing file,
    nor under one. `callbacks.checkpoint.dirpath=/etc/hostname` ended in a FileExistsError traceback at the first
    checkpoint, after hundreds of env steps, and `logger.jsonl.save_dir=/etc/hostname` in one as the logger wrote."""
    from pathlib import Path

    def walk(node: Any, path: str) -> None:
        for key, value in node.items_ex(resolve=False):
            where = f"{path}{key}"
            if OmegaConf.is_dict(value):
                walk(value, f"{where}.")
                continue
            if not _folder_key(str(key)):
                continue
            try:
                given = node[key]  # resolved (paths.output_dir)
            except Exception:  # an interpolation that cannot resolve here keeps its own error, where it is used
                continue
            if not isinstance(given, str) or not given:
                continue
            folder = Path(given).expanduser()
            for place in (folder, *folder.parents):
                if place.exists():
                    if place.is_dir():
                        break
                    if place == folder:
                        raise ValueError(f"{where}={given!r} is a file, and a folder is needed here: give a "
                                         "folder's path")
                    raise ValueError(f"{where}={given!r}: {str(place)!r} is a file, not a folder, so no folder can be "
                                     "made there: give a folder's path")

    for key, value in cfg.items_ex(resolve=False):
        if key != "hydra" and OmegaConf.is_dict(value):
            walk(value, f"{key}.")


# keys whose preset value interpolates a key of RULES (conf/replay: `gamma: ${gamma}`, conf/exploration: `warmup:
# ${data.learning_starts}`), checked there; given themselves (replay.gamma=2) they were refused only where the
# component is built, inside the fit, and as `gamma=2`, a key the user had not given
COPIES: dict[str, tuple[str, str, str]] = {  # key: (kind, bound, the key it follows)
    "replay.gamma": (NUM, "in (0, 1]", "gamma"),
    "exploration.warmup": (INT, ">= 0", "data.learning_starts"),
}


def check_copies(cfg: DictConfig) -> None:
    """Every key of COPIES present in cfg, named as given."""
    for key, (kind, bound, source) in COPIES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            try:
                check_number(key, value, kind, bound)
            except ValueError as exc:
                raise ValueError(f"{exc} (it follows {source} unless given)") from None

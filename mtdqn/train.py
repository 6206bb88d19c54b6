"""Composition root: the only place (with evaluate.py) that calls hydra.utils.instantiate."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mtdqn import resume
from mtdqn.callbacks import (
    AtomicCheckpointIO,
    EnvStepBudget,
    EnvStepCheckpoint,
    EvalCallback,
    LoggerClock,
    WandbEnvStepAxis,
)
from mtdqn.callbacks.checkpoint import check_checkpoint_file
from mtdqn.callbacks.loggers import continue_wandb_run
from mtdqn.config_checks import (
    check_arguments,
    check_copies,
    check_flags,
    check_folders,
    check_layout_keys,
    check_numbers,
    check_optimizer_settings,
    check_relations,
    check_replay_size,
)
from mtdqn.console import say
from mtdqn.data import RLDataModule
from mtdqn.data.multitask import MultiTaskDataModule
from mtdqn.envs import check_env_options, env_factory, share_rules, task_specs
from mtdqn.envs.wrappers import check_perturb
from mtdqn.models import MultiTaskDQNModule
from mtdqn.models.adversarial import AdversarialObs
from mtdqn.models.dqn import make_optimizer
from mtdqn.nets.multitask import MultiTaskQNetwork
from mtdqn.replay import PrioritizedReplayBuffer
from mtdqn.replay.buffer import check_obs_storage
from mtdqn.transfer import TransferConfig, apply_transfer
from mtdqn.types import TaskSpec

log = logging.getLogger("mtdqn")


def _wandb_offline() -> bool:
    """Offline unless the user is logged in (WANDB_API_KEY or a netrc entry) and WANDB_MODE is not offline. Not
    under WANDB_MODE=disabled: Lightning's offline logger sets WANDB_MODE=dryrun itself, which would turn W&B back
    on (offline runs written) where the user turned it off."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode == "disabled":
        return False
    if mode in ("offline", "dryrun"):
        return True
    if mode == "online" or os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path.home() / ".netrc"
    return not (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


if not OmegaConf.has_resolver("mtdqn.wandb_offline"):
    OmegaConf.register_new_resolver("mtdqn.wandb_offline", _wandb_offline)


def _at_least(value: Any, floor: Any) -> Any:
    """The `mtdqn.at_least` resolver: `value`, raised to `floor` where that is larger (debug=smoke's warm-up, at
    least one minibatch); `value` as given where `floor` is no integer (validation names the bad key)."""
    try:
        return max(int(value), int(floor))
    except (TypeError, ValueError):
        return value


if not OmegaConf.has_resolver("mtdqn.at_least"):
    OmegaConf.register_new_resolver("mtdqn.at_least", _at_least)


def run_name(experiment: str, seed: Any, job_overrides: list[str] | None) -> str:
    """W&B run name: `<experiment>-seed<s>`; in a multirun, `<experiment>-<the job's overrides>` (sorted, the
    experiment preset left out, a leading + dropped; `seed=<s>` added where the overrides do not set it), so the arms
    of a sweep (optimizer=adam,adabelief x seeds) and the seeds of an Optuna trial get distinct names."""
    if not job_overrides:
        return f"{experiment}-seed{seed}"
    keep = sorted(o.lstrip("+") for o in job_overrides  # `debug=smoke` reaches Hydra as `+debug=smoke`
                  if o.lstrip("+~").split("=", 1)[0] not in ("experiment", "hydra") and not o.startswith("hydra."))
    if keep and not any(o.split("=", 1)[0] == "seed" for o in keep):  # the seeds of one Optuna trial (or of a
        keep.append(f"seed={seed}")  # sweep that fixes the seed) would share a name
    return f"{experiment}-{','.join(keep)}" if keep else f"{experiment}-seed{seed}"


def _run_name(experiment: str, seed: Any) -> str:
    """The `mtdqn.run_name` resolver: the job's overrides when Hydra runs a multirun job, else none."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    overrides = None
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            overrides = list(hc.overrides.task)
    return run_name(experiment, seed, overrides)


if not OmegaConf.has_resolver("mtdqn.run_name"):
    OmegaConf.register_new_resolver("mtdqn.run_name", _run_name)


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, re-raising our own ValueErrors (key, value, allowed) unwrapped."""
    try:
        return hydra_instantiate(node, *args, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ValueError):
            raise exc.__cause__ from None
        raise


def check_accelerator(accelerator: str) -> None:
    """trainer.accelerator gpu / cuda / mps needs that device here (Lightning's own error comes as a long traceback)."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if (accelerator == "gpu" and not (cuda or mps)) or (accelerator == "cuda" and not cuda) or (
            accelerator == "mps" and not mps):
        raise ValueError(f"trainer.accelerator={accelerator!r}: no such device here (torch sees no "
                         f"{'MPS' if accelerator == 'mps' else 'CUDA'} GPU); use trainer=cpu (or trainer=ddp for several "
                         "CPU processes)")


# what a checkpoint's saved state (network, replay) must agree with; a resume may change anything else (budgets...).
# The replay's layout (rows = capacity / num_envs, one column per env) too: its state restored into another layout
# was refused only inside the fit, or, with a larger capacity, read unwritten rows. (How observations are stored,
# replay.obs_storage / frame_stack, is checked by the replay itself: `auto` there and `uint8` here can be one layout)
RESUME_KEYS = ("task_set.kind", "task_set.tasks", "net", "model._target_", "replay._target_", "replay.capacity",
               "data.num_envs")


def _shown(values: dict[str, Any], key: str) -> str:
    return repr(values[key]) if key in values else "absent"


def check_resume(cfg: DictConfig, saved_path: Path | None = None) -> None:
    """ckpt_path against the config of the run that wrote it (`<run>/config.yaml` beside `<run>/checkpoints/`, or
    `saved_path`: ckpt_path=auto gives the run folder's before this attempt overwrites it): a resume with another
    network or task set (a forgotten `+experiment=`) is refused naming the keys, before any env is built, instead of
    failing inside Lightning's state restore. No check where that config is not found, nor against this run's own."""
    if saved_path is None:
        saved_path = Path(cfg.ckpt_path).resolve().parent.parent / "config.yaml"
        if saved_path == (Path(cfg.paths.output_dir) / "config.yaml").resolve():
            return
    if not saved_path.is_file():
        return
    saved = OmegaConf.load(saved_path)
    diffs = []
    for key in RESUME_KEYS:
        mine, theirs = (OmegaConf.select(c, key, default=None) for c in (cfg, saved))
        mine, theirs = (OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                        for v in (mine, theirs))
        a, b = resume.flat_leaves(theirs, key), resume.flat_leaves(mine, key)
        # a key one side lacks counts only if the other sets it (a run from before an option existed resumes)
        diffs += [f"{k}: {_shown(a, k)} there, {_shown(b, k)} here" for k in sorted(set(a) | set(b))
                  if a.get(k) != b.get(k) and (k in a and k in b or a.get(k, b.get(k)) not in (None, False))]
    if diffs:
        overrides = saved_path.parent / ".hydra" / "overrides.yaml"  # the run's command line, where Hydra kept it
        # in this run's own folder (ckpt_path=auto) Hydra has already replaced it with this attempt's command line
        own = saved_path.parent.resolve() == Path(cfg.paths.output_dir).resolve()
        argv = [o for o in OmegaConf.load(overrides) if not str(o).startswith("ckpt_path=")] \
            if overrides.is_file() and not own else []
        command = f" (python train.py {' '.join(map(str, argv))} ckpt_path=...)" if argv else (
            " (the values there above)" if own else "")
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path!r} was written by a run (experiment_name={saved.get('experiment_name')!r}, "
            f"its config {saved_path}) whose network, task set or replay layout differ from this config's: "
            f"{'; '.join(diffs)}. Resume with that run's settings{command}; other keys may differ (e.g. "
            f"data.total_env_steps, to train on)")


def check_model_and_net(cfg: DictConfig, multi: bool) -> None:
    """A multi-task model (model=mtdqn, model=student) needs a multi-task network and a single-task one (model=dqn)
    a single-task network; the wrong pair ended in a TypeError traceback when the network was built."""
    model, net = cfg.model._target_, OmegaConf.select(cfg, "model.net._target_", default=None)
    if net is None:
        return
    try:
        net_multi = issubclass(get_class(str(net)), MultiTaskQNetwork)
    except Exception:  # not importable: Hydra's own error where it is instantiated
        return
    if multi and not net_multi:
        raise ValueError(f"net._target_={net!r} is a single-task network, and model._target_={model!r} trains one "
                         "network on every task: use net=multihead or net=conditioned")
    if net_multi and not multi:
        raise ValueError(f"net._target_={net!r} is a multi-task network, and model._target_={model!r} trains one "
                         "task: use net=mlp or net=dueling (or model=mtdqn for several tasks)")


def validate(cfg: DictConfig) -> None:
    """Checks that need no environment: fail early with the key, the value and what is allowed."""
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise ValueError(f"seed={cfg.seed!r} must be an integer in [0, 2**32 - 1] (numpy's seed range)")
    check_layout_keys(cfg)
    check_numbers(cfg)
    check_copies(cfg)
    check_flags(cfg)
    check_relations(cfg)
    check_optimizer_settings(cfg)
    check_replay_size(cfg)
    check_folders(cfg)
    multi = issubclass(get_class(cfg.model._target_), MultiTaskDQNModule)
    check_arguments(cfg, MultiTaskDataModule if multi else RLDataModule)
    check_model_and_net(cfg, multi)
    check_accelerator(str(cfg.trainer.get("accelerator", "auto")))
    if cfg.get("ckpt_path") == resume.AUTO:
        raise ValueError("ckpt_path=auto is resolved by train.py (python train.py ... ckpt_path=auto: the run "
                         "folder's own last checkpoint); here give a checkpoint's path")
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ValueError(f"ckpt_path={cfg.ckpt_path!r} is not a file")
    if cfg.get("ckpt_path"):
        check_checkpoint_file(cfg.ckpt_path, "ckpt_path")
    if cfg.get("ckpt_path"):
        check_resume(cfg)
    check_env_options(str(cfg.task_set.kind), *env_options(cfg))


def check_storage(cfg: DictConfig, specs: list[TaskSpec]) -> None:
    """replay.obs_storage against each task's observations (uint8 needs them on a 0-255 grid, noise-free)."""
    perturb, randomize = env_options(cfg)
    noisy = "obs_noise" in check_perturb(perturb) or "obs_noise" in (randomize or {})
    for spec in specs:
        try:
            check_obs_storage(str(cfg.replay.get("obs_storage", "auto")), None if noisy else spec.obs_quantum)
        except ValueError as exc:
            raise ValueError(f"{exc} (task {spec.name}{', with obs_noise' if noisy else ''})") from None


def env_options(cfg: DictConfig) -> tuple[dict, dict]:
    """(perturb, domain_randomization) as plain dicts (empty when absent)."""
    def plain(node: Any) -> dict:
        return OmegaConf.to_container(node, resolve=True) if node else {}

    return plain(cfg.get("perturb")), plain(cfg.get("domain_randomization"))


def env_factories(cfg: DictConfig, env_kwargs: dict) -> tuple[list, list | None]:
    """Training env factories per task (perturbed, domain-randomized) and, under domain randomization, the
    nominal (perturbed, not randomized) ones for evaluation; None when evaluation can use the training ones."""
    ts, (perturb, randomize) = cfg.task_set, env_options(cfg)
    train = [env_factory(ts.kind, t, env_kwargs, perturb, randomize) for t in ts.tasks]
    return train, ([env_factory(ts.kind, t, env_kwargs, perturb) for t in ts.tasks] if randomize else None)


# Lightning's notices about choices this project makes on purpose, printed on every fit: training_step takes
# `dataloader_iter` (one step = one round of updates), a pytree deprecation inside Lightning itself, and an
# advertisement. Silenced by exact message; every other warning still shows.
KNOWN_NOTICES = (r"You are using the `dataloader_iter` step flavor", r"Found `dataloader_iter` argument",
                 r"`isinstance\(treespec, LeafSpec\)` is deprecated")
TIP = "\N{ELECTRIC LIGHT BULB} Tip:"


class _NoTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP)


def quiet_known_notices() -> None:
    """Hide Lightning's notices in KNOWN_NOTICES and its logger tip; idempotent. Processes that multiprocessing
    spawns (trainer=ddp_spawn's workers) start with fresh warning filters but with the parent's `-W` options
    (sys.warnoptions): the notices go there too, as the literal message prefixes `-W` matches."""
    for message in KNOWN_NOTICES:
        warnings.filterwarnings("ignore", message=message)
        option = "ignore:" + message.replace("\\", "")
        if option not in sys.warnoptions:
            sys.warnoptions.append(option)
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _NoTip) for f in rank_zero.filters):
        rank_zero.addFilter(_NoTip())


def build(cfg: DictConfig) -> tuple[pl.LightningModule, pl.LightningDataModule, pl.Trainer]:
    """Instantiate model, data module and trainer from the config (no env is stepped here); seeds everything."""
    validate(cfg)
    quiet_known_notices()
    torch.set_flush_denormal(bool(cfg.get("flush_denormal", True)))  # no-op where the CPU cannot flush
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    ts = cfg.task_set
    env_kwargs = OmegaConf.to_container(ts.env_kwargs, resolve=True) if ts.get("env_kwargs") else {}
    specs = task_specs(ts.kind, list(ts.tasks), env_kwargs)
    check_storage(cfg, specs)
    multi = issubclass(get_class(cfg.model._target_), MultiTaskDQNModule)
    per = cfg.replay._target_.endswith(PrioritizedReplayBuffer.__name__)
    if len(specs) != 1 and not multi:
        raise ValueError(
            f"model={cfg.model._target_.rsplit('.', 1)[-1]} trains one task but task_set.tasks has {len(specs)}: "
            f"{[s.name for s in specs]}; pick one (task_set.tasks=[...]) or use model=mtdqn"
        )
    factories, eval_factories = env_factories(cfg, env_kwargs)
    transfer = TransferConfig.from_mapping(OmegaConf.to_container(cfg.transfer, resolve=True)
                                           if cfg.get("transfer") else None)
    # a loaded policy explores from transfer.epsilon_start (the scratch baseline keeps exploration.start)
    explore = {"start": transfer.epsilon_start} if transfer.loads_policy and transfer.epsilon_start is not None else {}
    if multi:
        # data sharing needs the task set's relabeling rules (the data module validates the fractions)
        sharing, fraction = {}, cfg.data.get("share_fraction")
        values = list(fraction) if isinstance(fraction, ListConfig) else [fraction]
        if len(specs) > 1 and any(isinstance(v, (int, float)) and v > 0 for v in values):
            sharing["share_rules"] = share_rules(ts.kind, list(ts.tasks), env_kwargs, env_options(cfg)[1])
        data = MultiTaskDataModule(
            env_factories=factories, eval_env_factories=eval_factories,
            replay=instantiate(cfg.replay), exploration=instantiate(cfg.exploration, **explore), tasks=specs,
            seed=int(cfg.seed), **cfg.data, **sharing,
        )
        model = instantiate(cfg.model)(task=specs)
    else:
        data = RLDataModule(
            env_factory=factories[0], eval_env_factory=eval_factories[0] if eval_factories else None,
            replay=instantiate(cfg.replay),
            exploration=instantiate(cfg.exploration, **explore), task=specs[0], seed=int(cfg.seed), **cfg.data,
        )
        model = instantiate(cfg.model)(task=specs[0])
    apply_transfer(model, transfer)
    # the optimizer is made at the fit's start (configure_optimizers), after the envs: settings it refuses
    # (optimizer.eps=-1, eps=abc) are refused here, naming them
    make_optimizer(model.optimizer_factory, [p for g in model.param_groups() for p in g["params"]])
    if float((cfg.get("adversarial") or {}).get("epsilon") or 0.0) > 0:
        low, high = (None, None)
        if str(cfg.task_set.kind) == "driving":  # clipped to the observation's bounds, as the fgsm axis evaluates
            from mtdqn.envs.driving.sim import OBS_HIGH, OBS_LOW

            low, high = torch.as_tensor(OBS_LOW), torch.as_tensor(OBS_HIGH)
        model.batch_transforms.append(AdversarialObs(model, cfg.adversarial.epsilon, cfg.adversarial.fraction,
                                                     low, high))
    if per:
        model.priority_sink = data.update_priorities
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    for cb in callbacks:
        if isinstance(cb, EvalCallback):
            cb.check_tasks(specs, list(cfg.task_set.tasks))
    compression = cfg.get("compression")
    if compression and compression.get("_target_") and compression.get("methods"):
        callbacks.append(instantiate(compression))  # after eval and checkpoint: compresses the final network
    callbacks += [EnvStepBudget(), WandbEnvStepAxis()]
    callbacks.append(LoggerClock())  # metrics.jsonl's `time` across a resume
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg and "_target_" in lg]
    for lg in loggers:  # Lightning's WandbLogger passes anonymous=None, and wandb warns at any value it is given
        init = getattr(lg, "_wandb_init", None)  # ("The anonymous setting has no effect"), on every run
        if isinstance(init, dict) and "anonymous" in init and init["anonymous"] is None:
            del init["anonymous"]
    # without our env-step bar (callbacks.progress=null, callbacks=none) no bar: Lightning's own counts batches of
    # an endless epoch ("Epoch 0/-2 5/--"); trainer.enable_progress_bar=true still asks for it
    bar = {} if any(isinstance(cb, ProgressBar) for cb in callbacks) or "enable_progress_bar" in cfg.trainer else {
        "enable_progress_bar": False}
    threads = int(cfg.torch_threads) if cfg.get("torch_threads") else None
    callbacks.append(ProcessSettings(threads, bool(cfg.get("flush_denormal", True)), resolved_config(cfg)))
    try:
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                              plugins=[AtomicCheckpointIO()], **bar)
    except InstantiationException as exc:  # Lightning refused a trainer argument (devices=abc, devices=0, ...)
        keys = ("accelerator", "devices", "strategy", "num_nodes", "precision")
        given = ", ".join(f"trainer.{k}={cfg.trainer[k]!r}" for k in keys if k in cfg.trainer)
        cause = exc.__cause__ or exc
        said = str(cause).rstrip(".") or type(cause).__name__  # an AssertionError may say nothing
        raise ValueError(f"Lightning's Trainer refuses the trainer settings ({given}): {said}; the presets: "
                         "trainer=cpu|gpu|ddp|ddp_spawn") from exc
    check_distributed(trainer.world_size, model, transfer)
    return model, data, trainer


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config as plain values (as config.yaml holds it; as written where an interpolation cannot resolve)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        return OmegaConf.to_container(cfg)


class ProcessSettings(pl.Callback):
    """What every process that trains needs from the run's config. torch_threads and flush_denormal: train() sets
    them in the launching process, but a DDP rank sets its own (Lightning gives each rank cpu_count / ranks threads,
    8 each on 16 cores, the oversubscription torch_threads=1 avoids; ddp_spawn's workers start without the flush of
    denormal floats). The config goes to the loggers (W&B's run config, to filter and group runs by any key; the
    W&B runs had none), from the process that trains."""

    def __init__(self, threads: int | None, flush_denormal: bool, config: dict | None = None) -> None:
        self.threads, self.flush_denormal, self.config = threads, flush_denormal, config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        torch.set_flush_denormal(self.flush_denormal)
        if self.threads and trainer.world_size > 1:  # one process keeps what train() (or a script's --threads) set
            torch.set_num_threads(self.threads)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.config is not None and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_hyperparams(self.config)


def check_distributed(world_size: int, model: pl.LightningModule, transfer: TransferConfig) -> None:
    """What one process can do and several (DDP) cannot, refused at build time: the modules' own checks fire only at
    the first gradient update, after learning_starts env steps and with every rank printing the error."""
    if world_size <= 1:
        return
    processes = f"DDP with {world_size} processes (trainer.devices x trainer.num_nodes)"
    if getattr(model, "loss_balance", None) == "pcgrad":
        raise ValueError(f"model.loss_balance=pcgrad is not supported with {processes}: PCGrad computes and projects each "
                         "task's gradient itself, outside DDP's gradient all-reduce; use "
                         "model.loss_balance=weighted, or trainer.devices=1")
    if transfer.mode == "freeze" and transfer.freeze_updates is not None:
        raise ValueError(f"transfer.freeze_updates={transfer.freeze_updates}: unfreezing during training is not "
                         f"supported with {processes}; use transfer.freeze_updates=null (frozen for ever) or "
                         "trainer.devices=1")


def print_config_tree(cfg: DictConfig) -> None:
    """The resolved config as a rich tree, one branch per top-level group."""
    from rich import print as rprint
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            tree.add(str(key), style="bold").add(Syntax(OmegaConf.to_yaml(value, resolve=True), "yaml"))
        else:
            tree.add(f"[bold]{key}[/bold]: {value}")
    rprint(tree)


def write_summary(out_dir: Path, trainer: pl.Trainer | None, status: str, error: str | None = None) -> dict:
    """summary.json: status (completed, failed, interrupted; running while the fit runs), final eval metrics and
    counters."""
    summary: dict[str, Any] = {"status": status}
    if error:
        summary["error"] = error
    if trainer is not None:
        for cb in trainer.callbacks:
            summary.update(getattr(cb, "latest", {}) or {})
        summary["time/updates"] = trainer.global_step
        dm = getattr(trainer, "datamodule", None)
        steps = dm.current_env_steps() if hasattr(dm, "current_env_steps") else None
        if steps is not None and summary.get("time/env_steps") != steps:  # stopped between evaluations: the
            if "time/env_steps" in summary:  # counters say how far it trained, eval/* where it was last evaluated
                summary["eval/env_steps"] = summary["time/env_steps"]
            summary["time/env_steps"] = steps
            clock = next((cb for cb in trainer.callbacks if isinstance(cb, EvalCallback)), None)
            if clock is not None:  # the time measures at the stop too, not at the last evaluation (their ratio
                seconds = clock.train_seconds()  # was a rate the run never had)
                summary["time/train_seconds"] = seconds
                summary["time/sps"] = (steps - clock.start_steps) / max(seconds - clock.earlier_seconds, 1e-9)
    if trainer is None or trainer.is_global_zero:
        resume.write_atomically(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def save_config(out_dir: Path, cfg: DictConfig) -> None:
    """config.yaml, resolved (as written unresolved where an interpolation cannot resolve: that error is the
    run's)."""
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:
        text = OmegaConf.to_yaml(cfg)
    resume.write_atomically(out_dir / "config.yaml", text)


def _sigterm(signum: int, frame: Any) -> None:
    raise SIGTERMException  # as Lightning ends a fit on SIGTERM (a SystemExit): recorded as interrupted


_worker_job: threading.Event | None = None  # a joblib worker's current job: set when it has ended
_worker_watch: threading.Thread | None = None


def stop_with_the_sweep(every: float = 1.0) -> threading.Event:
    """In a joblib sweep's worker process (loky): once the sweep's process has gone (`kill` of the sweep, an
    out-of-memory kill), SIGTERM the job running here, so it stops as interrupted instead of training on, orphaned,
    to its budget, and end the worker when no job runs (set the returned event when the job ends): an orphaned loky
    worker otherwise waits for work that never comes, holding its memory (about 0.5 GB, for minutes). Elsewhere
    nothing: a run under `nohup` outlives its shell on purpose."""
    global _worker_job, _worker_watch
    done = threading.Event()
    if not multiprocessing.current_process().name.startswith("LokyProcess"):
        return done
    _worker_job = done
    if _worker_watch is None:  # one watcher per worker process, across the jobs it runs
        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(every)
            job = _worker_job
            if job is not None and not job.is_set():
                os.kill(os.getpid(), signal.SIGTERM)  # the job stops after its current round, recorded interrupted
                job.wait(600)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signal.SIGTERM)

        _worker_watch = threading.Thread(target=watch, name="mtdqn-sweep-watch", daemon=True)
        _worker_watch.start()
    return done


class RunSummary(pl.Callback):
    """Writes summary.json (`write_summary`, global rank zero) at the end of a successful fit, in the process that
    ran it: under trainer=ddp_spawn that is a spawned worker, and the launching process's callbacks, counters and
    evaluation history never see the training (its summary would read 0 updates and no evaluation)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.summary: dict | None = None  # set where the fit ran

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # Lightning calls teardown hooks only after a fit that ended without an exception
            dm = trainer.datamodule
            steps, total = dm.current_env_steps(), int(dm.total_env_steps)
            solved = any(getattr(cb, "stopped_solved", False) for cb in trainer.callbacks)
            if steps < total and not solved:  # a Trainer limit (+trainer.max_time, max_steps) ended it early: not a
                # completed run (reports would count it as one), one ckpt_path=auto trains on
                self.summary = write_summary(self.out_dir, trainer, "interrupted",
                                             f"the Trainer stopped the fit at {steps:,} of data.total_env_steps="
                                             f"{total:,} env steps (a Trainer limit such as max_time or max_steps)")
            else:
                self.summary = write_summary(self.out_dir, trainer, "completed")


def global_rank() -> int:
    """0 for the process that writes a run's files, before Lightning has set up; else a rank > 0. A process is rank
    zero only where RANK (torchrun), SLURM_PROCID (DDP under SLURM, where every task runs train.py) and LOCAL_RANK
    (Lightning's own DDP launch, whose children inherit the SLURM variables of the job) are all 0 or unset: LOCAL_RANK
    alone made every node's first process, and under SLURM every task, write the run's files."""
    return max((int(os.environ[n]) for n in ("RANK", "SLURM_PROCID", "LOCAL_RANK") if os.environ.get(n, "").isdigit()),
               default=0)


def interrupted(exc: BaseException | None) -> bool:
    """Stopped from outside, not by an error: Ctrl-C or SIGINT (Lightning ends its graceful shutdown with
    sys.exit(1)), a signal handler's exit, or submitit's error for a job out of requeues after a timeout; also an
    error raised while handling one (a SIGINT inside torch.save ends in the zip writer's RuntimeError; the atomic
    write leaves the last checkpoint whole). Its summary.json says `interrupted`: the curve so far is good data
    (compare.py counts the run as incomplete)."""
    submitit = sys.modules.get("submitit")
    stops = (KeyboardInterrupt, SystemExit) + ((submitit.core.utils.UncompletedJobError,) if submitit else ())
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, stops):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)  # `from None` ends it
    return False


REFUSED_FILE = "refused.json"  # in a run folder: this attempt was refused and left the folder as it was


def mark_refused(out_dir: Path, error: str) -> None:
    """Say in `out_dir` that an attempt was refused there (`refused.json`: its error), for a multirun's tally
    (mtdqn.sweep.SweepOutcome): the folder's summary.json stays the earlier attempt's, often `completed`."""
    (out_dir / REFUSED_FILE).write_text(json.dumps({"status": "refused", "error": error}, indent=2))


def train(cfg: DictConfig) -> dict:
    """Build everything from `cfg`, fit, and return the summary (final eval metrics).

    In a folder an earlier attempt left (a relaunch, `ckpt_path=auto`), an attempt refused before its fit (bad
    input, another network than the checkpoint's) changes nothing there: summary.json, config.yaml and metrics.jsonl
    stay as that attempt left them. A SIGTERM before the fit (Lightning handles it during the fit) ends the run
    as interrupted, not silently."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier = (out_dir / "config.yaml").is_file()  # this folder holds an earlier attempt's run
    trainer = None
    fitting = False
    on_term = signal.getsignal(signal.SIGTERM)
    ours = on_term == signal.SIG_DFL and threading.current_thread() is threading.main_thread()
    if ours:  # not where a launcher (submitit) handles SIGTERM itself
        signal.signal(signal.SIGTERM, _sigterm)
    orphaned = stop_with_the_sweep()
    try:
        rank_zero = global_rank() == 0
        was_auto = cfg.get("ckpt_path") == resume.AUTO
        auto = resume.resolve(cfg)  # ckpt_path=auto: this folder's own checkpoint, if any
        if auto is not None and rank_zero:  # another network than the folder's run is refused, done or not
            check_resume(cfg, out_dir / "config.yaml")  # the previous attempt's config, before it is overwritten
        given = cfg.get("ckpt_path")
        own = auto is not None or bool(given) and Path(given).resolve().is_relative_to(out_dir.resolve())
        if auto is not None and auto.done is not None:
            if rank_zero:
                (out_dir / REFUSED_FILE).unlink(missing_ok=True)  # this attempt's answer is the completed run
                say(f"mtdqn: {out_dir} holds a completed run ({auto.env_steps:,} env steps, summary.json): nothing "
                    "to train (ckpt_path=auto; a larger data.total_env_steps or another stop rule trains on)")
            return auto.done
        model, data, trainer = build(cfg)  # validates first
        if own and rank_zero:  # a resume in the run's folder continues that run, with its settings
            resume.check_same_run(cfg, out_dir / "config.yaml", resume.AUTO if auto is not None else given)
        ckpt = cfg.get("ckpt_path")
        jsonl = (cfg.get("logger") or {}).get("jsonl")
        metrics = Path(jsonl.save_dir) / jsonl.get("filename", "metrics.jsonl") if jsonl else None
        if not ckpt and rank_zero and metrics is not None and resume.logged_rows(metrics):
            # from scratch where an earlier attempt logged: its rows and this run's would make one mixed curve
            if not was_auto:
                raise ValueError(f"{out_dir} holds an earlier run's {metrics.name} ({resume.logged_rows(metrics)} "
                                 "rows): a run from scratch there would append its curve to that run's; resume it "
                                 f"(ckpt_path=auto) or give another {resume.run_dir_key()}")
            dropped = resume.drop_rows_after(metrics, -1)
            say(f"mtdqn: no checkpoint in {out_dir} (ckpt_path=auto): training from scratch; the {dropped} rows of "
                f"{metrics.name} an earlier attempt logged dropped")
        if ckpt and rank_zero and not own:  # a continuation elsewhere: this folder's curve starts at the checkpoint
            say(f"mtdqn: continuing from {ckpt} ({resume.checkpoint_env_steps(Path(ckpt)):,} env steps) in "
                f"{out_dir}")
        if ckpt and rank_zero and own:
            # resumed in its own folder (ckpt_path=auto, wherever callbacks.checkpoint.dirpath keeps its checkpoints,
            # or a checkpoint in the folder): the metrics logged after the checkpoint go, the
            # resumed run logs those env steps again (metrics.jsonl is appended to)
            env_steps = auto.env_steps if auto is not None else resume.checkpoint_env_steps(Path(ckpt))
            dropped = resume.drop_rows_after(metrics, env_steps) if metrics else 0
            wandb_note = continue_wandb_run(trainer.loggers, out_dir)
            say(f"mtdqn: resuming from {ckpt} ({env_steps:,} env steps"
                + ("; ckpt_path=auto)" if auto is not None else ")")
                + (f"; {dropped} rows of metrics.jsonl logged after it dropped" if dropped else "")
                + (f"; {wandb_note}" if wandb_note else ""))
        if rank_zero and (note := getattr(data, "budget_note", lambda: None)()):
            say(f"mtdqn: {note}")
        if rank_zero:
            save_config(out_dir, cfg)
        if cfg.get("torch_threads"):
            torch.set_num_threads(int(cfg.torch_threads))
        if rank_zero and cfg.get("print_config"):  # after build: bad input, whether caught by validate() or by
            print_config_tree(cfg)  # an env or component check, ends with its one line, not under a page of config
        trainer.callbacks.append(run_summary := RunSummary(out_dir))
        if ours:  # Lightning's own handler from here: it stops the fit after the current round
            signal.signal(signal.SIGTERM, on_term)
        if rank_zero:  # until the fit ends: a kill that gives no chance to say so (SIGKILL) leaves it "running", not
            (out_dir / REFUSED_FILE).unlink(missing_ok=True)  # an earlier refusal here: this attempt trains
            write_summary(out_dir, None, "running")  # an earlier attempt's "completed" (a resume to a larger budget)
        fitting = True
        trainer.fit(model, datamodule=data, ckpt_path=cfg.get("ckpt_path"))
        if run_summary.summary is None:  # the fit ran in spawned workers (trainer=ddp_spawn): rank zero's summary
            return json.loads((out_dir / "summary.json").read_text())
        return run_summary.summary
    except BaseException as exc:
        stopped = interrupted(exc)
        if fitting or not earlier:  # an attempt refused in an earlier attempt's folder leaves it as it was
            if not fitting and global_rank() == 0:  # what the refused run was given
                save_config(out_dir, cfg)
                (out_dir / REFUSED_FILE).unlink(missing_ok=True)  # its summary.json says this attempt's error
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__  # SIGTERMException has none
            done = write_summary(out_dir, trainer, "interrupted" if stopped else "failed", error)
            if fitting and global_rank() == 0 and "time/env_steps" in done:  # the end-of-run line, as a finished
                saver = next((cb for cb in trainer.callbacks if isinstance(cb, EnvStepCheckpoint)), None)  # run's
                ckpt_at = saver.last_saved if saver is not None and saver.path.is_file() else None  # and train.log
                say(f"mtdqn: {'interrupted' if stopped else 'failed'} at {int(done['time/env_steps']):,} env steps "
                    f"({error}); "
                    + (f"its last checkpoint is at {ckpt_at:,} env steps (ckpt_path=auto in this folder resumes "
                       "from it)" if ckpt_at is not None else "no checkpoint was written"), stderr=True)
        elif not stopped:
            if global_rank() == 0:  # the folder's summary.json still says the earlier attempt's status: a
                mark_refused(out_dir, f"{type(exc).__name__}: {exc}")  # multirun's tally counts this job by it
            say(f"mtdqn: {out_dir} is left as the earlier attempt left it (summary.json, config.yaml, metrics; "
                f"{REFUSED_FILE}: this attempt's error)", stderr=True)
        raise
    finally:
        if ours:
            signal.signal(signal.SIGTERM, on_term)
        if "wandb" in sys.modules:
            sys.modules["wandb"].finish()
        orphaned.set()  # last: an orphaned joblib worker ends its process from here

"""Atomic checkpoint files and checkpoints scheduled in env steps."""

from __future__ import annotations

import glob
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

TMP_SUFFIX = ".tmp"
_TMP_RANDOM = re.compile(r"[a-z0-9_]{8}")  # tempfile.mkstemp's random part: 8 of these characters


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: never a half-written file.

    An error or signal (Ctrl-C, SIGTERM's exception) anywhere after the temporary file is made removes it; a kill
    (SIGKILL, an out-of-memory kill, a node lost) cannot, and its temporary file (the replay's size: gigabytes for
    Atari) would stay for ever: each save that succeeds removes those an earlier write of this file left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:  # from the moment mkstemp returns (a signal before the `try` left a 0-byte file)
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            with os.fdopen(fd, "wb", closefd=False) as f:  # fd is closed once, below, whatever is interrupted
                torch.save(obj, f)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    remove_stale_temporaries(path)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove what atomic_torch_save's earlier writes of `path` left behind (`.<name>.<random>.tmp` beside it, the
    pattern it makes; no other file) and return them. One process writes a given checkpoint (rank 0 `last.ckpt`,
    each rank its `last.rank<r>.ckpt`), so no such file belongs to a write still going on."""
    prefix = f".{path.name}."
    removed = []
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*{TMP_SUFFIX}"):
        middle = leftover.name[len(prefix):-len(TMP_SUFFIX)]
        if _TMP_RANDOM.fullmatch(middle) and leftover.is_file() and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def rank_data_path(path: str | os.PathLike, rank: int) -> Path:
    """Where DDP rank `rank` (> 0) keeps its own data state beside a checkpoint: `last.ckpt` -> `last.rank1.ckpt`.
    Lightning's checkpoint holds rank 0's only: each rank collects other episodes into its own replay."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def check_checkpoint_file(path: str | os.PathLike, name: str = "checkpoint") -> None:
    """Refuse, naming it (`name`: the config key or script flag that gave it), a file that torch.save did not write:
    torch.save writes a zip archive (`ckpt_path=/etc/hostname` ended in a 21-line RuntimeError, 'mmap can only be
    used with files saved with torch.save(...)', and a weights-only load blamed pickled objects)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{name}={str(path)!r} is not a checkpoint that torch can load (torch.save writes a zip "
                         "archive, and this file is not one): give a run's checkpoints/last.ckpt")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint weights-only; a file that needs arbitrary unpickling is refused with a clear error."""
    if Path(path).is_file():
        check_checkpoint_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises UnpicklingError with a long message
        raise ValueError(
            f"checkpoint {str(path)!r} cannot be loaded weights-only (it carries pickled objects or is corrupt); "
            f"mtdqn refuses such files. Cause: {str(exc).splitlines()[0]}"
        ) from exc


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO that writes atomically and loads weights-only."""

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, map_location=map_location or "cpu")


class EnvStepCheckpoint(pl.Callback):
    """Save `last.ckpt` (model, optimizer, counters, replay, RNG) every `every_env_steps` and at the end."""

    def __init__(self, dirpath: str, every_env_steps: int = 10_000, filename: str = "last.ckpt") -> None:
        if every_env_steps <= 0:
            raise ValueError(f"callbacks.checkpoint.every_env_steps={every_env_steps} must be > 0")
        self.dirpath, self.every, self.filename = Path(dirpath), every_env_steps, filename
        self.last_saved = 0

    @property
    def path(self) -> Path:
        """Where the checkpoint is written."""
        return self.dirpath / self.filename

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_saved = trainer.datamodule.current_env_steps()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        steps = trainer.datamodule.current_env_steps()
        if steps >= trainer.datamodule.total_env_steps:  # the budget's end: on_train_end saves it once, with the
            return  # final evaluation's state (saving here too wrote, and with log_model uploaded, it twice)
        if steps // self.every > self.last_saved // self.every:
            self.save(trainer, steps)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, trainer.datamodule.current_env_steps())

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """SIGTERM (`kill`, `scancel`, a SLURM preemption): Lightning stops the fit at the end of a round, whose state
        is whole as at any checkpoint, so the rounds since the last checkpoint are saved, not lost to the resume.
        Not on Ctrl-C or an error, which can come in the middle of a round."""
        steps = trainer.datamodule.current_env_steps()
        if isinstance(exception, SIGTERMException) and steps > self.last_saved:
            self.save(trainer, steps)

    def save(self, trainer: pl.Trainer, steps: int) -> None:
        """Write the checkpoint atomically unless a guard marked the run as diverged."""
        if getattr(trainer, "mtdqn_diverged", False):
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        if trainer.world_size > 1 and trainer.global_rank > 0:  # its own replay, env seeds and RNGs beside rank 0's
            atomic_torch_save({"env_steps": steps, "data": trainer.datamodule.state_dict()},
                              rank_data_path(self.path, trainer.global_rank))
        self.last_saved = steps
        if trainer.is_global_zero:
            log_wandb_artifact(trainer, self.path, steps)


def log_wandb_artifact(trainer: pl.Trainer, path: Path, env_steps: int) -> None:
    """With a WandbLogger whose `log_model` is set, upload the checkpoint as a W&B model artifact."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_log_model", False):
            import wandb

            run = logger.experiment
            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={"env_steps": env_steps})
            artifact.add_file(str(path), name="last.ckpt")
            run.log_artifact(artifact, aliases=["latest", f"env_steps_{env_steps}"])

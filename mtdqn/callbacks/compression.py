"""The compression stage at the end of training: compress the trained Q-network and write the report."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

log = logging.getLogger("mtdqn")


class CompressionCallback(pl.Callback):
    """On train end (rank 0, after the final evaluation and checkpoint), run every configured chain of compression
    methods on a CPU copy of the online Q-network, with the run's own replay states and env factories, and write
    report.json / report.md / report.png into `output_dir`. With a W&B logger the numbers go to the run summary.

    The settings (conf/compression) are validated here, at instantiation, so a bad value stops the run before any
    env step. mtdqn.compression sits to the right of callbacks in the data flow, so it is imported when used.
    """

    def __init__(self, net: Callable[..., nn.Module], output_dir: str, **settings: Any) -> None:
        from mtdqn.compression import CompressionSettings

        self.settings = CompressionSettings.from_dict(settings)
        self.net_factory, self.output_dir = net, Path(output_dir)
        self.report: dict | None = None
        self.latest: dict[str, float] = {}  # flat numbers merged into summary.json by mtdqn.train.write_summary

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.settings.methods:
            return
        if getattr(trainer, "mtdqn_diverged", False) or trainer.interrupted:
            log.warning("compression skipped: the run did not finish normally")
            return
        from mtdqn.compression import net_builder, run_compression, summary_metrics, wrap
        from mtdqn.compression.policy import trained_net_factory

        policy = wrap(copy.deepcopy(pl_module.q_net).cpu().float())
        dm = trainer.datamodule
        # image replays (uint8) drawn down to the states compression keeps before they become floats (a full
        # Atari replay would be 11 GB); float replays whole, drawn by the pool as before
        per_task = max(self.settings.data.max_states // len(dm.buffers), 1)
        g = torch.Generator().manual_seed(self.settings.seed)
        replay_obs = [b.observations(per_task if b.obs_quantum is not None else None, g).cpu() for b in dm.buffers]
        builder = net_builder(trained_net_factory(self.net_factory, pl_module.q_net), pl_module.tasks,
                              policy.multitask)
        log.info("compression: %s -> %s", self.settings.methods, self.output_dir)
        self.report = run_compression(policy, builder, pl_module.tasks, dm.env_factories, replay_obs,
                                      self.settings, self.output_dir,
                                      {"path": None, "env_steps": int(dm.current_env_steps()),
                                       "run_status": "completed"})
        self.latest = summary_metrics(self.report)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                self.log_wandb(logger)

    def log_wandb(self, logger: Any) -> None:
        """Report numbers into the W&B run summary, the PNG as an image, the markdown table as a table."""
        import wandb

        run = logger.experiment
        run.summary.update(self.latest)
        png = self.output_dir / "report.png"
        if png.is_file():
            run.log({"compression/report": wandb.Image(str(png))})
        rows = [[e["name"], e["params"], e["file_bytes"], e["mean_normalized"], e["retention"]]
                for e in self.report["policies"]]
        run.log({"compression/table": wandb.Table(
            columns=["policy", "params", "file_bytes", "mean_normalized", "retention"], data=rows)})

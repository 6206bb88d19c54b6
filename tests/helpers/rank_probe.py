"""A callback the DDP tests add by override: records per-rank weights and collector seed."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class RankProbe(pl.Callback):
    """On train end, rank r writes rank{r}.pt with its Q-network weights, collector seed and first replay obs."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "params": torch.cat([p.detach().reshape(-1) for p in pl_module.q_net.parameters()]),
                "collector_seed": dm.collector.seed,
                "first_obs": dm.buffer.obs[0].clone(),
                "env_steps": dm.current_env_steps(),
                "world_size": trainer.world_size,
                "threads": torch.get_num_threads(),
                "flushes_denormals": (torch.tensor([1e-39]) * 1.0).item() == 0.0,
            },
            self.dirpath / f"rank{trainer.global_rank}.pt",
        )

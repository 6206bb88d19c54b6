"""Compose the project's Hydra config in tests (no Hydra app, so output_dir is given explicitly)."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mtdqn.overrides import debug_last

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def compose_cfg(overrides: list[str], output_dir: Path | str) -> DictConfig:
    """The train config with `overrides` (ordered as train.py orders its command line), writing into `output_dir`."""
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("train", overrides=debug_last([*overrides, f"paths.output_dir={output_dir}"]))


def params_vector(module: torch.nn.Module) -> torch.Tensor:
    """All parameters of a module flattened into one vector."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

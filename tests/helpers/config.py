"""Compose the project's Hydra config in tests (no Hydra app, so output_dir is given explicitly)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from mtdqn.overrides import CONF_DIR as _CONF
from mtdqn.overrides import compose_config

CONF_DIR = str(_CONF)


def compose_cfg(overrides: list[str], output_dir: Path | str) -> DictConfig:
    """The train config with `overrides` (ordered as train.py orders its command line), writing into `output_dir`."""
    return compose_config([*overrides, f"paths.output_dir={output_dir}"])


def params_vector(module: torch.nn.Module) -> torch.Tensor:
    """All parameters of a module flattened into one vector."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

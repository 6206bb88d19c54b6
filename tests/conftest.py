"""Test-wide settings: W&B never reaches the network, torch uses few threads."""

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)  # robust on small, busy CPUs (OpenMP oversubscription)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread in every test, restored afterwards (a run with `torch_threads=N` does not leak)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _wandb_tmp(tmp_path, monkeypatch):
    """Each test gets its own W&B directory and no W&B network access."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "disabled"))

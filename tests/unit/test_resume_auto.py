"""ckpt_path=auto on hand-written run folders (resume.resolve): what decides that a completed run is not trained
again. No training: the folder holds what a run that stopped solved leaves (a checkpoint's env steps, summary.json,
config.yaml)."""

from __future__ import annotations

import json

from mtdqn import resume
from mtdqn.callbacks.checkpoint import atomic_torch_save
from mtdqn.train import save_config
from tests.helpers.config import compose_cfg

RUN = ["debug=smoke", "logger=jsonl", "callbacks.progress=null", "ckpt_path=auto"]


def test_a_run_that_stopped_solved_trains_on_when_relaunched_under_another_stop_rule(tmp_path):
    """A run that stopped solved at 300 of its 600 env steps (stop_at_return=-1e9), relaunched into its folder: under
    the same rule its summary is the result (nothing to train); with the rule set to null it resumes from the
    checkpoint and trains on to its budget, not reporting the old summary as this config's result."""
    earlier = compose_cfg([*RUN, "callbacks.eval.stop_at_return=-1e9"], tmp_path)
    save_config(tmp_path, earlier)
    summary = {"status": "completed", "time/env_steps": 300, "time/stopped_solved": 1.0}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"RLDataModule": {"env_steps": 300, "replays": []}}, ckpt)

    again = resume.resolve(compose_cfg([*RUN, "callbacks.eval.stop_at_return=-1e9"], tmp_path))
    assert again is not None and again.done == summary

    cfg = compose_cfg([*RUN, "callbacks.eval.stop_at_return=null"], tmp_path)
    found = resume.resolve(cfg)
    assert found is not None and found.done is None  # trains on
    assert (found.checkpoint, found.env_steps, cfg.ckpt_path) == (ckpt, 300, str(ckpt))

"""Hydra multiruns: parallel joblib jobs, one W&B run per job, failed jobs recorded while the sweep goes on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_joblib_multirun_gives_one_run_dir_and_wandb_run_per_job_and_survives_a_failure(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "debug=smoke",
         "callbacks.progress=null", "seed=0,1", "gamma=0.99,1.5", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    status = {p.name: json.loads((p / "summary.json").read_text()) for p in jobs}
    assert [status[k]["status"] for k in "0123"] == ["completed", "failed", "completed", "failed"]
    assert "gamma=1.5" in status["1"]["error"]
    runs = [next((p / "wandb").glob("offline-run-*")).name for p in (jobs[0], jobs[2])]
    assert runs[0] != runs[1]  # one W&B run per job, each finished in its own folder
    assert all((p / "metrics.jsonl").is_file() for p in (jobs[0], jobs[2]))

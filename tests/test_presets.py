"""Every experiment preset (a glob over conf/experiment) runs a few steps on CPU."""

from pathlib import Path

import pytest

from mtdqn.train import train
from tests.helpers.config import compose_cfg

PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml"))
TINY = ["data.total_env_steps=800", "data.learning_starts=300", "data.batch_size=24", "data.env_steps_per_round=96",
        "callbacks.eval.every_env_steps=400", "callbacks.eval.episodes=2", "callbacks.progress=null",
        "logger=jsonl", "callbacks.checkpoint.every_env_steps=400"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_experiment_preset_runs(tmp_path, preset):
    first_line = (Path(__file__).resolve().parents[1] / "conf" / "experiment" / f"{preset}.yaml").read_text()
    assert f"+experiment={preset}" in first_line.splitlines()[1], "line 2 (after Hydra's @package line) is the command"
    summary = train(compose_cfg([f"+experiment={preset}", *TINY], tmp_path))
    assert summary["status"] == "completed"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()

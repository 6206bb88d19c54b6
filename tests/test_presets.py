"""Every experiment preset (a glob over conf/experiment) runs a few steps on CPU.

A preset that needs an optional extra says so in its header, `# requires: <module> (...)`; without that module
installed its test is skipped.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtdqn.train import train
from tests.helpers.config import compose_cfg

EXPERIMENTS = Path(__file__).resolve().parents[1] / "conf" / "experiment"
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
TINY = ["data.total_env_steps=800", "data.learning_starts=300", "data.batch_size=24", "data.env_steps_per_round=96",
        "callbacks.eval.every_env_steps=400", "callbacks.eval.episodes=2", "callbacks.progress=null",
        "logger=jsonl", "callbacks.checkpoint.every_env_steps=400"]


def required_modules(text: str) -> list[str]:
    """Modules named by `# requires: a, b (comment)` header lines."""
    found = []
    for line in text.splitlines():
        m = re.match(r"#\s*requires:\s*([\w.,\s]+)", line)
        if m:
            found += [name.strip() for name in m.group(1).split(",") if name.strip()]
    return found


def test_required_modules_are_parsed():
    assert required_modules("# @package _global_\n# requires: minatar (extra .[minatar])\nx: 1") == ["minatar"]
    assert required_modules("# requires: a, b.c\n") == ["a", "b.c"]
    assert required_modules("# python train.py\n") == []


SMOKE = {"data.total_env_steps": 600, "data.env_steps_per_round": 100, "data.replay_ratio": 0.1, "data.batch_size": 32,
         "data.learning_starts": 200, "callbacks.eval.episodes": 2}  # conf/debug/smoke.yaml


@pytest.mark.parametrize("preset", PRESETS)
def test_debug_smoke_wins_over_every_preset(tmp_path, preset):
    """`+experiment=<preset> debug=smoke` is a smoke run of that preset: the debug budgets, not the preset's."""
    cfg = compose_cfg([f"+experiment={preset}", "debug=smoke"], tmp_path)
    assert {key: OmegaConf.select(cfg, key) for key in SMOKE} == SMOKE


def test_a_key_value_override_still_wins_over_debug(tmp_path):
    cfg = compose_cfg(["debug=smoke", "+experiment=minatar_dqn", "data.total_env_steps=900"], tmp_path)
    assert cfg.data.total_env_steps == 900 and cfg.data.batch_size == 32


def test_train_py_orders_debug_after_the_experiment():
    """The command line as users type it (`debug=` in any position) composes the preset's smoke run."""
    out = subprocess.run([sys.executable, "train.py", "debug=smoke", "+experiment=minatar_dqn", "seed=3", "--cfg", "job"],
                         cwd=EXPERIMENTS.parents[1], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.experiment_name == "minatar_dqn" and cfg.seed == 3
    assert {key: OmegaConf.select(cfg, key) for key in SMOKE} == SMOKE


def test_help_shows_how_to_run_a_preset_and_the_presets_config():
    out = subprocess.run([sys.executable, "train.py", "+experiment=lane_keep_mtl", "--help"],
                         cwd=EXPERIMENTS.parents[1], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("mtdqn: multi-task and transfer deep Q-learning")
    assert "python train.py +experiment=<preset> debug=smoke" in out.stdout
    assert "experiment: " + ", ".join(PRESETS) in out.stdout  # the config groups, from conf/
    assert "experiment_name: lane_keep_mtl" in out.stdout  # the preset's composed config


# Presets that start from checkpoints get them from one tiny lane_keep_mtl run (made once, only when needed).
NEEDS_SOURCE = {
    "urban_transfer": lambda ckpt: ["transfer=ewc", f"transfer.checkpoint={ckpt}"],
    "driving_distill": lambda ckpt: [f"transfer.teachers=[{ckpt}]"],
}


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("source")
    assert train(compose_cfg(["+experiment=lane_keep_mtl", *TINY], run))["status"] == "completed"
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_experiment_preset_runs(tmp_path, preset, request):
    text = (EXPERIMENTS / f"{preset}.yaml").read_text()
    assert f"+experiment={preset}" in text.splitlines()[1], "line 2 (after Hydra's @package line) is the command"
    for module in required_modules(text):
        pytest.importorskip(module, reason=f"preset {preset} needs {module} (its optional extra)")
    extra = NEEDS_SOURCE[preset](request.getfixturevalue("source_checkpoint")) if preset in NEEDS_SOURCE else []
    summary = train(compose_cfg([f"+experiment={preset}", *TINY, *extra], tmp_path))
    assert summary["status"] == "completed"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    if preset == "lane_keep_compress":  # trains, then the end-of-training callback writes the compression report
        assert (tmp_path / "compression" / "report.md").is_file()


def test_every_true_false_key_of_every_preset_and_option_is_checked(tmp_path):
    """Each boolean in the composed configs (every preset, every optimizer, compression) is in
    config_checks.FLAGS, so `key=yes` is refused naming the key instead of counting as true: a new boolean option
    fails here until it is listed."""
    from mtdqn.config_checks import FLAGS

    def booleans(node, prefix=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from booleans(value, f"{prefix}{key}.")
        elif isinstance(node, bool) and not prefix.startswith("hydra.") and prefix != "" \
                and not prefix.endswith("_partial_."):
            yield prefix[:-1]

    optimizers = sorted(p.stem for p in (EXPERIMENTS.parent / "optimizer").glob("*.yaml"))
    variants = [[f"+experiment={name}"] for name in PRESETS] + [[f"optimizer={o}"] for o in optimizers]
    found = set()
    for overrides in [[], *variants, ["compression=default"], ["replay=prioritized"], ["net=dueling"]]:
        cfg = compose_cfg(overrides, tmp_path)
        found |= set(booleans(OmegaConf.to_container(cfg, resolve=False)))
    assert {"model.double_q", "net.dueling", "optimizer.centered"} <= found
    assert found <= set(FLAGS), sorted(found - set(FLAGS))

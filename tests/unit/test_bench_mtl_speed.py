"""scripts/bench_mtl_speed.py without training: the agents' commands, the report, bad arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_mtl_speed  # noqa: E402


def test_driving_single_task_agents_get_the_multi_task_agents_shared_settings():
    """The driving suite reuses bench_mtl.py's alignment: the single-task agents train with the multi-task preset's
    loss and replay ratio (lane_keep_dqn alone has Huber and 0.125); budgets and evaluation are the bench's own."""
    overrides = bench_mtl_speed.suite_overrides("driving")
    assert overrides["mtl"] == ["+experiment=lane_keep_mtl_share"]  # the preset it trains, named
    for task in ("lane_keep", "pedestrian", "traffic_light"):
        assert {f"task_set={task}", "model.loss=mse", "data.replay_ratio=0.25"} <= set(overrides[task])
        assert not any(o.startswith(("data.total_env_steps=", "callbacks.eval.")) for o in overrides[task])


def test_minatar_single_task_agents_are_one_path_of_the_multi_task_network():
    overrides = bench_mtl_speed.suite_overrides("minatar")
    assert list(overrides) == ["mtl", *bench_mtl_speed.MINATAR]
    for task in bench_mtl_speed.MINATAR:
        assert {"net.conv=null", "net.hidden=[256,256]", "data.batch_size=96", f"task_set.tasks=[{task}]"} <= set(
            overrides[task])


def test_each_single_task_agent_trains_its_share_of_the_env_steps(monkeypatch):
    calls = []

    def fake_train(overrides, env_steps, seed):
        calls.append((overrides[0], env_steps))
        return {"time/train_seconds": 30.0 if env_steps == 90 else 10.0, "time/env_steps": float(env_steps)}

    monkeypatch.setattr(bench_mtl_speed, "train", fake_train)
    rows = bench_mtl_speed.measure({"mtl": ["m"], "a": ["a"], "b": ["b"], "c": ["c"]}, 90, 2, 0)
    assert calls == [("m", 90), ("a", 30), ("b", 30), ("c", 30)] * 2
    assert rows[0]["singles_seconds"] == 30.0 and rows[0]["ratio"] == 1.0
    text = bench_mtl_speed.report(rows, argparse.Namespace(suite="minatar", env_steps=90, seed=0, mtl=[], all=[]))
    assert "| **median** | 30.0 | 30.0 | **1.000** | | |" in text
    assert "| 0 | 30.0 | 30.0 | 1.000 | 3 | 3 |" in text  # env steps per second of each


@pytest.mark.parametrize("argv", [["--env-steps", "0"], ["--repeats", "-1"]])
def test_non_positive_budgets_are_refused(argv):
    with pytest.raises(SystemExit, match="must be positive"):
        bench_mtl_speed.main(argv)


def test_mtl_overrides_reach_only_the_multi_task_agent(monkeypatch, capsys):
    """--mtl model.loss_balance=pcgrad: the multi-task agent's command gets it, no single-task agent's does."""
    calls = []

    def fake_train(overrides, env_steps, seed):
        calls.append(overrides)
        return {"time/train_seconds": 1.0, "time/env_steps": float(env_steps)}

    monkeypatch.setattr(bench_mtl_speed, "train", fake_train)
    bench_mtl_speed.main(["--suite", "minatar", "--env-steps", "90", "--repeats", "1", "--mtl",
                          "model.loss_balance=pcgrad"])
    assert calls[0][-1] == "model.loss_balance=pcgrad" and "+experiment=minatar_mtl" in calls[0]
    assert len(calls) == 4 and not any("model.loss_balance=pcgrad" in c for c in calls[1:])
    assert "Suite minatar (multi-task agent: model.loss_balance=pcgrad)" in capsys.readouterr().out


def test_all_overrides_reach_every_agent_and_win_over_the_suites(monkeypatch, capsys):
    """--all 'net.conv=[[16,3,1]]': every agent's command ends with it, after the minatar suite's net.conv=null for
    the single-task agents, so each agent (composed as train.py composes it) reads its game through a convolution."""
    from hydra import compose, initialize_config_dir

    calls = []

    def fake_train(overrides, env_steps, seed):
        calls.append(overrides)
        return {"time/train_seconds": 1.0, "time/env_steps": float(env_steps)}

    monkeypatch.setattr(bench_mtl_speed, "train", fake_train)
    bench_mtl_speed.main(["--suite", "minatar", "--env-steps", "90", "--repeats", "1", "--all", "net.conv=[[16,3,1]]",
                          "--mtl", "model.loss_balance=pcgrad"])
    assert len(calls) == 4 and all("net.conv=[[16,3,1]]" in c for c in calls)
    assert calls[0][-2:] == ["net.conv=[[16,3,1]]", "model.loss_balance=pcgrad"]
    assert "(every agent: net.conv=[[16,3,1]]) (multi-task agent: model.loss_balance=pcgrad)" in capsys.readouterr().out
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for overrides in calls:
            assert compose("train", overrides=overrides).net.conv == [[16, 3, 1]]

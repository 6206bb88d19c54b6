"""Learning checks: the DQN must actually improve (small budgets; marked slow)."""

import json

import pytest

from mtdqn.train import train
from tests.helpers.config import compose_cfg


@pytest.mark.slow
def test_cartpole_dqn_reaches_195_within_20k_env_steps(tmp_path):
    cfg = compose_cfg([
        "+experiment=cartpole_dqn", "data.total_env_steps=20000", "logger=jsonl", "callbacks.progress=null",
        "callbacks.checkpoint=null", "callbacks.eval.every_env_steps=2000", "seed=0",
    ], tmp_path)
    train(cfg)

    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/CartPole-v1/return"] for r in rows if "eval/CartPole-v1/return" in r]
    assert max(evals) >= 195, evals  # a random policy scores about 22


@pytest.mark.slow
def test_lane_keep_dqn_solves_lane_keep(tmp_path):
    """+experiment=lane_keep_dqn reaches normalized >= 0.9 (solved) within 100k env steps."""
    cfg = compose_cfg([
        "+experiment=lane_keep_dqn", "data.total_env_steps=100000", "logger=jsonl", "callbacks.progress=null",
        "callbacks.checkpoint=null", "seed=0",
    ], tmp_path)
    train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scores = [r["eval/lane_keep/normalized"] for r in rows if "eval/lane_keep/normalized" in r]
    assert scores[0] < 0.5 and max(scores) >= 0.9, scores


@pytest.mark.slow
def test_minatar_dqn_conv_learns_breakout(tmp_path):
    """+experiment=minatar_dqn (convolutional encoder) scores over 4x a random policy on MinAtar Breakout within
    50k env steps (uniform random actions: 0.46 over 100 episodes)."""
    pytest.importorskip("minatar", reason="MinAtar ids need the optional extra .[minatar]")
    cfg = compose_cfg([
        "+experiment=minatar_dqn", "data.total_env_steps=50000", "logger=jsonl", "callbacks.progress=null",
        "callbacks.checkpoint=null", "callbacks.eval.episodes=32", "seed=0",
    ], tmp_path)
    train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    returns = [r["eval/MinAtar-Breakout-v1/return"] for r in rows if "eval/MinAtar-Breakout-v1/return" in r]
    assert max(returns) >= 2.0, returns

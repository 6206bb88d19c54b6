"""Learning checks: the DQN must actually improve (small budgets; marked slow)."""

import json

import pytest

from mtdqn.train import train
from tests.helpers.config import compose_cfg


def evaluations(tmp_path, overrides: list[str], metric: str) -> list[float]:
    """Train seed 0 with `overrides` (metrics to jsonl, no checkpoints) and return `metric` at every evaluation."""
    train(compose_cfg([*overrides, "logger=jsonl", "callbacks.progress=null", "callbacks.checkpoint=null", "seed=0"],
                      tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r[metric] for r in rows if metric in r]


@pytest.mark.slow
def test_cartpole_dqn_reaches_195_within_20k_env_steps(tmp_path):
    evals = evaluations(tmp_path, ["+experiment=cartpole_dqn", "data.total_env_steps=20000",
                                   "callbacks.eval.every_env_steps=2000"], "eval/CartPole-v1/return")
    assert max(evals) >= 195, evals  # a random policy scores about 22


@pytest.mark.slow
def test_lane_keep_dqn_solves_lane_keep(tmp_path):
    """+experiment=lane_keep_dqn reaches normalized >= 0.9 (solved) within 100k env steps."""
    scores = evaluations(tmp_path, ["+experiment=lane_keep_dqn", "data.total_env_steps=100000"],
                         "eval/lane_keep/normalized")
    assert scores[0] < 0.5 and max(scores) >= 0.9, scores


@pytest.mark.slow
def test_minatar_dqn_conv_learns_breakout(tmp_path):
    """+experiment=minatar_dqn (convolutional encoder) scores over 4x a random policy on MinAtar Breakout within
    50k env steps (uniform random actions: 0.46 over 100 episodes)."""
    pytest.importorskip("minatar", reason="MinAtar ids need the optional extra .[minatar]")
    returns = evaluations(tmp_path, ["+experiment=minatar_dqn", "data.total_env_steps=50000",
                                     "callbacks.eval.episodes=32"], "eval/MinAtar-Breakout-v1/return")
    assert max(returns) >= 2.0, returns


@pytest.mark.slow
def test_lane_keep_mtl_share_learns_every_task_in_one_network(tmp_path):
    """The multi-task preset improves all three driving tasks at once: after 61k env steps (summed; ~20k per task)
    every task's normalized score is >= 0.35 and lane_keep's >= 0.6, up from the untrained network's (a uniform
    random policy scores 0). Fourteen earlier runs of the preset at this point: lane_keep 0.78-0.87, pedestrian
    0.51-0.81, traffic_light 0.46-0.60."""
    tasks = ("lane_keep", "pedestrian", "traffic_light")
    train(compose_cfg(["+experiment=lane_keep_mtl_share", "data.total_env_steps=61440", "callbacks.eval.at_start=true",
                       "logger=jsonl", "callbacks.progress=null", "callbacks.checkpoint=null", "seed=0"], tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [{t: r[f"eval/{t}/normalized"] for t in tasks} for r in rows if "eval/lane_keep/normalized" in r]
    first, last = evals[0], evals[-1]
    assert len(evals) == 3, evals  # at the start, at 30k and at 61k env steps
    assert all(last[t] >= 0.35 and last[t] >= first[t] + 0.2 for t in tasks), evals
    assert last["lane_keep"] >= 0.6, evals

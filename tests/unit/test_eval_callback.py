"""EvalCallback.evaluate on stubs: the stop rule over several tasks and the min / mean over tasks (no env, no
network: each task's episodes return a fixed score)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mtdqn.callbacks import evaluation
from mtdqn.callbacks.evaluation import EvalCallback
from mtdqn.evaluation.episodes import EpisodeStats
from mtdqn.types import TaskSpec


def evaluate(monkeypatch, scores: list[float], steps: int = 1000, **kwargs) -> tuple[dict, SimpleNamespace]:
    """One evaluation of tasks t0, t1, ... whose episodes return `scores` (normalized = return: reference 1,
    random 0)."""
    tasks = [TaskSpec(f"t{i}", 2, 2, reference_return=1.0, random_return=0.0) for i in range(len(scores))]

    def episodes(policy, env, seed):
        return EpisodeStats(torch.full((4,), env), torch.full((4,), 10), torch.zeros(4, dtype=torch.bool))

    monkeypatch.setattr(evaluation, "run_episode_stats", episodes)
    cb = EvalCallback(every_env_steps=1000, episodes=4, **kwargs)
    cb.envs = list(scores)  # the stub's "env" is the task's score
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision),
        datamodule=SimpleNamespace(total_env_steps=5000), global_step=7, is_global_zero=True, loggers=[],
        should_stop=False)
    module = SimpleNamespace(tasks=tasks, policy_for=lambda i: lambda obs: torch.zeros(len(obs), dtype=torch.long))
    return cb.evaluate(trainer, module, steps), trainer


@pytest.mark.parametrize(("scores", "stops"), [([0.9, 0.1], False), ([0.9, 0.6], True)])
def test_stop_at_normalized_needs_every_task_over_the_bar(monkeypatch, scores, stops):
    """stop_at_normalized=0.5: one task at 0.9 and one at 0.1 keep the run training; both over it stop it."""
    metrics, trainer = evaluate(monkeypatch, scores, stop_at_normalized=0.5)
    assert trainer.should_stop == stops
    assert metrics.get("time/stopped_solved") == (1.0 if stops else None)


def test_min_and_mean_normalized_over_the_tasks(monkeypatch):
    metrics, _ = evaluate(monkeypatch, [0.2, 0.8])
    assert metrics["eval/min_normalized"] == pytest.approx(0.2)
    assert metrics["eval/mean_normalized"] == pytest.approx(0.5)

"""EvalCallback.evaluate on stubs: the stop rule over several tasks, the min / mean over tasks, and the training
clock that leaves evaluation time out (no env, no network: each task's episodes return a fixed score)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mtdqn.callbacks import evaluation
from mtdqn.callbacks.evaluation import EvalCallback
from mtdqn.evaluation.episodes import EpisodeStats
from mtdqn.types import TaskSpec


class Clock:
    """A stand-in for the module's `time`: perf_counter reads `now`, which the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def evaluate(monkeypatch, scores: list[float], clock: Clock | None = None, eval_seconds: float = 0.0,
             train_seconds: float = 0.0, steps: int = 1000, **kwargs) -> tuple[dict, SimpleNamespace]:
    """One evaluation of tasks t0, t1, ... whose episodes return `scores` (normalized = return: reference 1,
    random 0). With a clock: `train_seconds` pass before the evaluation, and each task's episodes take
    `eval_seconds`."""
    tasks = [TaskSpec(f"t{i}", 2, 2, reference_return=1.0, random_return=0.0) for i in range(len(scores))]

    def episodes(policy, env, seed):
        if clock is not None:
            clock.now += eval_seconds
        return EpisodeStats(torch.full((4,), env), torch.full((4,), 10), torch.zeros(4, dtype=torch.bool))

    monkeypatch.setattr(evaluation, "run_episode_stats", episodes)
    if clock is not None:
        monkeypatch.setattr(evaluation, "time", clock)
    cb = EvalCallback(every_env_steps=1000, episodes=4, **kwargs)
    cb.envs = list(scores)  # the stub's "env" is the task's score
    if clock is not None:
        cb.started = clock.now
        clock.now += train_seconds
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


def test_evaluation_time_is_left_out_of_train_seconds_and_sps(monkeypatch):
    """3 s of training, then an evaluation whose two tasks take 10 s each: time/train_seconds is 3, and
    time/sps the 1,200 env steps over those 3 s, not over 23."""
    metrics, _ = evaluate(monkeypatch, [0.5, 0.5], clock=Clock(), eval_seconds=10.0, train_seconds=3.0, steps=1200)
    assert metrics["time/train_seconds"] == pytest.approx(3.0)
    assert metrics["time/sps"] == pytest.approx(400.0)

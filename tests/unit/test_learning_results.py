"""scripts/learning_results.py's table on hand-made evaluation histories (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import learning_results  # noqa: E402


def history(scores: dict[str, list[float]], kind: str = "normalized") -> list[dict]:
    n = len(next(iter(scores.values())))
    return [{"time/env_steps": 1000.0 * (i + 1), "time/train_seconds": 10.0 * (i + 1),
             **{f"eval/{t}/{kind}": v[i] for t, v in scores.items()}} for i in range(n)]


def fake_runs(monkeypatch, runs: dict[int, tuple[list[str], list[dict]]]) -> None:
    monkeypatch.setattr(learning_results, "run_seed", lambda overrides, seed: {
        "task": runs[seed][0][0], "tasks": runs[seed][0], "history": runs[seed][1], "wall": 1.0,
        "eval_seconds": 0.0, "eval_episodes": 4})


def test_a_multi_task_run_is_timed_when_every_task_is_at_the_bar(monkeypatch, capsys) -> None:
    """The first task alone was reported (its final score, its env steps to 0.9) for a multi-task preset."""
    tasks = ["a", "b"]
    fake_runs(monkeypatch, {0: (tasks, history({"a": [0.95, 0.95, 0.95], "b": [0.1, 0.5, 0.92]})),
                            1: (tasks, history({"a": [0.95, 0.95, 0.95], "b": [0.1, 0.2, 0.3]}))})
    learning_results.main(["--seeds", "0", "1"])
    out = capsys.readouterr().out
    assert "| seed | final a normalized | final b normalized | env steps to every task at normalized >= 0.9 |" in out
    assert "| 0 | 0.950 | 0.920 | 3,000 |" in out and "| 1 | 0.950 | 0.300 | not reached |" in out
    # the median of 3,000 and never is the lower middle one: 3,000 (1 of 2 reached), not the median of the reached
    assert "| 3,000 [3,000, never] (1/2) |" in out


def test_returns_are_timed_only_at_a_return_threshold(monkeypatch, capsys) -> None:
    """--threshold (a normalized score) was silently not applied to a task scored by return: say so, and time it at
    --return-threshold."""
    fake_runs(monkeypatch, {0: (["CartPole-v1"], history({"CartPole-v1": [9.5, 200.0, 500.0]}, "return"))})
    learning_results.main(["--seeds", "0"])
    out = capsys.readouterr().out
    assert "Not timed: CartPole-v1 scored by return; --return-threshold sets its bar." in out
    assert "| 0 | 9.500 |" not in out and "| 0 | 500.000 | - |" in out
    learning_results.main(["--seeds", "0", "--return-threshold", "475"])
    assert "| 0 | 500.000 | 3,000 | 30.0 |" in capsys.readouterr().out


def test_an_out_file_in_a_missing_folder_is_refused_before_training(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(learning_results, "run_seed", lambda *a: pytest.fail("trained before checking --out"))
    with pytest.raises(SystemExit, match=r"--out .*nodir/r.json: its folder .*nodir does not exist"):
        learning_results.main(["--seeds", "0", "--out", str(tmp_path / "nodir" / "r.json")])
